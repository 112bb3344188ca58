"""The op registry: every IR op has one complete definition, every consumer reads it, and an
op or attribute without a definition is an error wherever it turns up, never a fallthrough."""

import math

import networkx as nx
import pytest

from archlang.api import load_model
from archlang.compiler import generate, lower, run_pipeline, validate
from archlang.compiler.codegen import CodegenError
from archlang.compiler.facts import compute_facts
from archlang.compiler.ir import OPS, GraphBuilder, NodeRef, inputs_of
from archlang.compiler.ops import (
    CATEGORIES, PICTURE_GROUPS, REGISTRY, Cost, Emit, FactsContext, OpDef, RegistryError, attr, mixer_ops,
)
from archlang.compiler.ops.base import register
from archlang.spec import ArchErrors
from archlang.spec import ast as A
from archlang.spec.resolve import load_models
from archlang.spec import compat

from ..conftest import EXAMPLES, SPECS

SPEC_FILES = sorted(SPECS.glob("*.arch")) + sorted(EXAMPLES.glob("*.arch"))
SPEC_FILES += sorted((SPECS / "byte_latent").glob("*.arch"))  # one runtime module, not the layer contract


def _graphs():
    """Lowered and optimized IRs of every test spec and example: between them, every op."""
    for path in SPEC_FILES:
        for model in load_models(path):
            g = lower(model)
            yield f"{model.name} lowered", g
            yield f"{model.name} optimized", run_pipeline(g)


GRAPHS = list(_graphs())


def test_every_registered_op_is_complete():
    assert list(OPS) == list(REGISTRY)
    for name, op in REGISTRY.items():
        assert op.name == name and op.summary
        assert op.role in ("compute", "input", "output", "table"), name
        assert op.picture in PICTURE_GROUPS, name
        lo, hi = op.arity
        assert 0 <= lo and (hi is None or hi >= lo), name
        for attr_name, a in op.attrs.items():
            assert a.types, (name, attr_name)
            assert a.required or a.accepts(a.default), (name, attr_name)


def test_every_op_is_exercised_by_the_specs():
    used = {d["op"] for _, g in GRAPHS for _, d in g.nodes(data=True)}
    assert used == set(REGISTRY), f"ops no spec reaches: {sorted(set(REGISTRY) - used)}"


@pytest.mark.parametrize("label,g", GRAPHS, ids=[label for label, _ in GRAPHS])
def test_every_rule_of_every_node_answers(label, g):
    ctx = FactsContext(context=g.graph["context"], nbytes=2)
    for node, d in g.nodes(data=True):
        op = REGISTRY[d["op"]]
        assert d["params"] == op.params(d["attrs"], d["shape"])
        assert op.category(d) in CATEGORIES
        total, active = op.param_split(d)
        assert set(total) <= set(CATEGORIES) and all(active[k] <= total[k] for k in active)
        assert sum(total.values()) == sum(math.prod(s) for s in d["params"].values())
        cost = op.cost(d, ctx)
        assert isinstance(cost, Cost) and min(cost.flops, cost.kv_bytes_per_token, cost.state_bytes) >= 0
        producers = [g.nodes[r.node] for r in inputs_of(g, node)]
        module = op.module(d, Emit("layer", '"key"'))
        assert module is None or isinstance(module, str)
        if op.role in ("compute", "table"):
            args = [f"a{i}" for i in range(len(producers))]
            assert isinstance(op.call(d, args, Emit("layer", "", producers)), str)
        for out in range(len(d["outputs"])):
            assert op.out_width(d, out) is not None


def test_a_definition_missing_a_rule_fails_at_import():
    with pytest.raises(RegistryError, match="lacks .*module.*call"):
        class Half(OpDef):  # noqa: F841
            name = "half"
            summary = "x / 2"
            arity = (1, 1)
            picture = "other"

            def params(self, a, shape):
                return {}

            def category(self, d):
                return "other"

            def cost(self, d, ctx):
                return Cost()


def test_an_op_is_defined_once():
    with pytest.raises(RegistryError, match="defined twice"):
        register(type(REGISTRY["add"]))


def test_the_builder_refuses_unknown_ops_and_attributes():
    b = GraphBuilder()
    x = b.node("x", "input", name="x", outputs="x", shape=("B", "T"), attrs={"role": "tokens"})
    with pytest.raises(RegistryError, match="unknown IR op 'gelu_mlp'"):
        b.node("y", "gelu_mlp", [x], name="y", outputs="y", shape=("B", "T", 4))
    with pytest.raises(RegistryError, match="no attribute colour"):
        b.node("s", "scale", [x], name="s", outputs="s", shape=("B", "T"), attrs={"factor": 2.0, "colour": 1})
    with pytest.raises(RegistryError, match="needs attribute 'factor'"):
        b.node("s", "scale", [x], name="s", outputs="s", shape=("B", "T"))
    with pytest.raises(RegistryError, match="factor='2' is not float"):
        b.node("s", "scale", [x], name="s", outputs="s", shape=("B", "T"), attrs={"factor": "2"})
    with pytest.raises(RegistryError, match="bias=1 is not bool"):
        b.node("l", "linear", [x], name="l", outputs="l", shape=("B", "T", 4),
               attrs={"in_features": 4, "out_features": 4, "bias": 1})
    # defaults are filled in, and the weights follow from the attributes
    ref = b.node("l", "linear", [x], name="l", outputs="l", shape=("B", "T", 4),
                 attrs={"in_features": 3, "out_features": 4, "bias": True})
    assert b.g.nodes[ref.node]["attrs"]["parts"] is None
    assert b.g.nodes[ref.node]["params"] == {"weight": (4, 3), "bias": (4,)}


def _tiny():
    return lower(load_model(SPECS / "tiny_llama.arch"))


def test_validation_reports_an_op_without_definition():
    g = _tiny()
    g.nodes["layers.0.act" if "layers.0.act" in g else "layers.0.glu"]["op"] = "mystery"
    with pytest.raises(ArchErrors, match="unknown op 'mystery': no definition in compiler/ops"):
        validate(g)


def test_validation_reports_attributes_and_weights_a_pass_broke():
    g = _tiny()
    g.nodes["layers.0.q_proj"]["attrs"]["bias"] = "yes"
    g.nodes["layers.1.k_proj"]["params"]["weight"] = (8, 8)
    g.nodes["layers.1.attn"]["attrs"]["heads_per_group"] = 2
    with pytest.raises(ArchErrors) as info:
        validate(g)
    text = "\n".join(str(e) for e in info.value.errors)
    assert "linear: attribute bias='yes' is not bool" in text
    assert "linear weights {'weight': (8, 8)} differ from those its attributes define" in text
    assert "attention: unknown attribute 'heads_per_group'" in text


def test_codegen_refuses_an_op_without_definition():
    g = run_pipeline(_tiny())
    node = next(n for n, d in g.nodes(data=True) if d["op"] == "softcap" or d["op"] == "lm_head")
    g.nodes[node]["op"] = "mystery"
    with pytest.raises(CodegenError, match="unknown IR op 'mystery'"):
        generate(g)


def test_facts_refuse_an_op_without_definition():
    g = _tiny()
    g.nodes["layers.0.q_proj"]["op"] = "mystery"
    with pytest.raises(RegistryError, match="unknown IR op 'mystery'"):
        compute_facts(g)


# ---------------------------------------------------------------------- the language's mixers


def test_each_mixer_kind_of_the_language_has_exactly_one_op():
    kinds = [k for op in REGISTRY.values() for k in op.mixer_kinds]
    assert len(kinds) == len(set(kinds))
    assert set(kinds) == set(A.SLOT_KINDS["attention"]) | set(A.SLOT_KINDS["ssm"]) | set(A.SLOT_KINDS["gau"])
    assert compat.MIXER_OPS == mixer_ops()


def test_refusals_name_kinds_positions_and_options_that_exist():
    for op in REGISTRY.values():
        for kind, position in op.refused_positions:
            assert kind in op.mixer_kinds and position in compat.POSITIONS, (op.name, kind, position)
        for kind, option in op.refused_options:
            assert kind in op.mixer_kinds and option in compat.OPTIONS, (op.name, kind, option)
        assert set(op.refused_in_encoders) <= set(op.mixer_kinds)
        assert set(op.cross_attention_kinds) <= set(op.mixer_kinds)
        assert set(op.refused_cross_options) <= set(compat.OPTIONS)


def test_compat_reads_refusals_from_the_op_definitions():
    mla = REGISTRY["mla_attention"]
    for (kind, position), refusal in mla.refused_positions.items():
        assert compat.position_refusal(kind, position) is refusal
    assert compat.option_refusal("mla", "bias") is mla.refused_options[("mla", "bias")]
    assert compat.CROSS_ATTENTION_KINDS == REGISTRY["attention"].cross_attention_kinds


def test_hf_weight_names_are_weights_the_op_has():
    possible = {}  # the weights each op can have: those of the examples, and with every switch turned on
    for _, g in GRAPHS:
        for _, d in g.nodes(data=True):
            op = REGISTRY[d["op"]]
            on = {k: True if isinstance(v, bool) else v for k, v in d["attrs"].items()}
            possible.setdefault(d["op"], set()).update(op.params(on, d["shape"]), d["params"])
    for name, op in REGISTRY.items():
        if op.hf_params is not None:
            assert set(op.hf_params) == possible[name], name


def test_a_new_op_is_one_definition_away(monkeypatch):
    """Registering a definition is all validation, facts and code generation need."""

    class Double(OpDef):
        name = "double_test_op"
        summary = "2x"
        attrs = {"factor": attr(float, default=2.0)}
        arity = (1, 1)
        picture = "other"

        def params(self, a, shape):
            return {}

        def category(self, d):
            return "other"

        def cost(self, d, ctx):
            return Cost(flops=1)

        def module(self, d, emit):
            return None

        def call(self, d, args, emit):
            return f"{args[0]} * {d['attrs']['factor']!r}"

    monkeypatch.setitem(REGISTRY, Double.name, Double())
    g = _tiny()
    # put the op between the last norm and the head
    head = "lm_head"
    (src,) = [(u, data) for u, _, data in g.in_edges(head, data=True)]
    g.remove_edge(src[0], head)
    b = GraphBuilder(g)
    x = b.node("double", Double.name, [NodeRef(src[0], src[1]["out"])], name="double", outputs="x",
               shape=g.nodes[src[0]]["shape"])
    g.add_edge(x.node, head, port=0, out=0)
    g.nodes[x.node]["order"] = g.nodes[src[0]]["order"] + 0.5
    validate(g)
    assert compute_facts(g).flops_per_token == compute_facts(_tiny()).flops_per_token + 1
    assert "x = x * 2.0" in generate(g)
    assert nx.is_directed_acyclic_graph(g)

"""GLA and retention through the language and the compiler: defaults and located refusals,
parameters, FLOPs and state bytes from the op definitions against the runtime modules, and the
generated hybrid model (cached decoding equals the full forward, causality, gradients)."""

import pytest
import torch

from archlang.api import compile_spec, load_source
from archlang.compiler.facts import compute_facts
from archlang.compiler.ops import FactsContext, op_def
from archlang.runtime.context import Cache
from archlang.spec import ArchError, ArchErrors, load_models
from archlang.spec.format import format_source

from ..conftest import ROOT
from .hybrids import assert_causal, assert_gradients_reach_every_parameter, perturbed_model

SPEC = ROOT / "tests" / "specs" / "tiny_gla_retention.arch"

BASE = """model m {
    vocab = 61
    d_model = 32
    context = 64
    dtype = fp32
    final_norm = rmsnorm()
    block b {
        norm = rmsnorm()
        ssm = SSM
    }
    layers = b * 2
}
"""


def errors_of(text: str) -> list[ArchError]:
    with pytest.raises((ArchError, ArchErrors)) as info:
        load_models(source=text, name="m.arch")
    return info.value.errors if isinstance(info.value, ArchErrors) else [info.value]


@pytest.mark.parametrize("call,expected", [
    ("gla(heads = 4)", (4, 8, 8, 64, 16, 16.0, 1e-5)),
    ("gla(heads = 2, key_dim = 4, value_dim = 6, gate_rank = 3, gate_logit_normalizer = 8, chunk = 16)",
     (2, 4, 6, 16, 3, 8.0, 1e-5)),
    ("retention(heads = 4)", (4, 8, 8, 64, True, 1e-6)),
    ("retention(heads = 2, value_dim = 4, output_gate = false, norm_eps = 1e-5)", (2, 16, 4, 64, False, 1e-5)),
])
def test_defaults(call, expected):
    (model,) = load_models(source=BASE.replace("SSM", call), name="m.arch")
    s = model.blocks["b"].ssm
    extra = (s.gate_rank, s.gate_logit_normalizer, s.norm_eps) if s.kind == "gla" else (s.output_gate, s.norm_eps)
    assert (s.heads, s.key_dim, s.value_dim, s.chunk, *extra) == expected


@pytest.mark.parametrize("call,field,message", [
    ("gla(heads = 3)", "heads", "must be divisible by heads"),
    ("gla(heads = 4, gate_rank = 0)", "gate_rank", ""),
    ("retention(heads = 4, key_dim = -2)", "key_dim", ""),
    ("retention(heads = 4, norm_eps = 0)", "norm_eps", ""),
])
def test_bad_values_are_located_errors(call, field, message):
    text = BASE.replace("SSM", call)
    (err,) = errors_of(text)
    assert message in err.message
    line = text.splitlines()[err.span.line - 1]
    assert line[:err.span.column - 1].endswith(f"{field} = "), (err, line)


@pytest.mark.parametrize("kind", ["gla", "retention"])
def test_attention_positions_and_encoders_are_refused(kind):
    call = f"{kind}(heads = 4)"
    (err,) = errors_of(BASE.replace("SSM", call).replace("final_norm", "position = alibi()\n    final_norm"))
    assert f"alibi() with {kind}" in err.message and err.span.line == 10
    (err,) = errors_of(BASE.replace("SSM", call).replace("dtype = fp32", "dtype = fp32\n    family = encoder"))
    assert f"{kind} in an encoder" in err.message


def test_fmt_round_trips():
    text = SPEC.read_text()
    assert format_source(text) == text


def test_parameters_flops_and_state_bytes_match_the_runtime_modules():
    compiled = compile_spec(SPEC.read_text(), passes="")
    model = load_source(compiled.source, "m").build()
    facts = compute_facts(compiled.graph, context=16, dtype="float32")
    assert facts.params_total == sum(p.numel() for p in model.parameters())
    for i in (0, 1, 3):
        node = compiled.graph.nodes[f"layers.{i}.ssm"]
        assert {n: tuple(p.shape) for n, p in model.layers[i].ssm.named_parameters()} == node["params"]
    ctx = FactsContext(context=16, nbytes=4)
    gla = compiled.graph.nodes["layers.0.ssm"]  # 4 heads, key_dim 8, value_dim 12, gate_rank 4
    assert op_def("gla").cost(gla, ctx).flops == (2 * 32 * (32 + 32 + 48 + 48 + 4) + 2 * 4 * 32 + 2 * 48 * 32
                                                  + 5 * 8 * 12 * 4)
    retention = compiled.graph.nodes["layers.1.ssm"]  # 2 heads of 8 x 8, gated
    assert op_def("retention").cost(retention, ctx).flops == 2 * 32 * 4 * 16 + 2 * 16 * 32 + 5 * 8 * 8 * 2
    plain = compiled.graph.nodes["layers.3.ssm"]  # 4 heads of 8 x 8, no gate
    assert op_def("retention").cost(plain, ctx).flops == 2 * 32 * 3 * 32 + 2 * 32 * 32 + 5 * 8 * 8 * 4
    for i in (0, 1, 3):
        node = compiled.graph.nodes[f"layers.{i}.ssm"]
        assert op_def(node["op"]).cost(node, ctx).state_bytes == model.layers[i].ssm.state_bytes()
    cache = Cache()
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    held = sum(t.numel() * t.element_size() for state in cache.layers.values() for name, t in state.items()
               if name == "state")
    assert held == facts.ssm_state_bytes_per_sequence == 2 * 4 * 8 * 12 * 4 + 2 * 8 * 8 * 4 + 4 * 8 * 8 * 4


def _hybrid(seed=0):
    return perturbed_model(SPEC, seed)


def test_hybrid_cached_decoding_equals_the_full_forward():
    model = _hybrid()
    ids = torch.randint(0, 97, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        cache = Cache()
        steps = [model(ids[:, :9], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(9, 13)]
        steps.append(model(ids[:, 13:], cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)


def test_hybrid_is_causal():
    assert_causal(_hybrid(), length=12, cut=7)


def test_hybrid_gradients_reach_every_parameter():
    assert_gradients_reach_every_parameter(_hybrid())

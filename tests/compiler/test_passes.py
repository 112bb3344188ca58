"""Every pass: the IR changes as expected (golden dumps), and the model built from the optimized
IR computes the same outputs as the one built from the unoptimized IR, on random weights."""

import pytest
import torch

from archlang.api import compile_spec, load_source
from archlang.compiler import dump, lower, run_pipeline
from archlang.compiler.passes import DEFAULT_PIPELINE, REGISTRY, parse_pipeline
from archlang.spec import ArchError

from ..conftest import FP32, SPECS, check_golden, tiny_specs


def _outputs(model, name_family, ids):
    with torch.no_grad():
        out = model(ids, ids) if name_family == "encoder_decoder" else model(ids)
    return out if isinstance(out, tuple) else (out,)


def _equivalent(path, name, passes):
    base_c = compile_spec(path, model=name, passes="")
    opt_c = compile_spec(path, model=name, passes=passes, verify_each=True)
    base = load_source(base_c.source, name).build().eval()
    opt = load_source(opt_c.source, name).build().eval()
    opt.load_unfused_state_dict(base.state_dict())
    ids = torch.randint(0, 97, (2, 11))
    for a, b in zip(_outputs(base, base_c.model.family, ids), _outputs(opt, base_c.model.family, ids)):
        torch.testing.assert_close(a, b, **FP32)
    return base_c, opt_c


@pytest.mark.parametrize("pipeline", [*REGISTRY, DEFAULT_PIPELINE])
@pytest.mark.parametrize("path,name", tiny_specs(), ids=lambda v: getattr(v, "name", v) if not isinstance(v, str) else v)
def test_pass_preserves_outputs(path, name, pipeline):
    _equivalent(path, name, pipeline)


def test_fusions_rewrite_the_ir():
    base, opt = _equivalent(SPECS / "tiny_llama.arch", "tiny_llama", DEFAULT_PIPELINE)
    ops = lambda g: sorted(d["op"] for _, d in g.nodes(data=True))  # noqa: E731
    assert ops(base.graph).count("linear") == 2 * 7 + 1 - 1  # q, k, v, o, gate, up, down per layer (lm_head is its own op)
    assert ops(opt.graph).count("linear") == 2 * 4
    assert "rope" not in ops(opt.graph) and ops(opt.graph).count("const") == 1
    assert ops(opt.graph).count("add_norm") == 2
    attn = [d for _, d in opt.graph.nodes(data=True) if d["op"] == "attention"]
    assert all(a["attrs"]["packed"] and a["attrs"]["rope"] == {"dim": 8} for a in attn)


def test_fuse_qkv_needs_fold_rope_first():
    g = lower(compile_spec(SPECS / "tiny_llama.arch").model)
    assert dump(run_pipeline(g, "fuse-qkv")) == dump(g)  # rope sits between projections and attention
    assert dump(run_pipeline(g, "fold-rope,fuse-qkv")) != dump(run_pipeline(g, "fold-rope"))


def test_golden_ir():
    c = compile_spec(SPECS / "tiny_llama.arch")
    check_golden("tiny_llama.lowered.ir", dump(c.lowered))
    check_golden("tiny_llama.optimized.ir", dump(c.graph))
    check_golden("tiny_t5.optimized.ir", dump(compile_spec(SPECS / "tiny_t5.arch").graph))


def test_ir_dump_is_stable():
    a = dump(compile_spec(SPECS / "tiny_jamba.arch").graph)
    b = dump(compile_spec(SPECS / "tiny_jamba.arch").graph)
    assert a == b


def test_pipeline_errors():
    with pytest.raises(ArchError, match="unknown pass `fuse-qvk`") as info:
        parse_pipeline("fold-rope,fuse-qvk")
    assert info.value.hint == "did you mean `fuse-qkv`?"
    assert [p.name for p in parse_pipeline(DEFAULT_PIPELINE, ("dce",))][-1] == "share-constants"


def test_failing_pass_is_named_with_its_predecessors():
    from dataclasses import dataclass

    from archlang.compiler.passes import Pass, PassManager

    @dataclass(frozen=True)
    class Breaks(Pass):
        name = "break-things"

        def run(self, g):
            g.remove_node(next(n for n, d in g.nodes(data=True) if d["op"] == "norm"))
            return g, True

    g = lower(compile_spec(SPECS / "tiny_llama.arch").model)
    with pytest.raises(Exception) as info:
        PassManager([REGISTRY["fold-rope"](), Breaks()], verify_each=True).run(g)
    assert "while running pass break-things after [fold-rope]" in str(info.value.errors[0].notes)
    with pytest.raises(Exception) as info:
        PassManager([REGISTRY["fold-rope"](), Breaks()]).run(g)
    assert "after passes [fold-rope, break-things]; --verify-each names the pass" in str(info.value.errors[0].notes)


def test_constants_of_different_widths_stay_apart():
    """Found by fuzzing: two head widths need two RoPE tables, under two names."""
    text = (SPECS / "tiny_llama.arch").read_text().replace(
        "layers = layer * 2", "block wide extends layer { attention.head_dim = 16 }\n    layers = [layer, wide] * 2")
    base, opt = _equivalent(text, "tiny_llama", DEFAULT_PIPELINE)
    tables = sorted(d["name"] for _, d in opt.graph.nodes(data=True) if d["op"] == "const")
    assert tables == ["rope_table", "rope_table_2"]

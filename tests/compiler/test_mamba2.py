"""Mamba-2 through the language and the compiler: located refusals, heads and head_dim filled
in, parameter counts, FLOPs and state bytes from the op definition against the runtime module,
and the generated hybrid model (cached decoding equals the full forward, gradients everywhere)."""

import pytest
import torch

from archlang.api import compile_spec, load_source
from archlang.compiler.facts import compute_facts
from archlang.runtime.context import Cache
from archlang.spec import ArchError, ArchErrors, load_models

from ..conftest import ROOT
from .hybrids import assert_gradients_reach_every_parameter, perturbed_model

SPEC = ROOT / "tests" / "specs" / "tiny_mamba2.arch"

BASE = """model m {
    vocab = 61
    d_model = 32
    context = 64
    dtype = fp32
    final_norm = rmsnorm()
    block b {
        norm = rmsnorm()
        ssm = mamba2(SSM)
    }
    layers = b * 2
}
"""


def ssm_of(args: str):
    (model,) = load_models(source=BASE.replace("SSM", args), name="m.arch")
    return model.blocks["b"].ssm


def errors_of(text: str) -> list[ArchError]:
    with pytest.raises((ArchError, ArchErrors)) as info:
        load_models(source=text, name="m.arch")
    return info.value.errors if isinstance(info.value, ArchErrors) else [info.value]


@pytest.mark.parametrize("args,heads,head_dim", [
    ("d_state = 8", 1, 64),  # neither: head_dim = 64 over d_inner = 2 · 32
    ("heads = 8", 8, 8),
    ("head_dim = 16, expand = 3", 6, 16),
    ("heads = 4, head_dim = 16", 4, 16),
])
def test_heads_and_head_dim_follow_from_each_other(args, heads, head_dim):
    ssm = ssm_of(args)
    assert (ssm.heads, ssm.head_dim) == (heads, head_dim)


@pytest.mark.parametrize("args,d_inner", [
    ("heads = 3, head_dim = 8", 24),  # d_inner 24 is no multiple of d_model 32 (Nemotron-H-4B's 7168 of 3072)
    ("heads = 4, head_dim = 16", 64),
])
def test_heads_and_head_dim_without_expand_fix_d_inner(args, d_inner):
    ssm = ssm_of(args)
    assert ssm.expand is None
    text = BASE.replace("SSM", args)
    (node,) = [d for _, d in compile_spec(text, passes="").graph.nodes(data=True) if d.get("op") == "mamba2"][:1]
    assert node["attrs"]["d_inner"] == d_inner
    assert compute_facts(compile_spec(text, passes="").graph).params_total > 0


def test_dt_limit_without_upper_bound():
    ssm = ssm_of("dt_limit = [0.001, none]")
    assert ssm.dt_limit == (0.001, None)


@pytest.mark.parametrize("args,field,message", [
    ("heads = 5", "heads", "heads (5) does not divide d_inner"),
    ("head_dim = 48", "head_dim", "head_dim (48) does not divide d_inner"),
    ("heads = 4, head_dim = 8, expand = 2", "heads", "heads (4) × head_dim (8) is not d_inner"),
    ("expand = 3", "expand", "head_dim (64) does not divide d_inner"),
    ("expand = none, heads = 4", "expand", "they are not both written"),
    ("heads = 8, groups = 3", "groups", "groups (3) must divide heads (8)"),
    ("dt_limit = [0.5, 0.1]", "dt_limit", "is empty"),
    ("gated_norm = false, norm_before_gate = true", "norm_before_gate", "gated norm, which is off"),
])
def test_bad_shapes_are_located_errors(args, field, message):
    text = BASE.replace("SSM", args)
    (err,) = errors_of(text)
    assert message in err.message
    line = text.splitlines()[err.span.line - 1]
    assert "mamba2(" in line and line[:err.span.column - 1].endswith(f"{field} = "), (err, line)  # at the value


def test_attention_positions_and_encoders_are_refused():
    (err,) = errors_of(BASE.replace("SSM", "").replace("final_norm", "position = rope()\n    final_norm"))
    assert "rope() with mamba2" in err.message and err.span.line == 10
    (err,) = errors_of(BASE.replace("SSM", "").replace("dtype = fp32", 'dtype = fp32\n    family = encoder'))
    assert "mamba2 in an encoder" in err.message


def test_parameters_flops_and_state_bytes_match_the_runtime_module():
    compiled = compile_spec(SPEC.read_text(), passes="")
    model = load_source(compiled.source, "m").build()
    facts = compute_facts(compiled.graph, context=16, dtype="float32")
    assert facts.params_total == sum(p.numel() for p in model.parameters())
    # layer 0: d_model 32, d_inner 64, N 8, G 2, 8 heads, d_conv 4 (conv_dim = 64 + 2·2·8 = 96)
    a = next(d["attrs"] for _, d in compiled.graph.nodes(data=True) if d["op"] == "mamba2")
    assert (a["d_inner"], a["heads"], a["groups"], a["d_state"]) == (64, 8, 2, 8)
    from archlang.compiler.ops import FactsContext, op_def

    cost = op_def("mamba2").cost({"attrs": a}, FactsContext(context=16, nbytes=4))
    assert cost.flops == 2 * 32 * (64 + 96 + 8) + 2 * 64 * 32 + 2 * 96 * 4 + 5 * 64 * 8
    assert cost.state_bytes == 3 * 96 * 4 + 4 * 64 * 8
    cache = Cache()
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    held = sum(t.numel() * t.element_size() for key, state in cache.layers.items() for name, t in state.items()
               if name != "pos" and name in ("conv", "ssm"))
    assert held == facts.ssm_state_bytes_per_sequence


def _hybrid(seed=0):
    return perturbed_model(SPEC, seed)


def test_hybrid_cached_decoding_equals_the_full_forward():
    model = _hybrid()
    ids = torch.randint(0, 97, (2, 21), generator=torch.Generator().manual_seed(1))  # chunks of 8: 2 full + 5
    with torch.no_grad():
        full = model(ids)
        cache = Cache()
        steps = [model(ids[:, :11], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(11, 21)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
    prompt = ids[:1, :6]
    out = model.generate(prompt, 5)
    with torch.no_grad():  # greedy: each new token is the argmax of the full forward over what came before
        for t in range(6, 11):
            assert out[0, t] == model(out[:, :t])[0, -1].argmax()


def test_hybrid_gradients_reach_every_parameter():
    assert_gradients_reach_every_parameter(_hybrid())

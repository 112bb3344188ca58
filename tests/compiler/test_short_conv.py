"""The gated short convolution through the language and the compiler: located refusals, the
`archc fmt` round trip, parameter counts, FLOPs and state bytes from the op definition against the
runtime module, and the generated LFM2-style hybrid (cached decoding equals the full forward,
gradients everywhere)."""

import pytest
import torch

from archlang.api import compile_spec, load_source
from archlang.compiler.facts import compute_facts
from archlang.compiler.ops import FactsContext, op_def
from archlang.runtime.context import Cache
from archlang.spec import ArchError, ArchErrors, load_models
from archlang.spec.format import format_source

from ..conftest import ROOT
from .hybrids import assert_gradients_reach_every_parameter, perturbed_model

SPEC = ROOT / "tests" / "specs" / "tiny_lfm2.arch"

BASE = """model m {
    vocab = 61
    d_model = 32
    context = 64
    dtype = fp32
    final_norm = rmsnorm()
    block b {
        norm = rmsnorm()
        ssm = short_conv(SSM)
    }
    layers = b * 2
}
"""


def errors_of(text: str) -> list[ArchError]:
    with pytest.raises((ArchError, ArchErrors)) as info:
        load_models(source=text, name="m.arch")
    return info.value.errors if isinstance(info.value, ArchErrors) else [info.value]


def test_defaults():
    (model,) = load_models(source=BASE.replace("SSM", ""), name="m.arch")
    ssm = model.blocks["b"].ssm
    assert (ssm.kind, ssm.kernel, ssm.bias, ssm.conv_bias) == ("short_conv", 3, False, False)


@pytest.mark.parametrize("args,field,message", [
    ("kernel = 0", "kernel", "greater than 0"),
    ("kernel = 65", "kernel", "less than or equal to 64"),
    ("bias = 3", "bias", "expected true or false"),
    ("d_state = 4", "d_state", "d_state"),
])
def test_bad_values_are_located_errors(args, field, message):
    text = BASE.replace("SSM", args)
    (err,) = errors_of(text)
    assert message in err.message, err.message
    line = text.splitlines()[err.span.line - 1]
    assert "short_conv(" in line and field in line, (err, line)


def test_attention_positions_and_encoders_are_refused():
    (err,) = errors_of(BASE.replace("SSM", "").replace("final_norm", "position = rope()\n    final_norm"))
    assert "rope() with short_conv" in err.message and err.span.line == 10
    (err,) = errors_of(BASE.replace("SSM", "").replace("dtype = fp32", 'dtype = fp32\n    family = encoder'))
    assert "short_conv in an encoder" in err.message


def test_fmt_round_trip():
    text = SPEC.read_text()
    assert format_source(text) == text
    squeezed = BASE.replace("SSM", "kernel=4,bias=true , conv_bias = true")
    formatted = format_source(squeezed)
    assert "short_conv(kernel = 4, bias = true, conv_bias = true)" in formatted
    assert format_source(formatted) == formatted
    (a,), (b,) = load_models(source=squeezed, name="a.arch"), load_models(source=formatted, name="b.arch")
    assert a.blocks["b"].ssm == b.blocks["b"].ssm


def test_parameters_flops_and_state_bytes_match_the_runtime_module():
    compiled = compile_spec(SPEC.read_text(), passes="")
    model = load_source(compiled.source, "m").build()
    facts = compute_facts(compiled.graph, context=16, dtype="float32")
    assert facts.params_total == sum(p.numel() for p in model.parameters())
    layer1 = [d for _, d in compiled.graph.nodes(data=True) if d["op"] == "short_conv"][1]
    assert layer1["attrs"] == {"d_model": 32, "kernel": 4, "bias": True, "conv_bias": True}
    d = 32
    assert op_def("short_conv").params(layer1["attrs"], ()) == {
        "in_proj": (3 * d, d), "conv_weight": (d, 1, 4), "out_proj": (d, d), "in_proj_bias": (3 * d,),
        "out_proj_bias": (d,), "conv_bias": (d,)}
    cost = op_def("short_conv").cost(layer1, FactsContext(context=16, nbytes=4))
    assert cost.flops == 2 * d * 3 * d + 2 * d * d + 2 * d * 4
    assert cost.state_bytes == 3 * d * 4
    cache = Cache()
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    held = sum(t.numel() * t.element_size() for state in cache.layers.values() for name, t in state.items()
               if name == "conv")
    assert held == facts.ssm_state_bytes_per_sequence == (2 + 3 + 2) * d * 4
    assert facts.breakdown["ssm"] == sum(
        p.numel() for n, p in model.named_parameters() if ".ssm." in f".{n}")


def _hybrid(seed=0):
    return perturbed_model(SPEC, seed)


def test_hybrid_cached_decoding_equals_the_full_forward():
    model = _hybrid()
    ids = torch.randint(0, 97, (2, 15), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        cache = Cache()
        steps = [model(ids[:, :6], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(6, 15)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)


def test_hybrid_gradients_reach_every_parameter():
    assert_gradients_reach_every_parameter(_hybrid())


@pytest.mark.slow
def test_hybrid_fullgraph_inference_compiles():
    """The generated hybrid, cached prefill then one decoding step, each one graph, equal to eager."""
    torch._dynamo.reset()
    model = _hybrid()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(3))
    eager_cache, compiled_cache = Cache(), Cache()
    with torch.no_grad():
        for part in (ids[:, :6], ids[:, 6:]):
            torch.testing.assert_close(compiled(part, cache=compiled_cache), model(part, cache=eager_cache))

"""Gated DeltaNet through the language and the compiler: located refusals, key_dim filled in,
parameter counts, FLOPs and state bytes from the op definition against the runtime module, and
the generated hybrid model (cached decoding equals the full forward, causality, gradients)."""

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

SPEC = ROOT / "tests" / "specs" / "tiny_gated_deltanet.arch"

BASE = """model m {
    vocab = 61
    d_model = 32
    context = 64
    dtype = fp32
    final_norm = rmsnorm()
    block b {
        norm = rmsnorm()
        ssm = gated_deltanet(SSM)
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


@pytest.mark.parametrize("args,expected", [
    ("key_heads = 4", (4, 4, 8, 8)),  # key_dim = d_model / key_heads, the values follow the keys
    ("key_heads = 2, value_heads = 6, value_dim = 4", (2, 6, 16, 4)),
    ("key_heads = 3, key_dim = 5", (3, 3, 5, 5)),
])
def test_defaults_follow_from_the_key_heads(args, expected):
    ssm = ssm_of(args)
    assert (ssm.key_heads, ssm.value_heads, ssm.key_dim, ssm.value_dim) == expected
    assert (ssm.conv_size, ssm.chunk, ssm.norm_eps) == (4, 64, 1e-6)


@pytest.mark.parametrize("args,field,message", [
    ("key_heads = 2, value_heads = 3", "value_heads", "must be a multiple of key_heads"),
    ("key_heads = 3", "key_heads", "must be divisible by key_heads"),
    ("key_heads = 2, conv_size = 0", "conv_size", "greater than 0"),
    ("key_heads = 2, chunk = 0", "chunk", ""),
    ("key_heads = 2, norm_eps = -1", "norm_eps", ""),
])
def test_bad_values_are_located_errors(args, field, message):
    text = BASE.replace("SSM", args)
    (err,) = errors_of(text)
    assert message in err.message
    line = text.splitlines()[err.span.line - 1]
    assert "gated_deltanet(" in line and line[:err.span.column - 1].endswith(f"{field} = "), (err, line)


def test_missing_key_heads_is_a_located_error():
    err = errors_of(BASE.replace("SSM", "value_heads = 2"))[0]  # (then key_dim, as attention's head_dim)
    assert "missing required argument `key_heads`" in err.message and err.span.line == 9


def test_attention_positions_and_encoders_are_refused():
    text = BASE.replace("SSM", "key_heads = 2").replace("final_norm", "position = rope()\n    final_norm")
    (err,) = errors_of(text)
    assert "rope() with gated_deltanet" in err.message and err.span.line == 10
    (err,) = errors_of(BASE.replace("SSM", "key_heads = 2").replace("dtype = fp32", "dtype = fp32\n    family = encoder"))
    assert "gated_deltanet in an encoder" in err.message
    # in a hybrid, the model's rope() is the attention layers' (the test spec): accepted
    assert load_models(SPEC)


def test_fmt_round_trips():
    text = SPEC.read_text()
    assert format_source(text) == text
    squeezed = text.replace("key_heads = 2, value_heads = 4", "key_heads=2,value_heads  =  4")
    assert format_source(squeezed) == text


def test_parameters_flops_and_state_bytes_match_the_runtime_module():
    compiled = compile_spec(SPEC.read_text(), passes="")
    model = load_source(compiled.source, "m").build()
    facts = compute_facts(compiled.graph, context=16, dtype="float32")
    assert facts.params_total == sum(p.numel() for p in model.parameters())
    # layer 0: d_model 32, 2 key heads of 16, 4 value heads of 8, conv 4: keys 32, values 32, conv_dim 96
    a = compiled.graph.nodes["layers.0.ssm"]["attrs"]
    assert (a["key_heads"], a["value_heads"], a["key_dim"], a["value_dim"]) == (2, 4, 16, 8)
    assert compiled.graph.nodes["layers.0.ssm"]["params"] == {
        "q_proj": (32, 32), "k_proj": (32, 32), "v_proj": (32, 32), "z_proj": (32, 32), "b_proj": (4, 32),
        "a_proj": (4, 32), "conv_weight": (96, 1, 4), "A_log": (4,), "dt_bias": (4,), "norm_weight": (8,),
        "out_proj": (32, 32)}
    layer = model.layers[0].ssm
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == compiled.graph.nodes["layers.0.ssm"]["params"]
    cost = op_def("gated_deltanet").cost({"attrs": a}, FactsContext(context=16, nbytes=4))
    assert cost.flops == 2 * 32 * (2 * 32 + 2 * 32 + 2 * 4) + 2 * 32 * 32 + 2 * 96 * 4 + 7 * 16 * 8 * 4
    assert cost.state_bytes == layer.state_bytes(torch.float32) == 4 * 16 * 8 * 4 + 96 * 3 * 4
    cache = Cache()
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    held = sum(t.numel() * t.element_size() for key, state in cache.layers.items() for name, t in state.items()
               if name in ("conv", "state"))
    assert held == facts.ssm_state_bytes_per_sequence


def test_archc_stats_reports_the_state_bytes():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "archlang", "stats", "--json", str(SPEC)], capture_output=True,
                         text=True, check=True).stdout
    # three gated_deltanet layers in float32: 4·16·8·4 + 96·3·4 and twice 4·8·8·4 + 96·2·4
    assert json.loads(out)["ssm_state_bytes_per_sequence"] == (2048 + 1152) * 2 + 1024 + 768


def _hybrid(seed=0):
    return perturbed_model(SPEC, seed)


def test_hybrid_cached_decoding_equals_the_full_forward():
    model = _hybrid()
    ids = torch.randint(0, 97, (2, 19), generator=torch.Generator().manual_seed(1))  # chunks of 4: 2 full + 1
    with torch.no_grad():
        full = model(ids)
        cache = Cache()
        steps = [model(ids[:, :9], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(9, 15)]
        steps.append(model(ids[:, 15:], cache=cache))  # a multi-token step on a warm cache
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
    prompt = ids[:1, :6]
    out = model.generate(prompt, 5)
    with torch.no_grad():  # greedy: each new token is the argmax of the full forward over what came before
        for t in range(6, 11):
            assert out[0, t] == model(out[:, :t])[0, -1].argmax()


def test_hybrid_is_causal():
    assert_causal(_hybrid(), length=14, cut=9)


def test_hybrid_gradients_reach_every_parameter():
    assert_gradients_reach_every_parameter(_hybrid())

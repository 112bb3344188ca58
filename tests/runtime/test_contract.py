"""What every built model promises: the spec's dtype, a memory check before allocating, and a
model whose size is what `stats` says."""

import math
import time

import pytest
import torch

import archlang
from archlang import api
from archlang.api import build, check_numerics, load_model
from archlang.spec import ArchError

from ..conftest import EXAMPLES, SPECS

TINY_LLAMA = (SPECS / "tiny_llama.arch").read_text()


def _with(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


# ----------------------------------------------------------------------------- dtype


def test_build_uses_the_spec_dtype():
    bf16 = build(_with(TINY_LLAMA, "dtype = fp32", "dtype = bf16"))
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    fp32 = build(TINY_LLAMA)
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    assert torch.get_default_dtype() == torch.float32  # the build leaves torch's default alone


@pytest.mark.parametrize("dtype,expected", [(torch.float16, torch.float16), ("fp32", torch.float32),
                                            ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16)])
def test_build_dtype_argument_overrides_the_spec(dtype, expected):
    model = build(TINY_LLAMA, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}


def test_bf16_model_runs_forward_on_cpu():
    model = build(_with(TINY_LLAMA, "dtype = fp32", "dtype = bf16"))
    logits = model(torch.randint(0, 97, (1, 5)))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("dtype", ["int8", torch.int64, "fp8"])
def test_unknown_dtype_is_refused(dtype):
    with pytest.raises(ArchError, match="dtype"):
        build(TINY_LLAMA, dtype=dtype)


# ----------------------------------------------------------------------------- memory


def test_build_refuses_a_model_bigger_than_available_memory(monkeypatch):
    """Llama 3 8B in its spec's bf16 takes 15 GiB: refused at once on an 8 GiB machine."""
    monkeypatch.setattr(api, "available_memory", lambda device: 8 << 30)
    start = time.perf_counter()
    with pytest.raises(ArchError) as info:
        build(EXAMPLES / "llama3_8b.arch")
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert "15.0 GiB" in message and "bfloat16" in message and "available on cpu" in message


def test_memory_message_has_the_numbers(monkeypatch):
    monkeypatch.setattr(api, "available_memory", lambda device: 20 << 30)
    with pytest.raises(ArchError) as info:
        build(EXAMPLES / "llama3_8b.arch", dtype=torch.float32)
    err = info.value
    assert "8,030,261,248 parameters" in err.message
    assert "29.9 GiB" in err.message  # 8.03e9 x 4 bytes
    assert "18.0 GiB" in err.message  # 20 GiB less the 10% margin
    assert 'device="meta"' in err.hint and "bfloat16" in err.hint
    assert err.kind == "limit"


def test_explicit_max_bytes_overrides_available_memory(monkeypatch):
    monkeypatch.setattr(api, "available_memory", lambda device: 1 << 40)
    with pytest.raises(ArchError, match="max_bytes limit"):
        build(TINY_LLAMA, max_bytes=1000)
    assert build(TINY_LLAMA, max_bytes=math.inf) is not None
    monkeypatch.setattr(api, "available_memory", lambda device: 0)
    assert build(TINY_LLAMA, device="meta") is not None  # meta allocates nothing: no limit


def test_buffers_count_towards_the_limit(monkeypatch):
    """The guard measures every buffer too: a model whose parameters fit but whose buffers do
    not is refused."""
    from archlang.runtime import position

    class BigBuffer(position.AlibiSlopes):
        def __init__(self, heads):
            super().__init__(heads)
            self.register_buffer("extra", torch.empty(1 << 20), persistent=False)  # 4 MiB

    monkeypatch.setattr("archlang.runtime.AlibiSlopes", BigBuffer)
    text = _with(TINY_LLAMA, "position = rope(theta = 10000)", "position = alibi()")
    params = sum(p.numel() * 4 for p in build(text, device="meta").parameters())
    with pytest.raises(ArchError, match="buffers"):
        build(text, max_bytes=params + (2 << 20))


def test_available_memory_reads_the_machine(monkeypatch):
    free = api.available_memory("cpu")
    assert free is not None and free > 0
    assert api.available_memory("meta") is None
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (5 << 30, 80 << 30))
    assert api.available_memory("cuda:0") == 5 << 30  # free, not total, device memory


# ----------------------------------------------------------------------------- constant tables


SINUSOIDAL_16M = _with(_with(TINY_LLAMA, "context = 64", "context = 16_000_000"),
                       "position = rope(theta = 10000)", "position = sinusoidal()")


def test_sinusoidal_positions_hold_no_table():
    model = build(SINUSOIDAL_16M)  # a stored (context x d_model) table would be 2 GiB
    assert sum(b.numel() for b in model.buffers()) < 1000
    logits = model(torch.randint(0, 97, (1, 5)))
    assert torch.isfinite(logits).all()


def test_sinusoidal_positions_match_the_formula():
    from archlang.runtime import SinusoidalPositions

    dim, positions = 10, torch.tensor([0, 3, 1000, 15_999_999])
    got = SinusoidalPositions(16_000_000, dim)(positions).double()
    pos = positions.double()[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    want = torch.zeros(4, dim, dtype=torch.float64)
    want[:, 0::2], want[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    # float32 angles: at position 16M the error of the angle is position x 2^-24 ~ 1
    torch.testing.assert_close(got[:3], want[:3], atol=1e-3, rtol=0)


def test_sinusoidal_positions_follow_the_model_dtype():
    model = build(_with(SINUSOIDAL_16M, "dtype = fp32", "dtype = bf16"))
    assert model.pos_embed(torch.arange(3)).dtype == torch.bfloat16
    assert model.float().pos_embed(torch.arange(3)).dtype == torch.float32


def test_numerics_check_shrinks_relative_position_tables(monkeypatch):
    from archlang.compiler.tiny import shrink

    monkeypatch.setattr(api, "available_memory", lambda device: (1 << 30) + (128 << 20))  # 128 MiB past the margin
    text = _with(TINY_LLAMA, "position = rope(theta = 10000)",
                 "position = relative(buckets = 16_000_000, max_distance = 16_000_000)")
    assert shrink(load_model(text)).position.buckets <= 32
    check_numerics(load_model(text))  # a (16M x 4 heads) float32 bias table: 244 MiB


def test_numerics_check_shrinks_token_type_tables(monkeypatch):
    from archlang.compiler.tiny import shrink

    monkeypatch.setattr(api, "available_memory", lambda device: (1 << 30) + (128 << 20))
    bert = (SPECS / "tiny_bert.arch").read_text()
    text = _with(bert, "type_vocab = 2", "type_vocab = 16_000_000")
    assert shrink(load_model(text)).type_vocab <= 4
    check_numerics(load_model(text))  # a (16M x d_model) table would take 4 GiB


# ----------------------------------------------------------------------------- loss, aux_loss, generate


def _tiny(name: str):
    return build(SPECS / f"{name}.arch", model=name)


def test_encoder_loss_is_masked_lm_cross_entropy():
    model = _tiny("tiny_bert")
    ids = torch.randint(0, 97, (2, 9))
    labels = torch.full_like(ids, -100)
    labels[:, [1, 4]] = torch.randint(0, 97, (2, 2))  # only the masked positions count
    loss = model.loss(ids, labels)
    hidden, _pooled = model(ids)
    logits = hidden @ model.embed.weight.T  # the tied embedding is the MLM head
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    loss.backward()
    assert model.embed.weight.grad is not None


def test_encoder_loss_takes_the_attention_mask_and_token_types():
    model = _tiny("tiny_bert").eval()
    ids, labels = torch.randint(0, 97, (2, 6)), torch.randint(0, 97, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    types = torch.tensor([[0, 0, 1, 1, 1, 1], [0] * 6])
    hidden, _ = model(ids, attention_mask=mask, token_type_ids=types)
    want = torch.nn.functional.cross_entropy((hidden @ model.embed.weight.T).reshape(-1, 97), labels.reshape(-1))
    torch.testing.assert_close(model.loss(ids, labels, attention_mask=mask, token_type_ids=types), want)
    with pytest.raises(TypeError, match="no argument memory"):
        model.loss(ids, labels, memory=None)


def test_encoder_decoder_loss_matches_hugging_face_t5():
    transformers = pytest.importorskip("transformers")
    from archlang.interop.hf import from_hf

    config = transformers.T5Config(vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                   decoder_start_token_id=0, pad_token_id=0, dropout_rate=0.0)
    config._attn_implementation = "eager"
    hf = transformers.T5ForConditionalGeneration(config).eval()
    ours = from_hf(hf).eval()
    ids = torch.randint(1, 97, (2, 11))
    labels = torch.randint(1, 97, (2, 7))
    labels[1, 5:] = -100  # padding of the shorter target
    with torch.no_grad():
        want = hf(input_ids=ids, labels=labels).loss
        got = ours.loss(ids, labels)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_aux_loss_is_a_zero_tensor_for_dense_models():
    model = build(_with(TINY_LLAMA, "dtype = fp32", "dtype = bf16"))
    assert model.aux_loss.dtype == torch.bfloat16 and model.aux_loss.item() == 0  # before any forward
    ids = torch.randint(0, 97, (2, 6))
    loss = model.loss(ids[:, :-1], ids[:, 1:]) + model.aux_loss  # the generic training loop
    assert torch.isfinite(loss)
    assert build(TINY_LLAMA, device="meta").aux_loss.device == torch.device("meta")


def test_encoder_cannot_generate():
    with pytest.raises(ArchError, match="encoder model: it has no LM head and cannot generate"):
        _tiny("tiny_bert").generate(torch.randint(0, 97, (1, 4)), 3)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_stops_at_the_context_and_keeps_the_tokens(use_cache):
    model = _tiny("tiny_llama")  # context 64
    prompt = torch.randint(0, 97, (2, 60))
    with pytest.warns(UserWarning, match="stops at the model's context of 64 tokens: 4 new tokens, not 10"):
        out = model.generate(prompt, 10, use_cache=use_cache)
    assert out.shape == (2, 64) and torch.equal(out[:, :60], prompt)
    assert torch.equal(out, model.generate(prompt, 4, use_cache=use_cache))


@pytest.mark.parametrize("length", [64, 70])
def test_prompt_at_the_context_is_refused(length):
    with pytest.raises(ArchError, match=f"prompt has {length} tokens, already at or over the model's context of 64"):
        _tiny("tiny_llama").generate(torch.randint(0, 97, (1, length)), 1)


def test_encoder_decoder_generation_stops_at_the_context():
    model = build(_with((SPECS / "tiny_t5.arch").read_text(), "context = 64", "context = 8"))
    context = 8
    with pytest.raises(ArchError, match="encoder input has"):
        model.generate(torch.randint(0, 97, (1, context + 1)), 2)
    with pytest.warns(UserWarning, match="stops at the model's context"):
        out = model.generate(torch.randint(0, 97, (1, 5)), context + 5)
    assert out.shape == (1, context)


# ----------------------------------------------------------------------------- parameters = stats


def _params_match_stats(spec, model=None):
    from archlang.api import compile_spec
    from archlang.compiler import compute_facts

    stats = compute_facts(compile_spec(spec, model=model).graph).params_total
    built = build(spec, model=model, device="meta")
    assert sum(p.numel() for p in built.parameters()) == stats


SHARED_MLP = _with((SPECS / "tiny_mixtral.arch").read_text(),
                   "expert = swiglu(hidden = 24)", "expert = swiglu(hidden = 24), shared = mlp(hidden = 16)")


def test_biased_shared_expert_is_built_and_used():
    model = build(SHARED_MLP)
    moe = model.layers[0].moe
    assert moe.shared_up_bias.shape == (16,) and moe.shared_down_bias.shape == (32,)
    _params_match_stats(SHARED_MLP)
    x = torch.randn(5, 32)
    with torch.no_grad():
        before = moe._shared(x)
        moe.shared_down_bias.fill_(1.0)
        torch.testing.assert_close(moe._shared(x), before + 1.0)


def _all_models():
    from ..conftest import tiny_specs

    cases = [(path, name) for path, name in tiny_specs()]
    cases += [(path, None) for path in sorted(EXAMPLES.glob("*.arch"))]
    return cases


@pytest.mark.parametrize("path,name", _all_models(), ids=lambda v: getattr(v, "name", v))
def test_built_parameters_equal_stats(path, name):
    _params_match_stats(path, name)


@pytest.mark.parametrize("ffn", ["mlp(hidden = 16)", "mlp(hidden = 16, bias = false)", "swiglu(hidden = 16, bias = true)",
                                 "geglu(hidden = 16)"])
@pytest.mark.parametrize("tie", ["true", "false"])
def test_moe_with_shared_experts_and_tied_embeddings_match_stats(ffn, tie):
    text = _with((SPECS / "tiny_mixtral.arch").read_text(), "expert = swiglu(hidden = 24)",
                 f"expert = {ffn}, shared = {ffn}, shared_gate = true")
    _params_match_stats(text.replace("dtype = fp32", f"dtype = fp32\n    tie_embeddings = {tie}"))


@pytest.mark.slow
def test_random_specs_built_parameters_equal_stats():
    from hypothesis import HealthCheck, given, settings

    from ..strategies import valid_spec

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(valid_spec())
    def prop(text):
        _params_match_stats(text)

    prop()


# ----------------------------------------------------------------------------- names from the spec


# gelu in the FFN: the forward reads F.gelu; every import, constant and function of the module
GPT2 = (SPECS / "tiny_gpt2.arch").read_text()
MODULE_LEVEL = ["F", "f", "_f", "torch", "nn", "math", "rt", "SPEC", "CONFIG", "FUSIONS", "build", "annotations",
                "Config", "spec", "config", "fusions", "layers_layout", "LAYERS_LAYOUT"]


def _renamed_model(text: str, name: str) -> str:
    return _with(text, "model tiny_gpt2 {", f"model {name} {{")


def _same_outputs(text: str):
    model, reference = build(text), build(GPT2)
    model.load_state_dict(reference.state_dict())
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids), atol=0, rtol=0)
    assert model.generate(ids[:, :3], 2).shape == (2, 5)


@pytest.mark.parametrize("name", MODULE_LEVEL)
def test_model_names_cannot_shadow_the_generated_module(name):
    assert "F.gelu" in archlang.compile_spec(GPT2).source
    _same_outputs(_renamed_model(GPT2, name))


@pytest.mark.parametrize("block", ["torch", "F", "f", "nn", "rt", "math", "Model", "build"])
@pytest.mark.parametrize("model", ["F"])  # the model's class `F` and the block's class both step aside
def test_block_names_cannot_shadow_the_generated_module(block, model):
    text = _renamed_model(GPT2, model).replace("block layer {", f"block {block} {{").replace("layer * 2", f"{block} * 2")
    assert f"block {block} {{" in text
    _same_outputs(text)


@pytest.mark.parametrize("model_name", ["LayerBlock", "layer_block"])
def test_a_model_named_like_a_block_class_is_refused_where_it_is_named(model_name):
    with pytest.raises(ArchError, match="would both become the class `LayerBlock`") as info:
        load_model(_renamed_model(GPT2, model_name))
    assert info.value.span is not None and info.value.span.line > 1


def test_blocks_whose_class_names_collide_are_refused_at_the_second():
    """`a_b` and `aB` both spell the class `ABBlock`: one would replace the other."""
    text = GPT2.replace("block layer {", "block a_b {").replace("layers = layer * 2", "layers = [a_b, aB]")
    text = text.replace("    }\n\n    layers", "    }\n\n    block aB extends a_b {\n        ffn = mlp(hidden = 16, act = relu)\n    }\n\n    layers")
    with pytest.raises(ArchError, match="block `aB` and block `a_b` would both become the class `ABBlock`") as info:
        load_model(text)
    assert info.value.span.line == text.splitlines().index("    block aB extends a_b {") + 1


def test_double_underscore_names_are_refused():
    with pytest.raises(Exception, match="may not start with `__`"):
        load_model(_renamed_model(GPT2, "__f"))

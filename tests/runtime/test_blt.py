"""The Byte Latent Transformer's runtime against Hugging Face's BltForCausalLM (every weight
perturbed), and its n-gram hash and entropy patcher against plain re-expressions of the
published algorithm."""

from __future__ import annotations

import pytest
import torch

from archlang.runtime.blt import (ByteLatentTransformer, StackSpec, entropy_patch_starts, ngram_hash_ids,
                                  split_long_patches)

transformers = pytest.importorskip("transformers")

def hf_name_to_runtime(config, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF's tensors under the runtime module's names (the importer's rules, less the generated
    module's `blt.` prefix)."""
    from archlang.interop.hf_weights import to_archlang

    return {k.removeprefix("blt."): v for k, v in to_archlang(config, state).items()}


def hf_config(patching: str = "entropy", **kw):
    from transformers import BltConfig

    def stack(hidden, layers, heads, kv, inter, theta, **extra):
        return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                "num_key_value_heads": kv, "intermediate_size": inter, "rope_parameters":
                {"rope_type": "default", "rope_theta": theta}, "rms_norm_eps": 1e-5, **extra}

    args = dict(
        vocab_size=260, patching_mode=patching, patch_in_forward=patching == "entropy", patch_size=4,
        patching_threshold=kw.pop("threshold", 5.0), local_attention_window_len=kw.pop("window", 6), cross_attn_k=2,
        encoder_hash_byte_group_size=[3, 4, 5], encoder_hash_byte_group_vocab=97,
        encoder_hash_byte_group_nb_functions=2,
        patcher_config=stack(32, 2, 4, 2, 48, 10000.0, sliding_window=5),
        encoder_config=stack(32, 2, 4, 2, 40, 500000.0, cross_attn_all_layers=kw.pop("encoder_all", True),
                             cross_attn_k=2, hidden_size_global=48),
        global_config=stack(48, 2, 4, 4, 64, 20000.0),
        decoder_config=stack(32, 2, 4, 2, 56, 300000.0, cross_attn_all_layers=kw.pop("decoder_all", True),
                             cross_attn_k=2, hidden_size_global=48),
    )
    args.update(kw)
    return BltConfig(**args)


def runtime_from_hf(config) -> ByteLatentTransformer:
    def spec(c, window):
        return StackSpec(c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
                         c.intermediate_size, c.rope_parameters["rope_theta"], c.rms_norm_eps, window)

    entropy = config.patching_mode == "entropy" and config.patch_in_forward
    return ByteLatentTransformer(
        config.vocab_size, spec(config.encoder_config, config.local_attention_window_len),
        spec(config.global_config, None), spec(config.decoder_config, config.local_attention_window_len),
        spec(config.patcher_config, config.patcher_config.sliding_window) if entropy else None,
        ngrams=tuple(config.encoder_hash_byte_group_size), hash_buckets=config.encoder_hash_byte_group_vocab,
        hash_functions=config.encoder_hash_byte_group_nb_functions, cross_k=config.cross_attn_k,
        encoder_cross_all=config.encoder_config.cross_attn_all_layers,
        decoder_cross_all=config.decoder_config.cross_attn_all_layers,
        threshold=config.patching_threshold if entropy else None, max_patch=config.max_patch_length)


def hf_pair(config):
    from transformers import BltForCausalLM

    from tests.interop.test_hf_parity import perturb

    torch.manual_seed(0)
    hf = perturb(BltForCausalLM(config).eval())
    ours = runtime_from_hf(config).eval()
    ours.load_state_dict(hf_name_to_runtime(config, hf.state_dict()), strict=True)
    return hf, ours


def _threshold_between(hf, tokens) -> float:
    """A threshold in the widest gap between the entropy model's middle entropies, so rounding
    cannot move a patch boundary."""
    with torch.no_grad():
        ent, _, _ = hf.model.patcher(tokens, patch_size=None)
    values = ent[:, 1:].flatten().sort().values
    n = len(values)
    lo, hi = n // 4, 3 * n // 4
    gaps = values[lo + 1:hi] - values[lo:hi - 1]
    i = lo + int(gaps.argmax())
    assert gaps.max() > 1e-3
    return float((values[i] + values[i + 1]) / 2)


TOKENS = torch.tensor([[72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 32, 66, 121, 116, 101, 115],
                       [3, 250, 17, 17, 17, 42, 99, 100, 200, 7, 7, 8, 120, 121, 1, 2, 3, 4, 5]])


@pytest.mark.parametrize("encoder_all,decoder_all", [(True, True), pytest.param(False, False, marks=pytest.mark.slow)])
def test_entropy_patching_matches_hf(encoder_all, decoder_all):
    config = hf_config(encoder_all=encoder_all, decoder_all=decoder_all)
    hf, _ = hf_pair(config)
    config = hf_config(encoder_all=encoder_all, decoder_all=decoder_all, threshold=_threshold_between(hf, TOKENS))
    hf, ours = hf_pair(config)
    with torch.no_grad():
        want = hf(TOKENS, use_cache=False).logits
        got = ours(TOKENS)
        lengths = ours.patch_lengths(TOKENS)
    assert 2 < lengths.shape[1] < TOKENS.shape[1]  # real patches of several bytes, rows that differ
    assert not torch.equal(lengths[0], lengths[1])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_byte_patching_matches_hf():
    hf, ours = hf_pair(hf_config(patching="byte"))
    with torch.no_grad():
        torch.testing.assert_close(ours(TOKENS), hf(TOKENS, use_cache=False).logits, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_long_patches_are_split_as_hf_splits_them():
    hf, _ = hf_pair(hf_config())
    config = hf_config(threshold=_threshold_between(hf, TOKENS), max_patch_length=2)
    hf, ours = hf_pair(config)
    with torch.no_grad():
        assert ours.patch_lengths(TOKENS).max() <= 2
        torch.testing.assert_close(ours(TOKENS), hf(TOKENS, use_cache=False).logits, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_greedy_generation_matches_hf_without_cache():
    hf, ours = hf_pair(hf_config(patching="byte"))
    prompt = TOKENS[:1, :6]
    want = hf.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(ours.generate(prompt, 5), want)


# ---------------------------------------------------------------------------- plain re-expressions
def _wrap64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def test_ngram_hash_is_the_published_polynomial_hash():
    """hash(b[t-n+1..t]) = sum_i b[t-n+1+i] * prime**i in two's-complement int64, then mod buckets."""
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 260, (2, 12), generator=gen)
    for n in (1, 3, 8):
        for prime in (1000000007, 9576890767):
            got = ngram_hash_ids(tokens, n, prime, 500002)
            for b in range(2):
                row = [0] * (n - 1) + tokens[b].tolist()
                want = [_wrap64(sum(row[t + i] * prime**i for i in range(n))) % 500002 for t in range(12)]
                assert got[b].tolist() == want


def test_entropy_patch_starts_follow_the_rule():
    """Bytes 0 and 1 start patches; byte t >= 2 starts one when entropy[t - 1] > threshold."""
    ent = torch.tensor([[9.0, 0.1, 2.0, 0.5, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0, 7.0]])
    starts = entropy_patch_starts(ent, 1.0)
    assert starts == [[t for t in range(7) if t < 2 or ent[0, t - 1] > 1.0],
                      [t for t in range(7) if t < 2 or ent[1, t - 1] > 1.0]]
    assert starts[1] == [0, 1, 6]  # the last prediction is uncertain: an empty patch at T
    assert split_long_patches([5, 1, 4, 0, -1], 2) == [2, 2, 1, 1, 2, 2]


# ---------------------------------------------------------------------------- the language
SPEC = """
model blt_tiny {
    family = byte_latent
    vocab = 260
    d_model = 32
    context = 64
    dtype = fp32
    position = rope(theta = 500000)
    final_norm = rmsnorm(eps = 1e-5)
    byte_latent = byte_latent(global_d_model = 48, cross_k = 2, window = 6, encoder_cross = all,
                              decoder_cross = all, ngrams = [3, 4, 5], hash_vocab = 97, hash_functions = 2,
                              patching = entropy, threshold = THRESHOLD, entropy_d_model = 32, entropy_window = 5)
    block entropy {
        norm = rmsnorm(eps = 1e-5)
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = swiglu(hidden = 48)
        position = rope(theta = 10000)
    }
    block encoder {
        norm = rmsnorm(eps = 1e-5)
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = swiglu(hidden = 40)
    }
    block decoder extends encoder {
        ffn = swiglu(hidden = 56)
        position = rope(theta = 300000)
    }
    block latent {
        norm = rmsnorm(eps = 1e-5)
        attention = mha(heads = 4, head_dim = 12)
        ffn = swiglu(hidden = 64)
        position = rope(theta = 20000)
    }
    entropy_layers = entropy * 2
    encoder_layers = encoder * 2
    global_layers = latent * 2
    decoder_layers = decoder * 2
}
"""


def test_spec_compiles_to_a_module_equal_to_hf():
    """The spec above says what hf_config() says: its compiled module, given HF's weights, gives
    HF's logits, and `archc stats` counts HF's parameters."""
    from archlang.api import compile_spec, load_source
    from archlang.compiler.facts import compute_facts

    hf, _ = hf_pair(hf_config())
    threshold = _threshold_between(hf, TOKENS)
    hf, ours = hf_pair(hf_config(threshold=threshold))
    compiled = compile_spec(SPEC.replace("THRESHOLD", repr(threshold)))
    model = load_source(compiled.source, "blt_tiny_module").build().eval()
    model.blt.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS), hf(TOKENS, use_cache=False).logits, atol=1e-4, rtol=0)
    facts = compute_facts(compiled.graph)
    assert facts.params_total == sum(p.numel() for p in hf.parameters())
    assert facts.bytes_per_patch == 4.5 and abs(facts.flops_per_patch - facts.flops_per_token * 4.5) < 5


@pytest.mark.parametrize("edit,message,line", [
    ("ffn = swiglu(hidden = 56)", "ffn = mlp(hidden = 56)", "FFN is swiglu"),
    ("attention = mha(heads = 4, head_dim = 12)", "attention = mha(heads = 4, head_dim = 8)", "must be the stack's width"),
    ("patching = entropy,", "patching = bytes,", "belongs to entropy patching"),
    ("attention = gqa(heads = 4, kv_heads = 2)\n        ffn = swiglu(hidden = 40)",
     "attention = gqa(heads = 4, kv_heads = 2, window = 4)\n        ffn = swiglu(hidden = 40)", "not implemented"),
])
def test_what_the_runtime_cannot_compute_is_refused_where_it_is_written(edit, message, line):
    from archlang.spec.errors import ArchError, ArchErrors
    from archlang.spec.resolve import load_models

    text = SPEC.replace("THRESHOLD", "1.0").replace(edit, message)
    assert text != SPEC.replace("THRESHOLD", "1.0")
    with pytest.raises((ArchError, ArchErrors)) as info:
        load_models(source=text, name="blt.arch")
    errors = getattr(info.value, "errors", [info.value])
    assert any(line in str(e) and e.span is not None and e.span.line > 1 for e in errors), [str(e) for e in errors]

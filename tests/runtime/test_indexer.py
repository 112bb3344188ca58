"""DeepSeek-V3.2's lightning indexer and the sparse latent attention it drives: against a
plain re-expression of the published scoring, against transformers' DeepseekV32Indexer, and
the properties (cached decode = full forward, top_k < length restricts attention)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archlang.api import build
from archlang.kernels import dispatch
from archlang.runtime import Cache, Context, LightningIndexer, MLAttention, RopeTable

SPEC = """
model tiny_dsa {{
    family = decoder
    vocab = 64
    d_model = 32
    context = 64
    position = rope(theta = 10000)
    final_norm = rmsnorm(eps = 1e-6)
    block layer {{
        norm = rmsnorm(eps = 1e-6)
        attention = mla(heads = 2, q_lora_rank = 16, kv_lora_rank = 8, rope_head_dim = 4, nope_head_dim = 8,
                        v_head_dim = 8{indexer})
        ffn = swiglu(hidden = 48)
    }}
    layers = layer * 2
}}
"""


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def _indexer(heads=4, head_dim=8, top_k=3, d=16, q_rank=12, rope_dim=4, seed=0) -> LightningIndexer:
    ix = LightningIndexer(heads, head_dim, top_k, d, q_rank, causal=True, rope_dim=rope_dim)
    return _perturbed(ix, seed)


def _plain_scores(ix: LightningIndexer, x, q_latent, cos, sin):
    """The index scores written out from the DSA description, one query, head and key at a time."""
    b, t, _ = x.shape
    rot = cos.shape[-1]

    def rope(v, pos):  # half-split rotation of the first `rot` channels
        a, c = v[:rot // 2], v[rot // 2:rot]
        return torch.cat((a * cos[pos, :rot // 2] - c * sin[pos, :rot // 2],
                          c * cos[pos, rot // 2:] + a * sin[pos, rot // 2:], v[rot:]))

    out = torch.full((b, t, t), float("-inf"))
    for bi in range(b):
        keys = []
        for s in range(t):
            k = F.layer_norm(x[bi, s] @ ix.wk.T, (ix.head_dim,), ix.k_norm, ix.k_norm_bias, 1e-6)
            keys.append(rope(k, s))
        for i in range(t):
            w = (x[bi, i] @ ix.weights_proj.T) / ix.heads**0.5
            q = (q_latent[bi, i] @ ix.wq_b.T).view(ix.heads, ix.head_dim)
            for s in range(i + 1):
                out[bi, i, s] = sum(w[h] * torch.relu(rope(q[h], i) @ keys[s]) / ix.head_dim**0.5
                                    for h in range(ix.heads))
    return out


def _table(rot: int, t: int):
    return RopeTable(rot, 64)(torch.arange(t))


def test_indexer_scores_match_a_plain_re_expression():
    torch.manual_seed(0)
    ix = _indexer()
    x, q_latent = torch.randn(2, 7, 16), torch.randn(2, 7, 12)
    cos, sin = _table(4, 7)
    ctx = Context(positions=torch.arange(7))
    got = ix.scores(x, q_latent, (cos, sin), ctx=ctx)
    torch.testing.assert_close(got, _plain_scores(ix, x, q_latent, cos, sin), atol=1e-5, rtol=1e-5)
    keep = ix(x, q_latent, (cos, sin), ctx=ctx)
    for bi in range(2):
        for i in range(7):
            kept = set(keep[bi, i].nonzero().flatten().tolist())
            visible = got[bi, i, : i + 1]
            best = set(visible.argsort(descending=True, stable=True)[:3].tolist())
            assert kept & set(range(i + 1)) == best  # masked keys it "keeps" when i + 1 < top_k do not count


def test_indexer_matches_transformers_deepseek_v32_indexer():
    from transformers import DeepseekV32Config
    from transformers.models.deepseek_v32.modeling_deepseek_v32 import DeepseekV32Indexer, DeepseekV32RotaryEmbedding

    torch.manual_seed(0)
    config = DeepseekV32Config(hidden_size=16, q_lora_rank=12, qk_rope_head_dim=4, index_n_heads=8, index_head_dim=8,
                               index_topk=3, num_attention_heads=2, max_position_embeddings=64)
    hf = _perturbed(DeepseekV32Indexer(config, 0), seed=1)
    ix = LightningIndexer(8, 8, 3, 16, 12, causal=True, rope_dim=4)
    ix.load_state_dict({"wq_b": hf.wq_b.weight, "wk": hf.wk.weight, "k_norm": hf.k_norm.weight,
                        "k_norm_bias": hf.k_norm.bias, "weights_proj": hf.weights_proj.weight})
    t = 9
    x, q_latent = torch.randn(2, t, 16), torch.randn(2, t, 12)
    positions = torch.arange(t)[None]
    cos, sin = DeepseekV32RotaryEmbedding(config)(x, positions)
    causal = torch.full((t, t), torch.finfo(torch.float32).min).triu(1)[None].expand(2, t, t)
    chosen = hf(x, q_latent, (cos, sin), causal, positions).long()  # (B, T, top_k)
    expected = torch.zeros(2, t, t, dtype=torch.bool).scatter(-1, chosen, True)
    visible = torch.ones(t, t, dtype=torch.bool).tril()
    got = ix(x, q_latent, _table(4, t), ctx=Context(positions=torch.arange(t)))
    assert torch.equal(got & visible, expected & visible)


def _mla_pair(top_k: int):
    """A latent attention with an indexer, and its inputs."""
    torch.manual_seed(0)
    mla = _perturbed(MLAttention(2, 8, 4, 8, 8, causal=True, scale=12**-0.5), seed=2)
    ix = _perturbed(LightningIndexer(4, 8, top_k, 16, 12, causal=True, rope_dim=4), seed=3)
    t = 10
    x, q_latent = torch.randn(1, t, 16), torch.randn(1, t, 12)
    q, kv = torch.randn(1, t, 2 * 12), torch.randn(1, t, 8 + 4)
    return mla, ix, (x, q_latent, q, kv), _table(4, t)


def test_top_k_below_the_length_restricts_attention():
    mla, ix, (x, q_latent, q, kv), rope = _mla_pair(top_k=3)
    ctx = Context(positions=torch.arange(10))
    keep = ix(x, q_latent, rope, ctx=ctx)
    sparse = mla(q, kv, rope, ctx=ctx, keep=keep)
    dense = mla(q, kv, rope, ctx=ctx)
    torch.testing.assert_close(sparse[:, :3], dense[:, :3])  # the first 3 queries see at most 3 keys anyway
    assert (sparse[:, 3:] - dense[:, 3:]).abs().amax(-1).min() > 1e-4  # every later query lost keys


def test_top_k_at_the_length_is_dense_attention():
    mla, ix, (x, q_latent, q, kv), rope = _mla_pair(top_k=10)
    ctx = Context(positions=torch.arange(10))
    keep = ix(x, q_latent, rope, ctx=ctx)
    torch.testing.assert_close(mla(q, kv, rope, ctx=ctx, keep=keep), mla(q, kv, rope, ctx=ctx))


def test_sparse_attention_equals_attention_over_the_kept_keys_only():
    """Each query's output is softmax attention over exactly the keys its indexer keeps."""
    from archlang.kernels import reference

    _, ix, (x, q_latent, _, _), rope = _mla_pair(top_k=3)
    keep = ix(x, q_latent, rope, ctx=Context(positions=torch.arange(10)))
    qh, kh, vh = torch.randn(1, 2, 10, 6), torch.randn(1, 2, 10, 6), torch.randn(1, 2, 10, 5)
    pos = torch.arange(10)
    got = reference.attention(qh, kh, vh, pos, pos, causal=True, scale=0.4, allow=keep)
    for i in range(10):
        kept = [s for s in keep[0, i].nonzero().flatten().tolist() if s <= i]
        assert len(kept) == min(3, i + 1)
        probs = torch.softmax((qh[:, :, i:i + 1] @ kh[:, :, kept].transpose(-1, -2)) * 0.4, dim=-1)
        torch.testing.assert_close(got[:, :, i:i + 1], probs @ vh[:, :, kept])


def test_cached_decode_equals_the_full_forward():
    model = _perturbed(build(SPEC.format(indexer=", indexer = indexer(heads = 2, head_dim = 8, top_k = 3)"),
                             dtype=torch.float32))
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)
        cache = Cache()
        steps = [model(ids[:, :5], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(5, 11)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    # the cache holds the indexer's keys (head_dim per token) beside the latent (kv_lora_rank + rope)
    assert cache.nbytes() == 2 * 2 * 11 * ((8 + 4) + 8) * 4 + 2 * 2 * 11 * 8  # values + positions (int64)


def test_indexed_model_differs_from_dense_mla_only_past_top_k():
    sparse = _perturbed(build(SPEC.format(indexer=", indexer = indexer(heads = 2, head_dim = 8, top_k = 3)"),
                              dtype=torch.float32))
    dense = build(SPEC.format(indexer=""), dtype=torch.float32).eval()
    dense.load_state_dict({k: v for k, v in sparse.state_dict().items() if ".indexer." not in k})
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = sparse(ids), dense(ids)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-3


def test_the_kernel_is_never_chosen_for_an_indexer_mask(monkeypatch):
    calls = []
    monkeypatch.setattr(dispatch, "_kernel", lambda *a: calls.append(a) or (lambda *x, **k: None))
    q = k = v = torch.randn(1, 1, 4, 8)
    pos = torch.arange(4)
    allow = torch.ones(1, 4, 4, dtype=torch.bool)
    with dispatch.force("triton"):
        if not dispatch.triton_available():
            pytest.skip("triton is not installed")
        out = dispatch.attention(q, k, v, pos, pos, causal=True, scale=0.3, allow=allow)
    assert not calls and out is not None


def test_indexer_gets_no_gradient():
    """Selection is discrete: like HF's (no_grad) indexer, it passes no gradient back."""
    ix = _indexer()
    x = torch.randn(1, 5, 16, requires_grad=True)
    keep = ix(x, torch.randn(1, 5, 12), _table(4, 5), ctx=Context(positions=torch.arange(5)))
    assert keep.dtype == torch.bool and not keep.requires_grad

"""The Triton FlashAttention kernel against reference.attention: forward and gradients of q, k, v
(and of learned sinks), for causal and bidirectional attention, GQA/MQA, windows, StreamingLLM
sink tokens, chunked masks, soft-capping, additive bias, learned sink logits, cached decode
offsets, and sizes that are not multiples of the tile."""

import pytest
import torch

from archlang.kernels import reference
from archlang.kernels.attention import attention

from .conftest import DEVICE, TOL

CASES = {
    "causal": dict(h=4, kv=4, t=13, s=13, d=16, causal=True),
    "bidirectional": dict(h=2, kv=2, t=19, s=19, d=8, causal=False),
    "gqa": dict(h=4, kv=2, t=21, s=21, d=16, causal=True),
    "mqa-odd-dim": dict(h=4, kv=1, t=9, s=9, d=20, causal=True),
    "window": dict(h=2, kv=1, t=23, s=23, d=16, causal=True, window=5),
    "softcap": dict(h=2, kv=2, t=17, s=17, d=16, causal=True, softcap=5.0),
    "bias": dict(h=2, kv=2, t=11, s=11, d=16, causal=False, bias=True),
    "decode-offset": dict(h=4, kv=2, t=3, s=29, d=16, causal=True, offset=26),
    "decode-window": dict(h=2, kv=2, t=1, s=7, d=16, causal=True, window=7, offset=40),
    "chunk": dict(h=4, kv=2, t=37, s=37, d=16, causal=True, chunk=8),
    "chunk-decode": dict(h=2, kv=1, t=3, s=5, d=16, causal=True, chunk=4, offset=17),
    "sink-tokens": dict(h=2, kv=2, t=29, s=29, d=16, causal=True, window=6, sink_tokens=3),
    "sinks": dict(h=4, kv=2, t=19, s=19, d=16, causal=True, sinks=True),
    "sinks-window-softcap": dict(h=2, kv=1, t=23, s=23, d=8, causal=True, window=5, softcap=5.0, sinks=True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_attention_matches_reference(name):
    c = CASES[name]
    b = 2
    q = torch.randn(b, c["h"], c["t"], c["d"], device=DEVICE)
    k = torch.randn(b, c["kv"], c["s"], c["d"], device=DEVICE)
    v = torch.randn(b, c["kv"], c["s"], c["d"], device=DEVICE)
    offset = c.get("offset", 0)
    k_pos = torch.arange(offset + c["t"] - c["s"], offset + c["t"], device=DEVICE)
    q_pos = torch.arange(offset, offset + c["t"], device=DEVICE) if c["t"] != c["s"] else k_pos
    bias = torch.randn(c["h"], c["t"], c["s"], device=DEVICE) if c.get("bias") else None
    kw = dict(causal=c["causal"], scale=c["d"] ** -0.5, window=c.get("window"), softcap=c.get("softcap"), bias=bias,
              chunk=c.get("chunk"), sink_tokens=c.get("sink_tokens", 0))
    leaves = (q, k, v, torch.randn(c["h"], device=DEVICE)) if c.get("sinks") else (q, k, v)
    leaves_k = [x.clone().requires_grad_() for x in leaves]
    leaves_r = [x.clone().requires_grad_() for x in leaves]
    if c.get("sinks"):
        kw_k, kw_r = dict(kw, sinks=leaves_k.pop()), dict(kw, sinks=leaves_r.pop())
        leaves_k.append(kw_k["sinks"]), leaves_r.append(kw_r["sinks"])
    else:
        kw_k = kw_r = kw
    out_k = attention(*leaves_k[:3], q_pos, k_pos, **kw_k)
    out_r = reference.attention(*leaves_r[:3], q_pos, k_pos, **kw_r)
    torch.testing.assert_close(out_k, out_r, **TOL[torch.float32])
    grad = torch.randn_like(out_r)
    out_k.backward(grad)
    out_r.backward(grad)
    for a, r in zip(leaves_k, leaves_r):
        torch.testing.assert_close(a.grad, r.grad, **TOL[torch.float32])


def test_learned_bias_with_gradient_uses_the_reference():
    q = torch.randn(1, 2, 5, 8, device=DEVICE)
    bias = torch.randn(2, 5, 5, device=DEVICE, requires_grad=True)
    pos = torch.arange(5, device=DEVICE)
    out = attention(q, q, q, pos, pos, causal=False, scale=1.0, bias=bias)
    out.sum().backward()
    assert bias.grad is not None


@pytest.mark.parametrize("name", ["gqa", "softcap", "window"])
def test_attention_bf16(name):
    c = CASES[name]
    q = torch.randn(2, c["h"], c["t"], c["d"], device=DEVICE, dtype=torch.bfloat16)
    k = torch.randn(2, c["kv"], c["s"], c["d"], device=DEVICE, dtype=torch.bfloat16)
    v = torch.randn(2, c["kv"], c["s"], c["d"], device=DEVICE, dtype=torch.bfloat16)
    pos = torch.arange(c["t"], device=DEVICE)
    kw = dict(causal=c["causal"], scale=c["d"] ** -0.5, window=c.get("window"), softcap=c.get("softcap"))
    ref = reference.attention(q.float(), k.float(), v.float(), pos, pos, **kw)
    torch.testing.assert_close(attention(q, k, v, pos, pos, **kw).float(), ref, atol=2e-2, rtol=2e-2)

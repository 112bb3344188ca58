"""The Gated Attention Unit (Hua, Dai, Liu & Le 2022, "Transformer Quality in Linear Time"): one
unit in place of a block's attention and FFN, in its quadratic form (FLASH-Quad) and its
mixed-chunk form (FLASH), as generated code builds it (`self.gau = rt.GAU(...)`).

From the normalised input x (the block's norm runs before, its residual add after):
    u, v, z = silu(x W_in + b_in)            widths e, e, s (the paper's one dense(x, 2e + s))
    q_i = z · γ_i + β_i                      per-dimension scale and offset (two, or four chunked)
    q, k rotated by RoPE where the block's position is rope()
    o = (u ⊙ attend(q, k, v)) W_out + b_out

attend, quadratic form (the paper's Code 1 / FLASH-Quad):
    relu2:   A_ij = relu(q_i · k_j / L_i)²,  L_i = n (the sequence length) when bidirectional; when
             causal L_i = i + 1, the number of keys row i sees (the paper's 1/n would make every
             output depend on the final length, which no causal decoder can do); or L_i = `length`,
             a fixed length (the training length: FLASH-Quad ports divide by their 512)
    softmax: A_ij = softmax_j(q_i · k_j / √s)   (the paper's softmax ablation)
    o_i = Σ_j A_ij v_j over j ≤ i (causal) or all j.
attend, mixed chunks of C tokens (the paper's Code 2 / FLASH): quadratic inside each chunk, with
    relu(q^quad_i · k^quad_j / C)², plus linear attention across chunks:
    bidirectional  q^lin_i · (Σ_all j k^lin_j v_jᵀ) / n
    causal         q^lin_i · (Σ_{j in earlier chunks} k^lin_j v_jᵀ) / C
    (the causal global term is divided by the chunk size, a constant, where the paper's code
    divides by n: the same change as above, so that cached decoding equals the full forward;
    lucidrains' FLASH-pytorch divides the same way).
    A last chunk shorter than C is the paper's zero padding: its missing keys add nothing.

The cache (causal only): the quadratic form keeps every past k (after RoPE) and v; the chunked form
keeps the sum Σ k^lin v^T over its completed chunks and the k^quad, k^lin, v of the unfinished one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archlang.spec.errors import ArchError

from .context import Context
from .position import apply_rope


class GAU(nn.Module):
    """The unit with its weights: in_proj (2·hidden + key_dim, d_model) [u; v; z], gamma and beta
    (parts, key_dim) with parts = 2 (q, k) or 4 (quad q, quad k, lin q, lin k), out_proj
    (d_model, hidden); biases in_bias, out_bias where `bias`."""

    # A padded key would count in L_i and in n: each row of a padded batch runs alone.
    left_padding_exact = False

    def __init__(self, d_model: int, hidden: int, key_dim: int, *, scores: str = "relu2", causal: bool = True,
                 chunk: int | None = None, bias: bool = True, length: int | None = None, cache_key: str = ""):
        super().__init__()
        if scores not in ("relu2", "softmax"):
            raise ArchError(f"GAU scores must be relu2 or softmax, not {scores!r}")
        if chunk is not None and scores != "relu2":
            raise ArchError("the mixed-chunk GAU (FLASH) is defined with relu2 scores only")
        if length is not None and (chunk is not None or scores != "relu2"):
            raise ArchError("a GAU's fixed length normalises the quadratic relu2 form only")
        self.length = length
        self.hidden, self.key_dim, self.scores, self.causal, self.chunk = hidden, key_dim, scores, causal, chunk
        self.cache_key = cache_key
        parts = 2 if chunk is None else 4
        self.in_proj = nn.Parameter(torch.empty(2 * hidden + key_dim, d_model))
        self.in_bias = nn.Parameter(torch.zeros(2 * hidden + key_dim)) if bias else None
        self.gamma = nn.Parameter(torch.empty(parts, key_dim))
        self.beta = nn.Parameter(torch.zeros(parts, key_dim))
        self.out_proj = nn.Parameter(torch.empty(d_model, hidden))
        self.out_bias = nn.Parameter(torch.zeros(d_model)) if bias else None
        for p in (self.in_proj, self.gamma, self.out_proj):  # the paper's N(0, 0.02) for γ
            nn.init.normal_(p, std=0.02)

    def forward(self, x: torch.Tensor, ctx: Context | None = None, rope=None) -> torch.Tensor:
        if ctx is not None and ctx.attention_mask is not None and not bool(ctx.attention_mask.all()):
            raise ArchError("a GAU layer cannot take a padding mask: padded keys would count in its length "
                            "normaliser", kind="usage", hint="run each sequence unpadded (generation does so)")
        u, v, z = F.silu(F.linear(x, self.in_proj, self.in_bias)).split(
            [self.hidden, self.hidden, self.key_dim], dim=-1)  # (B, T, e), (B, T, e), (B, T, s)
        qk = z.unsqueeze(2) * self.gamma + self.beta  # (B, T, parts, s)
        if rope is not None:
            cos, sin = rope
            qk = apply_rope(qk.transpose(1, 2), cos.to(qk.dtype), sin.to(qk.dtype)).transpose(1, 2)
        past = ctx.cache.get(self.cache_key) if self.causal and ctx is not None and ctx.cache is not None else None
        if self.chunk is None:
            o, entry = self._quadratic(qk[:, :, 0], qk[:, :, 1], v, past)
        else:
            o, entry = self._mixed_chunks(*qk.unbind(2), v, past)
        if self.causal and ctx is not None and ctx.cache is not None:
            ctx.cache.put(self.cache_key, **entry)
        return F.linear(u * o, self.out_proj, self.out_bias)  # (B, T, C)

    def _quadratic(self, q, k, v, past):
        """Every query against every (visible) key; the cache holds all past k and v."""
        if past is not None:
            k, v = torch.cat([past["k"], k], dim=1), torch.cat([past["v"], v], dim=1)
        t, n = q.shape[1], k.shape[1]
        scores = q @ k.transpose(1, 2)  # (B, T, L)
        visible = None
        if self.causal:  # query t sits at absolute index n - T + t
            rows = torch.arange(n - t, n, device=q.device)[:, None]
            visible = torch.arange(n, device=q.device)[None, :] <= rows  # (T, L)
        if self.scores == "softmax":
            scores = scores / math.sqrt(self.key_dim)
            if visible is not None:
                scores = scores.masked_fill(~visible, float("-inf"))
            a = scores.softmax(dim=-1)
        else:
            length = self.length or ((rows + 1).to(q.dtype) if self.causal else n)  # L_i
            a = F.relu(scores / length).square()
            if visible is not None:
                a = a.masked_fill(~visible, 0.0)
        return a @ v, {"k": k, "v": v}  # (B, T, e)

    def _mixed_chunks(self, quad_q, quad_k, lin_q, lin_k, v, past):
        """Quadratic attention within chunks of C tokens, linear attention across them. With a
        cache, the unfinished chunk's keys and values are put in front of this forward's tokens
        (their queries are not needed) and the sum over completed chunks starts the scan."""
        c, (b, t, s), e = self.chunk, quad_q.shape, v.shape[-1]
        state = None
        if past is not None:
            state = past["state"]
            r = past["v"].shape[1]  # tokens of the unfinished chunk, at the front
            zeros = quad_q.new_zeros(b, r, s)
            quad_q, lin_q = torch.cat([zeros, quad_q], 1), torch.cat([zeros, lin_q], 1)
            quad_k, lin_k = torch.cat([past["quad_k"], quad_k], 1), torch.cat([past["lin_k"], lin_k], 1)
            v = torch.cat([past["v"], v], 1)
        n = v.shape[1]
        groups = -(-n // c)
        pad = groups * c - n  # zero keys and values: a short last chunk adds nothing

        def chunked(x):
            return F.pad(x, (0, 0, 0, pad)).view(b, groups, c, x.shape[-1])  # (B, G, C, ·)

        qq, kq, ql, kl, vg = (chunked(x) for x in (quad_q, quad_k, lin_q, lin_k, v))
        a = F.relu(qq @ kq.transpose(-1, -2) / c).square()  # (B, G, C, C)
        if self.causal:
            a = a.tril()
        quadratic = a @ vg  # (B, G, C, e)
        kv = kl.transpose(-1, -2) @ vg  # (B, G, s, e): each chunk's sum of k vᵀ
        if self.causal:
            before = kv.cumsum(dim=1) - kv  # the completed chunks before each one
            if state is not None:
                before = before + state[:, None]
            linear = ql @ before / c
        else:
            linear = ql @ (kv.sum(dim=1, keepdim=True) / n)
        o = (quadratic + linear).reshape(b, groups * c, e)[:, n - t:n]
        entry = {}
        if self.causal:
            done = n // c  # completed chunks: their sum joins the state, the rest stays as keys and values
            total = kv[:, :done].sum(dim=1)
            entry = {"state": total if state is None else state + total,
                     "quad_k": quad_k[:, done * c:], "lin_k": lin_k[:, done * c:], "v": v[:, done * c:]}
        return o, entry

"""Attention cores. Projections live outside (they are linears in the IR); these modules take
q, k, v in (B, T, heads * head_dim) layout, apply positions, keep the cache, and attend."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archlang.kernels import reference
from archlang.kernels.dispatch import attention as attend
from archlang.kernels.dispatch import norm_rope
from archlang.spec.errors import ArchError

from .context import Context
from .position import apply_rope


def _heads(x: torch.Tensor, n: int, d: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, n, d).transpose(1, 2)  # (B, n, T, d)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)  # (B, T, h*d)


def _append(ctx: Context, key: str, window: int | None, *, sink_tokens: int = 0, chunk: int | None = None,
            **new: torch.Tensor) -> dict[str, torch.Tensor]:
    """Extend this layer's cache along the sequence, keeping at most `window` entries (plus the
    first `sink_tokens` positions), or with `chunk` only the entries of the newest position's chunk."""
    if ctx.cache is None:
        return new
    past = ctx.cache.get(key)
    full = {name: torch.cat((past[name], t), dim=-2 if name != "pos" else 0) if past else t for name, t in new.items()}
    if sink_tokens or chunk:
        pos = full["pos"]
        keep = torch.ones_like(pos, dtype=torch.bool)
        if chunk:
            # later queries are in this chunk or a later one: earlier chunks are never seen again
            keep = pos // chunk == pos[-1] // chunk
        if window:
            recent = torch.arange(len(pos), device=pos.device) >= len(pos) - window
            keep = keep & (recent | (pos < sink_tokens))
        index = keep.nonzero().squeeze(1)
        ctx.cache.put(key, **{name: t.index_select(-2 if name != "pos" else 0, index) for name, t in full.items()})
    elif window:
        ctx.cache.put(key, **{name: t[..., -window:, :] if name != "pos" else t[-window:] for name, t in full.items()})
    else:
        ctx.cache.put(key, **full)
    return full


def _key_mask(ctx: Context, k_len: int) -> torch.Tensor | None:
    mask = ctx.attention_mask
    if mask is None:
        return None
    return mask[:, -k_len:] if mask.shape[1] >= k_len else None


def _key_mask_at(ctx: Context, k_pos: torch.Tensor) -> torch.Tensor | None:
    """The padding mask of the keys at absolute positions k_pos (a cache with gaps: sink tokens)."""
    mask = ctx.attention_mask
    if mask is None or mask.shape[1] <= int(k_pos.max()):
        return None
    return mask[:, k_pos]


QK_NORMS = ("rmsnorm", "layernorm", "l2")
QK_NORM_SCOPES = ("head", "projection")


def _refuse(message: str, hint: str | None = None):
    raise ArchError(message, hint=hint, kind="runtime")


class Attention(nn.Module):
    """MHA / MQA / GQA with optional sliding window, soft-capping, ALiBi or relative bias, and:

    - `qk_norm` ("rmsnorm", "layernorm", "l2"): q and k normalised before RoPE, per head over
      head_dim (`qk_norm_scope="head"`: Qwen3, Gemma 3, Llama 4's weightless "l2") or over the
      whole q / k projection (`"projection"`: OLMo 2). Weights `q_norm`, `k_norm` (and
      `q_norm_bias`, `k_norm_bias` for layernorm); `qk_norm_unit_offset` stores w - 1 (Gemma).
      Scope "projection" spans all heads, so it only runs unsharded (not under tensor parallelism).
      "l2" runs after RoPE, as Llama 4 does (the same as before it only when cos/sin carry no
      attention factor); `qk_norm_after_rope` puts a per-head rmsnorm / layernorm there too (Hunyuan).
    - `sinks`: a learned logit per head (parameter `sinks`, (heads,)) in every softmax denominator
      (gpt-oss).
    - `chunk`: causal attention within the query's chunk of `chunk` positions (Llama 4); the cache
      keeps only the current chunk.
    - `sink_tokens` (with `window`): StreamingLLM; every query also sees the first `sink_tokens`
      positions, which the cache keeps beside the window.
    - `temperature_tuning` (NoPE layers only, Llama 4): q scaled by
      log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1.
    - `dilation` (with `window`, Longformer): a query sees every dilation-th position of the last
      window * dilation, its own included; the cache keeps the (window - 1) * dilation + 1 latest.
    - `global_tokens` (with `window`, Longformer / BigBird): the first positions see and are seen
      by every position (within causality in a decoder); the cache keeps them beside the window.
    """

    def left_padding_exact(self) -> bool:
        """Whether a left-padded row attends as its unpadded self (runtime/padding.py): the padded
        keys are masked, and only these features read absolute positions."""
        return not (self.chunk or self.sink_tokens or self.global_tokens or self.temperature_tuning)

    def __init__(self, heads: int, kv_heads: int, head_dim: int, *, causal: bool, scale: float,
                 window: int | None = None, softcap: float | None = None, packed: bool = False,
                 cross: bool = False, cache_key: str = "", qk_norm: str | None = None, qk_norm_scope: str = "head",
                 qk_norm_eps: float = 1e-6, qk_norm_unit_offset: bool = False, sinks: bool = False,
                 chunk: int | None = None, sink_tokens: int = 0, temperature_tuning: bool = False,
                 floor_scale: float = 8192.0, attn_scale: float = 0.1, dropout: float = 0.0,
                 qk_norm_after_rope: bool = False, dilation: int | None = None, global_tokens: int = 0):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.causal, self.scale, self.window, self.softcap = causal, scale, window, softcap
        self.packed, self.cross, self.cache_key = packed, cross, cache_key
        self._check_features(qk_norm, qk_norm_scope, qk_norm_unit_offset, chunk, sink_tokens, temperature_tuning,
                             floor_scale)
        self.qk_norm, self.qk_norm_scope, self.qk_norm_eps = qk_norm, qk_norm_scope, qk_norm_eps
        self.qk_norm_unit_offset = qk_norm_unit_offset
        if qk_norm_after_rope and (qk_norm not in ("rmsnorm", "layernorm") or qk_norm_scope != "head"):
            _refuse("qk_norm_after_rope applies to a per-head rmsnorm or layernorm (l2 always runs after RoPE)")
        # l2 is Llama 4's norm after RoPE; the others run there when asked (Hunyuan)
        self.norm_after_rope = qk_norm == "l2" or qk_norm_after_rope
        self.chunk, self.sink_tokens = chunk, sink_tokens
        self.temperature_tuning, self.floor_scale, self.attn_scale = temperature_tuning, floor_scale, attn_scale
        if qk_norm in ("rmsnorm", "layernorm"):
            q_width, k_width = (head_dim, head_dim) if qk_norm_scope == "head" else (heads * head_dim,
                                                                                     kv_heads * head_dim)
            fill = torch.zeros if qk_norm_unit_offset else torch.ones
            self.q_norm, self.k_norm = nn.Parameter(fill(q_width)), nn.Parameter(fill(k_width))
            if qk_norm == "layernorm":
                self.q_norm_bias = nn.Parameter(torch.zeros(q_width))
                self.k_norm_bias = nn.Parameter(torch.zeros(k_width))
        self.sinks = nn.Parameter(torch.zeros(heads)) if sinks else None
        self.dropout = dropout  # on the attention probabilities, in training only
        if (dilation is not None and dilation < 1) or global_tokens < 0:
            _refuse("dilation must be at least 1 and global_tokens at least 0")
        if (dilation or global_tokens) and (not window or cross):
            _refuse("dilation and global_tokens need a sliding window on self-attention",
                    hint="Longformer's masks widen a window; without one every position sees every other")
        self.dilation, self.global_tokens = dilation or 1, global_tokens

    def _check_features(self, qk_norm, scope, unit_offset, chunk, sink_tokens, temperature_tuning, floor_scale):
        if qk_norm is not None and qk_norm not in QK_NORMS:
            _refuse(f"unknown qk_norm {qk_norm!r}", hint=f"one of {', '.join(QK_NORMS)}")
        if scope not in QK_NORM_SCOPES:
            _refuse(f"unknown qk_norm_scope {scope!r}", hint=f"one of {', '.join(QK_NORM_SCOPES)}")
        if unit_offset and qk_norm != "rmsnorm":
            _refuse("qk_norm_unit_offset applies to qk_norm='rmsnorm' only")
        if qk_norm == "l2" and scope != "head":
            _refuse("qk_norm='l2' is per head (Llama 4)", hint="use qk_norm_scope='head'")
        if chunk is not None and (chunk < 1 or not self.causal or self.window or self.cross):
            _refuse("chunk needs causal self-attention without a sliding window",
                    hint="chunked attention (Llama 4) replaces the window, it does not combine with it")
        if sink_tokens and (sink_tokens < 0 or not self.window or self.cross):
            _refuse("sink_tokens needs a sliding window on self-attention",
                    hint="StreamingLLM keeps the first tokens beside a window")
        if temperature_tuning and (self.cross or floor_scale <= 0):
            _refuse("temperature_tuning needs self-attention and a positive floor_scale")

    def project(self, q, k, v, head_norm: bool = True):
        """q (B, H, T, D), k and v (B, KV, S, D) from the projections; `head_norm=False` leaves a
        per-head RMS QK-norm to the caller, which fuses it with RoPE."""
        if self.packed:
            q, k, v = q.split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                               self.kv_heads * self.head_dim], dim=-1)
        if self.qk_norm is not None and self.qk_norm_scope == "projection":
            if q.shape[-1] != self.heads * self.head_dim:
                _refuse("qk_norm_scope='projection' spans all heads: it only runs unsharded, "
                        "not on a slice of the heads",
                        hint="run this layer unsharded (no tensor parallelism)")
            q, k = self._normalize(q, k)
        # Head counts follow the tensors: under tensor parallelism each rank holds a slice of heads.
        d = self.head_dim
        q, k, v = _heads(q, q.shape[-1] // d, d), _heads(k, k.shape[-1] // d, d), _heads(v, v.shape[-1] // d, d)
        if (self.qk_norm in ("rmsnorm", "layernorm") and self.qk_norm_scope == "head" and head_norm
                and not self.norm_after_rope):
            q, k = self._normalize(q, k)
        return q, k, v

    def _normalize(self, q, k):
        """q and k normalised over their last dimension (one head, or the whole projection)."""
        eps = self.qk_norm_eps
        if self.qk_norm == "l2":  # Llama4TextL2Norm: x * rsqrt(mean(x^2) + eps) in float32, no weight
            return tuple((x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x)
                         for x in (q, k))
        if self.qk_norm == "layernorm":
            return (F.layer_norm(q, (q.shape[-1],), self.q_norm, self.q_norm_bias, eps),
                    F.layer_norm(k, (k.shape[-1],), self.k_norm, self.k_norm_bias, eps))
        return (reference.rms_norm(q, self.q_norm, eps, self.qk_norm_unit_offset),
                reference.rms_norm(k, self.k_norm, eps, self.qk_norm_unit_offset))

    def _temperature(self, q: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Llama 4's attention temperature for NoPE layers: queries sharpen with log(position)."""
        scales = torch.log1p(torch.floor((positions.float() + 1.0) / self.floor_scale)) * self.attn_scale + 1.0
        return (q * scales[:, None]).to(q.dtype)  # (B, H, T, D) * (T, 1)

    def forward(self, q, k=None, v=None, *, ctx: Context, rope=None, alibi=None, rel_bias=None) -> torch.Tensor:
        # a per-head RMS QK-norm before RoPE and RoPE run as one kernel
        norm_with_rope = (rope is not None and not self.cross and self.qk_norm == "rmsnorm"
                          and self.qk_norm_scope == "head" and not self.norm_after_rope)
        q, k, v = self.project(q, k, v, head_norm=not norm_with_rope)  # (B, H, T, D), (B, KV, S, D)
        q_pos = ctx.positions
        if self.cross:
            k_pos = torch.arange(k.shape[2], device=k.device)
            key_mask = ctx.memory_mask
            if self.norm_after_rope:
                q, k = self._normalize(q, k)
        else:
            if rope is not None:
                if self.temperature_tuning:
                    _refuse("temperature_tuning applies to NoPE layers only (Llama 4), and this layer has RoPE")
                cos, sin = rope
                if norm_with_rope:
                    eps, offset = self.qk_norm_eps, self.qk_norm_unit_offset
                    q, k = norm_rope(q, self.q_norm, eps, cos, sin, offset), norm_rope(k, self.k_norm, eps, cos, sin, offset)
                else:
                    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            # Llama 4's order: RoPE, then the L2 norm, then the temperature
            if self.norm_after_rope:
                q, k = self._normalize(q, k)
            if self.temperature_tuning:
                q = self._temperature(q, q_pos)
            # a dilated window still needs its (window - 1) * dilation + 1 latest positions; global tokens stay
            span = (self.window - 1) * self.dilation + 1 if self.window else None
            first = self.sink_tokens or self.global_tokens
            state = _append(ctx, self.cache_key, span, sink_tokens=first, chunk=self.chunk, k=k, v=v, pos=q_pos)
            k, v, k_pos = state["k"], state["v"], state["pos"]
            key_mask = _key_mask_at(ctx, k_pos) if first or self.chunk else _key_mask(ctx, k.shape[2])
        bias = None
        if alibi is not None:
            distance = (k_pos[None, :] - q_pos[:, None]).float()
            if not self.causal:
                distance = -distance.abs()
            bias = alibi[:, None, None] * distance[None]  # (H, T, S)
        if rel_bias is not None:
            bias = rel_bias(q_pos, k_pos) if bias is None else bias + rel_bias(q_pos, k_pos)
        features = {}
        if self.sinks is not None:
            if self.sinks.shape[0] != q.shape[1]:
                _refuse("attention sinks are per head: they only run unsharded, not on a slice of the heads",
                        hint="run this layer unsharded (no tensor parallelism)")
            features["sinks"] = self.sinks
        if self.chunk:
            features["chunk"] = self.chunk
        if self.sink_tokens:
            features["sink_tokens"] = self.sink_tokens
        if self.dropout and self.training:
            features["dropout"] = self.dropout
        if self.dilation > 1:
            features["dilation"] = self.dilation
        if self.global_tokens:
            features["global_tokens"] = self.global_tokens
        out = attend(q, k, v, q_pos, k_pos, causal=self.causal and not self.cross, scale=self.scale,
                     window=self.window, softcap=self.softcap, bias=bias, key_mask=key_mask, **features)
        return _merge(out)  # (B, T, H*D)

    def extra_repr(self) -> str:
        text = (f"heads={self.heads}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, causal={self.causal}, "
                f"window={self.window}, softcap={self.softcap}")
        if self.qk_norm:
            text += f", qk_norm={self.qk_norm}, qk_norm_scope={self.qk_norm_scope}"
        for name in ("chunk", "sink_tokens", "temperature_tuning", "global_tokens"):
            if getattr(self, name):
                text += f", {name}={getattr(self, name)}"
        return text + (", sinks=True" if self.sinks is not None else "")


class DifferentialAttention(Attention):
    """Differential attention (Ye et al. 2024): softmax(q1 k1) - lambda * softmax(q2 k2), per-head
    RMS-normalised, as in the reference implementation (microsoft/unilm, multihead_diffattn.py).

    `head_dim` is the width of a whole head: two sub-heads of head_dim / 2 for q and k, and one
    value head of head_dim. RoPE rotates each sub-head on its own. With kv_heads < heads, the
    2 * heads query sub-heads share the 2 * kv_heads key sub-heads in consecutive groups, and each
    head its value head, exactly as the reference's repeat_kv does.
    """

    def __init__(self, heads: int, kv_heads: int, head_dim: int, *, layer: int, lambda_init: float | None = None,
                 **kw):
        modern = ("qk_norm", "sinks", "chunk", "sink_tokens", "temperature_tuning", "dropout", "dilation",
                  "global_tokens")
        if any(kw.get(name) for name in modern):
            _refuse(f"differential attention does not implement {', '.join(n for n in modern if kw.get(n))}")
        super().__init__(heads, kv_heads, head_dim, **kw)
        half = head_dim // 2
        # `layer` counts from 0, the paper's l - 1
        self.lambda_init = lambda_init if lambda_init is not None else 0.8 - 0.6 * math.exp(-0.3 * layer)
        self.lambda_q1 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(half) * 0.1)
        self.subln = nn.Parameter(torch.ones(head_dim))

    def forward(self, q, k=None, v=None, *, ctx: Context, rope=None) -> torch.Tensor:
        if self.packed:
            q, k, v = q.split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                               self.kv_heads * self.head_dim], dim=-1)
        half = self.head_dim // 2
        q = _heads(q, q.shape[-1] // half, half)  # (B, 2H, T, d): sub-heads 2h and 2h+1 make head h
        k = _heads(k, k.shape[-1] // half, half)  # (B, 2KV, T, d)
        v = _heads(v, v.shape[-1] // self.head_dim, self.head_dim)  # (B, KV, T, 2d)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        state = _append(ctx, self.cache_key, self.window, k=k, v=v, pos=ctx.positions)
        k, v, k_pos = state["k"], state["v"], state["pos"]
        heads = q.shape[1] // 2
        group = q.shape[1] // k.shape[1]
        sub = torch.arange(2 * heads, device=q.device)
        k1, k2 = k.index_select(1, sub[0::2] // group), k.index_select(1, sub[1::2] // group)  # (B, H, S, d)
        v = v.index_select(1, sub[0::2] // (2 * group))  # (B, H, S, 2d)
        kw = dict(causal=self.causal, scale=self.scale, window=self.window, softcap=self.softcap,
                  key_mask=_key_mask(ctx, k.shape[2]))
        a1 = attend(q[:, 0::2], k1, v, ctx.positions, k_pos, **kw)  # (B, H, T, 2d)
        a2 = attend(q[:, 1::2], k2, v, ctx.positions, k_pos, **kw)
        lam = (torch.exp((self.lambda_q1 * self.lambda_k1).sum()) - torch.exp((self.lambda_q2 * self.lambda_k2).sum())
               + self.lambda_init)
        out = reference.rms_norm(a1 - lam * a2, self.subln, 1e-5) * (1 - self.lambda_init)
        return _merge(out)  # (B, T, H*2d)


class MLAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2). The cache holds the normalised latent and the
    shared rotary key: kv_lora_rank + rope_head_dim numbers per token, for all heads together."""
    left_padding_exact = True  # padded keys are masked; positions enter through RoPE only

    def __init__(self, heads: int, kv_lora_rank: int, rope_head_dim: int, nope_head_dim: int, v_head_dim: int, *,
                 causal: bool, scale: float, window: int | None = None, softcap: float | None = None,
                 norm_eps: float = 1e-6, cache_key: str = ""):
        super().__init__()
        self.heads, self.kv_lora_rank = heads, kv_lora_rank
        self.rope_head_dim, self.nope_head_dim, self.v_head_dim = rope_head_dim, nope_head_dim, v_head_dim
        self.causal, self.scale, self.window, self.softcap = causal, scale, window, softcap
        self.norm_eps, self.cache_key = norm_eps, cache_key
        self.kv_a_norm = nn.Parameter(torch.ones(kv_lora_rank))
        self.kv_b_proj = nn.Parameter(torch.empty(heads * (nope_head_dim + v_head_dim), kv_lora_rank))
        nn.init.normal_(self.kv_b_proj, std=0.02)

    def forward(self, q, kv, rope=None, *, ctx: Context, keep=None) -> torch.Tensor:
        """`keep` (B, T, S), from a lightning indexer: the keys each query may attend (DeepSeek-V3.2)."""
        b, t, _ = q.shape
        q = _heads(q, self.heads, self.nope_head_dim + self.rope_head_dim)
        q_nope, q_pe = q.split([self.nope_head_dim, self.rope_head_dim], dim=-1)
        latent, k_pe = kv.split([self.kv_lora_rank, self.rope_head_dim], dim=-1)
        latent = reference.rms_norm(latent, self.kv_a_norm, self.norm_eps)  # (B, T, r)
        k_pe = k_pe[:, None]  # (B, 1, T, rope)
        if rope is not None:
            cos, sin = rope
            q_pe, k_pe = apply_rope(q_pe, cos, sin), apply_rope(k_pe, cos, sin)
        state = _append(ctx, self.cache_key, self.window, latent=latent[:, None], k_pe=k_pe, pos=ctx.positions)
        latent, k_pe, k_pos = state["latent"][:, 0], state["k_pe"], state["pos"]
        s = latent.shape[1]
        kv_full = F.linear(latent, self.kv_b_proj).view(b, s, self.heads, self.nope_head_dim + self.v_head_dim)
        k_nope, v = kv_full.transpose(1, 2).split([self.nope_head_dim, self.v_head_dim], dim=-1)
        k = torch.cat((k_nope, k_pe.expand(b, self.heads, s, self.rope_head_dim)), dim=-1)
        q = torch.cat((q_nope, q_pe), dim=-1)
        sparse = {"allow": keep} if keep is not None else {}
        out = attend(q, k, v, ctx.positions, k_pos, causal=self.causal, scale=self.scale, window=self.window,
                     softcap=self.softcap, key_mask=_key_mask(ctx, s), **sparse)
        return _merge(out)  # (B, T, H*v_head_dim)


class LinearAttention(nn.Module):
    """Linear attention: out_t = Σ_{s≤t} (φ(q_t)·φ(k_s)) v_s / (Σ_{s≤t} φ(q_t)·φ(k_s) + 1e-6), with φ
    elu + 1, relu or the identity; the cache is a (D x D) state and a D normaliser per key/value
    head, which heads / kv_heads query heads read."""

    left_padding_exact = True  # padded keys add nothing to the state or the normaliser

    FEATURE_MAPS = {"elu_plus_one": lambda x: F.elu(x) + 1, "relu": F.relu, "identity": lambda x: x}

    def __init__(self, heads: int, head_dim: int, *, causal: bool, kv_heads: int | None = None,
                 feature_map: str = "elu_plus_one", cache_key: str = ""):
        super().__init__()
        self.heads, self.head_dim, self.causal, self.cache_key = heads, head_dim, causal, cache_key
        self.kv_heads = kv_heads or heads
        if heads % self.kv_heads or feature_map not in self.FEATURE_MAPS:
            raise ValueError(f"LinearAttention: kv_heads {self.kv_heads} must divide heads {heads}; "
                             f"feature_map one of {sorted(self.FEATURE_MAPS)}")
        self.phi = self.FEATURE_MAPS[feature_map]

    def forward(self, q, k, v, *, ctx: Context) -> torch.Tensor:
        q = _heads(q, self.heads, self.head_dim)  # (B, H, T, D)
        k, v = (_heads(x, self.kv_heads, self.head_dim) for x in (k, v))  # (B, Hkv, S, D)
        bsz, _, t, _ = q.shape
        q = self.phi(q).reshape(bsz, self.kv_heads, self.heads // self.kv_heads, t, self.head_dim)  # (B, Hkv, G, T, D)
        k = self.phi(k)
        if ctx.attention_mask is not None:  # a padded key adds nothing to the state or the normaliser
            k = k * ctx.attention_mask[:, None, -k.shape[2]:, None].to(k.dtype)
        if not self.causal:
            kv = torch.einsum("bhsd,bhse->bhde", k, v)
            z = k.sum(dim=2)
            num = torch.einsum("bhgtd,bhde->bhgte", q, kv)
            den = torch.einsum("bhgtd,bhd->bhgt", q, z)[..., None] + 1e-6
            return _merge((num / den).flatten(1, 2))
        past = ctx.cache.get(self.cache_key) if ctx.cache is not None else None
        kv = torch.einsum("bhtd,bhte->bhtde", k, v).cumsum(dim=2)  # running state per position
        z = k.cumsum(dim=2)
        if past is not None:
            kv = kv + past["state"][:, :, None]
            z = z + past["norm"][:, :, None]
        elif "state_before_shard" in ctx.tables:  # context parallelism: the earlier shards' state
            state, norm = ctx.tables["state_before_shard"](kv[:, :, -1], z[:, :, -1])
            kv, z = kv + state[:, :, None], z + norm[:, :, None]
        if ctx.cache is not None:
            ctx.cache.put(self.cache_key, state=kv[:, :, -1], norm=z[:, :, -1])
        num = torch.einsum("bhgtd,bhtde->bhgte", q, kv)
        den = torch.einsum("bhgtd,bhtd->bhgt", q, z)[..., None] + 1e-6
        num, den = num.flatten(1, 2), den.flatten(1, 2)
        return _merge(num / den)

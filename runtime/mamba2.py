"""Mamba-2's multi-head state space layer (Dao & Gu 2024, "state space duality"): the chunked SSD
algorithm over a sequence (through `kernels/dispatch.py`: the Triton kernel `kernels/ssd.py` on
CUDA, `kernels/reference.py: ssd_chunked` elsewhere), its one-step
recurrence (`ssd_step`) when decoding. The cache keeps the conv window and the SSM state."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archlang.kernels import dispatch, reference
from archlang.spec.errors import ArchError

from .context import Context
from .ssm import _softplus


class Mamba2(nn.Module):
    """x (B, T, d_model) → (B, T, d_model), laid out as Hugging Face's `Mamba2Mixer`:

    in_proj → [z (d_inner), xBC (d_inner + 2·G·N), dt (heads)]; a causal depthwise conv of width
    d_conv and SiLU over xBC, split into x (heads × head_dim, head_dim = d_inner / heads), B and
    C (G groups of N = d_state; head h reads group h // (heads / G)); dt = clamp(softplus(dt +
    dt_bias), *dt_limit); A = -exp(A_log), one scalar per head; y = SSD(x, dt, A, B, C) + D x;
    then norm(y · silu(z)), an RMSNorm over each of the G groups of d_inner / G channels with a
    weight (`gated_norm`; without it y · silu(z); with `norm_before_gate`, norm(y) · silu(z), as
    Falcon-H1 may), and out_proj. With `in_proj_multipliers` = (z, x, B, C, dt), each part of
    in_proj's output (after its bias) is first multiplied by its factor (Falcon-H1's µP vector).

    Parameters: in_proj (2·d_inner + 2·G·N + heads, d_model) [+ in_proj_bias], conv_weight
    (d_inner + 2·G·N, 1, d_conv) [+ conv_bias], dt_bias, A_log, D (heads,) [D only with
    D_skip], norm_weight (d_inner,) [with gated_norm], out_proj (d_model, d_inner)
    [+ out_proj_bias]: Hugging Face's in_proj.weight/.bias, conv1d.weight/.bias, dt_bias, A_log,
    D, norm.weight, out_proj.weight/.bias, one to one.

    State per sequence (the cache's bytes): the conv window, (d_conv - 1) · (d_inner + 2·G·N)
    values in the input's dtype, and the SSM state, d_inner · d_state values in float32:
        state_bytes = (d_conv - 1) · (d_inner + 2·G·N) · itemsize + 4 · d_inner · d_state.

    FLOPs per decoded token (multiply-add = 2), with conv_dim = d_inner + 2·G·N:
        2·d_model·(d_inner + conv_dim + heads) + 2·d_inner·d_model   in_proj, out_proj
        + 2·conv_dim·d_conv                                          depthwise conv
        + 2·d_inner·d_state                                          readout C · h
        + 3·d_inner·d_state                                          state update exp(dt A)·h + dt·x·B
    plus O(d_inner) elementwise work (softplus, D skip, gate, norm). A prefill in chunks of L adds
    the quadratic form inside each chunk, about 2·L·(heads·d_state + d_inner) per token, and
    2·d_inner·d_state per token for each chunk's state.

    With `ctx.attention_mask` (B, S_total), the padded tokens' conv inputs and outputs are zeroed:
    they add nothing to the SSM state, and a left-padded row's real tokens see what they would see
    alone. Hugging Face zeroes the layer's input instead of the conv's, which is the same without
    an in_proj bias; with one, its first real tokens read the bias at the padded positions.
    """
    left_padding_exact = True  # a padded token enters the conv as zero and leaves the state as it was

    def __init__(self, d_model: int, d_inner: int, d_state: int, d_conv: int, heads: int, *, n_groups: int = 1,
                 chunk: int = 256, conv_bias: bool = True, bias: bool = False, norm_eps: float = 1e-5,
                 gated_norm: bool = True, norm_before_gate: bool = False, D_skip: bool = True,
                 dt_limit: tuple[float, float] = (0.0, math.inf),
                 in_proj_multipliers: tuple[float, float, float, float, float] | None = None, cache_key: str = ""):
        super().__init__()
        if d_inner % heads or heads % n_groups:
            raise ArchError(f"mamba2: heads ({heads}) must divide d_inner ({d_inner}), and n_groups ({n_groups}) "
                            "must divide heads", hint="each head reads d_inner / heads channels and one group of B, C",
                            kind="runtime")
        self.d_inner, self.d_state, self.d_conv, self.heads, self.n_groups = d_inner, d_state, d_conv, heads, n_groups
        self.head_dim, self.conv_dim = d_inner // heads, d_inner + 2 * n_groups * d_state
        self.chunk, self.norm_eps, self.dt_limit, self.cache_key = chunk, norm_eps, tuple(dt_limit), cache_key
        self.norm_before_gate = norm_before_gate
        self.in_proj = nn.Parameter(torch.empty(d_inner + self.conv_dim + heads, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(d_inner + self.conv_dim + heads)) if bias else None
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, 1, d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(self.conv_dim)) if conv_bias else None
        # dt starts log-uniform in [1e-3, 1e-1] (Mamba-2's time_step_min/max); dt_bias is its softplus inverse
        dt = torch.exp(torch.rand(heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, heads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(heads)) if D_skip else None
        self.norm_weight = nn.Parameter(torch.ones(d_inner)) if gated_norm else None
        self.out_proj = nn.Parameter(torch.empty(d_model, d_inner))
        self.out_proj_bias = nn.Parameter(torch.zeros(d_model)) if bias else None
        for p in (self.in_proj, self.conv_weight, self.out_proj):
            nn.init.normal_(p, std=0.02)
        factors = None
        if in_proj_multipliers is not None:  # a constant, not a weight: kept out of the state dict
            parts = (d_inner, d_inner, n_groups * d_state, n_groups * d_state, heads)
            factors = torch.cat([torch.full((n,), float(f)) for n, f in zip(parts, in_proj_multipliers)])
        self.register_buffer("in_proj_multipliers", factors, persistent=False)

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        bsz, t, _ = x.shape
        heads, groups, n = self.heads, self.n_groups, self.d_state
        cache = ctx.cache if ctx is not None else None
        past = cache.get(self.cache_key) if cache is not None else None
        mask = None
        if ctx is not None and ctx.attention_mask is not None:
            mask = ctx.attention_mask[:, -t:, None].to(x.dtype)  # (B, T, 1) this call's tokens
        projected = F.linear(x, self.in_proj, self.in_proj_bias)
        if self.in_proj_multipliers is not None:
            projected = projected * self.in_proj_multipliers
        z, xbc, dt = projected.split([self.d_inner, self.conv_dim, heads], dim=-1)
        if mask is not None:  # a padded token enters the conv as the zeros before the sequence's start
            xbc = xbc * mask
        conv_in = xbc.transpose(1, 2)  # (B, conv_dim, T)
        shards = ctx.tables.get("context_parallel") if ctx is not None else None
        if shards is not None:  # context parallelism: continue the previous rank's shard as a cache
            history = shards.conv_history(conv_in, self.d_conv - 1)
            start = shards.state_from_previous(self, (history,), (bsz, heads, self.head_dim, n))
            past = {"conv": history, "ssm": start}
        if past is not None:
            conv_in = torch.cat((past["conv"], conv_in), dim=2)
        pad = self.d_conv - 1 if past is None else 0
        conv = F.conv1d(F.pad(conv_in, (pad, 0)), self.conv_weight, self.conv_bias, groups=self.conv_dim)
        window = F.pad(conv_in, (max(0, self.d_conv - 1 - conv_in.shape[2]), 0))
        new_conv_state = window[:, :, window.shape[2] - (self.d_conv - 1):]  # (B, conv_dim, d_conv - 1)
        xbc = F.silu(conv[:, :, -t:]).transpose(1, 2)  # (B, T, conv_dim)
        if mask is not None:
            xbc = xbc * mask
        hidden, b, c = xbc.split([self.d_inner, groups * n, groups * n], dim=-1)
        hidden = hidden.reshape(bsz, t, heads, self.head_dim)  # (B, T, H, P)
        dt = _softplus(dt + self.dt_bias).clamp(*self.dt_limit)  # (B, T, H)
        A = -torch.exp(self.A_log.float())
        if past is not None and t == 1:
            y, state = reference.ssd_step(hidden[:, 0], dt[:, 0], A, b.view(bsz, groups, n), c.view(bsz, groups, n),
                                          past["ssm"])
            y = y[:, None]  # (B, 1, H, P)
        else:
            y, state = dispatch.ssd_chunked(hidden, dt, A, b.view(bsz, t, groups, n), c.view(bsz, t, groups, n),
                                            self.chunk, past["ssm"] if past is not None else None)
        if cache is not None:
            cache.put(self.cache_key, conv=new_conv_state, ssm=state)
        if shards is not None:
            y = shards.state_to_next(y, state)
        if self.D is not None:
            y = y + hidden.float() * self.D.float()[:, None]
        y, gate = y.reshape(bsz, t, self.d_inner), F.silu(z.float())  # (B, T, di)
        if self.norm_weight is None:
            y = y * gate
        elif self.norm_before_gate:
            y = self._group_norm(y) * gate
        else:
            y = self._group_norm(y * gate)
        return F.linear(y.to(x.dtype), self.out_proj, self.out_proj_bias)  # (B, T, C)

    def _group_norm(self, y: torch.Tensor) -> torch.Tensor:
        """RMSNorm over each of the n_groups groups of channels, then the weight, in float32."""
        per_group = y.view(*y.shape[:-1], self.n_groups, -1)
        per_group = per_group * torch.rsqrt(per_group.pow(2).mean(-1, keepdim=True) + self.norm_eps)
        return per_group.view(y.shape) * self.norm_weight.float()

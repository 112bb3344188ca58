"""Mamba's selective state space layer (Gu & Dao 2023), in plain PyTorch: a chunked selective
scan (`kernels/reference.py: selective_scan`, or its Triton kernel on GPUs). The cache keeps the
conv window and the SSM state."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archlang.kernels import dispatch, reference

from .context import Context

def _softplus(z: torch.Tensor) -> torch.Tensor:
    """F.softplus (threshold 20) from elementwise ops: torch.compile's backward graph mis-predicts
    the strides of softplus_backward on transposed gradients."""
    return torch.where(z > 20, z, torch.log1p(torch.exp(z.clamp(max=20))))


def _weightless_rms_norm(z: torch.Tensor, eps: float) -> torch.Tensor:
    h = z.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(z.dtype)


class Mamba(nn.Module):
    left_padding_exact = True  # a padded token enters the conv as zero and writes nothing to the state
    def __init__(self, d_model: int, d_inner: int, d_state: int, d_conv: int, dt_rank: int, *, conv_bias: bool = True,
                 bias: bool = False, inner_norms: bool = False, norm_eps: float = 1e-6, weightless_norms: bool = False,
                 cache_key: str = "", **_):
        super().__init__()
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = d_inner, d_state, d_conv, dt_rank
        self.norm_eps, self.cache_key = norm_eps, cache_key
        self.in_proj = nn.Parameter(torch.empty(2 * d_inner, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(2 * d_inner)) if bias else None
        self.conv_weight = nn.Parameter(torch.empty(d_inner, 1, d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(d_inner)) if conv_bias else None
        self.x_proj = nn.Parameter(torch.empty(dt_rank + 2 * d_state, d_inner))
        self.dt_proj_weight = nn.Parameter(torch.empty(d_inner, dt_rank))
        self.dt_proj_bias = nn.Parameter(torch.zeros(d_inner))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Parameter(torch.empty(d_model, d_inner))
        self.out_proj_bias = nn.Parameter(torch.zeros(d_model)) if bias else None
        if inner_norms and not weightless_norms:  # Falcon-Mamba's norms have no weight
            self.dt_norm = nn.Parameter(torch.ones(dt_rank))
            self.b_norm = nn.Parameter(torch.ones(d_state))
            self.c_norm = nn.Parameter(torch.ones(d_state))
        self.inner_norms, self.weightless_norms = inner_norms, weightless_norms
        for p in (self.in_proj, self.conv_weight, self.x_proj, self.dt_proj_weight, self.out_proj):
            nn.init.normal_(p, std=0.02)

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        bsz, t, _ = x.shape
        past = ctx.cache.get(self.cache_key) if ctx is not None and ctx.cache is not None else None
        hidden, gate = F.linear(x, self.in_proj, self.in_proj_bias).transpose(1, 2).chunk(2, dim=1)  # (B, di, T) each
        mask = None
        if ctx is not None and ctx.attention_mask is not None:  # as HF: padded tokens enter the conv as zeros
            mask = ctx.attention_mask[:, None, -t:].to(hidden.dtype)  # (B, 1, T)
            hidden = hidden * mask
        shards = ctx.tables.get("context_parallel") if ctx is not None else None
        if shards is not None:  # context parallelism: continue the previous rank's shard as a cache
            history = shards.conv_history(hidden, self.d_conv - 1)
            start = shards.state_from_previous(self, (history,), (bsz, self.d_inner, self.d_state))
            past = {"conv": history, "ssm": start}
        conv_in = hidden if past is None else torch.cat((past["conv"], hidden), dim=2)
        pad = self.d_conv - 1 if past is None else 0
        conv = F.conv1d(F.pad(conv_in, (pad, 0)), self.conv_weight, self.conv_bias, groups=self.d_inner)
        new_conv_state = F.pad(conv_in, (max(0, self.d_conv - 1 - conv_in.shape[2]), 0))[:, :, -(self.d_conv - 1):]
        hidden = F.silu(conv[:, :, -t:])  # (B, di, T)
        if mask is not None:  # ... and leave it as zeros: B x = 0 writes nothing to the state
            hidden = hidden * mask
        params = F.linear(hidden.transpose(1, 2), self.x_proj)  # (B, T, r + 2N)
        dt, b, c = params.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.inner_norms and self.weightless_norms:
            dt, b, c = (_weightless_rms_norm(z, self.norm_eps) for z in (dt, b, c))
        elif self.inner_norms:
            dt = reference.rms_norm(dt, self.dt_norm, self.norm_eps)
            b = reference.rms_norm(b, self.b_norm, self.norm_eps)
            c = reference.rms_norm(c, self.c_norm, self.norm_eps)
        delta = _softplus(F.linear(dt, self.dt_proj_weight, self.dt_proj_bias)).transpose(1, 2)  # (B, di, T)
        A = -torch.exp(self.A_log.float())
        y, state = dispatch.selective_scan(hidden, delta, A, b, c, self.D, past["ssm"] if past is not None else None)
        if ctx is not None and ctx.cache is not None:
            ctx.cache.put(self.cache_key, conv=new_conv_state, ssm=state)
        if shards is not None:
            y = shards.state_to_next(y, state)
        y = (y * F.silu(gate.float())).to(x.dtype)
        return F.linear(y.transpose(1, 2), self.out_proj, self.out_proj_bias)  # (B, T, C)

"""LFM2's gated short convolution (Liquid AI 2025), the input-gated short causal convolution of
H3 and Hyena used as a whole token mixer. The cache keeps the last kernel - 1 inputs of the conv,
so a cached decode equals the full forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .context import Context


class ShortConv(nn.Module):
    """x (B, T, d_model) → (B, T, d_model), laid out as Hugging Face's `Lfm2ShortConv`:

    in_proj → [B, C, x] (d_model each); Bx = B ⊙ x; a causal depthwise conv of `kernel` taps over
    Bx (each channel its own filter, the token and the kernel - 1 before it); y = C ⊙ conv(Bx);
    out_proj. No activation anywhere: the gates are the projections themselves.

    Parameters: in_proj (3·d_model, d_model) [+ in_proj_bias], conv_weight (d_model, 1, kernel)
    [+ conv_bias], out_proj (d_model, d_model) [+ out_proj_bias]: Hugging Face's in_proj.weight/.bias,
    conv.weight/.bias, out_proj.weight/.bias, one to one.

    State per sequence (the cache's bytes): the conv window, (kernel - 1) · d_model values of Bx
    in the input's dtype.

    FLOPs per token (multiply-add = 2): 6·d² + 2·d² (in_proj, out_proj) + 2·d·kernel (the conv),
    plus 2·d element-wise products.

    With `ctx.attention_mask` (B, S_total), Bx is zeroed at the padded tokens before the conv, as
    the zero padding before the sequence's start: a left-padded row's real tokens see what they
    would see alone, biases or not (Hugging Face zeroes the layer's input instead, which is the
    same without an in_proj bias).
    """
    left_padding_exact = True  # a padded token enters the conv as zero

    def __init__(self, d_model: int, kernel: int, *, bias: bool = False, conv_bias: bool = False,
                 cache_key: str = ""):
        super().__init__()
        self.d_model, self.kernel, self.cache_key = d_model, kernel, cache_key
        self.in_proj = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model)) if bias else None
        self.conv_weight = nn.Parameter(torch.empty(d_model, 1, kernel))
        self.conv_bias = nn.Parameter(torch.zeros(d_model)) if conv_bias else None
        self.out_proj = nn.Parameter(torch.empty(d_model, d_model))
        self.out_proj_bias = nn.Parameter(torch.zeros(d_model)) if bias else None
        for p in (self.in_proj, self.out_proj):
            nn.init.normal_(p, std=0.02)
        nn.init.kaiming_uniform_(self.conv_weight, a=5 ** 0.5)  # nn.Conv1d's default

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        t = x.shape[1]
        cache = ctx.cache if ctx is not None else None
        past = cache.get(self.cache_key) if cache is not None else None
        b, c, h = F.linear(x, self.in_proj, self.in_proj_bias).chunk(3, dim=-1)  # (B, T, d) each
        bx = b * h
        if ctx is not None and ctx.attention_mask is not None:  # padded tokens enter the conv as zeros
            bx = bx * ctx.attention_mask[:, -t:, None].to(bx.dtype)
        bx = bx.transpose(1, 2)  # (B, d, T)
        shards = ctx.tables.get("context_parallel") if ctx is not None else None
        if shards is not None:  # context parallelism: the previous rank's shard ends in its last inputs
            past = {"conv": shards.conv_history(bx, self.kernel - 1)}
        if past is None:
            window = F.pad(bx, (self.kernel - 1, 0))
        else:
            window = torch.cat((past["conv"], bx), dim=2)  # (B, d, kernel - 1 + T)
        conv = F.conv1d(window, self.conv_weight, self.conv_bias, groups=self.d_model)  # (B, d, T)
        if cache is not None:
            cache.put(self.cache_key, conv=window[:, :, window.shape[2] - (self.kernel - 1):])
        y = c * conv.transpose(1, 2)  # (B, T, d)
        return F.linear(y, self.out_proj, self.out_proj_bias)  # (B, T, d)

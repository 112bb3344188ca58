"""Griffin's recurrent block around the Real-Gated Linear Recurrent Unit (De et al. 2024, "Griffin:
Mixing Gated Linear Recurrences with Local Attention for Efficient Language Models"; RecurrentGemma).
Prefill and training run a parallel (Hillis-Steele) scan of the diagonal recurrence, a decoded token
the step; both leave the same cache entry (the conv window and the state in float32), so a cached
decode equals the full forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archlang.kernels.reference import ACTIVATIONS
from archlang.spec.errors import ArchError

from .context import Context

FORMS = ("auto", "parallel", "recurrent")
# The paper's c: a_t = a^(c · r_t), the recurrence gate r_t raising the learned base decay a.
GATE_EXPONENT = 8.0


def scan_parallel(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = a_t ⊙ h_{t-1} + x_t for every t, from h0 (B, W); a, x (B, T, W) float32 → (B, T, W).

    Hillis-Steele: after the pass at offset d, (a_t, x_t) compose the (up to) 2d steps ending at t,
    (a, x) ∘ (a', x') = (a a', a x' + x); log2(T) passes of element-wise products, no logs."""
    x = torch.cat((a[:, :1] * h0[:, None] + x[:, :1], x[:, 1:]), dim=1)
    offset, t = 1, x.shape[1]
    while offset < t:
        x = torch.cat((x[:, :offset], x[:, offset:] + a[:, offset:] * x[:, :-offset]), dim=1)
        a = torch.cat((a[:, :offset], a[:, offset:] * a[:, :-offset]), dim=1)
        offset *= 2
    return x


def scan_recurrent(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """The same recurrence one step at a time (a decoded token is one step)."""
    h, out = h0, []
    for t in range(x.shape[1]):
        h = a[:, t] * h + x[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


class RGLRU(nn.Module):
    """x (B, T, d_model) → (B, T, d_model), laid out as Hugging Face's RecurrentGemmaRecurrentBlock:

        y = act(linear_y(x))                                   the gate branch, (B, T, W)
        u = conv(linear_x(x))                                  causal depthwise conv of conv_size taps
        i_t = σ(W_i u_t + b_i), r_t = σ(W_r u_t + b_r)         block-diagonal per head (W / heads wide)
        log a_t = -c · r_t · softplus(recurrent_param)         a_t = σ(Λ)^(c·r_t), Λ = -recurrent_param, c = 8
        h_t = a_t ⊙ h_{t-1} + sqrt(1 - a_t²) ⊙ (i_t ⊙ u_t)     (at position 0: h_0 = i_0 ⊙ u_0, the reset)
        out = linear_out(h ⊙ y)

    Every projection and the conv have a bias. Parameters (Hugging Face's names in the docstring of
    compiler/ops/rglru.py): linear_x, linear_y (W, d_model) with biases (W,), conv_weight (W, 1,
    conv_size), conv_bias (W,), input_gate_weight, recurrent_gate_weight (heads, W/heads, W/heads)
    applied as u_head @ weight, their biases (heads, W/heads), recurrent_param (W,), linear_out
    (d_model, W) with a bias (d_model,).

    State per sequence (the cache's bytes): the conv window, (conv_size - 1) · W values in the input's
    dtype, and the recurrent state h, W values in float32 (the recurrence runs in float32).

    With `ctx.attention_mask` (B, S_total), a left-padded row's real tokens see what they would see
    alone: the padded tokens enter the conv and the recurrence as zeros, and the row's first real
    token is reset as position 0 is."""

    left_padding_exact = True  # padded tokens enter as zeros; a row's first real token restarts it

    def __init__(self, d_model: int, width: int, heads: int, *, conv_size: int = 4, act: str = "gelu_tanh",
                 form: str = "auto", cache_key: str = ""):
        super().__init__()
        if form not in FORMS:
            raise ArchError(f"form must be one of {FORMS}, not {form!r}")
        if width % heads:
            raise ArchError(f"rglru: heads ({heads}) must divide width ({width})")
        self.d_model, self.width, self.heads, self.conv_size = d_model, width, heads, conv_size
        self.act, self.form, self.cache_key = act, form, cache_key
        block = width // heads
        self.linear_x = nn.Parameter(torch.empty(width, d_model))
        self.linear_x_bias = nn.Parameter(torch.zeros(width))
        self.linear_y = nn.Parameter(torch.empty(width, d_model))
        self.linear_y_bias = nn.Parameter(torch.zeros(width))
        self.conv_weight = nn.Parameter(torch.empty(width, 1, conv_size))
        self.conv_bias = nn.Parameter(torch.zeros(width))
        self.input_gate_weight = nn.Parameter(torch.empty(heads, block, block))
        self.input_gate_bias = nn.Parameter(torch.zeros(heads, block))
        self.recurrent_gate_weight = nn.Parameter(torch.empty(heads, block, block))
        self.recurrent_gate_bias = nn.Parameter(torch.zeros(heads, block))
        self.recurrent_param = nn.Parameter(torch.empty(width))
        self.linear_out = nn.Parameter(torch.empty(d_model, width))
        self.linear_out_bias = nn.Parameter(torch.zeros(d_model))
        for p in (self.linear_x, self.linear_y, self.linear_out):
            nn.init.normal_(p, std=d_model ** -0.5)
        for p in (self.input_gate_weight, self.recurrent_gate_weight):
            nn.init.normal_(p, std=block ** -0.5)
        nn.init.kaiming_uniform_(self.conv_weight, a=5 ** 0.5)  # nn.Conv1d's default
        with torch.no_grad():  # the paper's init: a^c uniform in [0.9, 0.999], stored as softplus^-1(-log a)
            a_c = torch.empty(width).uniform_(0.9 ** 2, 0.999 ** 2).sqrt()
            self.recurrent_param.copy_(torch.log(torch.expm1(-torch.log(a_c) / GATE_EXPONENT)))

    def _gate(self, u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, _ = u.shape
        heads = u.view(b, t, self.heads, -1)  # (B, T, H, W/H)
        return torch.sigmoid(torch.einsum("bthi,hij->bthj", heads, weight) + bias).reshape(b, t, self.width)

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        t = x.shape[1]
        cache = ctx.cache if ctx is not None else None
        past = cache.get(self.cache_key) if cache is not None else None
        y = ACTIVATIONS[self.act](F.linear(x, self.linear_y, self.linear_y_bias))  # (B, T, W)
        u = F.linear(x, self.linear_x, self.linear_x_bias)  # (B, T, W)
        real = None
        if ctx is not None and ctx.attention_mask is not None:
            real = ctx.attention_mask[:, -t:, None].to(u.dtype)  # (B, T, 1) this call's tokens
            u = u * real  # padded tokens enter the conv as the zeros before a sequence's start
        u = u.transpose(1, 2)  # (B, W, T)
        window = F.pad(u, (self.conv_size - 1, 0)) if past is None else torch.cat((past["conv"], u), dim=2)
        u = F.conv1d(window, self.conv_weight, self.conv_bias, groups=self.width).transpose(1, 2)  # (B, T, W)

        input_gate = self._gate(u, self.input_gate_weight, self.input_gate_bias)
        recurrent_gate = self._gate(u, self.recurrent_gate_weight, self.recurrent_gate_bias)
        log_a = -GATE_EXPONENT * recurrent_gate * F.softplus(self.recurrent_param)  # (B, T, W)
        multiplier = torch.sqrt(1 - torch.exp(2 * log_a))
        reset = self._reset(ctx, x)  # (B or 1, T, 1): the first token of a sequence takes x as it is
        multiplier = torch.where(reset, torch.ones_like(multiplier), multiplier)
        inputs = (u * input_gate * multiplier.to(u.dtype)).float()
        if real is not None:
            inputs = inputs * real.float()  # the state stays zero until the row's first real token
        # h is zero before position 0, and before a padded row's first real token: a_t at a reset
        # multiplies zero, so it need not be zeroed (and the parallel form keeps no -inf logs)
        h0 = past["state"] if past is not None else inputs.new_zeros(x.shape[0], self.width)
        a = torch.exp(log_a.float())
        use_step = self.form == "recurrent" or (self.form == "auto" and t == 1)
        h = (scan_recurrent if use_step else scan_parallel)(a, inputs, h0)  # (B, T, W) float32
        if cache is not None:
            cache.put(self.cache_key, conv=window[:, :, window.shape[2] - (self.conv_size - 1):], state=h[:, -1])
        return F.linear(h.to(x.dtype) * y, self.linear_out, self.linear_out_bias)  # (B, T, d_model)

    @staticmethod
    def _reset(ctx: Context | None, x: torch.Tensor) -> torch.Tensor:
        """Where the recurrence restarts: absolute position 0 and, with padding, each row's first
        real token (a real token after a padded one)."""
        t = x.shape[1]
        if ctx is None:
            positions = torch.arange(t, device=x.device)
        else:
            positions = ctx.positions.to(x.device)
        reset = (positions == 0)[None, :, None]  # (1, T, 1)
        if ctx is not None and ctx.attention_mask is not None:
            mask = ctx.attention_mask.bool()  # (B, S_total)
            before = F.pad(mask, (1, 0))[:, :-1]  # the previous token's mask (none before the first)
            first_real = (mask & ~before)[:, -t:, None]  # (B, T, 1)
            reset = reset | first_real
        return reset

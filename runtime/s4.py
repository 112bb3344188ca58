"""S4D, the diagonal structured state space layer (Gu, Gupta, Goel & Ré 2022, "On the
Parameterization and Initialization of Diagonal State Space Models"), laid out as the authors'
minimal S4D module. Per channel h, `state / 2` complex modes with A = -exp(log_A_real) + i·A_imag,
input and output vectors B and C, a step dt = exp(log_dt) and zero-order-hold discretisation

    Ā = exp(dt·A),   B̄ = (Ā - 1) / A · B,   x_t = Ā x_{t-1} + B̄ u_t,   y_t = 2·Re(C x_t) + D u_t

(the conjugate modes are implied: 2·Re). Prefill runs the convolution form, y = K * u with the
kernel K_l = 2·Re(Σ_n C_n B̄_n Ā_n^l) built by a Vandermonde product and applied by FFT; decoding
runs the recurrence. Both are the same linear map, and both leave the same cache entry (the
complex state x), so a cached decode equals the full forward. After the SSM: GELU, then the
output projection to 2·d_model and a GLU, as the authors' layer.

Cost per token (FLOPs, multiply-add = 2), recurrent step: 7·state per channel (per complex mode
the update Ā·x + B̄·u and the read 2·Re(C·x)), 2·d_model for D, 2·d_model·2·d_model for the output
projection. State bytes per sequence: d_model · state / 2 complex64 values = 4 · d_model · state."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archlang.spec.errors import ArchError

from .context import Context

FORMS = ("auto", "convolution", "recurrent")


def discretize(log_dt, log_a_real, a_imag, b, c):
    """(Ā, B̄, C) complex (H, N/2) by zero-order hold; b and c are (H, N/2, 2) real views."""
    dt = torch.exp(log_dt.float())[:, None]  # (H, 1)
    a = torch.complex(-torch.exp(log_a_real.float()), a_imag.float())  # (H, N/2)
    a_bar = torch.exp(dt * a)
    b_bar = (a_bar - 1) / a * torch.view_as_complex(b.float().contiguous())
    return a_bar, b_bar, torch.view_as_complex(c.float().contiguous())


def s4d_kernel(a_bar, b_bar, c, length: int) -> torch.Tensor:
    """K (H, L): K_l = 2·Re(Σ_n C_n B̄_n Ā_n^l), the Vandermonde product of the modes' powers."""
    powers = torch.exp(torch.log(a_bar)[..., None] * torch.arange(length, device=a_bar.device))  # (H, N/2, L)
    return 2 * torch.einsum("hn,hnl->hl", c * b_bar, powers).real


def s4d_convolution(u, a_bar, b_bar, c, state=None):
    """The convolution form. u (B, H, T) real; state (B, H, N/2) complex or None. Returns (y
    without the D skip (B, H, T), the final state). With a state, its decayed read
    2·Re(C Ā^(t+1) x_0) is added and it is carried into the final state."""
    t = u.shape[-1]
    k = s4d_kernel(a_bar, b_bar, c, t)  # (H, T)
    n = 2 * t
    y = torch.fft.irfft(torch.fft.rfft(u.float(), n=n) * torch.fft.rfft(k, n=n), n=n)[..., :t]  # causal conv
    log_a = torch.log(a_bar)  # (H, N/2)
    # the final state: x_T = Ā^T x_0 + Σ_s Ā^(T-1-s) B̄ u_s
    back = torch.exp(log_a[..., None] * torch.arange(t - 1, -1, -1, device=u.device))  # (H, N/2, T)
    final = torch.einsum("hnt,bht->bhn", back * b_bar[..., None], u.float().to(back.dtype))
    if state is not None:
        ahead = torch.exp(log_a[..., None] * torch.arange(1, t + 1, device=u.device))  # (H, N/2, T)
        y = y + 2 * torch.einsum("hn,bhn,hnt->bht", c, state, ahead).real
        final = final + state * torch.exp(log_a * t)
    return y, final


def s4d_recurrent(u, a_bar, b_bar, c, state=None):
    """The recurrence, one token at a time: x_t = Ā x_{t-1} + B̄ u_t, y_t = 2·Re(C x_t)."""
    bsz, heads, t = u.shape
    x = state if state is not None else torch.zeros(bsz, *a_bar.shape, dtype=a_bar.dtype, device=u.device)
    outs = []
    for s in range(t):
        x = a_bar * x + b_bar * u[:, :, s, None].float()
        outs.append(2 * (c * x).sum(-1).real)
    y = torch.stack(outs, dim=-1) if outs else u.new_zeros(bsz, heads, 0).float()
    return y, x


class S4D(nn.Module):
    """The S4D layer, x (B, T, d_model) → (B, T, d_model): per channel the diagonal SSM of `state`
    real dimensions (state / 2 complex modes) plus the skip D·u, GELU, then out_proj (2·d_model,
    d_model) with out_proj_bias and a GLU (the first half gated by sigmoid of the second).

    Parameters: log_dt (d_model,), log_A_real, A_imag (d_model, state / 2), B, C (d_model, state / 2, 2)
    (complex numbers as real pairs), D (d_model,), out_proj, out_proj_bias. Initialised as S4D-Lin:
    A = -1/2 + iπn, B = 1, C normal, dt log-uniform in [dt_min, dt_max].

    With `ctx.attention_mask`, padding tokens enter as zero input: with left padding the state is
    still zero at the first real token."""
    left_padding_exact = True  # a padded token enters as zero input

    def __init__(self, d_model: int, state: int = 64, *, dt_min: float = 0.001, dt_max: float = 0.1,
                 form: str = "auto", cache_key: str = ""):
        super().__init__()
        if form not in FORMS:
            raise ArchError(f"form must be one of {FORMS}, not {form!r}")
        if state % 2:
            raise ArchError(f"s4d: state ({state}) must be even (state / 2 complex modes and their conjugates)")
        self.d_model, self.state, self.form, self.cache_key = d_model, state, form, cache_key
        modes = state // 2
        self.log_dt = nn.Parameter(torch.rand(d_model) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.log_A_real = nn.Parameter(torch.full((d_model, modes), math.log(0.5)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(modes, dtype=torch.float32).repeat(d_model, 1))
        self.B = nn.Parameter(torch.view_as_real(torch.ones(d_model, modes, dtype=torch.cfloat)).clone())
        self.C = nn.Parameter(torch.view_as_real(torch.randn(d_model, modes, dtype=torch.cfloat)).clone())
        self.D = nn.Parameter(torch.randn(d_model))
        self.out_proj = nn.Parameter(torch.empty(2 * d_model, d_model))
        self.out_proj_bias = nn.Parameter(torch.zeros(2 * d_model))
        nn.init.normal_(self.out_proj, std=0.02)

    def state_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Cache bytes per sequence: d_model · state / 2 complex64 values."""
        return self.d_model * self.state // 2 * 8

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        t = x.shape[1]
        if ctx is not None and ctx.attention_mask is not None:  # padding enters as zero input
            x = x * ctx.attention_mask[:, -t:, None].to(x.dtype)
        cache = ctx.cache if ctx is not None else None
        past = cache.get(self.cache_key) if cache is not None else None
        u = x.transpose(1, 2)  # (B, H, T)
        a_bar, b_bar, c = discretize(self.log_dt, self.log_A_real, self.A_imag, self.B, self.C)
        state = past["state"] if past is not None else None
        if self.form == "recurrent" or (self.form == "auto" and t == 1):
            y, state = s4d_recurrent(u, a_bar, b_bar, c, state)
        else:
            y, state = s4d_convolution(u, a_bar, b_bar, c, state)
        if cache is not None:
            cache.put(self.cache_key, state=state)
        y = F.gelu(y + u.float() * self.D.float()[:, None]).transpose(1, 2).to(x.dtype)  # (B, T, H)
        return F.glu(F.linear(y, self.out_proj, self.out_proj_bias), dim=-1)  # (B, T, H)

"""Diagonal structured state spaces as token mixers: S4D (runtime/s4.py)."""

from __future__ import annotations

from .base import Cost, OpDef, Refusal, Saved, attr, register

_ATTENTION_POSITIONS = ("rope", "alibi", "relative")


@register
class S4D(OpDef):
    """S4D (`rt.S4D`): per channel a diagonal SSM of state / 2 complex modes, discretised by zero-order
    hold, plus the skip D·u; GELU; out_proj to 2·d_model with a bias and a GLU.

    FLOPs per token (multiply-add = 2), as a decoded token costs: 7·state per channel (per complex
    mode the update Ā·x + B̄·u and the read 2·Re(C·x)), 2·d_model for D, 2·d_model·2·d_model for the
    output projection. State per sequence, the runtime's cache: d_model · state / 2 complex64 values,
    4 · d_model · state bytes."""

    name = "s4d"
    summary = "S4D diagonal state space layer (ZOH, convolution or recurrence, GELU, GLU output)"
    attrs = {"d_model": attr(int), "state": attr(int, doc="real dimensions of each channel's state (even)")}
    arity = (1, 1)
    picture = "ssm"
    mixer_kinds = ("s4d",)
    refused_positions = {
        ("s4d", pos): Refusal(f"{pos} acts inside softmax attention and s4d orders tokens by its state space",
                              "remove `position` (or use sinusoidal() / learned()); in a hybrid, the attention "
                              "layers take it")
        for pos in _ATTENTION_POSITIONS
    }
    refused_in_encoders = {
        "s4d": Refusal("s4d is causal here (its kernel reads the past only), and an encoder's layers see both "
                       "directions", "use attention in encoder layers; put s4d in a decoder"),
    }
    hf_params = None  # no Hugging Face family uses it

    def params(self, a, shape):
        d, modes = a["d_model"], a["state"] // 2
        return {"log_dt": (d,), "log_A_real": (d, modes), "A_imag": (d, modes), "B": (d, modes, 2),
                "C": (d, modes, 2), "D": (d,), "out_proj": (2 * d, d), "out_proj_bias": (2 * d,)}

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        if widths and widths[0] != a["d_model"]:
            ctx.fail(node, f"s4d over {a['d_model']} channels applied to width {widths[0]}")
        if a["state"] % 2:
            ctx.fail(node, f"s4d: state ({a['state']}) must be even")

    def category(self, d):
        return "ssm"

    def saved(self, d, ctx):
        """Beside its input: the SSM's output, its GELU, the output projection's 2·d_model values."""
        return Saved(private_bytes=4 * d["attrs"]["d_model"] * ctx.nbytes)

    def cost(self, d, ctx):
        a = d["attrs"]
        dm = a["d_model"]
        flops = 7 * a["state"] * dm + 2 * dm + 2 * dm * 2 * dm
        return Cost(flops=flops, state_bytes=4 * dm * a["state"])

    def module(self, d, emit):
        a = d["attrs"]
        return f"rt.S4D({a['d_model']}, {a['state']}, cache_key={emit.cache_key})"

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"

"""State space mixers: Mamba's selective scan."""

from __future__ import annotations

from .base import Cost, OpDef, Refusal, Saved, attr, register

_ATTENTION_POSITIONS = ("rope", "alibi", "relative")


@register
class Mamba(OpDef):
    name = "ssm"
    summary = "Mamba selective state space mixer (in/conv/x/dt/out projections and the scan)"
    attrs = {
        "kind": attr(str, doc="mamba"), "d_model": attr(int), "d_inner": attr(int), "d_state": attr(int),
        "d_conv": attr(int), "dt_rank": attr(int), "conv_bias": attr(bool), "bias": attr(bool),
        "inner_norms": attr(bool, doc="RMSNorm on dt, B and C (Jamba)"), "norm_eps": attr(float),
    }
    arity = (1, 1)
    picture = "ssm"
    mixer_kinds = ("mamba",)
    refused_positions = {
        ("mamba", pos): Refusal(f"{pos} acts inside attention and mamba orders tokens by its recurrence",
                                "remove `position` (or use sinusoidal() / learned()); in a hybrid, the attention "
                                "layers take it")
        for pos in _ATTENTION_POSITIONS
    }
    refused_in_encoders = {
        "mamba": Refusal("mamba is causal (it reads the past only), and an encoder's layers see both directions",
                         "use attention in encoder layers; put mamba in a decoder"),
    }
    hf_params = {
        "in_proj": "in_proj.weight", "conv_weight": "conv1d.weight", "conv_bias": "conv1d.bias", "x_proj": "x_proj.weight",
        "dt_proj_weight": "dt_proj.weight", "dt_proj_bias": "dt_proj.bias", "A_log": "A_log", "D": "D",
        "out_proj": "out_proj.weight", "dt_norm": "dt_layernorm.weight", "b_norm": "b_layernorm.weight",
        "c_norm": "c_layernorm.weight", "in_proj_bias": "in_proj.bias", "out_proj_bias": "out_proj.bias",
    }

    def params(self, a, shape):
        d, di, n, r = a["d_model"], a["d_inner"], a["d_state"], a["dt_rank"]
        params = {
            "in_proj": (2 * di, d), "conv_weight": (di, 1, a["d_conv"]), "x_proj": (r + 2 * n, di),
            "dt_proj_weight": (di, r), "dt_proj_bias": (di,), "A_log": (di, n), "D": (di,), "out_proj": (d, di),
        }
        if a["conv_bias"]:
            params["conv_bias"] = (di,)
        if a["bias"]:
            params["in_proj_bias"] = (2 * di,)
            params["out_proj_bias"] = (d,)
        if a["inner_norms"]:
            params.update(dt_norm=(r,), b_norm=(n,), c_norm=(n,))
        return params

    def verify(self, node, d, widths, ctx):
        if widths and widths[0] != d["attrs"]["d_model"]:
            ctx.fail(node, f"mamba over {d['attrs']['d_model']} channels applied to width {widths[0]}")

    def category(self, d):
        return "ssm"

    def saved(self, d, ctx):
        """Beside its input: the in-projection's x and z halves, the convolved x, the
        x-projection's dt, B and C, the expanded dt, and the gated scan output that the
        out-projection reads; the scan's states are recomputed in backward."""
        a = d["attrs"]
        return Saved(private_bytes=(5 * a["d_inner"] + a["dt_rank"] + 2 * a["d_state"]) * ctx.nbytes)

    def cost(self, d, ctx):
        a = d["attrs"]
        di, n, r, dc, dm = a["d_inner"], a["d_state"], a["dt_rank"], a["d_conv"], a["d_model"]
        flops = 2 * (2 * di * dm + di * (r + 2 * n) + r * di + dm * di)  # in, x, dt, out projections
        flops += 2 * di * dc  # depthwise causal conv
        flops += 2 * 3 * di * n  # dA*h + dB*x, and the readout C·h
        return Cost(flops=flops, state_bytes=(di * n + di * (dc - 1)) * ctx.nbytes)

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.Mamba({a['d_model']}, {a['d_inner']}, {a['d_state']}, {a['d_conv']}, {a['dt_rank']}, "
                f"conv_bias={a['conv_bias']!r}, bias={a['bias']!r}, inner_norms={a['inner_norms']!r}, "
                f"norm_eps={a['norm_eps']!r}, cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"

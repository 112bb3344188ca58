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
        "weightless_norms": attr(bool, default=None, doc="the inner norms have no weight (Falcon-Mamba)"),
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
        if a["inner_norms"] and not a["weightless_norms"]:
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
                f"norm_eps={a['norm_eps']!r}{', weightless_norms=True' if a['weightless_norms'] else ''}, "
                f"cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"


@register
class Mamba2(OpDef):
    """Mamba-2 (`rt.Mamba2`, runtime/mamba2.py): in_proj to z, xBC and dt; a causal depthwise conv
    over xBC; the SSD scan with one scalar decay per head; the gated grouped RMSNorm; out_proj.

    FLOPs per token (multiply-add = 2), as a decoded token costs, with conv_dim = d_inner + 2·G·N:
    2·d_model·(d_inner + conv_dim + heads) + 2·d_inner·d_model (in_proj, out_proj), 2·conv_dim·d_conv
    (the conv), 5·d_inner·d_state (the state update exp(dt·A)·h + dt·x·B, and the readout C·h).
    Element-wise work (softplus, D skip, gate, norm) is not counted, as for every op. State per
    sequence, the runtime's cache: the conv window (d_conv - 1)·conv_dim values in the model's
    dtype and the SSM state d_inner·d_state values in float32."""

    name = "mamba2"
    summary = "Mamba-2 multi-head state space mixer (in projection, conv, SSD scan, gated norm, out projection)"
    attrs = {
        "d_model": attr(int), "d_inner": attr(int), "d_state": attr(int), "d_conv": attr(int), "heads": attr(int),
        "groups": attr(int), "chunk": attr(int), "conv_bias": attr(bool), "bias": attr(bool),
        "gated_norm": attr(bool, doc="grouped RMSNorm with a weight on the gated output"),
        "norm_before_gate": attr(bool, doc="norm(y) · silu(z) rather than norm(y · silu(z))"),
        "norm_eps": attr(float), "d_skip": attr(bool, doc="the per-head skip D · x"),
        "dt_limit": attr(list, default=None, doc="[lo, hi]: dt clamped after its softplus; None: unclamped"),
        "in_proj_multipliers": attr(list, default=None, doc="[z, x, B, C, dt]: each part of the in-projection's "
                                    "output times its factor (Falcon-H1's µP); None: all 1"),
    }
    arity = (1, 1)
    picture = "ssm"
    mixer_kinds = ("mamba2",)
    refused_positions = {
        ("mamba2", pos): Refusal(f"{pos} acts inside attention and mamba2 orders tokens by its recurrence",
                                 "remove `position` (or use sinusoidal() / learned()); in a hybrid, the attention "
                                 "layers take it")
        for pos in _ATTENTION_POSITIONS
    }
    refused_in_encoders = {
        "mamba2": Refusal("mamba2 is causal (it reads the past only), and an encoder's layers see both directions",
                          "use attention in encoder layers; put mamba2 in a decoder"),
    }
    # Hugging Face's Mamba2Mixer (and the Mamba-2 mixers of its hybrids)
    hf_params = {
        "in_proj": "in_proj.weight", "in_proj_bias": "in_proj.bias", "conv_weight": "conv1d.weight",
        "conv_bias": "conv1d.bias", "dt_bias": "dt_bias", "A_log": "A_log", "D": "D", "norm_weight": "norm.weight",
        "out_proj": "out_proj.weight", "out_proj_bias": "out_proj.bias",
    }

    @staticmethod
    def conv_dim(a) -> int:
        return a["d_inner"] + 2 * a["groups"] * a["d_state"]

    def params(self, a, shape):
        d, di, heads, conv = a["d_model"], a["d_inner"], a["heads"], self.conv_dim(a)
        params = {"in_proj": (di + conv + heads, d), "conv_weight": (conv, 1, a["d_conv"]), "dt_bias": (heads,),
                  "A_log": (heads,)}
        if a["d_skip"]:
            params["D"] = (heads,)
        if a["gated_norm"]:
            params["norm_weight"] = (di,)
        params["out_proj"] = (d, di)
        if a["conv_bias"]:
            params["conv_bias"] = (conv,)
        if a["bias"]:
            params["in_proj_bias"] = (di + conv + heads,)
            params["out_proj_bias"] = (d,)
        return params

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        if widths and widths[0] != a["d_model"]:
            ctx.fail(node, f"mamba2 over {a['d_model']} channels applied to width {widths[0]}")
        if a["d_inner"] % a["heads"] or a["heads"] % a["groups"]:
            ctx.fail(node, f"mamba2: heads ({a['heads']}) must divide d_inner ({a['d_inner']}) and groups "
                           f"({a['groups']}) must divide heads")

    def category(self, d):
        return "ssm"

    def saved(self, d, ctx):
        """Beside its input: the in-projection's output (z, xBC and dt), the convolved xBC, the
        scan's output y and the gated, normalised product the out-projection reads; the chunked
        scan's states are recomputed in backward, as the fused SSD kernels do."""
        a = d["attrs"]
        di, conv = a["d_inner"], self.conv_dim(a)
        return Saved(private_bytes=((di + conv + a["heads"]) + conv + 2 * di) * ctx.nbytes)

    def cost(self, d, ctx):
        a = d["attrs"]
        dm, di, n, conv = a["d_model"], a["d_inner"], a["d_state"], self.conv_dim(a)
        flops = 2 * dm * (di + conv + a["heads"]) + 2 * di * dm  # in_proj, out_proj
        flops += 2 * conv * a["d_conv"]  # depthwise causal conv
        flops += 5 * di * n  # state update exp(dt·A)·h + dt·x·B (3), readout C·h (2)
        state = (a["d_conv"] - 1) * conv * ctx.nbytes + 4 * di * n  # the SSM state is kept in float32
        return Cost(flops=flops, state_bytes=state)

    def module(self, d, emit):
        a = d["attrs"]
        limit = f", dt_limit=({a['dt_limit'][0]!r}, {a['dt_limit'][1]!r})" if a["dt_limit"] is not None else ""
        if a.get("in_proj_multipliers") is not None:
            limit += f", in_proj_multipliers={tuple(a['in_proj_multipliers'])!r}"
        return (f"rt.Mamba2({a['d_model']}, {a['d_inner']}, {a['d_state']}, {a['d_conv']}, {a['heads']}, "
                f"n_groups={a['groups']}, chunk={a['chunk']}, conv_bias={a['conv_bias']!r}, bias={a['bias']!r}, "
                f"norm_eps={a['norm_eps']!r}, gated_norm={a['gated_norm']!r}, "
                f"norm_before_gate={a['norm_before_gate']!r}, D_skip={a['d_skip']!r}{limit}, "
                f"cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"

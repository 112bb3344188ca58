"""MiniMax-01's lightning attention: linear attention with a fixed decay per head that weakens
with depth, normalised and gated by sigmoid (runtime/lightning.py)."""

from __future__ import annotations

from .base import Cost, OpDef, Saved, attr, register
from .linear_mixers import _refusals


@register
class Lightning(OpDef):
    """Lightning attention (`rt.Lightning`): q, k, v projections through `act`, the fixed-decay
    recurrence per head (decay rates from the block's layer index among `layers`), an RMSNorm over
    all heads with a weight, times sigmoid of gate_proj(x), out_proj.

    FLOPs per token (multiply-add = 2), keys = heads · key_dim, values = heads · value_dim:
    2·d_model·(2·keys + 2·values) + 2·values·d_model (the projections), 5·key_dim·value_dim per head
    (the recurrent step: decay, write, read; runtime/gated_linear.py). State per sequence: heads ·
    key_dim · value_dim values in float32."""

    name = "lightning"
    summary = "lightning attention (activated q/k/v, fixed per-head decay by depth, norm, sigmoid gate)"
    attrs = {
        "d_model": attr(int), "heads": attr(int), "key_dim": attr(int), "value_dim": attr(int),
        "layers": attr(int, doc="the layers of the block's stack: the decay weakens from the first to the last"),
        "act": attr(str, doc="activation of q, k and v"), "chunk": attr(int), "norm_eps": attr(float),
    }
    arity = (1, 1)
    picture = "ssm"
    mixer_kinds = ("lightning",)
    refused_positions = _refusals("lightning")["refused_positions"]
    refused_in_encoders = _refusals("lightning")["refused_in_encoders"]
    # Hugging Face's MiniMaxLightningAttention fuses q, k, v per head in qkv_proj: the family's rules
    # (interop/hf_weights.py) name its weights.
    hf_params = None

    @staticmethod
    def widths(a) -> tuple[int, int]:
        return a["heads"] * a["key_dim"], a["heads"] * a["value_dim"]

    def params(self, a, shape):
        d = a["d_model"]
        keys, values = self.widths(a)
        return {"q_proj": (keys, d), "k_proj": (keys, d), "v_proj": (values, d), "gate_proj": (values, d),
                "norm_weight": (values,), "out_proj": (d, values)}

    def verify(self, node, d, widths, ctx):
        if widths and widths[0] != d["attrs"]["d_model"]:
            ctx.fail(node, f"lightning over {d['attrs']['d_model']} channels applied to width {widths[0]}")

    def category(self, d):
        return "ssm"

    def saved(self, d, ctx):
        """Beside its input: the four projections' outputs, the activated q, k, v, the recurrence's
        output, its norm and the gated product the out-projection reads; chunk states are recomputed."""
        keys, values = self.widths(d["attrs"])
        return Saved(private_bytes=(4 * keys + 7 * values) * ctx.nbytes)

    def cost(self, d, ctx):
        a = d["attrs"]
        keys, values = self.widths(a)
        flops = 2 * a["d_model"] * (2 * keys + 2 * values) + 2 * values * a["d_model"]  # the projections
        flops += 5 * a["key_dim"] * a["value_dim"] * a["heads"]  # the recurrent step per head
        return Cost(flops=flops, state_bytes=a["heads"] * a["key_dim"] * a["value_dim"] * 4)  # float32

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.Lightning({a['d_model']}, {a['heads']}, {a['key_dim']}, {a['value_dim']}, layer={emit.layer}, "
                f"layers={a['layers']}, act={a['act']!r}, chunk={a['chunk']}, norm_eps={a['norm_eps']!r}, "
                f"cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"

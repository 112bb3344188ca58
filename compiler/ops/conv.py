"""Convolutional token mixers: LFM2's gated short convolution."""

from __future__ import annotations

from .base import Cost, OpDef, Refusal, Saved, attr, register

_ATTENTION_POSITIONS = ("rope", "alibi", "relative")


@register
class ShortConv(OpDef):
    """LFM2's gated short convolution (`rt.ShortConv`, runtime/short_conv.py): in_proj d → 3d gives
    B, C and x; y = C ⊙ conv(B ⊙ x), a causal depthwise conv of `kernel` taps; out_proj.

    FLOPs per token (multiply-add = 2): 2·d·3d + 2·d·d (in_proj, out_proj), 2·d·kernel (the conv);
    the two gating products are element-wise and not counted, as for every op. State per sequence,
    the runtime's cache: the conv window, the last kernel - 1 values of B ⊙ x, (kernel - 1)·d values
    in the model's dtype."""

    name = "short_conv"
    summary = "gated short convolution (in projection to B, C, x; C ⊙ causal depthwise conv(B ⊙ x); out projection)"
    attrs = {
        "d_model": attr(int), "kernel": attr(int, doc="taps of the causal depthwise conv"),
        "bias": attr(bool, doc="biases on in_proj and out_proj"), "conv_bias": attr(bool, doc="a bias on the conv"),
    }
    arity = (1, 1)
    picture = "ssm"
    mixer_kinds = ("short_conv",)
    refused_positions = {
        ("short_conv", pos): Refusal(f"{pos} acts inside attention and short_conv orders tokens by its convolution",
                                     "remove `position` (or use sinusoidal() / learned()); in a hybrid, the attention "
                                     "layers take it")
        for pos in _ATTENTION_POSITIONS
    }
    refused_in_encoders = {
        "short_conv": Refusal("short_conv is a causal convolution (it reads the past only), and an encoder's layers "
                              "see both directions", "use attention in encoder layers; put short_conv in a decoder"),
    }
    # Hugging Face's Lfm2ShortConv (its conv is an nn.Conv1d: weight (d, 1, kernel), one to one)
    hf_params = {
        "in_proj": "in_proj.weight", "in_proj_bias": "in_proj.bias", "conv_weight": "conv.weight",
        "conv_bias": "conv.bias", "out_proj": "out_proj.weight", "out_proj_bias": "out_proj.bias",
    }

    def params(self, a, shape):
        d = a["d_model"]
        params = {"in_proj": (3 * d, d), "conv_weight": (d, 1, a["kernel"]), "out_proj": (d, d)}
        if a["bias"]:
            params["in_proj_bias"] = (3 * d,)
            params["out_proj_bias"] = (d,)
        if a["conv_bias"]:
            params["conv_bias"] = (d,)
        return params

    def verify(self, node, d, widths, ctx):
        if widths and widths[0] != d["attrs"]["d_model"]:
            ctx.fail(node, f"short_conv over {d['attrs']['d_model']} channels applied to width {widths[0]}")

    def category(self, d):
        return "ssm"

    def saved(self, d, ctx):
        """Beside its input: the in-projection's B, C and x, the product B ⊙ x the conv reads, and
        the conv's output and the gated product C ⊙ conv that the out-projection reads."""
        return Saved(private_bytes=6 * d["attrs"]["d_model"] * ctx.nbytes)

    def cost(self, d, ctx):
        a = d["attrs"]
        dm = a["d_model"]
        flops = 2 * dm * 3 * dm + 2 * dm * dm  # in_proj, out_proj
        flops += 2 * dm * a["kernel"]  # depthwise causal conv
        return Cost(flops=flops, state_bytes=(a["kernel"] - 1) * dm * ctx.nbytes)

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.ShortConv({a['d_model']}, {a['kernel']}, bias={a['bias']!r}, conv_bias={a['conv_bias']!r}, "
                f"cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"

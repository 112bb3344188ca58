"""Gated linear-attention mixers: a fixed-size state per head that decays and is written at every
token (runtime/gated_linear.py, runtime/linear_mixers.py). Gated DeltaNet for now."""

from __future__ import annotations

from .base import Cost, OpDef, Refusal, Saved, attr, register

_ATTENTION_POSITIONS = ("rope", "alibi", "relative")


@register
class GatedDeltaNet(OpDef):
    """Gated DeltaNet (`rt.GatedDeltaNetLayer`): q, k, v, z, b, a projections; a causal depthwise conv
    over q, k, v; L2-normalised q, k; the gated delta rule per value head; the gated RMSNorm; out_proj.

    FLOPs per token (multiply-add = 2), as a decoded token costs, with keys = key_heads · key_dim,
    values = value_heads · value_dim and conv_dim = 2 · keys + values:
    2·d_model·(2·keys + 2·values + 2·value_heads) + 2·values·d_model (the projections),
    2·conv_dim·conv_size (the conv), 7·key_dim·value_dim per value head (the recurrent step: decay,
    the delta rule's read k^T S and write, and the readout; runtime/gated_linear.py). Element-wise
    work (L2 norms, gates, softplus, the norm) is not counted, as for every op. State per sequence,
    the runtime's cache: value_heads · key_dim · value_dim values in float32 and the conv window
    conv_dim · (conv_size - 1) values in the model's dtype."""

    name = "gated_deltanet"
    summary = "Gated DeltaNet linear attention (projections, short conv, gated delta rule, gated norm)"
    attrs = {
        "d_model": attr(int), "key_heads": attr(int), "value_heads": attr(int), "key_dim": attr(int),
        "value_dim": attr(int), "conv_size": attr(int), "chunk": attr(int), "norm_eps": attr(float),
    }
    arity = (1, 1)
    picture = "ssm"
    mixer_kinds = ("gated_deltanet",)
    refused_positions = {
        ("gated_deltanet", pos): Refusal(f"{pos} acts inside softmax attention and gated_deltanet orders tokens "
                                         "by its recurrence", "remove `position` (or use sinusoidal() / learned()); "
                                         "in a hybrid, the attention layers take it")
        for pos in _ATTENTION_POSITIONS
    }
    refused_in_encoders = {
        "gated_deltanet": Refusal("gated_deltanet is causal (it reads the past only), and an encoder's layers "
                                  "see both directions", "use attention in encoder layers; put gated_deltanet in "
                                  "a decoder"),
    }
    # Hugging Face's Qwen3NextGatedDeltaNet fuses q, k, v, z and b, a, interleaved per key head, in
    # in_proj_qkvz and in_proj_ba: the family's rules (interop/hf_weights.py) name all of its weights.
    hf_params = None

    @staticmethod
    def widths(a) -> tuple[int, int, int]:
        """(keys, values, conv_dim): the q/k width, the v/z width, and the channels the conv sees."""
        keys, values = a["key_heads"] * a["key_dim"], a["value_heads"] * a["value_dim"]
        return keys, values, 2 * keys + values

    def params(self, a, shape):
        d, heads = a["d_model"], a["value_heads"]
        keys, values, conv = self.widths(a)
        return {
            "q_proj": (keys, d), "k_proj": (keys, d), "v_proj": (values, d), "z_proj": (values, d),
            "b_proj": (heads, d), "a_proj": (heads, d), "conv_weight": (conv, 1, a["conv_size"]),
            "A_log": (heads,), "dt_bias": (heads,), "norm_weight": (a["value_dim"],), "out_proj": (d, values),
        }

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        if widths and widths[0] != a["d_model"]:
            ctx.fail(node, f"gated_deltanet over {a['d_model']} channels applied to width {widths[0]}")
        if a["value_heads"] % a["key_heads"]:
            ctx.fail(node, f"gated_deltanet: value_heads ({a['value_heads']}) must be a multiple of key_heads "
                           f"({a['key_heads']})")

    def category(self, d):
        return "ssm"

    def saved(self, d, ctx):
        """Beside its input: the six projections' outputs, the convolved q, k, v, the delta rule's
        output and the gated, normalised product the out-projection reads; the chunked form's
        states are recomputed in backward."""
        a = d["attrs"]
        keys, values, conv = self.widths(a)
        return Saved(private_bytes=(conv + values + 2 * a["value_heads"] + conv + 2 * values) * ctx.nbytes)

    def cost(self, d, ctx):
        a = d["attrs"]
        dm, heads, dk, dv = a["d_model"], a["value_heads"], a["key_dim"], a["value_dim"]
        keys, values, conv = self.widths(a)
        flops = 2 * dm * (2 * keys + 2 * values + 2 * heads) + 2 * values * dm  # projections
        flops += 2 * conv * a["conv_size"]  # depthwise causal conv
        flops += 7 * dk * dv * heads  # the recurrent step per value head
        state = heads * dk * dv * 4 + conv * (a["conv_size"] - 1) * ctx.nbytes  # the state is float32
        return Cost(flops=flops, state_bytes=state)

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.GatedDeltaNetLayer({a['d_model']}, {a['key_heads']}, {a['value_heads']}, {a['key_dim']}, "
                f"{a['value_dim']}, conv_size={a['conv_size']}, chunk={a['chunk']}, norm_eps={a['norm_eps']!r}, "
                f"cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"

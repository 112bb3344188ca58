"""Gated linear-attention mixers: a fixed-size state per head that decays and is written at every
token (runtime/gated_linear.py, runtime/linear_mixers.py): Gated DeltaNet, GLA, retention
and Kimi Delta Attention."""

from __future__ import annotations

import math

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


def _refusals(kind: str) -> dict:
    """What the recurrent mixers of this module refuse: positions that act inside softmax attention
    (in a hybrid the model's position goes to its attention layers), and encoder stacks."""
    return {
        "refused_positions": {
            (kind, pos): Refusal(f"{pos} acts inside softmax attention and {kind} orders tokens by its recurrence",
                                 "remove `position` (or use sinusoidal() / learned()); in a hybrid, the attention "
                                 "layers take it")
            for pos in _ATTENTION_POSITIONS
        },
        "refused_in_encoders": {
            kind: Refusal(f"{kind} is causal (it reads the past only), and an encoder's layers see both directions",
                          f"use attention in encoder layers; put {kind} in a decoder"),
        },
    }


class _GatedLinearHeads(OpDef):
    """gla and retention: `heads` heads of a (key_dim x value_dim) state, their q/k/v (and gate)
    projections inside. FLOPs per token: the projections, and 5·key_dim·value_dim per head for the
    recurrent step (decay, write, read; runtime/gated_linear.py). State per sequence: heads ·
    key_dim · value_dim values in float32."""

    abstract = True
    arity = (1, 1)
    picture = "ssm"
    hf_params = None  # no Hugging Face family uses these layers

    def verify(self, node, d, widths, ctx):
        if widths and widths[0] != d["attrs"]["d_model"]:
            ctx.fail(node, f"{self.name} over {d['attrs']['d_model']} channels applied to width {widths[0]}")

    def category(self, d):
        return "ssm"

    def saved(self, d, ctx):
        """Beside its input: the projections' outputs, the recurrence's output and the gated,
        normalised product the out-projection reads; the chunked states are recomputed."""
        return Saved(private_bytes=(sum(self.projections(d["attrs"]).values()) + 2 * self.values(d["attrs"]))
                     * ctx.nbytes)

    @staticmethod
    def values(a) -> int:
        return a["heads"] * a["value_dim"]

    def projections(self, a) -> dict[str, int]:
        """The projections of the input: name → output width."""
        raise NotImplementedError

    def cost(self, d, ctx):
        a = d["attrs"]
        flops = 2 * sum(math.prod(s) for s in self.params(a, d["shape"]).values() if len(s) == 2)  # the matmuls
        flops += 5 * a["key_dim"] * a["value_dim"] * a["heads"]  # the recurrent step per head
        return Cost(flops=flops, state_bytes=a["heads"] * a["key_dim"] * a["value_dim"] * 4)  # float32

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"


@register
class GLA(_GatedLinearHeads):
    """Gated linear attention (`rt.GLALayer`): q, k, v, g projections, the low-rank decay projection
    gk_down → gk_up (with a bias), the decay recurrence per key channel, the weighted RMSNorm per
    head × swish(g), out_proj."""

    name = "gla"
    summary = "gated linear attention (projections, low-rank decay gate, recurrence, gated norm)"
    attrs = {
        "d_model": attr(int), "heads": attr(int), "key_dim": attr(int), "value_dim": attr(int), "chunk": attr(int),
        "norm_eps": attr(float), "gate_rank": attr(int), "gate_logit_normalizer": attr(float),
    }
    mixer_kinds = ("gla",)
    refused_positions = _refusals("gla")["refused_positions"]
    refused_in_encoders = _refusals("gla")["refused_in_encoders"]

    def projections(self, a):
        keys, values = a["heads"] * a["key_dim"], self.values(a)
        return {"q_proj": keys, "k_proj": keys, "v_proj": values, "g_proj": values, "gk_down": a["gate_rank"]}

    def params(self, a, shape):
        d, keys = a["d_model"], a["heads"] * a["key_dim"]
        params = {name: (width, d) for name, width in self.projections(a).items()}
        params.update(gk_up=(keys, a["gate_rank"]), gk_up_bias=(keys,), norm_weight=(a["value_dim"],),
                      out_proj=(d, self.values(a)))
        return params

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.GLALayer({a['d_model']}, {a['heads']}, {a['key_dim']}, {a['value_dim']}, "
                f"gate_rank={a['gate_rank']}, gate_logit_normalizer={a['gate_logit_normalizer']!r}, "
                f"chunk={a['chunk']}, norm_eps={a['norm_eps']!r}, cache_key={emit.cache_key})")


@register
class Retention(_GatedLinearHeads):
    """Multi-scale retention (`rt.RetentionLayer`): q, k, v (and g) projections, the fixed-decay
    recurrence per head, with output_gate the RMSNorm per head (no weight) × swish(g), out_proj."""

    name = "retention"
    summary = "multi-scale retention (projections, fixed decay per head, optional gated norm)"
    attrs = {
        "d_model": attr(int), "heads": attr(int), "key_dim": attr(int), "value_dim": attr(int), "chunk": attr(int),
        "norm_eps": attr(float), "output_gate": attr(bool),
    }
    mixer_kinds = ("retention",)
    refused_positions = _refusals("retention")["refused_positions"]
    refused_in_encoders = _refusals("retention")["refused_in_encoders"]

    def projections(self, a):
        keys, values = a["heads"] * a["key_dim"], self.values(a)
        widths = {"q_proj": keys, "k_proj": keys, "v_proj": values}
        if a["output_gate"]:
            widths["g_proj"] = values
        return widths

    def params(self, a, shape):
        d = a["d_model"]
        params = {name: (width, d) for name, width in self.projections(a).items()}
        params["out_proj"] = (d, self.values(a))
        return params

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.RetentionLayer({a['d_model']}, {a['heads']}, {a['key_dim']}, {a['value_dim']}, "
                f"output_gate={a['output_gate']!r}, chunk={a['chunk']}, norm_eps={a['norm_eps']!r}, "
                f"cache_key={emit.cache_key})")


@register
class KDA(OpDef):
    """Kimi Delta Attention (`rt.KDALayer`): q, k, v projections; a causal depthwise conv over q, k,
    v; L2-normalised q, k; the decay per key channel from the low-rank f_a_proj → f_b_proj; β from
    b_proj; the delta rule per head; the RMSNorm per head gated by sigmoid of the low-rank g_a_proj →
    g_b_proj; out_proj.

    FLOPs per token (multiply-add = 2), as a decoded token costs, with width = heads · head_dim:
    2 × every projection's weights (q, k, v, the two low-rank pairs, b, out), 2·3·width·conv_size
    (the conv), 7·head_dim² per head (the recurrent step: decay, the delta rule's read k^T S and
    write, and the readout; the decay per channel costs what one per head does). Element-wise work
    is not counted, as for every op. State per sequence, the runtime's cache: heads · head_dim²
    values in float32 and the conv window 3 · width · (conv_size - 1) values in the model's dtype."""

    name = "kda"
    summary = "Kimi Delta Attention (projections, short conv, delta rule with a decay per channel, gated norm)"
    attrs = {
        "d_model": attr(int), "heads": attr(int), "head_dim": attr(int), "conv_size": attr(int), "chunk": attr(int),
        "norm_eps": attr(float),
    }
    arity = (1, 1)
    picture = "ssm"
    mixer_kinds = ("kda",)
    refused_positions = _refusals("kda")["refused_positions"]
    refused_in_encoders = _refusals("kda")["refused_in_encoders"]
    # Hugging Face's KimiLinearDeltaAttention keeps A_log as (1, 1, heads, 1): the family's rules
    # (interop/hf_weights.py) reshape it and name the rest.
    hf_params = None

    def params(self, a, shape):
        d, heads, dk = a["d_model"], a["heads"], a["head_dim"]
        width = heads * dk
        return {
            "q_proj": (width, d), "k_proj": (width, d), "v_proj": (width, d), "conv_weight": (3 * width, 1, a["conv_size"]),
            "f_a_proj": (dk, d), "f_b_proj": (width, dk), "dt_bias": (width,), "A_log": (heads,), "b_proj": (heads, d),
            "g_a_proj": (dk, d), "g_b_proj": (width, dk), "norm_weight": (dk,), "out_proj": (d, width),
        }

    def verify(self, node, d, widths, ctx):
        if widths and widths[0] != d["attrs"]["d_model"]:
            ctx.fail(node, f"kda over {d['attrs']['d_model']} channels applied to width {widths[0]}")

    def category(self, d):
        return "ssm"

    def saved(self, d, ctx):
        """Beside its input: the projections' outputs, the convolved q, k, v, the delta rule's output
        and the gated, normalised product the out-projection reads; the chunked form's states are
        recomputed in backward."""
        a = d["attrs"]
        width, dk = a["heads"] * a["head_dim"], a["head_dim"]
        projected = 3 * width + 2 * (dk + width) + a["heads"]
        return Saved(private_bytes=(projected + 3 * width + 2 * width) * ctx.nbytes)

    def cost(self, d, ctx):
        a = d["attrs"]
        heads, dk = a["heads"], a["head_dim"]
        width = heads * dk
        flops = 2 * sum(math.prod(s) for s in self.params(a, d["shape"]).values() if len(s) == 2)  # the matmuls
        flops += 2 * 3 * width * a["conv_size"]  # depthwise causal conv
        flops += 7 * dk * dk * heads  # the recurrent step per head
        state = heads * dk * dk * 4 + 3 * width * (a["conv_size"] - 1) * ctx.nbytes  # the state is float32
        return Cost(flops=flops, state_bytes=state)

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.KDALayer({a['d_model']}, {a['heads']}, {a['head_dim']}, conv_size={a['conv_size']}, "
                f"chunk={a['chunk']}, norm_eps={a['norm_eps']!r}, cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"

"""xLSTM's recurrent cells as token mixers: the matrix-memory mLSTM and the scalar-memory sLSTM
(runtime/xlstm.py)."""

from __future__ import annotations

from .base import Cost, OpDef, Refusal, Saved, attr, register

_ATTENTION_POSITIONS = ("rope", "alibi", "relative")


@register
class MLSTM(OpDef):
    """The mLSTM layer of xLSTM-7B (`rt.MLSTMLayer`): q, k, v and output-gate projections, soft-capped
    input and forget gates per head, the stabilised matrix memory (C, n, m), a LayerNorm per head,
    × sigmoid(output gate), out_proj.

    FLOPs per token (multiply-add = 2), as a decoded token costs, with keys = heads · key_dim and
    values = heads · value_dim: 2·d_model·(2·keys + 2·values + 2·heads) + 2·values·d_model (the
    projections), 5·key_dim·(value_dim + 1) per head (the recurrent step: decay, write and read of
    C and of n; runtime/xlstm.py). Element-wise work (gates, soft-caps, the norm) is not counted, as
    for every op. State per sequence, the runtime's cache: C, n and m per head in float32,
    heads · (key_dim · value_dim + key_dim + 1) · 4 bytes."""

    name = "mlstm"
    summary = "xLSTM's mLSTM (q/k/v and gate projections, exponential gating, matrix memory, head norm)"
    attrs = {
        "d_model": attr(int), "heads": attr(int), "key_dim": attr(int, doc="q/k width per head"),
        "value_dim": attr(int, doc="v width per head"),
        "gate_softcap": attr(float, default=None, doc="cap · tanh(x / cap) on the gate pre-activations"),
        "norm_eps": attr(float, doc="the per-head LayerNorm's epsilon"),
        "denominator_eps": attr(float, doc="added to the readout's denominator max(|n·q|, exp(-m))"),
        "chunk": attr(int, doc="the chunked form's length in prefill: the same function at any value"),
    }
    arity = (1, 1)
    picture = "ssm"
    mixer_kinds = ("mlstm",)
    refused_positions = {
        ("mlstm", pos): Refusal(f"{pos} acts inside softmax attention and mlstm orders tokens by its recurrence",
                                "remove `position` (or use sinusoidal() / learned()); in a hybrid, the attention "
                                "layers take it")
        for pos in _ATTENTION_POSITIONS
    }
    refused_in_encoders = {
        "mlstm": Refusal("mlstm is causal (it reads the past only), and an encoder's layers see both directions",
                         "use attention in encoder layers; put mlstm in a decoder"),
    }
    # Hugging Face's xLSTMLayer with weight_mode "single" (interop/hf_weights.py splits "fused")
    hf_params = {
        "q_proj": "q.weight", "k_proj": "k.weight", "v_proj": "v.weight", "ogate_proj": "ogate_preact.weight",
        "igate_proj": "igate_preact.weight", "igate_bias": "igate_preact.bias",
        "fgate_proj": "fgate_preact.weight", "fgate_bias": "fgate_preact.bias",
        "norm_weight": "multihead_norm.weight", "out_proj": "out_proj.weight",
    }

    @staticmethod
    def widths(a) -> tuple[int, int]:
        """(keys, values): the q/k width and the v/output-gate width."""
        return a["heads"] * a["key_dim"], a["heads"] * a["value_dim"]

    def params(self, a, shape):
        d, heads = a["d_model"], a["heads"]
        keys, values = self.widths(a)
        return {
            "q_proj": (keys, d), "k_proj": (keys, d), "v_proj": (values, d), "ogate_proj": (values, d),
            "igate_proj": (heads, d), "igate_bias": (heads,), "fgate_proj": (heads, d), "fgate_bias": (heads,),
            "norm_weight": (values,), "out_proj": (d, values),
        }

    def verify(self, node, d, widths, ctx):
        if widths and widths[0] != d["attrs"]["d_model"]:
            ctx.fail(node, f"mlstm over {d['attrs']['d_model']} channels applied to width {widths[0]}")

    def category(self, d):
        return "ssm"

    def saved(self, d, ctx):
        """Beside its input: the projections' outputs (q, k, v, output gate, two gates), the cell's
        output, its normalised form and the gated product the out-projection reads; the chunked
        form's states are recomputed in backward."""
        a = d["attrs"]
        keys, values = self.widths(a)
        return Saved(private_bytes=(2 * keys + 2 * values + 2 * a["heads"] + 3 * values) * ctx.nbytes)

    def cost(self, d, ctx):
        a = d["attrs"]
        dm, heads, dk, dv = a["d_model"], a["heads"], a["key_dim"], a["value_dim"]
        keys, values = self.widths(a)
        flops = 2 * dm * (2 * keys + 2 * values + 2 * heads) + 2 * values * dm  # projections
        flops += 5 * dk * (dv + 1) * heads  # the recurrent step: C and n, decay, write, read
        return Cost(flops=flops, state_bytes=heads * (dk * dv + dk + 1) * 4)  # float32 state

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.MLSTMLayer({a['d_model']}, {a['heads']}, {a['key_dim']}, {a['value_dim']}, "
                f"gate_softcap={a['gate_softcap']!r}, norm_eps={a['norm_eps']!r}, "
                f"denominator_eps={a['denominator_eps']!r}, chunk={a['chunk']}, cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"


@register
class SLSTM(OpDef):
    """The sLSTM layer (`rt.SLSTMLayer`): an optional causal conv + swish feeding the input and
    forget gates, the gates' dense input weights, block-diagonal recurrent weights per head, the
    stabilised scalar cell, a LayerNorm per head.

    FLOPs per token (multiply-add = 2), with d = d_model and dh = d / heads: 2·d·4d (the gates'
    input weights), 2·4·d·dh (the recurrent weights: four gates, one dh x dh block per head),
    2·d·conv_size (the conv). State per sequence, the runtime's cache: c, n, m and h per channel in
    float32, 16·d bytes, and the conv window (conv_size - 1)·d values in the model's dtype."""

    name = "slstm"
    summary = "xLSTM's sLSTM (conv-fed exponential gates, block-diagonal recurrence, scalar memory, head norm)"
    attrs = {
        "d_model": attr(int), "heads": attr(int), "conv_size": attr(int, doc="taps of the conv feeding i and f; 0: none"),
        "norm_eps": attr(float, doc="the per-head LayerNorm's epsilon"),
    }
    arity = (1, 1)
    picture = "ssm"
    mixer_kinds = ("slstm",)
    refused_positions = {
        ("slstm", pos): Refusal(f"{pos} acts inside softmax attention and slstm orders tokens by its recurrence",
                                "remove `position` (or use sinusoidal() / learned()); in a hybrid, the attention "
                                "layers take it")
        for pos in _ATTENTION_POSITIONS
    }
    refused_in_encoders = {
        "slstm": Refusal("slstm is causal (it reads the past only), and an encoder's layers see both directions",
                         "use attention in encoder layers; put slstm in a decoder"),
    }
    hf_params = None  # no Hugging Face family uses it

    def params(self, a, shape):
        d, heads = a["d_model"], a["heads"]
        params = {"in_proj": (4 * d, d), "recurrent": (4, heads, d // heads, d // heads), "bias": (4 * d,),
                  "norm_weight": (d,)}
        if a["conv_size"]:
            params.update(conv_weight=(d, 1, a["conv_size"]), conv_bias=(d,))
        return params

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        if widths and widths[0] != a["d_model"]:
            ctx.fail(node, f"slstm over {a['d_model']} channels applied to width {widths[0]}")
        if a["d_model"] % a["heads"]:
            ctx.fail(node, f"slstm: heads ({a['heads']}) must divide d_model ({a['d_model']})")

    def category(self, d):
        return "ssm"

    def saved(self, d, ctx):
        """Beside its input: the conv's output, the four gates' pre-activations, the cell's c, n
        and h at every token and the normalised output."""
        return Saved(private_bytes=9 * d["attrs"]["d_model"] * ctx.nbytes)

    def cost(self, d, ctx):
        a = d["attrs"]
        dm, dh = a["d_model"], a["d_model"] // a["heads"]
        flops = 2 * dm * 4 * dm + 2 * 4 * dm * dh + 2 * dm * a["conv_size"]
        state = 16 * dm + max(a["conv_size"] - 1, 0) * dm * ctx.nbytes
        return Cost(flops=flops, state_bytes=state)

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.SLSTMLayer({a['d_model']}, {a['heads']}, conv_size={a['conv_size']}, "
                f"norm_eps={a['norm_eps']!r}, cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"

"""Griffin's recurrent block (RecurrentGemma): the RG-LRU, a gated diagonal linear recurrence,
between a causal conv and a GeLU-gated output (runtime/rglru.py)."""

from __future__ import annotations

from .base import Cost, OpDef, Refusal, Saved, attr, register

_ATTENTION_POSITIONS = ("rope", "alibi", "relative")


@register
class RGLRU(OpDef):
    """Griffin's recurrent block (`rt.RGLRU`): linear_x → causal depthwise conv → RG-LRU, times
    act(linear_y), then linear_out; every projection and the conv biased; the RG-LRU's input and
    recurrence gates block-diagonal over `heads` blocks of width / heads channels.

    FLOPs per token (multiply-add = 2), W = width: 2·d_model·W · 3 (linear_x, linear_y, linear_out),
    2·W·conv_size (the conv), 2 · 2·W·(W / heads) (the two block-diagonal gates). The recurrence,
    gates' sigmoids and the products are element-wise and not counted, as for every op. State per
    sequence, the runtime's cache: the conv window (conv_size - 1)·W values in the model's dtype and
    the recurrent state W values in float32."""

    name = "rglru"
    summary = "Griffin's recurrent block (conv, real-gated linear recurrent unit, GeLU-gated output)"
    attrs = {
        "d_model": attr(int), "width": attr(int, doc="the recurrence's channels (Hugging Face's lru_width)"),
        "heads": attr(int, doc="blocks of the block-diagonal input and recurrence gates"),
        "conv_size": attr(int, doc="taps of the causal depthwise conv"),
        "act": attr(str, doc="activation of the gate branch"),
    }
    arity = (1, 1)
    picture = "ssm"
    mixer_kinds = ("rglru",)
    refused_positions = {
        ("rglru", pos): Refusal(f"{pos} acts inside softmax attention and rglru orders tokens by its recurrence",
                                "remove `position` (or use sinusoidal() / learned()); in a hybrid, the attention "
                                "layers take it")
        for pos in _ATTENTION_POSITIONS
    }
    refused_in_encoders = {
        "rglru": Refusal("rglru is causal (it reads the past only), and an encoder's layers see both directions",
                         "use attention in encoder layers; put rglru in a decoder"),
    }
    # Hugging Face's RecurrentGemmaRecurrentBlock (conv_1d is an nn.Conv1d: weight (W, 1, K), one to one)
    hf_params = {
        "linear_x": "linear_x.weight", "linear_x_bias": "linear_x.bias",
        "linear_y": "linear_y.weight", "linear_y_bias": "linear_y.bias",
        "conv_weight": "conv_1d.weight", "conv_bias": "conv_1d.bias",
        "input_gate_weight": "rg_lru.input_gate_weight", "input_gate_bias": "rg_lru.input_gate_bias",
        "recurrent_gate_weight": "rg_lru.recurrent_gate_weight", "recurrent_gate_bias": "rg_lru.recurrent_gate_bias",
        "recurrent_param": "rg_lru.recurrent_param",
        "linear_out": "linear_out.weight", "linear_out_bias": "linear_out.bias",
    }

    def params(self, a, shape):
        d, w, h = a["d_model"], a["width"], a["heads"]
        block = w // h
        return {
            "linear_x": (w, d), "linear_x_bias": (w,), "linear_y": (w, d), "linear_y_bias": (w,),
            "conv_weight": (w, 1, a["conv_size"]), "conv_bias": (w,),
            "input_gate_weight": (h, block, block), "input_gate_bias": (h, block),
            "recurrent_gate_weight": (h, block, block), "recurrent_gate_bias": (h, block),
            "recurrent_param": (w,), "linear_out": (d, w), "linear_out_bias": (d,),
        }

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        if widths and widths[0] != a["d_model"]:
            ctx.fail(node, f"rglru over {a['d_model']} channels applied to width {widths[0]}")
        if a["width"] % a["heads"]:
            ctx.fail(node, f"rglru: heads ({a['heads']}) must divide width ({a['width']})")

    def category(self, d):
        return "ssm"

    def saved(self, d, ctx):
        """Beside its input: the two projections' outputs, the conv's output, the two gates, the
        normalised input of the recurrence, its states and the activated gate branch."""
        return Saved(private_bytes=8 * d["attrs"]["width"] * ctx.nbytes)

    def cost(self, d, ctx):
        a = d["attrs"]
        dm, w = a["d_model"], a["width"]
        flops = 3 * 2 * dm * w  # linear_x, linear_y, linear_out
        flops += 2 * w * a["conv_size"]  # depthwise causal conv
        flops += 2 * 2 * w * (w // a["heads"])  # the block-diagonal input and recurrence gates
        state = (a["conv_size"] - 1) * w * ctx.nbytes + w * 4  # the state is float32
        return Cost(flops=flops, state_bytes=state)

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.RGLRU({a['d_model']}, {a['width']}, {a['heads']}, conv_size={a['conv_size']}, "
                f"act={a['act']!r}, cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"

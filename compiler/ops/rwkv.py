"""RWKV's mixers (runtime/rwkv.py): RWKV-4's time mixing, a token mixer with a per-channel
recurrent state, and the channel mixing that takes the FFN's place. Both read the previous
token's input (the token shift), so both keep it in the cache."""

from __future__ import annotations

from .base import Cost, OpDef, Refusal, Saved, attr, register

_ATTENTION_POSITIONS = ("rope", "alibi", "relative")


@register
class RWKV4(OpDef):
    """RWKV-4's time mixing (`rt.RWKV4TimeMix`): the token-shift lerps, the key, value and
    receptance projections (d_model → dim), the WKV recurrence per channel, sigmoid(r) ⊙ wkv and
    the output projection (dim → d_model).

    FLOPs per token (multiply-add = 2): 2·d_model·dim for each of key, value, receptance and output;
    11·dim for the recurrence (the output's numerator e1·a + e2·v and denominator e1·b + e2, the
    division, and the state's numerator and denominator again); the lerps, exponentials and the gate
    are element-wise and not counted, as for every op. State per sequence, the runtime's cache: the
    previous token's input (d_model values in the model's dtype) and the WKV numerator, denominator
    and running maximum (3·dim values in float32, as Hugging Face keeps them)."""

    name = "rwkv4"
    summary = "RWKV-4 time mixing (token shift, key/value/receptance projections, WKV recurrence, output)"
    attrs = {"d_model": attr(int), "dim": attr(int, doc="the width of key, value and receptance")}
    arity = (1, 1)
    picture = "ssm"
    mixer_kinds = ("rwkv4",)
    refused_positions = {
        ("rwkv4", pos): Refusal(f"{pos} acts inside softmax attention and rwkv4 orders tokens by its recurrence",
                                "remove `position` (or use sinusoidal() / learned()); in a hybrid, the attention "
                                "layers take it")
        for pos in _ATTENTION_POSITIONS
    }
    refused_in_encoders = {
        "rwkv4": Refusal("rwkv4 is causal (it reads the past only), and an encoder's layers see both directions",
                         "use attention in encoder layers; put rwkv4 in a decoder"),
    }
    # Hugging Face keeps the lerp weights as (1, 1, d): the family's rules (interop/hf_weights.py)
    # reshape them, and name the rest.
    hf_params = None

    def params(self, a, shape):
        d, dim = a["d_model"], a["dim"]
        return {
            "time_decay": (dim,), "time_first": (dim,), "time_mix_key": (d,), "time_mix_value": (d,),
            "time_mix_receptance": (d,), "key": (dim, d), "value": (dim, d), "receptance": (dim, d),
            "output": (d, dim),
        }

    def verify(self, node, d, widths, ctx):
        if widths and widths[0] != d["attrs"]["d_model"]:
            ctx.fail(node, f"rwkv4 over {d['attrs']['d_model']} channels applied to width {widths[0]}")

    def category(self, d):
        return "ssm"

    def saved(self, d, ctx):
        """Beside its input: the shifted input, the three lerped inputs, k, v, sigmoid(r), wkv and
        the gated product the output projection reads (the recurrence's states are recomputed)."""
        a = d["attrs"]
        return Saved(private_bytes=(4 * a["d_model"] + 5 * a["dim"]) * ctx.nbytes)

    def cost(self, d, ctx):
        a = d["attrs"]
        dm, dim = a["d_model"], a["dim"]
        flops = 4 * 2 * dm * dim + 11 * dim  # key, value, receptance, output; the WKV step
        return Cost(flops=flops, state_bytes=dm * ctx.nbytes + 3 * dim * 4)

    def module(self, d, emit):
        a = d["attrs"]
        return f"rt.RWKV4TimeMix({a['d_model']}, {a['dim']}, cache_key={emit.cache_key})"

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"


@register
class RWKVChannelMix(OpDef):
    """RWKV's channel mixing (`rt.RWKVChannelMix`): the token-shift lerps for key and receptance,
    sigmoid(receptance(r)) ⊙ value(relu(key(k))²).

    FLOPs per token: 2·d_model·hidden (key) + 2·hidden·d_model (value) + 2·d_model² (receptance).
    State per sequence: the previous token's input, d_model values in the model's dtype."""

    name = "rwkv_channel_mix"
    summary = "RWKV channel mixing (token shift, relu² key, value, sigmoid receptance gate)"
    attrs = {"d_model": attr(int), "hidden": attr(int)}
    arity = (1, 1)
    picture = "ffn"
    hf_params = None  # the lerp weights are reshaped: the family's rules name them all

    def params(self, a, shape):
        d, h = a["d_model"], a["hidden"]
        return {"time_mix_key": (d,), "time_mix_receptance": (d,), "key": (h, d), "receptance": (d, d),
                "value": (d, h)}

    def verify(self, node, d, widths, ctx):
        if widths and widths[0] != d["attrs"]["d_model"]:
            ctx.fail(node, f"rwkv_channel_mix over {d['attrs']['d_model']} channels applied to width {widths[0]}")

    def category(self, d):
        return "ffn"

    def saved(self, d, ctx):
        """Beside its input: the shifted input, the two lerped inputs, key(k), relu(key(k))²,
        the receptance's sigmoid and the value."""
        a = d["attrs"]
        return Saved(private_bytes=(5 * a["d_model"] + 2 * a["hidden"]) * ctx.nbytes)

    def cost(self, d, ctx):
        a = d["attrs"]
        dm, h = a["d_model"], a["hidden"]
        return Cost(flops=4 * dm * h + 2 * dm * dm, state_bytes=dm * ctx.nbytes)

    def module(self, d, emit):
        a = d["attrs"]
        return f"rt.RWKVChannelMix({a['d_model']}, {a['hidden']}, cache_key={emit.cache_key})"

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"


@register
class RWKV7(OpDef):
    """RWKV-7's time mixing (`rt.RWKV7TimeMix`, runtime/rwkv.py around the core of
    runtime/gated_linear.py): six token-shift lerps, r/k/v projections, the decay, in-context-rate,
    value-residual and gate adapters, the generalised delta rule per head, the group norm, the
    bonus, the gate and o_proj.

    FLOPs per token (multiply-add = 2): 2·d_model² for each of r, k, v and o; 4·d_model·rank for
    each adapter (down and up); 9·head_dim² per head for the recurrent step (runtime/gated_linear.py).
    State per sequence: heads · head_dim² values in float32, and the previous token's input
    (d_model values in the model's dtype)."""

    name = "rwkv7"
    summary = "RWKV-7 time mixing (token-shift lerps, projections, low-rank adapters, generalised delta rule)"
    attrs = {
        "d_model": attr(int), "heads": attr(int), "decay_rank": attr(int), "a_rank": attr(int),
        "value_rank": attr(int, default=None, doc="the value-residual adapter's rank; none: no value residual"),
        "gate_rank": attr(int), "norm_eps": attr(float, doc="per channel: the group norm's is head_dim times it"),
        "chunk": attr(int),
    }
    arity = (1, 1)
    picture = "ssm"
    mixer_kinds = ("rwkv7",)
    refused_positions = {
        ("rwkv7", pos): Refusal(f"{pos} acts inside softmax attention and rwkv7 orders tokens by its recurrence",
                                "remove `position` (or use sinusoidal() / learned()); in a hybrid, the attention "
                                "layers take it")
        for pos in _ATTENTION_POSITIONS
    }
    refused_in_encoders = {
        "rwkv7": Refusal("rwkv7 is causal (it reads the past only), and an encoder's layers see both directions",
                         "use attention in encoder layers; put rwkv7 in a decoder"),
    }
    hf_params = None  # transformers has no RWKV-7; flash-linear-attention's names are in runtime/rwkv.py

    @staticmethod
    def adapters(a) -> dict[str, int]:
        """Each low-rank adapter's name → its rank."""
        ranks = {"w": a["decay_rank"], "a": a["a_rank"], "v": a["value_rank"], "g": a["gate_rank"]}
        return {name: rank for name, rank in ranks.items() if rank is not None}

    def params(self, a, shape):
        d, heads = a["d_model"], a["heads"]
        params = {f"x_{n}": (d,) for n in "rwkvag"}
        params.update(r_proj=(d, d), k_proj=(d, d), v_proj=(d, d), o_proj=(d, d))
        for name, rank in self.adapters(a).items():
            params[f"{name}1"], params[f"{name}2"] = (rank, d), (d, rank)
            if name != "g":  # the gate's adapter has no bias
                params[f"{name}0"] = (d,)
        params.update(k_k=(d,), k_a=(d,), r_k=(heads, d // heads), norm_weight=(d,), norm_bias=(d,))
        return params

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        if widths and widths[0] != a["d_model"]:
            ctx.fail(node, f"rwkv7 over {a['d_model']} channels applied to width {widths[0]}")
        if a["d_model"] % a["heads"]:
            ctx.fail(node, f"rwkv7: heads ({a['heads']}) must divide d_model ({a['d_model']})",
                     "pick heads dividing d_model (flash-linear-attention's RWKV-7 uses head_dim 64)")

    def category(self, d):
        return "ssm"

    def saved(self, d, ctx):
        """Beside its input: the shifted input, six lerped inputs, r, k, v, the adapters' inner and
        outer activations, κ̂, the updated k, the recurrence's output, its norm and the gated sum
        the output projection reads; the chunked states are recomputed."""
        a = d["attrs"]
        dm = a["d_model"]
        inner = sum(self.adapters(a).values())
        return Saved(private_bytes=(7 * dm + 3 * dm + 2 * inner + 4 * dm + 5 * dm) * ctx.nbytes)

    def cost(self, d, ctx):
        a = d["attrs"]
        dm, hd = a["d_model"], a["d_model"] // a["heads"]
        flops = 4 * 2 * dm * dm + sum(4 * dm * rank for rank in self.adapters(a).values())
        flops += 9 * hd * hd * a["heads"]  # the recurrent step per head
        return Cost(flops=flops, state_bytes=a["heads"] * hd * hd * 4 + dm * ctx.nbytes)

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.RWKV7TimeMix({a['d_model']}, {a['heads']}, decay_rank={a['decay_rank']}, a_rank={a['a_rank']}, "
                f"value_rank={a['value_rank']}, gate_rank={a['gate_rank']}, norm_eps={a['norm_eps']!r}, "
                f"chunk={a['chunk']}, cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"


@register
class RWKV7ChannelMix(OpDef):
    """RWKV-7's channel mixing (`rt.RWKV7ChannelMix`): one token-shift lerp, value(relu(key(k))²).

    FLOPs per token: 2·d_model·hidden (key) + 2·hidden·d_model (value). State per sequence: the
    previous token's input, d_model values in the model's dtype."""

    name = "rwkv7_channel_mix"
    summary = "RWKV-7 channel mixing (token shift, relu² key, value)"
    attrs = {"d_model": attr(int), "hidden": attr(int)}
    arity = (1, 1)
    picture = "ffn"
    # flash-linear-attention's RWKV7FeedForward: x_k, key.weight, value.weight (x_k is (d_model,) there too)
    hf_params = {"x_k": "x_k", "key": "key.weight", "value": "value.weight"}

    def params(self, a, shape):
        d, h = a["d_model"], a["hidden"]
        return {"x_k": (d,), "key": (h, d), "value": (d, h)}

    def verify(self, node, d, widths, ctx):
        if widths and widths[0] != d["attrs"]["d_model"]:
            ctx.fail(node, f"rwkv7_channel_mix over {d['attrs']['d_model']} channels applied to width {widths[0]}")

    def category(self, d):
        return "ffn"

    def saved(self, d, ctx):
        """Beside its input: the shifted input, the lerped input, key(k) and relu(key(k))²."""
        a = d["attrs"]
        return Saved(private_bytes=(2 * a["d_model"] + 2 * a["hidden"]) * ctx.nbytes)

    def cost(self, d, ctx):
        a = d["attrs"]
        return Cost(flops=4 * a["d_model"] * a["hidden"], state_bytes=a["d_model"] * ctx.nbytes)

    def module(self, d, emit):
        a = d["attrs"]
        return f"rt.RWKV7ChannelMix({a['d_model']}, {a['hidden']}, cache_key={emit.cache_key})"

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"

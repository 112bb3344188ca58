"""Element-wise ops: residual sums, constant scales, activations, gated units, soft-capping."""

from __future__ import annotations

from .base import Saved, WeightlessOp, attr, register

# The expression of each activation the language names, around its argument.
ACT_CALL = {
    "relu": "F.relu({})", "gelu": "F.gelu({})", "gelu_tanh": 'F.gelu({}, approximate="tanh")', "silu": "F.silu({})",
    "sigmoid": "torch.sigmoid({})", "tanh": "torch.tanh({})", "relu2": "F.relu({}).square()",
}


class _Elementwise(WeightlessOp):
    abstract = True
    picture = "other"


@register
class Add(_Elementwise):
    name = "add"
    summary = "element-wise sum of its inputs (residual connections, embedding sums)"
    attrs = {}
    arity = (2, None)

    def verify(self, node, d, widths, ctx):
        if len({w for w in widths if isinstance(w, int)}) > 1:
            ctx.fail(node, f"residual add of different widths {widths}")

    def saved(self, d, ctx):
        return Saved(inputs=())  # a sum's gradient is its output's

    def call(self, d, args, emit):
        return " + ".join(args)


@register
class Scale(_Elementwise):
    name = "scale"
    summary = "multiply by a constant"
    attrs = {"factor": attr(float)}
    arity = (1, 1)

    def saved(self, d, ctx):
        return Saved(inputs=())  # a constant factor needs nothing from forward

    def call(self, d, args, emit):
        return f"{args[0]} * {d['attrs']['factor']!r}"


@register
class Activation(_Elementwise):
    name = "activation"
    summary = "element-wise activation"
    attrs = {"act": attr(str, doc=" | ".join(ACT_CALL))}
    arity = (1, 1)
    picture = "ffn"

    def verify(self, node, d, widths, ctx):
        if d["attrs"]["act"] not in ACT_CALL:
            ctx.fail(node, f"unknown activation {d['attrs']['act']!r}")

    def splits_heads(self, d):
        return True  # each hidden unit on its own

    def call(self, d, args, emit):
        return ACT_CALL[d["attrs"]["act"]].format(args[0])


@register
class Glu(_Elementwise):
    name = "glu"
    summary = "act(gate) * up"
    attrs = {"act": attr(str), "hidden": attr(int),
             "packed": attr(bool, doc="one input holding gate and up side by side (fuse-gate-up)")}
    arity = (1, 2)
    picture = "ffn"

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        if a["act"] not in ACT_CALL:
            ctx.fail(node, f"unknown activation {a['act']!r}")
        expected = [2 * a["hidden"]] if a["packed"] else [a["hidden"], a["hidden"]]
        if widths != expected:
            ctx.fail(node, f"glu expects input widths {expected}, gets {widths}")

    def splits_heads(self, d):
        return not d["attrs"]["packed"]  # a packed input holds gate and up halves: a shard would split them

    def saved(self, d, ctx):
        # Packed, the GLU kernel keeps its input and recomputes act(gate); unpacked, the product
        # also keeps act(gate).
        a = d["attrs"]
        return Saved() if a["packed"] else Saved(private_bytes=a["hidden"] * ctx.nbytes)

    def call(self, d, args, emit):
        a = d["attrs"]
        if a["packed"]:
            return f"rt.glu({args[0]}, {a['act']!r})"
        return f"{ACT_CALL[a['act']].format(args[0])} * {args[1]}"


@register
class Dropout(_Elementwise):
    name = "dropout"
    summary = "zero each element with probability p and scale the rest by 1 / (1 - p), in training only"
    attrs = {"p": attr(float)}
    arity = (1, 1)

    def verify(self, node, d, widths, ctx):
        if not 0 < d["attrs"]["p"] < 1:
            ctx.fail(node, f"dropout probability {d['attrs']['p']} is not in (0, 1)")

    def saved(self, d, ctx):
        return Saved(inputs=(), private_bytes=d["shape"][-1])  # its mask, one byte per element

    def call(self, d, args, emit):
        return f"F.dropout({args[0]}, {d['attrs']['p']!r}, self.training)"


@register
class Softcap(_Elementwise):
    name = "softcap"
    summary = "cap * tanh(x / cap)"
    attrs = {"cap": attr(float)}
    arity = (1, 1)

    def call(self, d, args, emit):
        return f"rt.softcap({args[0]}, {d['attrs']['cap']!r})"

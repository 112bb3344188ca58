"""Positions applied inside attention: rotary tables and their application, ALiBi slopes, and
T5's bucketed relative bias."""

from __future__ import annotations

from .base import Cost, OpDef, Saved, WeightlessOp, attr, register


@register
class Const(WeightlessOp):
    name = "const"
    summary = "a table computed from the positions of each forward (RoPE cos/sin, ALiBi slopes)"
    attrs = {
        "table": attr(str, doc="rope | alibi"),
        "theta": attr(float, default=None, doc="rope: the base"),
        "dim": attr(int, default=None, doc="rope: rotated channels per head"),
        "context": attr(int, default=None, doc="rope: positions precomputed"),
        "scaling": attr(dict, default=None, doc="rope: the context-extension rule (linear, ntk, yarn)"),
        "heads": attr(int, default=None, doc="alibi: one slope per head"),
    }
    arity = (0, 0)
    role = "table"
    picture = "position"

    def module(self, d, emit):
        a = d["attrs"]
        if a["table"] == "rope":
            return f"rt.RopeTable({a['dim']}, {a['context']}, theta={a['theta']!r}, scaling={a['scaling']!r})"
        return f"rt.AlibiSlopes({a['heads']})"

    def call(self, d, args, emit):
        return f"self.{d['name']}(ctx.positions)"

    def attention_keyword(self, d):
        return "alibi" if d["attrs"]["table"] == "alibi" else "rope"


@register
class RelBias(OpDef):
    name = "rel_bias"
    summary = "T5's bucketed relative position bias, one table shared by a stack"
    attrs = {"buckets": attr(int), "max_distance": attr(int), "heads": attr(int), "bidirectional": attr(bool)}
    arity = (0, 0)
    role = "table"
    picture = "position"
    hf_params = {"weight": "weight"}

    def params(self, a, shape):
        return {"weight": (a["buckets"], a["heads"])}

    def category(self, d):
        return "embedding"

    def cost(self, d, ctx):
        return Cost()

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.RelativePositionBias({a['buckets']}, {a['max_distance']}, {a['heads']}, "
                f"bidirectional={a['bidirectional']!r})")

    def call(self, d, args, emit):
        return f"self.{d['name']}"  # the module itself: attention asks it for the bias of its positions

    def attention_keyword(self, d):
        return "rel_bias"


@register
class Rope(WeightlessOp):
    name = "rope"
    summary = "rotary embedding of q and k; outputs (q, k)"
    attrs = {"heads": attr(int), "kv_heads": attr(int), "head_dim": attr(int), "rotary_dim": attr(int)}
    arity = (3, 3)
    picture = "position"

    def out_width(self, d, out):
        a = d["attrs"]
        return d["shape"][-1] if out == 0 else a["kv_heads"] * a["head_dim"]

    def verify(self, node, d, widths, ctx):
        rot, hd = d["attrs"]["rotary_dim"], d["attrs"]["head_dim"]
        if rot % 2 or rot > hd:
            ctx.fail(node, f"rope rotates {rot} channels of a {hd}-wide head; it must be even and at most {hd}",
                     "set rope(dim = ...) to an even number no larger than head_dim")

    def category(self, d):
        return "attention"

    def saved(self, d, ctx):
        return Saved(inputs=())  # a rotation by constant tables: its backward needs only them

    def call(self, d, args, emit):
        a = d["attrs"]
        return f"rt.rope_qk({args[0]}, {args[1]}, {args[2]}, {a['heads']}, {a['kv_heads']}, {a['head_dim']})"

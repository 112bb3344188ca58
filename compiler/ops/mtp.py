"""Multi-token prediction (DeepSeek-V3 §2.2): the op that opens each MTP module. The module's
Transformer block is lowered as ordinary ops in the IR's `mtp` stack, after this one."""

from __future__ import annotations

from .base import Cost, OpDef, attr, register


@register
class MTPInput(OpDef):
    name = "mtp"
    summary = "MTP module k: eh_proj([norm(Emb(t_{i+k})); norm(h^{k-1}_i)]); owns its head norm"
    attrs = {
        "index": attr(int, doc="k: the module reads the embeddings of the tokens k positions ahead"),
        "d_model": attr(int),
        "norm": attr(str, doc="layernorm | rmsnorm: the model's final norm, for enorm, hnorm and head_norm"),
        "eps": attr(float),
        "bias": attr(bool),
        "unit_offset": attr(bool),
        "block": attr(str, doc="the spec block of the module's Transformer layer"),
    }
    arity = (2, 2)  # (previous depth's hidden state, token embeddings)
    picture = "other"
    # DeepSeek-V3's checkpoint holds module k under model.layers.{num_hidden_layers + k - 1}.
    # (Its layer's weights sit beside these, its embedding and head are the model's.)
    hf_params = {"enorm.weight": "enorm.weight", "enorm.bias": "enorm.bias", "hnorm.weight": "hnorm.weight",
                 "hnorm.bias": "hnorm.bias", "eh_proj.weight": "eh_proj.weight",
                 "head_norm.weight": "shared_head.norm.weight", "head_norm.bias": "shared_head.norm.bias"}

    def params(self, a, shape):
        d = a["d_model"]
        params = {}
        for norm in ("enorm", "hnorm"):
            params[f"{norm}.weight"] = (d,)
            if a["bias"]:
                params[f"{norm}.bias"] = (d,)
        params["eh_proj.weight"] = (d, 2 * d)
        params["head_norm.weight"] = (d,)
        if a["bias"]:
            params["head_norm.bias"] = (d,)
        return params

    def verify(self, node, d, widths, ctx):
        dim = d["attrs"]["d_model"]
        if any(w != dim for w in widths if isinstance(w, int)):
            ctx.fail(node, f"mtp module of width {dim} reads inputs of widths {widths}")

    def category(self, d):
        return "other"

    def param_split(self, d):
        split: dict[str, int] = {}
        for name, shape in d["params"].items():
            category = "other" if name.startswith("eh_proj") else "norm"
            n = 1
            for s in shape:
                n *= s
            split[category] = split.get(category, 0) + n
        return split, dict(split)

    def cost(self, d, ctx):
        dim = d["attrs"]["d_model"]
        return Cost(flops=2 * (2 * dim) * dim)  # eh_proj; the norms are element-wise

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.MTPModule({a['d_model']}, {emit.block}, norm={a['norm']!r}, eps={a['eps']!r}, "
                f"bias={a['bias']!r}, unit_offset={a['unit_offset']!r})")

    def call(self, d, args, emit):
        return f"self.mtp[{d['attrs']['index'] - 1}]({args[0]}, {args[1]}, ctx)"

"""Routed mixture of experts: router, grouped experts and optional shared experts in one op."""

from __future__ import annotations

from .base import Cost, OpDef, Saved, attr, register


def expert_params(prefix: str, kind: str, hidden: int, bias: bool, d: int, leading: tuple[int, ...]):
    """Weights of an expert FFN (or of E stacked experts, with `leading` = (E,))."""
    # GLU experts keep gate and up stacked in one tensor (gate first), as grouped kernels want.
    up = f"{prefix}gate_up" if kind != "mlp" else f"{prefix}up"
    width = 2 * hidden if kind != "mlp" else hidden
    params = {up: (*leading, width, d), f"{prefix}down": (*leading, d, hidden)}
    if bias:
        params[f"{up}_bias"] = (*leading, width)
        params[f"{prefix}down_bias"] = (*leading, d)
    return params


_CODEGEN_KEYS = ("expert_kind", "expert_act", "expert_hidden", "expert_bias", "shared_kind", "shared_act",
                 "shared_hidden", "shared_bias", "shared_gate", "router", "normalize_top_k", "routed_scale",
                 "aux_loss", "z_loss", "capacity_factor")
# The routing variants, written only when on so the code of existing specs stays as it was;
# attribute name → runtime keyword.
_OPTIONAL_KEYS = {"router_bias": "router_bias", "correction_bias": "correction_bias",
                  "bias_update_speed": "bias_update_speed", "seq_aux_loss": "seq_aux_loss", "groups": "n_group",
                  "topk_groups": "topk_group", "group_score": "group_score", "scale_input": "scale_input",
                  "glu_limit": "glu_limit", "glu_alpha": "glu_alpha", "normalize_min": "normalize_min",
                  "vocab": "vocab"}


@register
class MoE(OpDef):
    name = "moe"
    summary = "routed mixture of experts (router, grouped experts, shared experts)"
    attrs = {
        "experts": attr(int), "top_k": attr(int),
        "expert_kind": attr(str, doc="mlp or a GLU kind"), "expert_act": attr(str), "expert_hidden": attr(int),
        "expert_bias": attr(bool),
        "shared_kind": attr(str, default=None), "shared_act": attr(str, default=None),
        "shared_hidden": attr(int, default=None), "shared_bias": attr(bool, default=False),
        "shared_gate": attr(bool, default=False, doc="a sigmoid gate on the shared experts' output (Qwen2-MoE)"),
        "router": attr(str, doc="softmax | sigmoid | hash | expert_choice"), "normalize_top_k": attr(bool), "routed_scale": attr(float),
        "aux_loss": attr(float), "z_loss": attr(float), "capacity_factor": attr(float, default=None),
        "router_bias": attr(bool, default=False, doc="a learned bias on the router logits (gpt-oss)"),
        "correction_bias": attr(bool, default=False,
                                doc="DeepSeek-V3's selection-only score bias: a buffer, not a parameter"),
        "bias_update_speed": attr(float, default=0.0, doc="per-step move of the correction bias against the load"),
        "seq_aux_loss": attr(float, default=0.0, doc="DeepSeek-V3's sequence-wise balance loss coefficient"),
        "groups": attr(int, default=1, doc="expert groups for group-limited routing"),
        "topk_groups": attr(int, default=1, doc="groups routed to"),
        "group_score": attr(str, default=None, doc="top2_sum | max: how a group is scored"),
        "scale_input": attr(bool, default=False, doc="the routing weight scales the expert's input (Llama 4)"),
        "glu_limit": attr(float, default=None, doc="clamp of gpt-oss's SwiGLU (expert_act swiglu_oai)"),
        "glu_alpha": attr(float, default=None, doc="sigmoid slope of gpt-oss's SwiGLU"),
        "normalize_min": attr(float, default=0.0, doc="floor of the top-k weights' sum when renormalising (ERNIE 4.5)"),
        "vocab": attr(int, default=None, doc="hash routing: the token ids its fixed expert table covers"),
    }
    arity = (1, 1)
    picture = "moe"

    def params(self, a, shape):
        d, e = shape[-1], a["experts"]
        params = {} if a["router"] == "hash" else {"router": (e, d)}  # hash routing learns no router
        if a["router_bias"]:
            params["router_bias"] = (e,)
        params.update(expert_params("experts_", a["expert_kind"], a["expert_hidden"], a["expert_bias"], d, (e,)))
        if a["shared_kind"] is not None:
            params.update(expert_params("shared_", a["shared_kind"], a["shared_hidden"], a["shared_bias"], d, ()))
            if a["shared_gate"]:
                params["shared_gate"] = (1, d)
        return params

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        if a["top_k"] > a["experts"]:
            ctx.fail(node, f"top_k ({a['top_k']}) exceeds experts ({a['experts']})")

    def category(self, d):
        return "moe_experts"  # param_split files each weight under router, routed or shared

    def param_split(self, d):
        a = d["attrs"]
        total = {"moe_router": 0, "moe_experts": 0, "moe_shared": 0}
        for name, shape in d["params"].items():
            n = 1
            for s in shape:
                n *= s
            key = "moe_router" if name.startswith("router") else "moe_experts" if name.startswith("experts_") else "moe_shared"
            total[key] += n
        active = dict(total)
        active["moe_experts"] = total["moe_experts"] // a["experts"] * a["top_k"]  # only the routed-to experts
        return total, active

    def cost(self, d, ctx):
        _, active = self.param_split(d)
        return Cost(flops=2 * (active["moe_experts"] + active["moe_shared"] + active["moe_router"]))

    def saved(self, d, ctx):
        """Beside its input: the router's float32 probabilities, and for each of the top_k routed
        copies of a token its gathered input, the expert's intermediates (GLU: gate and up, then
        their product; MLP: the pre-activation and the activation) and its output (which the
        weighted sum's backward reads); the shared experts' intermediates likewise."""
        a = d["attrs"]
        width = d["shape"][-1]

        def inner(kind, hidden):
            return 3 * hidden if kind != "mlp" else 2 * hidden

        per_copy = 2 * width + inner(a["expert_kind"], a["expert_hidden"])
        shared = inner(a["shared_kind"], a["shared_hidden"]) if a["shared_kind"] is not None else 0
        return Saved(private_bytes=4 * a["experts"] + (a["top_k"] * per_copy + shared) * ctx.nbytes)

    def module(self, d, emit):
        a = d["attrs"]
        keywords = [f"{k}={a[k]!r}" for k in _CODEGEN_KEYS]
        keywords += [f"{kw}={a[k]!r}" for k, kw in _OPTIONAL_KEYS.items() if a[k] != self.attrs[k].default]
        return f"rt.MoE({d['shape'][-1]}, {a['experts']}, {a['top_k']}, " + ", ".join(keywords) + ")"

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, ctx)"

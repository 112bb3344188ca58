"""The Byte Latent Transformer as one IR op: the byte embedding with hashed n-grams, the entropy
model, the local encoder with its patch pooling, the global transformer over patches and the
local decoder. Its stacks are not lowered op by op: patches are made from the data at run time
(their number is not a shape), so the runtime module (runtime/blt.py) runs the stacks, and this
definition gives its weights, facts and constructor. Also here: the lowering of a byte_latent
model to that op, and its generated module."""

from __future__ import annotations

from typing import Any

from .base import Cost, OpDef, Saved, attr, register

_LAYER = ("attn_norm", "q_proj", "k_proj", "v_proj", "o_proj", "ffn_norm", "gate_proj", "up_proj", "down_proj")


def _layer_params(s: dict) -> dict[str, tuple[int, ...]]:
    d, hd = s["dim"], s["dim"] // s["heads"]
    return {"attn_norm": (d,), "q_proj": (s["heads"] * hd, d), "k_proj": (s["kv_heads"] * hd, d),
            "v_proj": (s["kv_heads"] * hd, d), "o_proj": (d, s["heads"] * hd), "ffn_norm": (d,),
            "gate_proj": (s["hidden"], d), "up_proj": (s["hidden"], d), "down_proj": (d, s["hidden"])}


def _cross_params(s: dict) -> dict[str, tuple[int, ...]]:
    d, hd = s["dim"], s["dim"] // s["heads"]
    return {"q_norm": (d,), "kv_norm": (d,), "q_proj": (s["heads"] * hd, d), "k_proj": (s["kv_heads"] * hd, d),
            "v_proj": (s["kv_heads"] * hd, d), "o_proj": (d, s["heads"] * hd)}


def _stack_flops(s: dict, keys: float) -> float:
    """Matmul FLOPs of one position through a stack's layers, attending to `keys` positions."""
    p = sum(a * b for name, (a, *rest) in _layer_params(s).items() for b in rest)
    hd = s["dim"] // s["heads"]
    return s["layers"] * (2 * p + 4 * s["heads"] * hd * keys)


def _keys(window: int | None, context: int) -> float:
    """Keys a position sees on average over a sequence of `context` positions."""
    n = context if window is None else min(window, context)
    return (context + 1) / 2 if window is None else n


@register
class ByteLatentOp(OpDef):
    name = "byte_latent"
    summary = "the Byte Latent Transformer: bytes → patches → global transformer → bytes → next-byte logits"
    attrs = {
        "vocab": attr(int),
        "encoder": attr(dict, doc="stack: dim, layers, heads, kv_heads, hidden, theta, eps, window"),
        "global": attr(dict), "decoder": attr(dict),
        "entropy": attr(dict, default=None, doc="the entropy model's stack; none with patching = bytes"),
        "ngrams": attr(tuple, list), "hash_buckets": attr(int), "hash_functions": attr(int), "cross_k": attr(int),
        "encoder_cross_all": attr(bool), "decoder_cross_all": attr(bool),
        "threshold": attr(float, default=None), "max_patch": attr(int, default=None),
        "final_eps": attr(float), "patch_length": attr(float, doc="bytes per patch the facts assume"),
    }
    arity = (1, 1)
    picture = "other"

    def params(self, a, shape):
        p: dict[str, tuple[int, ...]] = {}
        enc, glob, dec, ent = a["encoder"], a["global"], a["decoder"], a["entropy"]
        k = a["cross_k"]
        p["embed.embed.weight"] = (a["vocab"], enc["dim"])
        p["embed.hash_embed.weight"] = (a["hash_functions"] * len(a["ngrams"]) * a["hash_buckets"], enc["dim"])
        if ent is not None:
            p["entropy.embed.weight"] = (a["vocab"], ent["dim"])
            for i in range(ent["layers"]):
                p.update({f"entropy.layers.{i}.{n}.weight": s for n, s in _layer_params(ent).items()})
            p["entropy.final_norm.weight"] = (ent["dim"],)
            p["entropy.lm_head.weight"] = (a["vocab"], ent["dim"])
        for i in range(enc["layers"]):
            p.update({f"encoder.{i}.{n}.weight": s for n, s in _layer_params(enc).items()})
        p["encoder_patch_proj.weight"] = (enc["dim"] * k, enc["dim"])
        for i in range(enc["layers"] if a["encoder_cross_all"] else 1):
            p.update({f"encoder_cross.{i}.{n}.weight": s for n, s in _cross_params(enc).items()})
        if enc["dim"] * k != glob["dim"]:
            p["global_in_proj.weight"] = (glob["dim"], enc["dim"] * k)
        for i in range(glob["layers"]):
            p.update({f"global_layers.{i}.{n}.weight": s for n, s in _layer_params(glob).items()})
        p["decoder_patch_proj.weight"] = (dec["dim"] * k, glob["dim"])
        for i in range(dec["layers"] if a["decoder_cross_all"] else 1):
            p.update({f"decoder_cross.{i}.{n}.weight": s for n, s in _cross_params(dec).items()})
        for i in range(dec["layers"]):
            p.update({f"decoder.{i}.{n}.weight": s for n, s in _layer_params(dec).items()})
        p["final_norm.weight"] = (dec["dim"],)
        p["lm_head.weight"] = (a["vocab"], dec["dim"])
        return p

    def category(self, d):
        return "other"

    def param_split(self, d):
        """Embedding tables, the LM heads, norms, and the rest (attention and FFN weights)."""
        out: dict[str, int] = {}
        for name, shape in d["params"].items():
            n = 1
            for s in shape:
                n *= s
            leaf = name.rsplit(".", 2)[-2]
            cat = ("embedding" if "embed" in leaf else "head" if leaf == "lm_head"
                   else "norm" if leaf.endswith("norm") else "ffn" if leaf.split("_")[0] in ("gate", "up", "down")
                   else "attention")
            out[cat] = out.get(cat, 0) + n
        return out, dict(out)

    def cost(self, d, ctx):
        """FLOPs per byte: the byte stacks and the cross-attentions per byte, the global stack per
        patch divided by the assumed bytes per patch. No cache: generation recomputes the prefix."""
        a = d["attrs"]
        T, L = ctx.context, a["patch_length"]
        P = max(T / L, 1.0)
        enc, glob, dec, ent, k = a["encoder"], a["global"], a["decoder"], a["entropy"], a["cross_k"]
        per_byte = _stack_flops(enc, _keys(enc["window"], T)) + _stack_flops(dec, _keys(dec["window"], T))
        per_byte += 2 * a["vocab"] * dec["dim"]
        if ent is not None:
            per_byte += _stack_flops(ent, _keys(ent["window"], T)) + 2 * a["vocab"] * ent["dim"]
        n_enc = enc["layers"] if a["encoder_cross_all"] else 1
        n_dec = dec["layers"] if a["decoder_cross_all"] else 1
        # encoder: k queries per patch over its ~L bytes; keys and values of every byte
        per_patch = n_enc * k * (2 * 2 * enc["dim"] * enc["dim"] + 4 * enc["dim"] * L)
        per_byte += n_enc * 2 * 2 * enc["dim"] * (enc["dim"] // enc["heads"]) * enc["kv_heads"]
        per_patch += 2 * enc["dim"] * enc["dim"] * k + _stack_flops(glob, (P + 1) / 2)
        if enc["dim"] * k != glob["dim"]:
            per_patch += 2 * enc["dim"] * k * glob["dim"]
        per_patch += 2 * glob["dim"] * dec["dim"] * k
        # decoder: each byte's query over the k slots of one patch; keys and values per patch slot
        per_byte += n_dec * (2 * 2 * dec["dim"] * dec["dim"] + 4 * dec["dim"] * k)
        per_patch += n_dec * k * 2 * 2 * dec["dim"] * (dec["dim"] // dec["heads"]) * dec["kv_heads"]
        return Cost(flops=per_byte + per_patch / L)

    def saved(self, d, ctx):
        """Per byte, what each layer's backward keeps (norm inputs and outputs, q/k/v and the
        attention output, the SwiGLU's gate, up and product, and the probabilities unless they
        are recomputed); the global stack's per patch over the assumed bytes per patch. The
        entropy model runs without gradients and keeps nothing."""
        a = d["attrs"]
        L = a["patch_length"]

        def per_position(s: dict, keys: float) -> float:
            hd = s["dim"] // s["heads"]
            kept = 5 * s["dim"] + (2 * s["heads"] + 2 * s["kv_heads"]) * hd + 3 * s["hidden"]
            kept += s["heads"] * keys if ctx.keep_probabilities else 0
            return s["layers"] * kept * ctx.nbytes

        local = lambda s: per_position(s, min(s["window"] or ctx.seq, ctx.seq))  # noqa: E731
        patches = max(ctx.seq / L, 1.0)
        return Saved(private_bytes=local(a["encoder"]) + local(a["decoder"]) + per_position(a["global"], patches) / L)

    def module(self, d, emit):
        a = d["attrs"]

        def stack(s):
            return (f"rt.StackSpec({s['dim']}, {s['layers']}, {s['heads']}, {s['kv_heads']}, {s['hidden']}, "
                    f"{s['theta']!r}, {s['eps']!r}, {s['window']!r})")

        return (f"rt.ByteLatentTransformer({a['vocab']}, {stack(a['encoder'])}, {stack(a['global'])}, "
                f"{stack(a['decoder'])}, {stack(a['entropy']) if a['entropy'] else None}, "
                f"ngrams={tuple(a['ngrams'])!r}, hash_buckets={a['hash_buckets']}, "
                f"hash_functions={a['hash_functions']}, cross_k={a['cross_k']}, "
                f"encoder_cross_all={a['encoder_cross_all']}, decoder_cross_all={a['decoder_cross_all']}, "
                f"threshold={a['threshold']!r}, max_patch={a['max_patch']!r}, final_eps={a['final_eps']!r})")

    def call(self, d, args, emit):
        return f"self.{d['name']}({args[0]}, patch_lengths)"


def _stack_attrs(m, layers: tuple[str, ...], dim: int, window: int | None) -> dict[str, Any]:
    block = m.blocks[layers[0]]
    att = block.attention
    return {"dim": dim, "layers": len(layers), "heads": att.heads, "kv_heads": att.kv_heads,
            "hidden": block.ffn.hidden, "theta": float(m.position_of(layers[0]).theta), "eps": block.norm.eps,
            "window": window}


def lower_byte_latent(m, b) -> None:
    """A checked byte_latent model (spec/byte_latent.py) → input, the one op, logits."""
    bl = m.byte_latent
    tokens = b.node("input_ids", "input", name="input_ids", outputs="input_ids", shape=("B", "T"),
                    attrs={"role": "tokens"})
    entropy = (_stack_attrs(m, m.entropy_layers, bl.entropy_d_model, bl.entropy_window)
               if bl.patching == "entropy" else None)
    x = b.node("blt", "byte_latent", [tokens], name="blt", outputs="logits", shape=("B", "T", m.vocab),
               attrs={"vocab": m.vocab, "encoder": _stack_attrs(m, m.encoder_layers, m.d_model, bl.window),
                      "global": _stack_attrs(m, m.global_layers, bl.global_d_model, None),
                      "decoder": _stack_attrs(m, m.decoder_layers, m.d_model, bl.window), "entropy": entropy,
                      "ngrams": list(bl.ngrams), "hash_buckets": bl.hash_vocab, "hash_functions": bl.hash_functions,
                      "cross_k": bl.cross_k, "encoder_cross_all": bl.encoder_cross == "all",
                      "decoder_cross_all": bl.decoder_cross == "all", "threshold": bl.threshold,
                      "max_patch": bl.max_patch, "final_eps": m.final_norm.eps, "patch_length": bl.patch_length},
               span=m.span_of("byte_latent"))
    b.node("logits", "output", [x], name="logits", outputs="logits", shape=("B", "T", m.vocab),
           attrs={"role": "logits"})


def generate_byte_latent(g, *, header: str, model_class: str, spec_name: str, config: str, wrap) -> str:
    """The module of a byte_latent model: a thin class around the runtime's ByteLatentTransformer."""
    node = next(n for n, d in g.nodes(data=True) if d["op"] == "byte_latent")
    d = g.nodes[node]
    init = "\n".join(" " * 8 + line for line in wrap(f"self.blt = {ByteLatentOp().module(d, None)}", indent=8))
    return f'''{header}
"""{model_class}: a byte_latent model compiled from an archlang spec."""

from __future__ import annotations

import torch

import archlang.runtime as rt

SPEC = {spec_name!r}
CONFIG = {config}


class {model_class}(rt.ArchModel):
    """Bytes → patches → global transformer → bytes: next-byte logits (runtime/blt.py)."""

    config = CONFIG

    def __init__(self):
        super().__init__()
{init}

    def forward(self, input_ids: torch.Tensor, patch_lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.blt(input_ids, patch_lengths)  # (B, T, {d["attrs"]["vocab"]})

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        return self.blt.generate(input_ids, max_new_tokens)


def build() -> {model_class}:
    return {model_class}()
'''


def shrink_byte_latent(model, *, heads_of, hidden: int, vocab: int, context: int):
    """The small stand-in of a byte_latent model (compiler/tiny.py): each stack keeps its block's
    head grouping (`heads_of(heads, kv_heads)`) at head widths that fill its stack's width, the
    local stacks share one width, SwiGLUs are `hidden` wide, the hash tables and windows shrink."""
    import math

    from archlang.spec import ast as A

    bl = model.byte_latent
    shrunk = {name: heads_of(b.attention.heads, b.attention.kv_heads or b.attention.heads)
              for name, b in model.blocks.items()}
    local = {model.encoder_layers[0], model.decoder_layers[0]}
    d_model = 8 * math.lcm(*(shrunk[name][0] for name in local))
    widths = {name: d_model for name in local}
    for field, scale in (("global_layers", 16), ("entropy_layers", 8)):
        for name in set(getattr(model, field)):
            widths[name] = shrunk[name][0] * scale
    blocks = {}
    for name, b in model.blocks.items():
        heads, kv = shrunk[name]
        kind = "mha" if heads == kv else "gqa"
        attention = (A.MHA(kind="mha", heads=heads, head_dim=widths[name] // heads) if kind == "mha" else
                     A.GQA(kind="gqa", heads=heads, kv_heads=kv, head_dim=widths[name] // heads))
        blocks[name] = b.model_copy(update={"attention": attention,
                                            "ffn": b.ffn.model_copy(update={"hidden": hidden})})
    window = lambda w: None if w is None else min(w, context // 2)  # noqa: E731
    entropy = bl.patching == "entropy"
    byte_latent = bl.model_copy(update={
        "global_d_model": widths[model.global_layers[0]], "hash_vocab": min(bl.hash_vocab, 64),
        "window": window(bl.window), "entropy_window": window(bl.entropy_window) if entropy else None,
        "entropy_d_model": widths[model.entropy_layers[0]] if entropy else None})
    data = model.model_dump()
    data.update(vocab=min(model.vocab, vocab), d_model=d_model, context=min(model.context, context), dtype="float32",
                blocks={k: v.model_dump() for k, v in blocks.items()}, byte_latent=byte_latent.model_dump())
    small = A.Model.model_validate(data)
    small._spans = model._spans
    return small

"""AST → graph IR. Each block of each layer becomes explicit ops (norms, projections, the
attention or SSM core, FFN pieces, residual adds) with their weights and shapes.

The lowered graph is deliberately unfused: one linear per projection, residual adds and norms
apart, RoPE as its own op, a constant table per layer. The passes in `passes/` fuse it.
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx

from archlang.spec import ast as A

from .fold import REPRESENTS, kept_layers
from .ir import GraphBuilder, NodeRef


def _norm_attrs(norm: A.Norm, dim: int) -> dict[str, Any]:
    return {"kind": norm.kind, "dim": dim, "eps": norm.eps, "bias": bool(norm.bias), "unit_offset": norm.unit_offset}


def _scaling_attrs(scaling) -> dict[str, Any] | None:
    if scaling is None:
        return None
    attrs = scaling.model_dump()
    if attrs.get("truncate") is True:  # YaRN's default: left out, so the IR of existing specs is unchanged
        del attrs["truncate"]
    return attrs


class _Lowerer:
    def __init__(self, model: A.Model, keep: dict[str, dict[int, tuple[int, ...]]] | None = None):
        self.m = model
        self.keep = keep
        self.b = GraphBuilder()
        self.d = model.d_model
        g = self.b.g
        g.graph.update(
            name=model.name, family=model.family, vocab=model.vocab, d_model=model.d_model,
            context=model.context, dtype=model.dtype, tie_embeddings=model.tie_embeddings,
            logit_softcap=model.logit_softcap,
            stacks={k: list(v) for k, v in model.stacks().items()},
            blocks={name: describe_block(block) for name, block in model.blocks.items()},
            shared_blocks=sorted(name for name, block in model.blocks.items() if block.shared),
        )
        if model.stage_marks:  # where the spec's `|` cut `layers` into pipeline stages (pipeline_parallel.py)
            g.graph["stage_marks"] = list(model.stage_marks)
        if model.embedding_dim is not None:  # what inputs_embeds must be: the narrow tables' width
            g.graph["embedding_dim"] = model.embedding_dim
        if model.head is not None:  # an encoder's task head: what forward returns and loss() trains
            g.graph["head"] = ({"kind": model.head.kind} if isinstance(model.head, (A.MLMHead, A.RTDHead))
                               else {"kind": "classifier", "labels": model.head.labels})
        # The blocks whose layers take what a hybrid = zamba2() layer before them hands off.
        self.receives = {layers[i + 1] for layers in model.stacks().values() for i, name in enumerate(layers[:-1])
                         if model.blocks[name].hybrid is not None}
        if self.receives:  # the model hands every layer the stack's input (ctx.carry)
            g.graph["carries_stack_input"] = True
        if keep is not None:
            g.graph[REPRESENTS] = {(stack, i): members for stack, kept in keep.items() for i, members in kept.items()}

    # ------------------------------------------------------------------ helpers
    def causal(self, ctx: dict) -> bool:
        """Decoders attend to the past only; encoders (and the encoder stack) see everything."""
        return self.m.family != "encoder" and ctx.get("stack") != "encoder"

    def span(self, *path) -> Any:
        return self.m.span_of(*path)

    def linear(self, nid: str, x: NodeRef, in_f: int, out_f: int, bias: bool, out_var: str, seq: str, **ctx) -> NodeRef:
        return self.b.node(nid, "linear", [x], name=nid.rsplit(".", 1)[-1], outputs=out_var,
                           shape=("B", seq, out_f),
                           attrs={"in_features": in_f, "out_features": out_f, "bias": bias}, **ctx)

    def norm(self, nid: str, x: NodeRef, norm: A.Norm, out_var: str, seq: str, **ctx) -> NodeRef:
        return self.b.node(nid, "norm", [x], name=nid.rsplit(".", 1)[-1], outputs=out_var, shape=("B", seq, self.d),
                           attrs=_norm_attrs(norm, self.d), **ctx)

    # ------------------------------------------------------------------ model
    def lower(self) -> nx.MultiDiGraph:
        m, b = self.m, self.b
        if m.family == "byte_latent":  # one op: its patches are made from the data (compiler/ops/blt.py)
            from .ops.blt import lower_byte_latent

            lower_byte_latent(m, b)
            return b.g
        if m.family == "encoder_decoder":
            enc_tokens = b.node("encoder_input_ids", "input", name="encoder_input_ids", outputs="encoder_input_ids",
                                shape=("B", "S"), attrs={"role": "encoder_tokens"})
            tokens = b.node("input_ids", "input", name="input_ids", outputs="input_ids", shape=("B", "T"),
                            attrs={"role": "tokens"})
            embed = self.embedding(enc_tokens, "S")
            enc = self.stack("encoder", m.encoder_layers, self.embedding_inputs(embed, "S", "encoder"), "S", memory=None)
            enc = self.final(enc, "encoder", "S")
            x = b.node("decoder_embed", "embedding", [tokens], name="decoder_embed", outputs="x", shape=("B", "T", self.d),
                       attrs={"vocab": m.vocab, "dim": self.d, "scale": m.embedding_scale, "shared_with": "embed",
                              "scale_in_dtype": m.embedding_scale_in_dtype or None})
            x = self.dropout("decoder_embed_dropout", x, m.embedding_dropout, "x", "T")
            x = self.stack("decoder", m.decoder_layers, x, "T", memory=enc)
            x = self.final(x, "decoder", "T")
            self.head(x, "T")
        else:
            tokens = b.node("input_ids", "input", name="input_ids", outputs="input_ids", shape=("B", "T"),
                            attrs={"role": "tokens"})
            embed = self.embedding(tokens, "T")
            x = self.embedding_inputs(embed, "T", None)
            x = trunk = self.stack("layers", m.layers, x, "T", memory=None)
            x = self.final(x, None, "T")
            if m.family == "encoder":
                b.node("hidden_states", "output", [x], name="hidden_states", outputs="hidden_states",
                       shape=("B", "T", self.d), attrs={"role": "hidden"})
                if m.pooler:
                    pooled = b.node("pooler", "pooler", [x], name="pooler", outputs="pooled", shape=("B", self.d),
                                    attrs={"dim": self.d, "act": m.pooler_act if m.pooler_act != "tanh" else None})
                    b.node("pooled_output", "output", [pooled], name="pooled_output", outputs="pooled",
                           shape=("B", self.d), attrs={"role": "pooled"})
                if m.head is not None:
                    self.encoder_head(x, pooled if m.pooler else None)
            else:
                self.head(x, "T")
                if m.mtp is not None:
                    self.mtp(trunk, embed)
        return b.g

    def encoder_head(self, x: NodeRef, pooled: NodeRef | None) -> None:
        """An encoder's task head: masked-LM scores per token, or label scores per sequence."""
        m, b, head = self.m, self.b, self.m.head
        span = {"span": self.span("head")}
        if isinstance(head, A.MLMHead):
            logits = b.node("mlm_head", "mlm_head", [x], name="mlm_head", outputs="logits",
                            shape=("B", "T", m.vocab), attrs={
                                "vocab": m.vocab, "dim": self.d, "act": head.act, "norm": head.norm.kind,
                                "eps": head.norm.eps, "norm_bias": bool(head.norm.bias), "tied": m.tie_embeddings,
                                "bias": head.bias, "width": m.embedding_dim, "dense_bias": head.dense_bias}, **span)
            b.node("logits", "output", [logits], name="logits", outputs="logits", shape=("B", "T", m.vocab),
                   attrs={"role": "logits"})
            return
        if isinstance(head, A.RTDHead):  # ELECTRA's discriminator: one logit per token
            logits = b.node("rtd_head", "rtd_head", [x], name="rtd_head", outputs="logits", shape=("B", "T"),
                            attrs={"dim": self.d, "act": head.act}, **span)
            b.node("logits", "output", [logits], name="logits", outputs="logits", shape=("B", "T"),
                   attrs={"role": "logits"})
            return
        if head.dense is not None:  # ELECTRA's classifier: its own dense layer on the first token
            scores = b.node("classifier", "mlp_classifier", [x], name="classifier", outputs="logits",
                            shape=("B", head.labels), attrs={"dim": self.d, "labels": head.labels, "act": head.dense,
                                                             "dropout": head.dropout}, **span)
            b.node("logits", "output", [scores], name="logits", outputs="logits", shape=("B", head.labels),
                   attrs={"role": "logits"})
            return
        if head.pooling != "pooler":  # the head pools the final states itself (ModernBERT)
            pooled = b.node("pool_tokens", "pool_tokens", [x], name="pool_tokens", outputs="pooled",
                            shape=("B", self.d), attrs={"mode": head.pooling, "dim": self.d}, **span)
        if head.act is not None:
            pooled = b.node("head_transform", "head_transform", [pooled], name="head_transform", outputs="pooled",
                            shape=("B", self.d), attrs={"dim": self.d, "act": head.act, "norm": head.norm.kind,
                                                        "eps": head.norm.eps, "norm_bias": bool(head.norm.bias),
                                                        "dense_bias": head.dense_bias}, **span)
        if head.dropout:
            pooled = b.node("classifier_dropout", "dropout", [pooled], name="classifier_dropout", outputs="pooled",
                            shape=("B", self.d), attrs={"p": head.dropout})
        scores = b.node("classifier", "classifier", [pooled], name="classifier", outputs="logits",
                        shape=("B", head.labels), attrs={"dim": self.d, "labels": head.labels}, **span)
        b.node("logits", "output", [scores], name="logits", outputs="logits", shape=("B", head.labels),
               attrs={"role": "logits"})

    def mtp(self, h: NodeRef, embed: NodeRef) -> None:
        """The multi-token prediction modules, in the `mtp` stack: module k (layer k - 1) reads the
        previous depth's hidden state (depth 0: the last layer's output, before the final norm)
        and the token embeddings k positions ahead, then runs one layer of its block."""
        m, mtp = self.m, self.m.mtp
        blk, norm = m.blocks[mtp.block], m.final_norm
        self.b.g.graph["mtp"] = {"depth": mtp.depth, "block": mtp.block, "loss_weight": mtp.loss_weight}
        for i in range(mtp.depth):
            ctx = {"stack": "mtp", "layer": i, "block": blk.name, "span": self.span("mtp")}
            x = self.b.node(f"mtp.{i}.input", "mtp", [h, embed], name="mtp_input", outputs="x", shape=("B", "T", self.d),
                            attrs={"index": i + 1, "d_model": self.d, "norm": norm.kind, "eps": norm.eps,
                                   "bias": bool(norm.bias), "unit_offset": norm.unit_offset, "block": blk.name}, **ctx)
            h = self.block("mtp", i, blk, x, "T", None, None)
            # its hidden states are a result of training (through head_norm and the shared head)
            self.b.node(f"mtp.{i}.output", "output", [h], name="mtp_hidden", outputs="h", shape=("B", "T", self.d),
                        attrs={"role": "mtp_hidden"}, **ctx)

    def embedding(self, tokens: NodeRef, seq: str) -> NodeRef:
        m = self.m
        width = m.embedding_dim or self.d
        return self.b.node("embed", "embedding", [tokens], name="embed", outputs="x", shape=("B", seq, width),
                           attrs={"vocab": m.vocab, "dim": width, "scale": m.embedding_scale,
                                  "scale_in_dtype": m.embedding_scale_in_dtype or None})

    def embedding_inputs(self, x: NodeRef, seq: str, stack: str | None) -> NodeRef:
        """Absolute positions, token types and the embedding norm, in the order BERT applies them."""
        m, b = self.m, self.b
        width = m.embedding_dim or self.d  # ALBERT's tables are narrower than the model
        terms = [x]
        pos = m.position
        if isinstance(pos, (A.Learned, A.Sinusoidal)):
            terms.append(b.node("pos_embed", "pos_embedding", [], name="pos_embed", outputs="pos",
                                shape=(seq, width),
                                attrs={"kind": pos.kind, "context": m.context, "dim": width}))
        if m.type_vocab:
            terms.append(b.node("type_embed", "type_embedding", [], name="type_embed", outputs="types",
                                shape=("B", seq, width),
                                attrs={"type_vocab": m.type_vocab, "dim": width}))
        if len(terms) > 1:
            x = b.node("embed_sum", "add", terms, name="embed_sum", outputs="x", shape=("B", seq, width))
        if m.embedding_norm is not None:
            x = b.node("embed_norm", "norm", [x], name="embed_norm", outputs="x", shape=("B", seq, width),
                       attrs=_norm_attrs(m.embedding_norm, width))
        name = f"{stack}_embed_dropout" if stack else "embed_dropout"
        if m.embedding_dropout:
            x = b.node(name, "dropout", [x], name=name, outputs="x", shape=("B", seq, width),
                       attrs={"p": m.embedding_dropout})
        if m.embedding_dim is not None:  # ALBERT's embedding_hidden_mapping_in
            x = self.linear("embed_proj", x, width, self.d, True, "x", seq)
        return x

    def dropout(self, nid: str, x: NodeRef, p: float, out_var: str, seq: str, **ctx) -> NodeRef:
        """A dropout node where the spec asks for one (p > 0); the input itself otherwise."""
        if not p:
            return x
        return self.b.node(nid, "dropout", [x], name=nid.rsplit(".", 1)[-1], outputs=out_var, shape=("B", seq, self.d),
                           attrs={"p": p}, **ctx)

    def final(self, x: NodeRef, stack: str | None, seq: str) -> NodeRef:
        if self.m.final_norm is None:
            return x
        nid = f"{stack}_final_norm" if stack else "final_norm"
        return self.norm(nid, x, self.m.final_norm, "x", seq)

    def head(self, x: NodeRef, seq: str) -> None:
        m, b = self.m, self.b
        if m.logit_scale is not None:
            x = b.node("logit_scale", "scale", [x], name="logit_scale", outputs="x", shape=("B", seq, self.d),
                       attrs={"factor": m.logit_scale})
        x = b.node("lm_head", "lm_head", [x], name="lm_head", outputs="logits", shape=("B", seq, m.vocab),
                   attrs={"vocab": m.vocab, "dim": self.d, "tied": m.tie_embeddings})
        if m.logit_softcap is not None:
            x = b.node("logit_softcap", "softcap", [x], name="logit_softcap", outputs="logits",
                       shape=("B", seq, m.vocab), attrs={"cap": m.logit_softcap})
        b.node("logits", "output", [x], name="logits", outputs="logits", shape=("B", seq, m.vocab),
               attrs={"role": "logits"})

    # ------------------------------------------------------------------ layers
    def stack(self, stack: str, layers: tuple[str, ...], x: NodeRef, seq: str, memory: NodeRef | None) -> NodeRef:
        rel = None
        if isinstance(self.m.position, A.Relative):
            heads = next(self.m.blocks[n].attention.heads for n in layers if self.m.blocks[n].attention is not None)
            pos = self.m.position
            rel = self.b.node(f"{stack}_rel_bias", "rel_bias", [], name=f"{stack}_rel_bias", outputs="rel_bias",
                              shape=(heads, seq, seq),
                              attrs={"buckets": pos.buckets, "max_distance": pos.max_distance, "heads": heads,
                                     "bidirectional": stack != "decoder"})
        disentangled = next((self.m.blocks[n].attention for n in layers
                             if isinstance(self.m.blocks[n].attention, A.Disentangled)), None)
        if disentangled is not None:  # one relative embedding table for the stack (spec/compat.py: all agree)
            norm = disentangled.rel_norm
            rel = self.b.node(f"{stack}_rel_embed", "rel_embedding", [], name=f"{stack}_rel_embed",
                              outputs="rel_embeddings", shape=(2 * self.rel_span(disentangled), self.d),
                              attrs={"rows": 2 * self.rel_span(disentangled), "dim": self.d,
                                     "norm": None if norm is None else {"kind": norm.kind, "eps": norm.eps,
                                                                        "bias": bool(norm.bias)}})
        indices = range(len(layers)) if self.keep is None else self.keep[stack]
        for i in indices:
            x = self.block(stack, i, self.m.blocks[layers[i]], x, seq, memory, rel)
        return x

    def rel_span(self, att: A.Disentangled) -> int:
        """Relative positions -span .. span - 1 index the table: the buckets, else the distances."""
        return att.buckets or att.max_relative or self.m.context

    def disentangled(self, pre: str, prefix: str, att: A.Disentangled, h: NodeRef, seq: str, ctx, rel) -> NodeRef:
        """DeBERTa's attention: its own q/k/v (and position) projections, the stack's table, o_proj."""
        m, width = self.m, att.heads * att.head_dim
        a = self.b.node(f"{pre}{prefix}attn", "disentangled_attention", [h, rel], name=f"{prefix}attn", outputs="a",
                        shape=("B", seq, width),
                        attrs={"d_model": self.d, "heads": att.heads, "head_dim": att.head_dim,
                               "causal": self.causal(ctx), "c2p": "c2p" in att.terms, "p2c": "p2c" in att.terms,
                               "span": self.rel_span(att), "buckets": att.buckets,
                               "max_relative": att.max_relative or m.context, "share_keys": att.share_keys,
                               "bias": att.bias, "dropout": m.attention_dropout or None,
                               "rel_dropout": m.residual_dropout or None}, **ctx)
        return self.linear(f"{pre}{prefix}o_proj", a, width, self.d, att.out_bias, "a", seq, **ctx)

    def block(self, stack: str, i: int, blk: A.Block, x: NodeRef, seq: str, memory, rel) -> NodeRef:
        ctx = {"stack": stack, "layer": i, "block": blk.name, "span": self.span("blocks", blk.name)}
        pre = f"{stack}.{i}."
        layer_input = x
        if blk.parallel:  # route and lora are refused on parallel blocks (spec/ast.py)
            return self.parallel_block(pre, blk, x, seq, ctx, rel)
        if blk.hybrid is not None:
            return self.hybrid_block(pre, blk, x, seq, ctx, rel)
        norm_input = None
        if blk.name in self.receives:  # the mixer reads x + what a hybrid layer before handed off
            norm_input = self.b.node(f"{pre}take_hand_off", "take_hand_off", [x], name="take_hand_off", outputs="h",
                                     shape=("B", seq, self.d), **ctx)
        if blk.mixers is not None:  # attention beside ssm; cross_attention, route and lora are refused
            x = self.parallel_mixers(pre, blk, x, seq, ctx, rel)
        elif blk.attention is not None or blk.ssm is not None:
            prefix = "attn" if blk.attention is not None else "ssm"

            mixer_ctx = self.at(ctx, blk, "attention" if blk.attention is not None else "ssm")

            def mixer(h: NodeRef) -> NodeRef:
                if blk.attention is not None:
                    return self.attention(pre, blk.attention, h, seq, mixer_ctx, rel=rel, kv=None, prefix="")
                return self.ssm_mixer(pre, blk.ssm, h, seq, mixer_ctx)

            x = self.sublayer(pre, prefix, blk, x, seq, ctx, mixer, norm_input=norm_input)
        elif blk.gau is not None:  # in place of attention and ffn: the block has nothing else
            gau_ctx = self.at(ctx, blk, "gau")
            x = self.sublayer(pre, "gau", blk, x, seq, ctx, lambda h: self.gau(pre, blk.gau, h, seq, gau_ctx))
        if blk.cross_attention is not None:
            cross = self.at(ctx, blk, "cross_attention")
            x = self.sublayer(pre, "cross", blk, x, seq, ctx,
                              lambda h: self.attention(pre, blk.cross_attention, h, seq, cross, rel=None,
                                                       kv=memory, prefix="cross_"))
        if blk.ffn is not None:
            ffn_ctx = self.at(ctx, blk, "ffn")
            x = self.sublayer(pre, "ffn", blk, x, seq, ctx, lambda h: self.ffn(pre, blk.ffn, h, seq, ffn_ctx))
        if blk.route is not None:
            x = self.depth_router(pre, blk.route, layer_input, x, seq, self.at(ctx, blk, "route"))
        return x

    # The lowering method of each ssm kind (Mamba-1 when none matches).
    _SSM_LOWERING = {A.Mamba2: "mamba2", A.GatedDeltaNet: "gated_deltanet", A.GLA: "gated_linear",
                     A.Retention: "gated_linear", A.ShortConv: "short_conv", A.KDA: "kda", A.MLSTM: "mlstm",
                     A.SLSTM: "slstm", A.S4D: "s4d", A.RWKV4: "rwkv4", A.RWKV7: "rwkv7", A.RGLRU: "rglru"}

    def ssm_mixer(self, pre: str, ssm, h: NodeRef, seq: str, ctx) -> NodeRef:
        if isinstance(ssm, A.Lightning):  # its decay depends on the depth: the stack's length
            return self.lightning(pre, ssm, h, seq, ctx, layers=len(self.m.stacks().get(ctx["stack"], self.m.layers)))
        method = self._SSM_LOWERING.get(type(ssm), "mamba")
        return getattr(self, method)(pre, ssm, h, seq, ctx)

    def parallel_mixers(self, pre: str, blk: A.Block, x: NodeRef, seq: str, ctx, rel) -> NodeRef:
        """x + attention_out · attn(attention_in · h) + ssm_out · ssm(ssm_in · h), h = norm(x):
        both mixers read the one normed input (Falcon-H1); one residual add."""
        mx = blk.mixers
        h = self.norm(f"{pre}mixers_norm", x, blk.norm, "h", seq, **self.at(ctx, blk, "norm"))
        att_ctx, ssm_ctx = self.at(ctx, blk, "attention"), self.at(ctx, blk, "ssm")
        a = self.scaled(f"{pre}attn_in_scale", h, mx.attention_in, "h_attn", seq, att_ctx)
        a = self.attention(pre, blk.attention, a, seq, att_ctx, rel=rel, kv=None, prefix="")
        a = self.scaled(f"{pre}attn_out_scale", a, mx.attention_out, "a", seq, att_ctx)
        s = self.scaled(f"{pre}ssm_in_scale", h, mx.ssm_in, "h_ssm", seq, ssm_ctx)
        s = self.ssm_mixer(pre, blk.ssm, s, seq, ssm_ctx)
        # its own variable (the mixers' `h` stays readable) and its own cache entry beside the attention's
        self.b.g.nodes[s.node].update(outputs=("s",), cache_suffix="ssm")
        s = self.scaled(f"{pre}ssm_out_scale", s, mx.ssm_out, "s", seq, ssm_ctx)
        both = self.b.node(f"{pre}mixers_sum", "add", [a, s], name="mixers_sum", outputs="h",
                           shape=("B", seq, self.d), **ctx)
        both = self.branch_out(f"{pre}mixers", both, "h", seq, ctx)
        return self.b.node(f"{pre}mixers_residual", "add", [x, both], name="mixers_residual", outputs="x",
                           shape=("B", seq, self.d), **ctx)

    def scaled(self, nid: str, x: NodeRef, factor: float | None, out_var: str, seq: str, ctx) -> NodeRef:
        """x times a constant factor (a µP multiplier); x itself where none is written."""
        if factor is None:
            return x
        width = self.b.g.nodes[x.node]["shape"][-1]
        return self.b.node(nid, "scale", [x], name=nid.rsplit(".", 1)[-1], outputs=out_var,
                           shape=("B", seq, width), attrs={"factor": factor}, **ctx)

    def depth_router(self, pre: str, route: A.DepthRouter, x_in: NodeRef, x_out: NodeRef, seq: str, ctx) -> NodeRef:
        hidden = (route.predictor_hidden or max(self.d // 8, 1)) if route.predictor else None
        return self.b.node(f"{pre}route", "depth_router", [x_in, x_out], name="route", outputs="x",
                           shape=("B", seq, self.d),
                           attrs={"d_model": self.d, "capacity": route.capacity, "predictor_hidden": hidden,
                                  "aux_loss": route.aux_loss}, **ctx)

    def targets(self, ctx, target: str) -> bool:
        lora = self.m.blocks[ctx["block"]].lora
        return lora is not None and target in lora.targets

    def adapted(self, pre: str, target: str, h: NodeRef, y: NodeRef, in_f: int, out_f: int, seq: str, ctx) -> NodeRef:
        """The projection output `y`, plus its per-use low-rank adapter where the block's lora
        targets it (Zamba2); `y` itself otherwise."""
        if not self.targets(ctx, target):
            return y
        blk = self.m.blocks[ctx["block"]]
        var = self.b.g.nodes[y.node]["outputs"][y.out]
        uses = [i for i, name in enumerate(self.m.stacks()[ctx["stack"]]) if name == blk.name]
        return self.b.node(f"{pre}{target}_lora", "lora", [h, y], name=f"{target}_lora", outputs=var,
                           shape=("B", seq, out_f),
                           attrs={"in_features": in_f, "out_features": out_f, "rank": blk.lora.rank, "uses": uses},
                           **{**ctx, "span": self.span("blocks", blk.name, "lora")})

    def hybrid_block(self, pre: str, blk: A.Block, x: NodeRef, seq: str, ctx, rel) -> NodeRef:
        """Zamba2's shared transformer: t = P ffn(norm2(attn(norm(concat(x, x0))))), no residual
        adds, handed to the next layer; x passes on unchanged."""
        d, b = self.d, self.b
        hybrid_ctx, norm_ctx = self.at(ctx, blk, "hybrid"), self.at(ctx, blk, "norm")
        h = b.node(f"{pre}concat_stack_input", "concat_stack_input", [x], name="concat_stack_input", outputs="h",
                   shape=("B", seq, 2 * d), attrs={"d_model": d}, **hybrid_ctx)
        h = b.node(f"{pre}attn_norm", "norm", [h], name="attn_norm", outputs="h", shape=("B", seq, 2 * d),
                   attrs=_norm_attrs(blk.norm, 2 * d), **norm_ctx)
        a = self.attention(pre, blk.attention, h, seq, self.at(ctx, blk, "attention"), rel=rel, kv=None, prefix="")
        h = self.norm(f"{pre}ffn_norm", a, blk.norm, "h", seq, **norm_ctx)
        h = self.ffn(pre, blk.ffn, h, seq, self.at(ctx, blk, "ffn"))
        if blk.shared:  # the block's weights are shared; this projection is each use's own
            uses = [i for i, name in enumerate(self.m.stacks()[ctx["stack"]]) if name == blk.name]
            t = b.node(f"{pre}hybrid_proj", "per_use_linear", [h], name="hybrid_proj", outputs="t",
                       shape=("B", seq, d), attrs={"in_features": d, "out_features": d, "uses": uses}, **hybrid_ctx)
        else:
            t = self.linear(f"{pre}hybrid_proj", h, d, d, False, "t", seq, **hybrid_ctx)
        return b.node(f"{pre}hand_off", "hand_off", [x, t], name="hand_off", outputs="x", shape=("B", seq, d),
                      **hybrid_ctx)

    def parallel_block(self, pre: str, blk: A.Block, x: NodeRef, seq: str, ctx, rel) -> NodeRef:
        """x + attn(norm1(x)) + ffn(norm2(x)): both branches read the block's input, each behind
        its own (pre) norm, and one add sums the three."""
        norm_ctx = self.at(ctx, blk, "norm")
        h = self.norm(f"{pre}attn_norm", x, blk.norm, "h", seq, **norm_ctx)
        a = self.attention(pre, blk.attention, h, seq, self.at(ctx, blk, "attention"), rel=rel, kv=None, prefix="")
        a = self.branch_out(f"{pre}attn", a, "a", seq, ctx)
        h = self.norm(f"{pre}ffn_norm", x, blk.norm, "h", seq, **norm_ctx)
        f = self.branch_out(f"{pre}ffn", self.ffn(pre, blk.ffn, h, seq, self.at(ctx, blk, "ffn")), "h", seq, ctx)
        return self.b.node(f"{pre}parallel_residual", "add", [x, a, f], name="parallel_residual", outputs="x",
                           shape=("B", seq, self.d), **ctx)

    def branch_out(self, nid: str, h: NodeRef, out_var: str, seq: str, ctx) -> NodeRef:
        """A residual branch's output as it is added back: scaled (Granite), then dropped out."""
        if self.m.residual_scale is not None:
            h = self.b.node(f"{nid}_residual_scale", "scale", [h], name=f"{nid.rsplit('.', 1)[-1]}_residual_scale",
                            outputs=out_var, shape=("B", seq, self.d), attrs={"factor": self.m.residual_scale}, **ctx)
        return self.dropout(f"{nid}_dropout", h, self.m.residual_dropout, out_var, seq, **ctx)

    def at(self, ctx: dict, blk: A.Block, component: str) -> dict:
        """The node context for a component, pointing at where the spec wrote it."""
        return {**ctx, "span": self.span("blocks", blk.name, component)}

    def sublayer(self, pre: str, prefix: str, blk: A.Block, x: NodeRef, seq: str, ctx, body,
                 norm_input: NodeRef | None = None) -> NodeRef:
        """One residual branch, with its norm placed pre, post, on both sides (sandwich), on the
        branch's output (output), or before it with the normalised input as the residual
        (normed_residual); the two terms of the add weighed where the block says (MiniMax)."""
        norm, placement = blk.norm, blk.norm.placement
        norm_ctx = self.at(ctx, blk, "norm")
        if prefix in ("attn", "ssm") and not blk.mixer_norm:  # placement pre only (spec/ast.py)
            h = x
        elif placement == "normed_residual":  # the residual stream continues from the normalised input
            h = x = self.norm(f"{pre}{prefix}_norm", x, norm, "x", seq, **norm_ctx)
        elif placement in ("pre", "sandwich"):  # (a hybrid layer's hand-off joins the normed input only)
            h = self.norm(f"{pre}{prefix}_norm", norm_input or x, norm, "h", seq, **norm_ctx)
        else:
            h = x
        h = body(h)
        if placement in ("sandwich", "output"):
            h = self.norm(f"{pre}{prefix}_post_norm", h, norm, "h", seq, **norm_ctx)
        h = self.branch_out(f"{pre}{prefix}", h, "h", seq, ctx)
        weights = {"attn": blk.mixer_residual, "ssm": blk.mixer_residual, "gau": blk.mixer_residual,
                   "ffn": blk.ffn_residual}.get(prefix)
        if weights is not None:
            skip, branch = weights
            for side, factor, var in (("skip", skip, "x"), ("branch", branch, "h")):
                if factor != 1:
                    node = x if side == "skip" else h
                    node = self.b.node(f"{pre}{prefix}_{side}_scale", "scale", [node], name=f"{prefix}_{side}_scale",
                                       outputs=var, shape=("B", seq, self.d), attrs={"factor": factor}, **ctx)
                    x, h = (node, h) if side == "skip" else (x, node)
        x = self.b.node(f"{pre}{prefix}_residual", "add", [x, h], name=f"{prefix}_residual", outputs="x",
                        shape=("B", seq, self.d), **ctx)
        if placement == "post":
            x = self.norm(f"{pre}{prefix}_norm", x, norm, "x", seq, **norm_ctx)
        return x

    def attention(self, pre: str, att, h: NodeRef, seq: str, ctx, *, rel, kv: NodeRef | None, prefix: str) -> NodeRef:
        m, b, d = self.m, self.b, self.d
        pos = m.position_of(ctx["block"])  # the block's own scheme, or the model's
        span_seq = "S" if kv is not None else seq
        kv_src = kv if kv is not None else h
        if isinstance(att, A.MLA):
            return self.mla(pre, att, h, seq, ctx, pos)
        if isinstance(att, A.Disentangled):
            return self.disentangled(pre, prefix, att, h, seq, ctx, rel)
        hd, heads, kv_heads = att.head_dim, att.heads, att.kv_heads
        w = b.g.nodes[h.node]["shape"][-1]  # d_model, or twice it in a hybrid = zamba2() block
        kv_w = w if kv is None else d
        q = self.linear(f"{pre}{prefix}q_proj", h, w, heads * hd, att.bias, "q", seq, **ctx)
        k = self.linear(f"{pre}{prefix}k_proj", kv_src, kv_w, kv_heads * hd, att.bias, "k", span_seq, **ctx)
        v = self.linear(f"{pre}{prefix}v_proj", kv_src, kv_w, kv_heads * hd, att.bias, "v", span_seq, **ctx)
        if kv is None:
            q = self.adapted(pre, "q", h, q, w, heads * hd, seq, ctx)
            k = self.adapted(pre, "k", h, k, w, kv_heads * hd, seq, ctx)
            v = self.adapted(pre, "v", h, v, w, kv_heads * hd, seq, ctx)
        if isinstance(att, A.LinearAttention):
            a = b.node(f"{pre}{prefix}attn", "linear_attention", [q, k, v], name=f"{prefix}attn", outputs="a",
                       shape=("B", seq, heads * hd), attrs={"heads": heads, "head_dim": hd, "causal": self.causal(ctx),
                                                            "kv_heads": kv_heads if kv_heads != heads else None,
                                                            "feature_map": att.feature_map
                                                            if att.feature_map != "elu_plus_one" else None},
                       **ctx)
            a = self.output_gate(pre, prefix, att, h, a, seq, ctx)
            return self.linear(f"{pre}{prefix}o_proj", a, heads * hd, d, att.out_bias, "a", seq, **ctx)
        extra: list[NodeRef] = []
        attrs: dict[str, Any] = {
            "kind": att.kind, "heads": heads, "kv_heads": kv_heads, "head_dim": hd,
            "causal": self.causal(ctx) and kv is None, "window": att.window, "softcap": att.softcap,
            "scale": (att.scale if att.scale is not None else hd**-0.5) * (getattr(att, "key_multiplier", None) or 1),
            "rope": None, "packed": False, "cross": kv is not None, "alibi": False, "rel_bias": False,
            "dropout": m.attention_dropout or None,
        }
        attrs.update(_modern_attrs(att))
        if isinstance(att, A.Differential):
            attrs["lambda_init"] = att.lambda_init
            attrs["scale"] = att.scale if att.scale is not None else (hd // 2)**-0.5  # per sub-head
        if kv is None and isinstance(pos, A.Rope):
            # Differential attention rotates each of a head's two q/k sub-heads on its own.
            sub = 2 if isinstance(att, A.Differential) else 1
            rot = pos.dim or hd // sub
            table = b.node(f"{pre}rope_table", "const", [], name="rope_table", outputs="rope",
                           shape=(m.context, rot), attrs=_rope_table_attrs(pos, rot, m.context), **ctx)
            if att.qk_norm is not None and att.qk_norm.kind != "l2":
                # q and k are normalised before they are rotated, so the attention core rotates them
                # itself after its norm (the form fold-rope gives): a rope op in front would rotate first.
                extra.append(table)
                attrs["rope"] = {"dim": rot}
            else:
                q = b.node(f"{pre}rope", "rope", [q, k, table], name="rope", outputs=("q", "k"),
                           shape=("B", seq, heads * hd),
                           attrs={"heads": heads * sub, "kv_heads": kv_heads * sub, "head_dim": hd // sub,
                                  "rotary_dim": rot}, **ctx)
                k = NodeRef(q.node, 1)
        elif kv is None and isinstance(pos, A.Alibi):
            table = b.node(f"{pre}alibi_slopes", "const", [], name="alibi_slopes", outputs="alibi",
                           shape=(heads,), attrs={"table": "alibi", "heads": heads}, **ctx)
            extra.append(table)
            attrs["alibi"] = True
        if rel is not None and kv is None and self.b.g.nodes[rel.node]["op"] == "rel_bias":  # not DeBERTa's table
            extra.append(rel)
            attrs["rel_bias"] = True
        a = b.node(f"{pre}{prefix}attn", "attention", [q, k, v, *extra], name=f"{prefix}attn", outputs="a",
                   shape=("B", seq, heads * hd), attrs=attrs, **ctx)
        a = self.output_gate(pre, prefix, att, h, a, seq, ctx)
        if kv is None and self.targets(ctx, "o"):  # the adapter reads the attention's output: keep it
            out = self.linear(f"{pre}{prefix}o_proj", a, heads * hd, d, att.out_bias, "o", seq, **ctx)
            return self.adapted(pre, "o", a, out, heads * hd, d, seq, ctx)
        return self.linear(f"{pre}{prefix}o_proj", a, heads * hd, d, att.out_bias, "a", seq, **ctx)

    def output_gate(self, pre: str, prefix: str, att, h: NodeRef, a: NodeRef, seq: str, ctx) -> NodeRef:
        """Qwen3-Next's gated attention: a · sigmoid(attn_gate_proj(h)), each head by its own gate."""
        if not att.output_gate:
            return a
        width = att.heads * att.head_dim
        g = self.linear(f"{pre}{prefix}attn_gate_proj", h, self.b.g.nodes[h.node]["shape"][-1], width, att.bias, "g",
                        seq, **ctx)
        return self.b.node(f"{pre}{prefix}attn_gate", "glu", [g, a], name=f"{prefix}attn_gate", outputs="a",
                           shape=("B", seq, width), attrs={"act": "sigmoid", "hidden": width, "packed": False}, **ctx)

    def mla(self, pre: str, att: A.MLA, h: NodeRef, seq: str, ctx, pos) -> NodeRef:
        m, b, d = self.m, self.b, self.d
        qk = att.nope_head_dim + att.rope_head_dim
        q_latent = None
        if att.q_lora_rank:
            q = self.linear(f"{pre}q_a_proj", h, d, att.q_lora_rank, False, "q", seq, **ctx)
            # the indexer reads the latent after q_b_proj has run: it keeps a name of its own
            q = q_latent = self.b.node(f"{pre}q_a_norm", "norm", [q], name="q_a_norm",
                                       outputs="q_latent" if att.indexer else "q", shape=("B", seq, att.q_lora_rank),
                                       attrs={"kind": "rmsnorm", "dim": att.q_lora_rank, "eps": 1e-6, "bias": False,
                                              "unit_offset": False}, **ctx)
            q = self.linear(f"{pre}q_b_proj", q, att.q_lora_rank, att.heads * qk, False, "q", seq, **ctx)
        else:
            q = self.linear(f"{pre}q_proj", h, d, att.heads * qk, False, "q", seq, **ctx)
        kv = self.linear(f"{pre}kv_a_proj", h, d, att.kv_lora_rank + att.rope_head_dim, False, "kv", seq, **ctx)
        inputs = [q, kv]
        rope = None
        if isinstance(pos, A.Rope):
            inputs.append(b.node(f"{pre}rope_table", "const", [], name="rope_table", outputs="rope",
                                 shape=(m.context, att.rope_head_dim),
                                 attrs=_rope_table_attrs(pos, att.rope_head_dim, m.context), **ctx))
            rope = True
        if att.indexer is not None:
            inputs.append(self.indexer(pre, att, h, q_latent, inputs[2:], seq, ctx))
        scale = att.scale if att.scale is not None else qk**-0.5
        scaling = pos.scaling if isinstance(pos, A.Rope) else None
        if isinstance(scaling, A.YarnScaling) and scaling.mscale_all_dim:
            # DeepSeek-V2 folds YaRN's attention temperature into the softmax scale
            scale *= yarn_mscale(scaling.factor, scaling.mscale_all_dim) ** 2
        a = b.node(f"{pre}attn", "mla_attention", inputs, name="attn", outputs="a",
                   shape=("B", seq, att.heads * att.v_head_dim),
                   attrs={"heads": att.heads, "kv_lora_rank": att.kv_lora_rank, "rope_head_dim": att.rope_head_dim,
                          "nope_head_dim": att.nope_head_dim, "v_head_dim": att.v_head_dim, "causal": self.causal(ctx),
                          "scale": scale, "window": att.window, "softcap": att.softcap, "rope": rope, "norm_eps": 1e-6,
                          **({"top_k": att.indexer.top_k} if att.indexer else {})},
                   **ctx)
        return self.linear(f"{pre}o_proj", a, att.heads * att.v_head_dim, d, att.out_bias, "a", seq, **ctx)

    def indexer(self, pre: str, att: A.MLA, h: NodeRef, q_latent: NodeRef, rope: list[NodeRef], seq: str, ctx) -> NodeRef:
        """DeepSeek-V3.2's lightning indexer: the mask of the keys each query's attention keeps."""
        ix = att.indexer
        return self.b.node(f"{pre}indexer", "lightning_indexer", [h, q_latent, *rope], name="indexer", outputs="keep",
                           shape=("B", seq, "S"),
                           attrs={"heads": ix.heads, "head_dim": ix.head_dim, "top_k": ix.top_k, "d_model": self.d,
                                  "q_lora_rank": att.q_lora_rank, "causal": self.causal(ctx),
                                  "rope_dim": att.rope_head_dim if rope else None, "norm_eps": 1e-6}, **ctx)

    def mamba(self, pre: str, ssm: A.Mamba, h: NodeRef, seq: str, ctx) -> NodeRef:
        d = self.d
        di, n, r = ssm.expand * d, ssm.d_state, ssm.dt_rank
        return self.b.node(f"{pre}ssm", "ssm", [h], name="ssm", outputs="h", shape=("B", seq, d),
                           attrs={"kind": "mamba", "d_model": d, "d_inner": di, "d_state": n, "d_conv": ssm.d_conv,
                                  "dt_rank": r, "conv_bias": ssm.conv_bias, "bias": ssm.bias,
                                  "inner_norms": bool(ssm.inner_norms), "norm_eps": ssm.norm_eps,
                                  "weightless_norms": True if ssm.inner_norms == "weightless" else None}, **ctx)

    def gated_deltanet(self, pre: str, ssm: A.GatedDeltaNet, h: NodeRef, seq: str, ctx) -> NodeRef:
        d = self.d
        return self.b.node(f"{pre}ssm", "gated_deltanet", [h], name="ssm", outputs="h", shape=("B", seq, d),
                           attrs={"d_model": d, "key_heads": ssm.key_heads, "value_heads": ssm.value_heads,
                                  "key_dim": ssm.key_dim, "value_dim": ssm.value_dim, "conv_size": ssm.conv_size,
                                  "chunk": ssm.chunk, "norm_eps": ssm.norm_eps}, **ctx)

    def gau(self, pre: str, gau: A.GAU, h: NodeRef, seq: str, ctx) -> NodeRef:
        """The gated attention unit: one node, with the RoPE table of the block's position as its
        second input where it has one (the unit rotates its q and k itself)."""
        m, b = self.m, self.b
        pos = m.position_of(ctx["block"])
        inputs, rot = [h], None
        if isinstance(pos, A.Rope):
            rot = pos.dim or gau.key_dim
            inputs.append(b.node(f"{pre}rope_table", "const", [], name="rope_table", outputs="rope",
                                 shape=(m.context, rot), attrs=_rope_table_attrs(pos, rot, m.context), **ctx))
        return b.node(f"{pre}gau", "gau", inputs, name="gau", outputs="h", shape=("B", seq, self.d),
                      attrs={"d_model": self.d, "hidden": gau.expansion * self.d, "key_dim": gau.key_dim,
                             "scores": gau.scores, "causal": self.causal(ctx), "chunk": gau.chunk, "bias": gau.bias,
                             "rope": rot, "length": gau.length}, **ctx)

    def kda(self, pre: str, ssm: A.KDA, h: NodeRef, seq: str, ctx) -> NodeRef:
        return self.b.node(f"{pre}ssm", "kda", [h], name="ssm", outputs="h", shape=("B", seq, self.d),
                           attrs={"d_model": self.d, "heads": ssm.heads, "head_dim": ssm.head_dim,
                                  "conv_size": ssm.conv_size, "chunk": ssm.chunk, "norm_eps": ssm.norm_eps}, **ctx)

    def gated_linear(self, pre: str, ssm: A.GLA | A.Retention, h: NodeRef, seq: str, ctx) -> NodeRef:
        attrs = {"d_model": self.d, "heads": ssm.heads, "key_dim": ssm.key_dim, "value_dim": ssm.value_dim,
                 "chunk": ssm.chunk, "norm_eps": ssm.norm_eps}
        if isinstance(ssm, A.GLA):
            attrs.update(gate_rank=ssm.gate_rank, gate_logit_normalizer=ssm.gate_logit_normalizer)
        else:
            attrs.update(output_gate=ssm.output_gate)
        return self.b.node(f"{pre}ssm", ssm.kind, [h], name="ssm", outputs="h", shape=("B", seq, self.d),
                           attrs=attrs, **ctx)

    def mamba2(self, pre: str, ssm: A.Mamba2, h: NodeRef, seq: str, ctx) -> NodeRef:
        d = self.d
        return self.b.node(f"{pre}ssm", "mamba2", [h], name="ssm", outputs="h", shape=("B", seq, d),
                           attrs={"d_model": d, "d_inner": ssm.heads * ssm.head_dim, "d_state": ssm.d_state,
                                  "d_conv": ssm.d_conv, "heads": ssm.heads, "groups": ssm.groups, "chunk": ssm.chunk,
                                  "conv_bias": ssm.conv_bias, "bias": ssm.bias, "gated_norm": ssm.gated_norm,
                                  "norm_before_gate": ssm.norm_before_gate, "norm_eps": ssm.norm_eps,
                                  "d_skip": ssm.d_skip,
                                  "dt_limit": list(ssm.dt_limit) if ssm.dt_limit is not None else None,
                                  "in_proj_multipliers": list(ssm.in_proj_multipliers)
                                  if ssm.in_proj_multipliers is not None else None}, **ctx)

    def short_conv(self, pre: str, ssm: A.ShortConv, h: NodeRef, seq: str, ctx) -> NodeRef:
        return self.b.node(f"{pre}ssm", "short_conv", [h], name="ssm", outputs="h", shape=("B", seq, self.d),
                           attrs={"d_model": self.d, "kernel": ssm.kernel, "bias": ssm.bias,
                                  "conv_bias": ssm.conv_bias}, **ctx)

    def mlstm(self, pre: str, ssm: A.MLSTM, h: NodeRef, seq: str, ctx) -> NodeRef:
        return self.b.node(f"{pre}ssm", "mlstm", [h], name="ssm", outputs="h", shape=("B", seq, self.d),
                           attrs={"d_model": self.d, "heads": ssm.heads, "key_dim": ssm.key_dim,
                                  "value_dim": ssm.value_dim, "gate_softcap": ssm.gate_softcap,
                                  "norm_eps": ssm.norm_eps, "denominator_eps": ssm.denominator_eps,
                                  "chunk": ssm.chunk}, **ctx)

    def slstm(self, pre: str, ssm: A.SLSTM, h: NodeRef, seq: str, ctx) -> NodeRef:
        return self.b.node(f"{pre}ssm", "slstm", [h], name="ssm", outputs="h", shape=("B", seq, self.d),
                           attrs={"d_model": self.d, "heads": ssm.heads, "conv_size": ssm.conv_size,
                                  "norm_eps": ssm.norm_eps}, **ctx)

    def s4d(self, pre: str, ssm: A.S4D, h: NodeRef, seq: str, ctx) -> NodeRef:
        return self.b.node(f"{pre}ssm", "s4d", [h], name="ssm", outputs="h", shape=("B", seq, self.d),
                           attrs={"d_model": self.d, "state": ssm.state}, **ctx)

    def rwkv4(self, pre: str, ssm: A.RWKV4, h: NodeRef, seq: str, ctx) -> NodeRef:
        return self.b.node(f"{pre}ssm", "rwkv4", [h], name="ssm", outputs="h", shape=("B", seq, self.d),
                           attrs={"d_model": self.d, "dim": ssm.dim or self.d}, **ctx)

    def rwkv7(self, pre: str, ssm: A.RWKV7, h: NodeRef, seq: str, ctx) -> NodeRef:
        d = self.d
        # flash-linear-attention's default adapter ranks: multiples of 32 growing with sqrt(d_model),
        # the decay's, rate's and value's also with head_dim / 64
        factor = (d // ssm.heads) / 64

        def rank(written, scale, by_head=True):
            return written or max(32, int(round(scale * d ** 0.5 * (factor if by_head else 1) / 32) * 32))

        attrs = {"d_model": d, "heads": ssm.heads, "decay_rank": rank(ssm.decay_rank, 2.5),
                 "a_rank": rank(ssm.a_rank, 2.5), "value_rank": rank(ssm.value_rank, 1.7) if ssm.value_residual else None,
                 "gate_rank": rank(ssm.gate_rank, 5, by_head=False), "norm_eps": ssm.norm_eps, "chunk": ssm.chunk}
        return self.b.node(f"{pre}ssm", "rwkv7", [h], name="ssm", outputs="h", shape=("B", seq, d), attrs=attrs, **ctx)

    def rglru(self, pre: str, ssm: A.RGLRU, h: NodeRef, seq: str, ctx) -> NodeRef:
        return self.b.node(f"{pre}ssm", "rglru", [h], name="ssm", outputs="h", shape=("B", seq, self.d),
                           attrs={"d_model": self.d, "width": ssm.width or self.d, "heads": ssm.heads,
                                  "conv_size": ssm.conv_size, "act": ssm.act}, **ctx)

    def lightning(self, pre: str, ssm: A.Lightning, h: NodeRef, seq: str, ctx, layers: int) -> NodeRef:
        return self.b.node(f"{pre}ssm", "lightning", [h], name="ssm", outputs="h", shape=("B", seq, self.d),
                           attrs={"d_model": self.d, "heads": ssm.heads, "key_dim": ssm.key_dim,
                                  "value_dim": ssm.value_dim, "layers": layers, "act": ssm.act, "chunk": ssm.chunk,
                                  "norm_eps": ssm.norm_eps}, **ctx)

    def ffn(self, pre: str, ffn, h: NodeRef, seq: str, ctx) -> NodeRef:
        d = self.d
        if isinstance(ffn, A.MoE):
            return self.moe(pre, ffn, h, seq, ctx)
        if isinstance(ffn, (A.RWKVChannelMix, A.RWKV7ChannelMix)):
            return self.b.node(f"{pre}channel_mix", ffn.kind, [h], name="channel_mix", outputs="h",
                               shape=("B", seq, d), attrs={"d_model": d, "hidden": ffn.hidden}, **ctx)
        if isinstance(ffn, A.MLP):
            u = self.linear(f"{pre}up_proj", h, d, ffn.hidden, ffn.bias, "u", seq, **ctx)
            u = self.b.node(f"{pre}act", "activation", [u], name="act", outputs="u", shape=("B", seq, ffn.hidden),
                            attrs={"act": ffn.act}, **ctx)
            down = self.linear(f"{pre}down_proj", u, ffn.hidden, d, ffn.bias, "h", seq, **ctx)
            return self.adapted(pre, "down", u, down, ffn.hidden, d, seq, ctx)
        if self.targets(ctx, "gate_up"):
            # Zamba2's adapter spans gate and up together: lower them as the one projection it adapts
            gu = self.b.node(f"{pre}gate_up_proj", "linear", [h], name="gate_up_proj", outputs="gu",
                             shape=("B", seq, 2 * ffn.hidden),
                             attrs={"in_features": d, "out_features": 2 * ffn.hidden, "bias": ffn.bias,
                                    "parts": [("gate_proj", ffn.hidden), ("up_proj", ffn.hidden)]}, **ctx)
            gu = self.adapted(pre, "gate_up", h, gu, d, 2 * ffn.hidden, seq, ctx)
            u = self.b.node(f"{pre}glu", "glu", [gu], name="glu", outputs="u", shape=("B", seq, ffn.hidden),
                            attrs={"act": ffn.act, "hidden": ffn.hidden, "packed": True}, **ctx)
        else:
            gate = self.linear(f"{pre}gate_proj", h, d, ffn.hidden, ffn.bias, "g", seq, **ctx)
            gate = self.scaled(f"{pre}gate_scale", gate, ffn.gate_multiplier, "g", seq, ctx)
            up = self.linear(f"{pre}up_proj", h, d, ffn.hidden, ffn.bias, "u", seq, **ctx)
            u = self.b.node(f"{pre}glu", "glu", [gate, up], name="glu", outputs="u", shape=("B", seq, ffn.hidden),
                            attrs={"act": ffn.act, "hidden": ffn.hidden, "packed": False}, **ctx)
        down = self.linear(f"{pre}down_proj", u, ffn.hidden, d, ffn.bias, "h", seq, **ctx)
        down = self.adapted(pre, "down", u, down, ffn.hidden, d, seq, ctx)
        return self.scaled(f"{pre}down_scale", down, ffn.down_multiplier, "h", seq, ctx)

    def moe(self, pre: str, moe: A.MoE, h: NodeRef, seq: str, ctx) -> NodeRef:
        e = moe.experts
        expert = moe.expert
        attrs = {
            "experts": e, "top_k": moe.top_k,
            # gpt-oss's clamped SwiGLU has the GLU weights; its function is the expert's activation
            "expert_kind": "swiglu" if isinstance(expert, A.ClampedSwiGLU) else expert.kind,
            "expert_act": "swiglu_oai" if isinstance(expert, A.ClampedSwiGLU) else expert.act,
            "expert_hidden": expert.hidden, "expert_bias": expert.bias,
            "shared_kind": moe.shared.kind if moe.shared else None,
            "shared_act": moe.shared.act if moe.shared else None,
            "shared_hidden": moe.shared.hidden if moe.shared else None,
            "shared_bias": bool(moe.shared.bias) if moe.shared else False,
            "shared_gate": moe.shared_gate, "router": moe.router, "normalize_top_k": moe.normalize_top_k,
            "routed_scale": moe.routed_scale, "aux_loss": moe.aux_loss, "z_loss": moe.z_loss,
            "capacity_factor": moe.capacity_factor, "router_bias": moe.router_bias,
            "correction_bias": moe.correction_bias, "bias_update_speed": moe.bias_update_speed,
            "seq_aux_loss": moe.seq_aux_loss, "groups": moe.groups, "topk_groups": moe.topk_groups,
            "group_score": moe.group_score, "scale_input": moe.scale_input,
        }
        if moe.normalize_min:
            attrs["normalize_min"] = moe.normalize_min
        if moe.router == "hash":
            attrs["vocab"] = self.m.vocab  # the fixed token → expert table has a row per token id
        if isinstance(expert, A.ClampedSwiGLU):
            attrs.update(glu_limit=expert.limit, glu_alpha=expert.alpha)
        return self.b.node(f"{pre}moe", "moe", [h], name="moe", outputs="h", shape=("B", seq, self.d),
                           attrs=attrs, **ctx)


def _modern_attrs(att) -> dict[str, Any]:
    """The attention options of 2024–2026 models, as the attention op's attributes."""
    # options that are off are left out (None), so IR dumps without them stay as they were
    attrs: dict[str, Any] = {"sinks": att.sinks or None, "chunk": att.chunk, "sink_tokens": att.sink_tokens or None,
                             "dilation": att.dilation, "global_tokens": att.global_tokens or None}
    # after_rope only when on, so the IR of norms before RoPE stays as it was
    attrs["qk_norm"] = (att.qk_norm.model_dump(exclude=set() if att.qk_norm.after_rope else {"after_rope"})
                        if att.qk_norm is not None else None)
    attrs["temperature"] = ({"floor_scale": att.floor_scale or 8192.0, "attn_scale": att.attn_scale or 0.1}
                            if att.temperature_tuning else None)
    return attrs


def _rope_table_attrs(pos: A.Rope, rot: int, context: int) -> dict[str, Any]:
    return {"table": "rope", "theta": pos.theta, "dim": rot, "context": context, "scaling": _scaling_attrs(pos.scaling)}


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature for a context stretched `scale` times."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def describe_block(block: A.Block) -> str:
    """A one-line summary of a block, for docstrings, pictures and diffs."""
    parts = (["shared weights"] if block.shared else []) + [f"{block.norm.kind} ({block.norm.placement})"]
    if block.hybrid is not None:
        parts.insert(0, "zamba2 hybrid: reads concat(x, embeddings), hands its output to the next layer")
    if not block.mixer_norm:  # placement pre (spec/ast.py)
        parts[-1] = f"{block.norm.kind} (pre, ffn only)"
    if block.position != "inherit":
        parts.append("position " + describe_component(block.position) if block.position is not None else "no position")
    if block.parallel:  # a validated parallel block has both branches and nothing else
        parts.append(f"parallel({describe_component(block.attention)}, {describe_component(block.ffn)})")
        return " → ".join(parts)
    mixer = block.attention or block.ssm or block.gau
    if block.mixers is not None:
        parts.append(f"parallel({describe_component(block.attention)}, {describe_component(block.ssm)})")
    elif mixer is not None:
        parts.append(describe_component(mixer))
    if block.cross_attention is not None:
        parts.append("cross " + describe_component(block.cross_attention))
    if block.ffn is not None:
        parts.append(describe_component(block.ffn))
    if block.route is not None:
        parts.append(f"depth-routed (capacity {block.route.capacity!r})")
    if block.lora is not None:
        parts.append(f"lora per use (rank {block.lora.rank}: {', '.join(block.lora.targets)})")
    return " → ".join(parts)


_SUMMARY_FIELDS = ("depth", "block", "theta", "heads", "kv_heads", "head_dim", "kv_lora_rank", "q_lora_rank", "window", "softcap", "hidden",
                   "experts", "top_k", "shared_experts", "d_state", "d_conv", "expand", "dt_rank",
                   "key_heads", "value_heads", "key_dim", "value_dim", "kernel")


def describe_component(c) -> str:
    fields = []
    for f in _SUMMARY_FIELDS:
        if f in type(c).model_fields or (f == "kv_heads" and hasattr(c, "kv_heads")):
            v = getattr(c, f, None)
            if v is not None and not (f == "kv_heads" and c.kind in ("mha", "disentangled")):
                fields.append(f"{f}={v}")
    if getattr(c, "expert", None) is not None:
        fields.append(f"expert={c.expert.kind}({c.expert.hidden})")
    return f"{c.kind}({', '.join(fields)})"


def lower(model: A.Model, *, folded: bool = False) -> nx.MultiDiGraph:
    """Lower a validated model into the (unfused) graph IR. With `folded`, only the layers that
    stand for their stack (compiler/fold.py) are lowered, under their own layer indices."""
    return _Lowerer(model, kept_layers(model) if folded else None).lower()

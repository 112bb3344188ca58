"""The design-review rules of `archc lint`: each a small function over one resolved model (and,
where it needs them, its IR facts) yielding located `Hit`s. None of them is an error: every spec
they fire on compiles and runs exactly; they say what a reviewer would say about efficiency,
sharding and long-context behaviour.

The fused attention kernel (kernels/attention.py) implements soft-capping, so a `softcap` is no
finding; what it does not implement (kernels/dispatch.py, kernels/attention.py's fallbacks) is
ARC115.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

from archlang.spec import ast as A

from .config import LintConfig
from .registry import Hit, rule

TENSOR_CORE_K = 8  # 16-bit elements per 16-byte MMA operand row
VOCAB_MULTIPLE = 64
WIDTH_MULTIPLE = 128


@dataclass
class Subject:
    """What the rules look at: the model, the settings, and the IR built only if a rule asks."""

    model: A.Model
    config: LintConfig

    @cached_property
    def used_blocks(self) -> dict[str, A.Block]:
        """The blocks some stack uses, in first-use order (unused blocks cost nothing)."""
        names = dict.fromkeys(n for layers in self.model.stacks().values() for n in layers)
        if self.model.mtp is not None:
            names.setdefault(self.model.mtp.block)
        return {n: self.model.blocks[n] for n in names}

    def attentions(self) -> Iterator[tuple[str, str, A.Block, object]]:
        for name, block in self.used_blocks.items():
            for slot in ("attention", "cross_attention"):
                att = getattr(block, slot)
                if att is not None:
                    yield name, slot, block, att

    def ffns(self) -> Iterator[tuple[tuple[str, ...], str, int]]:
        """(path, description, hidden width) of every dense FFN, expert and shared expert."""
        for name, block in self.used_blocks.items():
            ffn, path = block.ffn, ("blocks", name, "ffn")
            if isinstance(ffn, A.MoE):
                yield path + ("expert", "hidden"), f"the experts of block `{name}`", ffn.expert.hidden
                if ffn.shared is not None:
                    yield path + ("shared", "hidden"), f"the shared expert of block `{name}`", ffn.shared.hidden
            elif ffn is not None:
                yield path + ("hidden",), f"the FFN of block `{name}`", ffn.hidden

    def moes(self) -> Iterator[tuple[str, A.MoE]]:
        for name, block in self.used_blocks.items():
            if isinstance(block.ffn, A.MoE):
                yield name, block.ffn

    @cached_property
    def graph(self):
        """The optimized IR of every layer (a folded IR holds one layer per kind: no totals)."""
        from archlang.compiler import lower, run_pipeline

        return run_pipeline(lower(self.model))


def _next_multiple(n: int, m: int) -> int:
    return -(-n // m) * m


def _nearby(n: int, m: int) -> str:
    down, up = n // m * m, _next_multiple(n, m)
    return f"{down:,} or {up:,}" if down else f"{up:,}"


# ----------------------------------------------------------------------------- alignment


@rule("ARC101", "head-dim-alignment", "head_dim is not a multiple of 8",
      why="""Tensor cores multiply 16-bit tiles whose inner dimension is 8 elements (16 bytes): a head
      width that is not a multiple of 8 cannot be fed to them directly, so attention kernels
      (FlashAttention, cuDNN, this project's Triton kernel, which pads the head to a power of two)
      pad it and waste the rest of each tile, or refuse it.""",
      fix="""Use a head_dim that is a multiple of 8; 64, 128 and 256 are what every fused attention
      kernel is tuned for.""")
def head_dim_alignment(s: Subject) -> Iterator[Hit]:
    for name, slot, _, att in s.attentions():
        widths = {"head_dim": att.head_dim}
        if isinstance(att, A.MLA):
            widths = {"v_head_dim": att.v_head_dim, "rope_head_dim": att.rope_head_dim,
                      "nope_head_dim": att.nope_head_dim}
        for key, width in widths.items():
            if width % TENSOR_CORE_K:
                yield Hit(("blocks", name, slot, key), f"{key} {width} of block `{name}` is not a multiple of 8",
                          f"use {_nearby(width, TENSOR_CORE_K)}")
    for name, block in s.used_blocks.items():
        if isinstance(block.ssm, A.Mamba2) and block.ssm.head_dim % TENSOR_CORE_K:
            yield Hit(("blocks", name, "ssm", "head_dim"),
                      f"head_dim {block.ssm.head_dim} of block `{name}`'s mamba2 is not a multiple of 8",
                      f"use {_nearby(block.ssm.head_dim, TENSOR_CORE_K)}")


@rule("ARC102", "vocab-alignment", "vocab is not a multiple of 64",
      why="""The output head is the largest matmul of most models, with the vocabulary as its output
      width: an odd width leaves the last tile of every row partly empty and breaks vector loads,
      so the head and the cross-entropy run measurably slower (GPT-2's 50,257 padded to 50,304
      sped nanoGPT's training up by about 25%). Megatron pads the vocabulary for the same reason,
      and to shard it over tensor-parallel ranks.""",
      fix="""Pad vocab up to the next multiple of 64 (of 64 x the tensor-parallel degree when the
      head is sharded); the extra rows are never targets, and a tokenizer never emits them.""")
def vocab_alignment(s: Subject) -> Iterator[Hit]:
    v, tp = s.model.vocab, s.config.tensor_parallel
    if v % VOCAB_MULTIPLE:
        to = _next_multiple(v, VOCAB_MULTIPLE * tp)
        yield Hit(("vocab",), f"vocab {v:,} is not a multiple of 64",
                  f"pad vocab to {to:,}" + (f" (a multiple of 64 x tensor_parallel {tp})" if tp > 1 else ""))


@rule("ARC103", "d-model-alignment", "d_model is not a multiple of 128",
      why="""Every projection reads or writes d_model: GEMM kernels tile it in blocks of 64 to 128 (and
      FP8 and Hopper's wgmma want 128), so a ragged width leaves partial tiles in every matmul of
      every layer.""",
      fix="""Choose d_model as a multiple of 128.""")
def d_model_alignment(s: Subject) -> Iterator[Hit]:
    d = s.model.d_model
    if d % WIDTH_MULTIPLE:
        yield Hit(("d_model",), f"d_model {d:,} is not a multiple of 128", f"use {_nearby(d, WIDTH_MULTIPLE)}")


@rule("ARC104", "ffn-alignment", "FFN hidden width is not a multiple of 128",
      why="""The FFN's up and down projections hold most of a transformer's weights and FLOPs, with
      the hidden width as one of their GEMM dimensions (the experts' grouped GEMM tiles it too):
      a ragged width leaves partial tiles in the largest matmuls of the model.""",
      fix="""Round the hidden width to a multiple of 128 (Llama rounds 8/3 d_model up to a multiple of
      256).""")
def ffn_alignment(s: Subject) -> Iterator[Hit]:
    for path, what, hidden in s.ffns():
        if hidden % WIDTH_MULTIPLE:
            yield Hit(path, f"hidden width {hidden:,} of {what} is not a multiple of 128",
                      f"use {_nearby(hidden, WIDTH_MULTIPLE)}")


# ----------------------------------------------------------------------------- parallelism


@rule("ARC105", "heads-tensor-parallel", "heads do not divide over the tensor-parallel degree",
      why="""Tensor parallelism gives each rank whole attention heads (Megatron's column-parallel
      q/k/v): with heads not divisible by the degree the ranks cannot hold equal shares, and
      Megatron and vLLM refuse the configuration.""",
      fix="""Choose heads divisible by tensor_parallel, or a tensor-parallel degree that divides the
      heads.""")
def heads_tensor_parallel(s: Subject) -> Iterator[Hit]:
    tp = s.config.tensor_parallel
    if tp == 1:
        return
    for name, slot, _, att in s.attentions():
        if att.heads % tp:
            yield Hit(("blocks", name, slot, "heads"),
                      f"{att.heads} heads of block `{name}` do not split over tensor_parallel {tp}",
                      f"use tensor_parallel from the divisors of {att.heads}: {_divisors(att.heads)}")
    for name, block in s.used_blocks.items():
        if isinstance(block.ssm, A.Mamba2) and block.ssm.heads % tp:
            yield Hit(("blocks", name, "ssm", "heads"),
                      f"{block.ssm.heads} mamba2 heads of block `{name}` do not split over tensor_parallel {tp}")


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0) if n <= 4096 else "..."


@rule("ARC106", "kv-heads-tensor-parallel", "kv_heads do not divide over the tensor-parallel degree",
      why="""With grouped-query attention each tensor-parallel rank needs whole key/value heads. When
      kv_heads is smaller than the degree (but divides it) every KV head is replicated on
      degree / kv_heads ranks: the KV projections and the whole KV cache are stored that many
      times over, and Megatron refuses it outright; when neither divides the other the heads
      cannot be shared out at all. (mqa is designed to replicate its one head and is not
      reported.)""",
      fix="""Choose kv_heads as a multiple of tensor_parallel, or serve with a tensor-parallel degree
      that divides kv_heads.""")
def kv_heads_tensor_parallel(s: Subject) -> Iterator[Hit]:
    tp = s.config.tensor_parallel
    for name, slot, _, att in s.attentions():
        kv = att.kv_heads if isinstance(att, (A.GQA, A.Differential)) else None  # mha: ARC105
        if kv is None or tp == 1 or kv % tp == 0:
            continue
        if tp % kv == 0:
            message = (f"{kv} kv_heads of block `{name}` are fewer than tensor_parallel {tp}: each is replicated "
                       f"on {tp // kv} ranks, and so is its KV cache")
        else:
            message = f"{kv} kv_heads of block `{name}` do not split over tensor_parallel {tp}"
        yield Hit(("blocks", name, slot, "kv_heads"), message,
                  f"use kv_heads {_next_multiple(kv, tp)} (a multiple of {tp}), or tensor_parallel from "
                  f"{_divisors(kv)}")


@rule("ARC107", "experts-expert-parallel", "experts do not divide over the expert-parallel degree",
      why="""Expert parallelism places an equal share of the routed experts on each rank: a count not
      divisible by the degree leaves ranks with different numbers of experts (and so different
      memory and load), which Megatron, DeepSpeed and `archc estimate` refuse.""",
      fix="""Choose experts divisible by expert_parallel, or an expert-parallel degree that divides
      the experts.""")
def experts_expert_parallel(s: Subject) -> Iterator[Hit]:
    ep = s.config.expert_parallel
    for name, moe in s.moes():
        if ep > 1 and moe.experts % ep:
            yield Hit(("blocks", name, "ffn", "experts"),
                      f"{moe.experts} experts of block `{name}` do not split over expert_parallel {ep}",
                      f"use expert_parallel from the divisors of {moe.experts}: {_divisors(moe.experts)}")


@rule("ARC108", "vocab-tensor-parallel", "vocab does not divide over the tensor-parallel degree",
      why="""Under tensor parallelism the embedding and the output head are vocab-parallel: each rank
      holds vocab / degree rows and the cross-entropy is taken over the shards. A vocabulary
      that does not divide cannot be sharded evenly. With tie_embeddings the head is the
      embedding table itself, so the table (and every checkpoint of it) must be padded, and the
      padding rows masked out of the logits; an untied head could be padded alone.""",
      fix="""Pad vocab to a multiple of 64 x tensor_parallel.""")
def vocab_tensor_parallel(s: Subject) -> Iterator[Hit]:
    v, tp = s.model.vocab, s.config.tensor_parallel
    if tp > 1 and v % tp:
        tied = " (tied to the embedding table)" if s.model.tie_embeddings else ""
        yield Hit(("tie_embeddings",) if s.model.tie_embeddings else ("vocab",),
                  f"the vocab-parallel head{tied} has {v:,} rows, which do not split over tensor_parallel {tp}",
                  f"pad vocab to {_next_multiple(v, VOCAB_MULTIPLE * tp):,}")


@rule("ARC117", "ffn-tensor-parallel", "FFN hidden width does not divide over the tensor-parallel degree",
      why="""Tensor parallelism splits the FFN's hidden width: the up (and gate) projections by
      columns, the down projection by rows. A width not divisible by the degree cannot be
      split evenly; one divisible by it but not by 128 x the degree leaves ragged tiles on every
      rank.""",
      fix="""Choose a hidden width that is a multiple of 128 x tensor_parallel.""")
def ffn_tensor_parallel(s: Subject) -> Iterator[Hit]:
    tp = s.config.tensor_parallel
    if tp == 1:
        return
    for path, what, hidden in s.ffns():
        if hidden % tp:
            yield Hit(path, f"hidden width {hidden:,} of {what} does not split over tensor_parallel {tp}",
                      f"use {_nearby(hidden, WIDTH_MULTIPLE * tp)}")


# ----------------------------------------------------------------------------- positions and context


def _span_seen(s: Subject, att) -> int:
    """How far apart a query and a key it attends to can be, plus one: the context, or less
    under a window or chunks."""
    seen = s.model.context
    for limit in (att.window, att.chunk):
        if limit is not None:
            seen = min(seen, limit)
    return seen


@rule("ARC109", "window-covers-context", "a window or chunk is at least the context",
      why="""A sliding window (or chunk) of at least the context length never masks anything: every
      key is already within it. The block is full attention that still pays for the window's
      mask and reads as local attention to anyone reviewing the spec.""",
      fix="""Remove the window (`attention.window = none`) if full attention is meant; otherwise give
      a window shorter than the context.""")
def window_covers_context(s: Subject) -> Iterator[Hit]:
    ctx = s.model.context
    for name, slot, _, att in s.attentions():
        for key in ("window", "chunk"):
            value = getattr(att, key)
            if value is not None and value >= ctx:
                yield Hit(("blocks", name, slot, key),
                          f"{key} {value:,} of block `{name}` covers the whole context of {ctx:,}: it masks nothing")


def _rope_of(s: Subject, name: str) -> tuple[A.Rope | None, tuple[str, ...]]:
    own = s.model.blocks[name].position != "inherit"
    return s.model.position_of(name), (("blocks", name, "position") if own else ("position",))


@rule("ARC110", "rope-theta-too-small", "RoPE θ is too small for the span attention sees",
      why="""RoPE rotates channel pair i by position / θ^(2i/d); the slowest pair turns once every
      2π·θ^((d-2)/d) positions, just under 2π·θ. The rule: when 2π·θ (times the scaling factor,
      if any) is shorter than the longest query-key distance attention sees (the context, or the
      window or chunk), even the slowest pair wraps around, so distances beyond one turn look
      like short ones and the model cannot tell them apart.""",
      fix="""Raise θ to at least span / 2π, in practice well beyond it (Llama 3 uses 500,000 for
      8,192 tokens), or add RoPE scaling.""")
def rope_theta_too_small(s: Subject) -> Iterator[Hit]:
    for name, slot, _, att in s.attentions():
        if slot != "attention":
            continue
        rope, path = _rope_of(s, name)
        if not isinstance(rope, A.Rope):
            continue
        factor = getattr(rope.scaling, "factor", None) or 1.0
        wavelength = 2 * math.pi * rope.theta * factor
        seen = _span_seen(s, att)
        if wavelength < seen:
            scaled = f" x scaling factor {factor:g}" if factor != 1 else ""
            yield Hit(path + ("theta",),
                      f"RoPE θ {rope.theta:g}{scaled} gives a longest wavelength of 2π·θ ≈ {wavelength:,.0f} positions, "
                      f"shorter than the {seen:,} block `{name}` attends over",
                      f"use θ ≥ {math.ceil(seen / (2 * math.pi * factor)):,}, in practice 10x or more")


@rule("ARC111", "rope-scaling-short", "RoPE scaling extends to less than the span attention sees",
      why="""YaRN, Llama 3 and LongRoPE scaling stretch the positions the model was trained on
      (original_context) by their factor. Positions beyond original_context x factor are
      extrapolated again, the very thing the scaling exists to avoid.""",
      fix="""Raise the factor to at least span / original_context, or lower the context (or window) to
      what the scaling covers.""")
def rope_scaling_short(s: Subject) -> Iterator[Hit]:
    for name, slot, _, att in s.attentions():
        if slot != "attention":
            continue
        rope, path = _rope_of(s, name)
        scaling = rope.scaling if isinstance(rope, A.Rope) else None
        if not isinstance(scaling, (A.YarnScaling, A.Llama3Scaling, A.LongRopeScaling)) or scaling.factor is None:
            continue
        covered, seen = scaling.original_context * scaling.factor, _span_seen(s, att)
        if covered < seen:
            yield Hit(path + ("scaling", "factor"),
                      f"{scaling.kind} scaling covers {scaling.original_context:,} x {scaling.factor:g} = "
                      f"{covered:,.0f} positions, fewer than the {seen:,} block `{name}` attends over",
                      f"use factor ≥ {seen / scaling.original_context:g}")


# ----------------------------------------------------------------------------- mixture of experts


@rule("ARC112", "moe-top-k-dense", "MoE routes each token to more than half of the experts",
      why="""With top_k above experts / 2 most experts run on most tokens: the layer costs nearly what
      a dense FFN of all experts would, with routing overhead and all-to-all traffic on top, and
      little of the specialisation sparse routing is for.""",
      fix="""Use more, smaller experts (fine-grained experts, as DeepSeek-MoE) or a smaller top_k.""")
def moe_top_k_dense(s: Subject) -> Iterator[Hit]:
    for name, moe in s.moes():
        if moe.router == "hash":
            continue
        if moe.top_k > moe.experts / 2:
            yield Hit(("blocks", name, "ffn", "top_k"),
                      f"top_k {moe.top_k} of block `{name}` routes each token to more than half of its "
                      f"{moe.experts} experts")


@rule("ARC113", "moe-capacity", "MoE capacity factor drops tokens always, or never binds",
      why="""Each expert takes capacity_factor x tokens x top_k / experts tokens in training. Below
      1 it drops tokens even when routing is perfectly balanced; at experts / top_k or above it
      can never drop one (every expert can take every token), so the cap only sizes buffers.""",
      fix="""Use a capacity factor between 1 and experts / top_k (Switch Transformer used 1.0 to 1.25),
      or none for dropless routing.""")
def moe_capacity(s: Subject) -> Iterator[Hit]:
    for name, moe in s.moes():
        cf = moe.capacity_factor
        if cf is None:
            continue
        path = ("blocks", name, "ffn", "capacity_factor")
        if cf < 1:
            yield Hit(path, f"capacity_factor {cf:g} of block `{name}` drops tokens even under balanced routing")
        elif cf >= moe.experts / moe.top_k:
            yield Hit(path, f"capacity_factor {cf:g} of block `{name}` is at least experts / top_k = "
                      f"{moe.experts / moe.top_k:g}: no token can ever be dropped",
                      "remove capacity_factor for dropless routing")


@rule("ARC114", "moe-unbalanced", "MoE has no load balancing",
      why="""Without an auxiliary balance loss (aux_loss, seq_aux_loss) or DeepSeek-V3's bias updates
      (bias_update_speed), nothing stops a router from sending most tokens to a few experts in
      training: the rest never learn and, under expert parallelism, one rank does the work of
      many. (A spec used only for inference loses nothing; the finding is about training it.)
      Hash and expert-choice routers balance by construction and are not reported.""",
      fix="""Set aux_loss (Switch Transformer: 0.01; Mixtral: 0.02), or correction_bias = true with a
      bias_update_speed (DeepSeek-V3: 0.001).""")
def moe_unbalanced(s: Subject) -> Iterator[Hit]:
    for name, moe in s.moes():
        if moe.router in ("hash", "expert_choice"):
            continue  # a balanced fixed map; every expert takes the same number of tokens
        if moe.experts > 1 and not (moe.aux_loss or moe.seq_aux_loss or moe.bias_update_speed):
            yield Hit(("blocks", name, "ffn"), f"the MoE of block `{name}` has no load balancing in training")


# ----------------------------------------------------------------------------- kernels and memory


@rule("ARC115", "attention-unfused", "attention runs on the unfused reference, not the fused kernel",
      why="""The fused attention kernel (kernels/attention.py) never builds the T x S score matrix.
      It does not implement value heads narrower than the key heads (MLA with v_head_dim other
      than nope + rope, differential attention's halves), a learned bias that needs a gradient
      (relative position buckets, in training), dilated windows, global tokens, the indexer's
      sparse selection, or dropout on the probabilities: those run on the PyTorch reference,
      whose memory grows with T x S per head.""",
      fix="""Where the option is a choice rather than the architecture being reproduced, drop it
      (attention_dropout = 0, v_head_dim = nope_head_dim + rope_head_dim); otherwise budget the
      reference's memory at the training sequence length.""")
def attention_unfused(s: Subject) -> Iterator[Hit]:
    m = s.model
    for name, slot, _, att in s.attentions():
        path = ("blocks", name, slot)
        reasons = []
        if isinstance(att, A.MLA) and att.v_head_dim != att.head_dim:
            reasons.append((path + ("v_head_dim",), f"v_head_dim {att.v_head_dim} differs from the key width "
                            f"{att.head_dim}", f"v_head_dim = {att.head_dim} if the checkpoint is not to be reproduced"))
        if isinstance(att, A.MLA) and att.indexer is not None:
            reasons.append((path + ("indexer",), "the indexer's sparse key selection", None))
        if isinstance(att, A.Differential):
            reasons.append((path, "differential attention's value halves", None))
        if (att.dilation or 1) > 1:
            reasons.append((path + ("dilation",), f"dilation {att.dilation}", "a plain window, or budget the memory"))
        if att.global_tokens:
            reasons.append((path + ("global_tokens",), f"{att.global_tokens} global tokens",
                            "sink_tokens (which the kernel keeps visible), or budget the memory"))
        if isinstance(m.position_of(name), A.Relative):
            reasons.append((("position",), "the relative position bias, learned, in training",
                            "rope() or alibi(), whose attention stays fused, if the checkpoint is not to be reproduced"))
        if m.attention_dropout and att.kind in ("mha", "mqa", "gqa"):
            reasons.append((("attention_dropout",), f"attention_dropout {m.attention_dropout:g}, in training",
                            "attention_dropout = 0 (modern pretraining uses none), or budget the memory"))
        for where, reason, fix in reasons:
            yield Hit(where, f"{slot} of block `{name}` runs on the unfused reference: {reason}",
                      f"use {fix}" if fix else None)


@rule("ARC116", "does-not-fit", "the weights and one sequence's cache do not fit on the hardware",
      why="""Serving needs, per device, the weights (divided by the tensor-parallel degree, and the
      routed experts also by the expert-parallel degree) plus at least one sequence's KV cache or
      recurrent state at the full context, in the model's dtype. When that exceeds the device's
      memory at the configured degrees, the model cannot be served as configured. The figure is
      `archc estimate`'s inference memory at batch 1.""",
      fix="""Raise tensor_parallel (or expert_parallel) in [tool.archc], pick hardware with more memory,
      or quantize; `archc estimate` shows the breakdown.""", whole_ir=True)
def does_not_fit(s: Subject) -> Iterator[Hit]:
    from archlang.estimate import HARDWARE, Setup, estimate
    from archlang.spec.errors import ArchError

    c = s.config
    ep = c.expert_parallel if any(True for _ in s.moes()) else 1
    hw = HARDWARE[c.hardware]
    try:
        e = estimate(s.graph, Setup(hardware=hw, gpus=c.tensor_parallel * ep, tp=c.tensor_parallel, ep=ep))
    except ArchError:  # degrees that do not divide the model: ARC105-ARC108 say so
        return
    need = e.inference["total_bytes"]
    if not e.inference["fits"]:
        yield Hit(("name",), f"serving `{s.model.name}` needs {need / 1e9:,.1f} GB per device at tensor_parallel "
                  f"{c.tensor_parallel}, expert_parallel {ep}: more than the {hw.memory_bytes / 1e9:g} GB of "
                  f"{hw.description}",
                  f"use tensor_parallel ≥ {_next_power_of_two(need / hw.memory_bytes * c.tensor_parallel)}, "
                  "or hardware with more memory")


def _next_power_of_two(x: float) -> int:
    n = 1
    while n < x:
        n *= 2
    return n

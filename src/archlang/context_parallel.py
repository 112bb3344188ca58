"""Context parallelism: each rank of a "cp" mesh dimension holds one shard of the sequence, and
self-attention becomes ring attention (Liu et al. 2023): the keys and values travel once around
the ring while every rank folds each block into its queries' output with an exact online-softmax
combine (log-sum-exp per block). Masks compare global positions, so causal, sliding-window,
chunked and dilated attention are exact whatever order the shards come in.

    with context_parallel(model, cp_mesh, load_balance=True) as cp:
        logits = model(cp.shard(ids[:, :-1]))  # positions: this rank's global ones
        loss = F.cross_entropy(logits.flatten(0, 1), cp.shard(ids[:, 1:]).flatten())
        loss.backward()
        cp.average_gradients(model)  # or FSDP over a mesh that includes the cp ranks

torch.distributed.tensor.experimental.context_parallel swaps only the CUDA SDPA kernels (flash,
efficient, cuDNN) and takes no mask, so it serves neither CPU (gloo) nor windowed attention;
this module implements the ring on torch.distributed point-to-point ops instead.

Recurrent and convolutional mixers continue the previous rank's shard as a cached prefill
continues the cache: a short causal conv reads the previous shard's last kernel - 1 inputs, and
the scan starts from the previous shard's end state, which arrives point to point (rank r waits
for rank r - 1, then sends its own end state to r + 1; the gradients go back the other way). Every
rank runs its layers in the same order, so the waits form a chain from the first rank (the last
in backward), never a cycle. This needs the shards in sequence order, so these layers refuse the
zig-zag order. Causal linear
attention's state is additive: every rank's total arrives at once and each sums the earlier ones.
Other layers whose output at a position depends on other positions (RWKV's token shift, xLSTM,
MoE routing statistics, relative biases) are refused by name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from archlang.kernels.reference import position_mask
from archlang.spec.errors import ArchError

# Mixers that continue the previous shard's conv inputs and end state (the hooks read
# ctx.tables[SHARDS]), and those that carry state in a way not handed over.
_HANDED_OVER = ("Mamba", "Mamba2", "GatedDeltaNetLayer", "GLALayer", "RetentionLayer", "KDALayer", "ShortConv")
_RECURRENT = ("Lightning", "RGLRU", "S4D", "MLSTMLayer", "SLSTMLayer", "RWKV4TimeMix", "RWKV7TimeMix",
              "RWKVChannelMix", "RWKV7ChannelMix", "GAU", "ByteLatentTransformer")
SHARDS = "context_parallel"  # the ctx.tables key of the ContextParallel the mixers continue from


def _refusal(name: str, module: nn.Module, load_balance: bool) -> str | None:
    """Why context parallelism cannot split the sequence through this module, or None if it can."""
    from archlang import runtime as rt

    kind = type(module).__name__
    if isinstance(module, rt.LinearAttention):
        if not module.causal:
            return "a bidirectional linear attention sums its state over the whole sequence, which is not implemented"
        if load_balance:
            return ("its state passes from shard to shard in sequence order, and zig-zag shards are not in order "
                    "(use load_balance=False)")
        return None
    if isinstance(module, rt.Attention):
        if module.cross:
            return "cross-attention reads an encoder memory that the sequence shards do not split"
        return None
    if isinstance(module, rt.RopeTable) and module.kind in ("longrope", "dynamic"):
        return (f"{module.kind} RoPE scaling takes its frequencies from each forward's length (its largest "
                "position + 1), which differs from shard to shard")
    if isinstance(module, (rt.MLAttention, rt.RMSNorm, rt.LayerNorm, rt.RopeTable, rt.LearnedPositions,
                           rt.SinusoidalPositions, nn.Linear, nn.Embedding, nn.ModuleList, nn.ModuleDict, nn.Dropout,
                           nn.Identity)):
        return None
    if kind in _HANDED_OVER:
        if load_balance:
            return ("its conv inputs or state pass from shard to shard in sequence order, and zig-zag shards are "
                    "not in order (use load_balance=False)")
        return None
    if kind in _RECURRENT:
        return ("it carries state along the sequence (a recurrence, a convolution over earlier tokens or a token "
                "shift), and handing that state from one rank's shard to the next is not implemented")
    if isinstance(module, rt.MoE):
        return ("its routing statistics (load-balancing loss, expert capacity) are taken over the tokens of one "
                "forward, and each rank sees only its shard")
    return "it is not known to act on each position alone or through attention"


def _generated_module(model: nn.Module) -> str:
    """The module the model's generated code lives in (under FSDP, the class of the model and of
    its blocks is a subclass that torch makes, and the generated class is among its bases)."""
    from archlang import runtime as rt

    for cls in type(model).__mro__:
        if issubclass(cls, rt.ArchModel) and cls is not rt.ArchModel and not cls.__module__.startswith("torch."):
            return cls.__module__
    raise ArchError(f"context parallelism runs archlang models, not {type(model).__name__}", kind="distributed")


def check_context_parallel(model: nn.Module, *, load_balance: bool = False) -> None:
    """Refuse (ArchError) a model with a layer that context parallelism would not run exactly."""
    family = getattr(model, "config", {}).get("family")
    if family != "decoder":
        raise ArchError(f"context parallelism splits decoder models only, and this model's family is {family}: "
                        "encoders pool the first token or the whole sequence, encoder-decoders attend across to a "
                        "memory",
                        hint="train this model without a cp mesh dimension", kind="distributed")
    generated = _generated_module(model)
    for name, module in model.named_modules():
        if any(cls.__module__ == generated for cls in type(module).__mro__):
            continue  # the generated model and its blocks only wire runtime layers together
        reason = _refusal(name, module, load_balance)
        if reason is not None:
            raise ArchError(f"context parallelism cannot split the sequence through {name} ({type(module).__name__}): "
                            f"{reason}", hint="train this model without a cp mesh dimension (data or tensor "
                            "parallelism shard it exactly)", kind="distributed")


def shard_positions(length: int, world: int, rank: int, *, load_balance: bool = False) -> torch.Tensor:
    """The global positions rank `rank` of `world` holds of a sequence of `length` tokens: one
    contiguous shard, or with `load_balance` chunks r and 2 * world - 1 - r of 2 * world (the
    zig-zag order: every rank gets as many early, cheap causal rows as late, expensive ones)."""
    parts = 2 * world if load_balance else world
    if length % parts:
        raise ArchError(f"context parallelism over {world} ranks cannot split {length} tokens into {parts} equal "
                        "shards", hint=f"pad or cut the sequence to a multiple of {parts}", kind="distributed")
    size = length // parts
    chunks = (rank, parts - 1 - rank) if load_balance else (rank,)
    return torch.cat([torch.arange(c * size, (c + 1) * size) for c in chunks])


def _exchange(x: torch.Tensor, group, send_to: int, receive_from: int) -> torch.Tensor:
    """Send x to one rank of the group while receiving a tensor of the same shape from another."""
    out = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x.contiguous(), dist.get_global_rank(group, send_to), group),
           dist.P2POp(dist.irecv, out, dist.get_global_rank(group, receive_from), group)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return out


class _RingShift(torch.autograd.Function):
    """One step around the ring: the next rank gets this block, the previous one's arrives. Its
    gradient travels back the other way, to the rank that sent the block."""

    @staticmethod
    def forward(ctx, x, group, send_to, receive_from):
        ctx.group, ctx.send_to, ctx.receive_from = group, send_to, receive_from
        return _exchange(x, group, send_to, receive_from)

    @staticmethod
    def backward(ctx, grad):
        return _exchange(grad.contiguous(), ctx.group, ctx.receive_from, ctx.send_to), None, None, None


def _block(q, k, v, q_pos, k_pos, *, scale, softcap, **masks) -> tuple[torch.Tensor, torch.Tensor]:
    """One key/value block's softmax-weighted values and their log-sum-exp (B, H, T, 1), in float32."""
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads != kv_heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    scores = (q @ k.transpose(-1, -2)).float() * scale  # (B, H, T, S)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    mask = position_mask(q_pos, k_pos, **masks)
    if mask is not None:
        # a row this block hides entirely gets a finite, hugely negative log-sum-exp: weight 0 in the combine
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return torch.exp(scores - lse) @ v.float(), lse


_UNSUPPORTED = {"bias": "position biases (ALiBi, T5 buckets) are built from one shard's key positions",
                "key_mask": "a padding mask covers the whole sequence, not one shard",
                "allow": "a sparse key selection (DeepSeek-V3.2's indexer) is scored against one shard's keys",
                "dropout": "attention dropout draws one mask over all keys"}


class _AllGather(torch.autograd.Function):
    """Every rank's tensor, stacked in rank order (W, ...). A rank's tensor reaches every rank, so
    its gradient is the sum over the ranks of the gradients of its slot."""

    @staticmethod
    def forward(ctx, x, group, rank):
        ctx.group, ctx.rank = group, rank
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank], None, None


def _not_recomputed(what: str) -> None:
    """A hand-off runs once per step, in rank order: a forward recomputed during the backward
    (activation checkpointing) would send or wait again where the neighbour rank does not."""
    if torch._C._current_graph_task_id() != -1:
        raise ArchError(f"context parallelism cannot {what} while the backward recomputes a layer: activation "
                        "checkpointing of a layer that hands its state from shard to shard is not supported",
                        hint="checkpoint only the layers without recurrent or convolutional mixers, or train "
                             "without a cp mesh dimension", kind="distributed")


class _StateFromPrevious(torch.autograd.Function):
    """The end state of the previous rank's shard, this shard's start state: forward waits for it,
    backward sends its gradient back. The anchors (the layer's input and weights) get no gradient:
    they put the receive on the autograd graph whenever the previous shard's end state is on it,
    so that the previous rank, waiting for the state's gradient, gets one."""

    @staticmethod
    def forward(ctx, shape, dtype, group, source, *anchors):
        _not_recomputed("wait for the previous shard's state")
        ctx.group, ctx.source, ctx.anchors = group, source, len(anchors)
        state = torch.empty(shape, dtype=dtype, device=anchors[0].device)
        dist.recv(state, src=dist.get_global_rank(group, source), group=group)
        return state

    @staticmethod
    def backward(ctx, grad):
        dist.send(grad.contiguous(), dst=dist.get_global_rank(ctx.group, ctx.source), group=ctx.group)
        return (None,) * (4 + ctx.anchors)


class _StateToNext(torch.autograd.Function):
    """Sends this shard's end state to the next rank and returns `out` (the layer's output) as it
    is: joined to the output, the send's backward runs, and receives the state's gradient from the
    next rank, whenever the loss reaches the layer."""

    @staticmethod
    def forward(ctx, out, state, group, target):
        _not_recomputed("send a shard's state on")
        ctx.group, ctx.target, ctx.shape, ctx.dtype = group, target, state.shape, state.dtype
        dist.send(state.detach().contiguous(), dst=dist.get_global_rank(group, target), group=group)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        grad_state = torch.empty(ctx.shape, dtype=ctx.dtype, device=grad.device)
        dist.recv(grad_state, src=dist.get_global_rank(ctx.group, ctx.target), group=ctx.group)
        return grad, grad_state, None, None


class ContextParallel:
    """What `context_parallel` yields: the shard of this rank, and the ring attention it runs."""

    def __init__(self, cp_mesh, load_balance: bool):
        self.group = cp_mesh.get_group()
        self.world, self.rank = cp_mesh.size(), cp_mesh.get_local_rank()
        self.load_balance = load_balance

    def positions(self, length: int) -> torch.Tensor:
        """This rank's global positions in a sequence of `length` tokens."""
        return shard_positions(length, self.world, self.rank, load_balance=self.load_balance)

    def shard(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's shard of a full-sequence tensor (token ids, labels, embeddings) along `dim`."""
        index = self.positions(x.shape[dim]).to(x.device)
        return x.index_select(dim, index)

    def average_gradients(self, model: nn.Module) -> None:
        """Average every gradient over the cp ranks: each rank's loss is the mean over its equal
        shard, so the average is the gradient of the whole sequence's mean loss."""
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, group=self.group)
                p.grad /= self.world

    def state_before_shard(self, *totals: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """For an additive recurrent state (causal linear attention): given this shard's own end
        state, the state the shard starts from, the sum of the end states of the shards before it.
        Every rank's total arrives at once, so no rank waits for the one before to finish its scan."""
        return tuple(_AllGather.apply(total, self.group, self.rank)[:self.rank].sum(0) for total in totals)

    def conv_history(self, inputs: torch.Tensor, width: int) -> torch.Tensor:
        """For a short causal conv over this shard's inputs (B, C, T): the previous shard's last
        `width` (kernel - 1) inputs (B, C, width), zeros on the first rank as before the sequence's
        start. Their gradient goes back to the rank that sent them."""
        if inputs.shape[-1] < width:
            raise ArchError(f"context parallelism hands a conv of {width + 1} taps the previous shard's last {width} "
                            f"inputs, and this rank's shard holds {inputs.shape[-1]} tokens",
                            hint=f"use shards of at least {width} tokens", kind="distributed")
        tail = inputs[..., inputs.shape[-1] - width:]
        if self.world == 1:
            return torch.zeros_like(tail)
        history = _RingShift.apply(tail.contiguous(), self.group, (self.rank + 1) % self.world,
                                   (self.rank - 1) % self.world)
        # the last rank's tail reaches the first, which zeroes it and keeps it on the graph so that
        # every rank runs the ring's backward
        return history * 0 if self.rank == 0 else history

    def state_from_previous(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], shape: tuple[int, ...],
                            dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """The state (`shape`, `dtype`) the previous shard's scan through `layer` ended in, which
        this shard's scan starts from; None on the first rank (the scan starts from zeros). `inputs`
        are what the layer's scan is made from besides its weights: the previous shard's end state
        needs a gradient exactly when these or the weights do."""
        if self.rank == 0:
            return None
        anchors = (*inputs, *(p for p in layer.parameters() if p.requires_grad))
        return _StateFromPrevious.apply(tuple(shape), dtype, self.group, self.rank - 1, *anchors)

    def state_to_next(self, out: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Hand this shard's end state to the next rank; returns `out` (the layer's output, through
        which the state's gradient comes back). Call it once the scan has run, as every rank runs
        its layers in the same order."""
        if self.rank == self.world - 1:
            return out
        return _StateToNext.apply(out, state, self.group, self.rank + 1)

    def attention(self, q, k, v, q_pos, k_pos, *, causal, scale, window=None, softcap=None, sinks=None, chunk=None,
                  sink_tokens=0, dilation=1, global_tokens=0, **unsupported):
        """Ring attention, a drop-in for kernels.dispatch.attention on the local shard."""
        for name, value in unsupported.items():
            if value is not None and name in _UNSUPPORTED:
                raise ArchError(f"context parallelism cannot run attention with {name}: {_UNSUPPORTED[name]}",
                                hint="train this model without a cp mesh dimension", kind="distributed")
            if name not in _UNSUPPORTED:
                raise ArchError(f"context parallelism does not know the attention option {name}", kind="distributed")
        masks = dict(causal=causal, window=window, chunk=chunk, sink_tokens=sink_tokens, dilation=dilation,
                     global_tokens=global_tokens)
        k_width = k.shape[-1]
        outs, lses = [], []
        for step in range(self.world):
            if step:  # the block the previous rank held arrives; ours goes on to the next
                kv = _RingShift.apply(torch.cat((k, v), dim=-1), self.group, (self.rank + 1) % self.world,
                                      (self.rank - 1) % self.world)
                k, v = kv.split([k_width, kv.shape[-1] - k_width], dim=-1)
                k_pos = _exchange(k_pos, self.group, (self.rank + 1) % self.world, (self.rank - 1) % self.world)
            out, lse = _block(q, k, v, q_pos, k_pos, scale=scale, softcap=softcap, **masks)
            outs.append(out)
            lses.append(lse)
        lse = torch.logsumexp(torch.stack(lses), dim=0)  # (B, H, T, 1)
        if sinks is not None:  # the sink joins the denominator once and carries no value
            lse = torch.logaddexp(lse, sinks.float()[None, :, None, None])
        out = sum(torch.exp(part_lse - lse) * part for part, part_lse in zip(outs, lses))
        return out.to(q.dtype)


@contextlib.contextmanager
def context_parallel(model: nn.Module, cp_mesh=None, *, load_balance: bool = False) -> Iterator[ContextParallel]:
    """Run `model` on this rank's shard of the sequence inside the block: its forward takes the
    rank's shard (`cp.shard(ids)`), fills in the shard's global positions, and its self-attention
    runs as ring attention over the ranks of `cp_mesh` (1-D). Refuses (ArchError) models with a
    layer it cannot run exactly, and caches and padding masks, which span the whole sequence.
    `cp_mesh` defaults to the "cp" dimension archlang.distributed.shard applied."""
    import archlang.runtime.attention as attention_module

    cp_mesh = cp_mesh if cp_mesh is not None else getattr(model, "context_parallel_mesh", None)
    if cp_mesh is None:
        raise ArchError("context parallelism needs a cp mesh: this model was not sharded over one",
                        hint='context_parallel(model, mesh["cp"]), or shard(model, mesh) with a "cp" dimension first',
                        kind="distributed")
    check_context_parallel(model, load_balance=load_balance)
    cp = ContextParallel(cp_mesh, load_balance)
    make_context = model.make_context

    def sharded_context(input_ids, inputs_embeds=None, *, positions=None, cache=None, attention_mask=None, **kw):
        if cache is not None or attention_mask is not None:
            raise ArchError("context parallelism runs whole sequences without a cache or a padding mask: "
                            f"{'a cache' if cache is not None else 'an attention_mask'} was given",
                            hint="decode without context parallelism; pack or cut sequences to one length",
                            kind="distributed")
        if positions is None:
            tokens = input_ids if input_ids is not None else inputs_embeds
            positions = cp.positions(tokens.shape[1] * cp.world).to(tokens.device)
        ctx = make_context(input_ids, inputs_embeds, positions=positions, **kw)
        ctx.tables["state_before_shard"] = cp.state_before_shard  # causal linear attention reads it
        ctx.tables[SHARDS] = cp  # the recurrent and convolutional mixers continue the previous shard
        return ctx

    original = attention_module.attend
    model.make_context = sharded_context
    attention_module.attend = cp.attention
    try:
        yield cp
    finally:
        attention_module.attend = original
        del model.make_context

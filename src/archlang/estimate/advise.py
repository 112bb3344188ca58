"""`archc estimate --advise`: which parallel layout to train a spec with on N devices. Every mesh
over the dimensions `shard(model, mesh)` applies (pp, dp_replicate, dp_shard, ep, cp, tp) whose
sizes multiply to N is tried; a layout the runtime would refuse is dropped with the runtime's own
reason (its checks run on the model built on the meta device), one that does not fit the device
memory is dropped with its size, and the rest are ranked by estimated step time. Nothing is
measured; every assumption is listed with the advice.

The global batch is the same for every layout (`global_batch` sequences, by default `batch` x N),
so step times compare the same work; each data-parallel rank runs its share in micro-batches of
`batch` sequences (gradient accumulation, or a pipeline's schedule), m of them. Step time, per
device:

    compute   = 3 F T / (N peak mfu) x (1 + (t-1) r) x stage x (m + p - 1) / m
                F: forward FLOPs per token, T: tokens per step; r: the share of F that tensor
                parallelism leaves replicated (LM head, MoE, MLA, SSM projections: every tp rank
                computes them whole); stage: the costliest pipeline stage's share of the FLOPs
                times p; (p - 1) / (m + p - 1) of the pipelined time is the 1F1B bubble;
                contiguous context-parallel shards (where zig-zag ones are refused) leave the
                last rank 2 cp / (cp + 1) of the mean attention-core work; and layers that hand
                their state from shard to shard (Mamba, the gated linear family, short convs)
                wait for the previous rank: each run of them between attention layers finishes
                (cp - 1) of its mean layer later, x (1 + (cp-1) H / F), H: the FLOPs per token of
                one mean layer of each run, summed over the runs
    tp        = 2 (t-1)/t x (bytes into each row-parallel Linear's output, forward, and each
                column-parallel Linear's input gradient, backward) / link     (all-reduces)
    cp        = 3 (cp-1) x local K/V bytes / link    (the ring passes K/V once forward, K/V and
                their gradients once backward)
    ep        = 4 (ep-1)/ep x tokens x top_k x d_model x bytes / link   (dispatch and combine
                all-to-alls, forward and backward, per MoE layer)
    pp        = 2 x tokens x d_model x bytes / link   (activations forward, gradients backward)
    dp        = 3 (n-1)/n x W / link for FSDP2 over the n = dp_shard x ep x cp ranks (all-gather
                forward and backward, reduce-scatter of the dense weights W), 2 (r-1)/r x W/n /
                link across r = dp_replicate replicas; the experts E (already split over ep)
                likewise: FSDP2 over the h = dp_shard x cp ranks that hold the same ones, 3 (h-1)/h
                x E / link, and 2 (r-1)/r x E/h / link across replicas
    step      = max(compute, dp) + tp + cp + ep + pp

Memory per device: the weights tensor parallelism does not split and 1/t of those it does, times
the largest pipeline stage's share, the dense ones over dp_shard x ep x cp ranks (FSDP2), the
experts over ep x dp_shard x cp (split over ep, then FSDP2 over the ranks holding the same
ones), at 16 bytes a parameter in mixed precision (16-bit weight and gradient, float32
master and two AdamW moments); plus the saved activations (activations.py) of one micro-batch,
its context-parallel shard (a 1F1B pipeline's first stage holds p micro-batches of its 1/p of
the layers: the same).

The data-parallel traffic overlaps the compute of other layers (DDP gradient buckets, FSDP2
prefetching), so it counts only where it exceeds the compute; the others sit on each layer's
critical path. A link is the intra-node one when the group's ranks lie in one node (the mesh is
laid out with tp innermost, as torchtitan does), else the inter-node one; collectives are rings
bounded by the per-device bandwidth of one direction (the NCCL "bus bandwidth" model).
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import product
from types import SimpleNamespace

import networkx as nx

from archlang.compiler import compute_facts
from archlang.compiler.facts import DTYPE_BYTES
from archlang.compiler.ir import ordered_nodes
from archlang.compiler.ops import FactsContext, op_def
from archlang.spec.errors import ArchError

from . import RECOMPUTE, _DTYPE_NAMES, _attention_core_flops, _weights
from .activations import saved_activations, tensor_parallel_split
from .hardware import DTYPES, Hardware

# outermost first, as init_device_mesh takes them: tp innermost keeps its per-layer all-reduces
# inside a node, pp outermost sends the least across the slowest links
DIMS = ("pp", "dp_replicate", "dp_shard", "ep", "cp", "tp")
# the fusions tensor parallelism cannot split by heads (distributed.tensor_parallel_layout)
TP_UNFUSED = ("fuse-qkv", "fuse-gate-up")


@dataclass(frozen=True)
class Layout:
    pp: int = 1
    dp_replicate: int = 1
    dp_shard: int = 1
    ep: int = 1
    cp: int = 1
    tp: int = 1

    @property
    def mesh(self) -> dict[str, int]:
        """The dimensions of size > 1, outermost first."""
        return {d: getattr(self, d) for d in DIMS if getattr(self, d) > 1}

    @property
    def label(self) -> str:
        return " ".join(f"{d}={n}" for d, n in self.mesh.items()) or "one device"

    @property
    def data_parallel(self) -> int:
        """Ranks that feed batches of their own: the ep ranks are data-parallel for all but the experts."""
        return self.dp_replicate * self.dp_shard * self.ep


@dataclass
class Candidate:
    layout: Layout
    memory_bytes: float
    memory: dict[str, float]
    step_seconds: float
    tokens_per_second: float
    seconds: dict[str, float]  # compute, bubble, and each dimension's communication
    microbatches: int

    def to_json(self) -> dict:
        return {"mesh": self.layout.mesh, "label": self.layout.label, "memory_bytes": self.memory_bytes,
                "memory": self.memory, "step_seconds": self.step_seconds,
                "tokens_per_second": self.tokens_per_second, "seconds": self.seconds,
                "microbatches": self.microbatches}


@dataclass
class Rejection:
    reason: str  # the family: the first example's message with its numbers generalised
    count: int
    example: str  # a layout of the family
    message: str  # what was said about that layout

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Advice:
    model: str
    hardware: str
    gpus: int
    seq: int
    global_batch: int
    dtype: str
    recompute: str
    mfu: float
    considered: int  # layouts enumerated
    feasible: int  # of them, those that run and fit
    layouts: list[Candidate]  # the best `top` of those, best first
    rejected: list[Rejection]
    why: str  # why the best beats the runner-up
    code: str  # the mesh and the shard() call that apply the best layout
    assumptions: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"model": self.model, "hardware": self.hardware, "gpus": self.gpus, "seq": self.seq,
                "global_batch": self.global_batch, "dtype": self.dtype, "recompute": self.recompute, "mfu": self.mfu,
                "considered": self.considered, "feasible": self.feasible,
                "layouts": [c.to_json() for c in self.layouts],
                "rejected": [r.to_json() for r in self.rejected], "why": self.why, "code": self.code,
                "assumptions": self.assumptions}


def layouts(gpus: int) -> list[Layout]:
    """Every assignment of sizes to DIMS whose product is `gpus`."""
    if gpus < 1:
        raise ArchError(f"--gpus must be at least 1, got {gpus}", hint="pass a positive integer", kind="usage")
    divisors = [d for d in range(1, gpus + 1) if gpus % d == 0]
    out = []
    for sizes in product(divisors, repeat=len(DIMS) - 1):
        rest = gpus
        for s in sizes:
            if rest % s:
                break
            rest //= s
        else:
            out.append(Layout(*sizes, rest))
    return out


class _Feasibility:
    """The runtime's own refusals for one dimension at one degree, asked once each."""

    def __init__(self, g: nx.MultiDiGraph, model, seq: int):
        self.g, self.model, self.seq = g, model, seq
        self._cache: dict[tuple[str, int], object] = {}

    def __call__(self, dim: str, n: int):
        """A refusal message (str) or what the estimate needs of this dimension at this degree."""
        key = (dim, n)
        if key not in self._cache:
            try:
                self._cache[key] = getattr(self, "_" + dim)(n)
            except ArchError as exc:
                self._cache[key] = exc.message
        return self._cache[key]

    def _ep(self, n: int):
        """What apply_expert_parallel refuses of the model itself (the mesh aside)."""
        from archlang.expert_parallel import _moe_layers

        layers = _moe_layers(self.model)
        if not layers:
            raise ArchError("expert parallelism would shard nothing: this model has no MoE layer", kind="distributed")
        for name, moe in layers.items():
            if moe.experts % n:
                raise ArchError(f"expert parallelism cannot split the {moe.experts} experts of {name} over {n} ranks: "
                                "each rank must hold the same number of whole experts", kind="distributed")
            if moe.capacity_factor is not None:
                raise ArchError(f"expert parallelism cannot run {name} exactly: capacity_factor drops rows beyond a "
                                "share of each rank's batch, so what is dropped depends on how the batch is split",
                                kind="distributed")
        return True

    def _tp(self, n: int):
        from archlang.distributed import tensor_parallel_layout

        plan, _ = tensor_parallel_layout(self.model, n)
        if not plan:  # as shard() says
            raise ArchError("tensor parallelism would shard nothing: no block of this model has projections it can "
                            "split (attention heads or FFN hidden units)", kind="distributed")
        return _tp_shares(self.model, plan)

    def _pp(self, n: int):
        from archlang.pipeline_parallel import check_pipeline, layer_costs, pipeline_stages

        compiled = SimpleNamespace(graph=self.g)  # what they take of a compiled spec: its IR
        stages = pipeline_stages(compiled, n)
        check_pipeline(self.model, stages)
        costs = layer_costs(compiled)
        flops = sum(f for f, _ in costs) or 1
        params = sum(p for _, p in costs) or 1
        # the costliest stage sets the pace and the largest holds the most
        return (max(sum(costs[i][0] for i in r) for r in stages) / flops,
                max(sum(costs[i][1] for i in r) for r in stages) / params)

    def _cp(self, n: int):
        from archlang import runtime as rt
        from archlang.context_parallel import _UNSUPPORTED, check_context_parallel, shard_positions

        # the ring refuses attention dropout when a training forward asks for it, not beforehand
        dropping = next((name for name, m in self.model.named_modules()
                         if isinstance(m, rt.Attention) and getattr(m, "dropout", 0)), None)
        if dropping is not None:
            raise ArchError(f"context parallelism cannot run attention with dropout ({dropping}): "
                            f"{_UNSUPPORTED['dropout']}", kind="distributed")
        try:  # zig-zag shards balance causal attention's work; linear attention needs them in order
            check_context_parallel(self.model, load_balance=True)
            shard_positions(self.seq, n, 0, load_balance=True)
            return True
        except ArchError:
            check_context_parallel(self.model, load_balance=False)
            shard_positions(self.seq, n, 0, load_balance=False)
            return False


def _tp_shares(model, plan: dict[str, str]) -> dict[str, float]:
    """What tensor parallelism splits, from its plan: the parameters of the planned Linears (each
    module once), and per token the widths all-reduced (row-parallel outputs forward,
    column-parallel input gradients backward) at each use of a block."""
    from torch import nn

    uses: Counter = Counter()
    for _, stack in model.named_children():
        if isinstance(stack, nn.ModuleList):
            uses.update(id(block) for block in stack)
    params = forward_width = backward_width = 0
    for name, role in plan.items():
        linear = model.get_submodule(name)
        owner = model.get_submodule(name.rpartition(".")[0])
        n_uses = uses[id(owner)] or 1
        params += sum(p.numel() for p in linear.parameters())
        if role == "rowwise":
            forward_width += n_uses * linear.out_features
        else:
            backward_width += n_uses * linear.in_features
    return dict(params=params, forward_width=forward_width, backward_width=backward_width)


def _family(message: str) -> str:
    return re.sub(r"\d+", "N", message)


def advise(g: nx.MultiDiGraph, model, *, hardware: Hardware, gpus: int, seq: int | None = None, batch: int = 1,
           global_batch: int | None = None, dtype: str | None = None, recompute: str = "selective",
           mfu: float = 0.4, top: int = 5, spec: str = "model.arch") -> Advice:
    """Rank the parallel layouts of `gpus` devices for training. `g`: the optimized IR; `model`:
    the generated model built on the meta device (its runtime checks are asked), compiled without
    the fusions tensor parallelism cannot split (TP_UNFUSED) if tp is to be considered."""
    if gpus < 1:
        raise ArchError(f"--gpus must be at least 1, got {gpus}", hint="pass a positive integer", kind="usage")
    if batch < 1:
        raise ArchError(f"--batch must be at least 1, got {batch}", hint="pass a positive integer", kind="usage")
    global_batch = batch * gpus if global_batch is None else global_batch
    if global_batch < 1:
        raise ArchError(f"--global-batch must be at least 1, got {global_batch}", hint="pass a positive integer",
                        kind="usage")
    if recompute not in RECOMPUTE:
        raise ArchError(f"unknown recompute policy {recompute!r}", hint=f"one of {', '.join(RECOMPUTE)}", kind="usage")
    if not 0 < mfu <= 1:
        raise ArchError("utilisations are fractions in (0, 1]", hint="e.g. --mfu 0.4", kind="usage")
    if top < 1:
        raise ArchError(f"--top must be at least 1, got {top}", kind="usage")
    hw = hardware
    if hw.node_size is None or hw.intra_node_bandwidth is None or hw.inter_node_bandwidth is None:
        raise ArchError(f"{hw.description} has no interconnect figures, which the advice needs",
                        hint="add node_size, intra_node_gb_s and inter_node_gb_s to its [hardware.NAME] table",
                        kind="usage")
    seq = seq or g.graph["context"]
    dtype = _DTYPE_NAMES.get(dtype or g.graph["dtype"], dtype or g.graph["dtype"])
    if dtype not in DTYPES:
        raise ArchError(f"unknown dtype {dtype!r}", hint=f"one of {', '.join(DTYPES)}", kind="usage")
    nb = DTYPE_BYTES[dtype]
    peak = hw.peak(dtype)

    facts = compute_facts(g, context=seq, dtype=dtype)
    dense, routed, moes = _weights(g, training=True)
    split = tensor_parallel_split(g)
    # the FLOPs tensor parallelism splits: its column-parallel projections, the attention cores and
    # FFN activations between them, and the row-parallel projections after them
    fctx = FactsContext(context=seq, nbytes=nb)
    rowwise = {dst for n in split if op_def(g.nodes[n]["op"]).splits_heads(g.nodes[n]) for _, dst in g.out_edges(n)}
    tp_flops = sum(op_def(g.nodes[n]["op"]).cost(g.nodes[n], fctx).flops for n in split | rowwise)

    @functools.cache
    def act_per_token(t: int) -> float:
        """Saved bytes per token on each of t tensor-parallel ranks."""
        acts = saved_activations(g, seq=seq, nbytes=nb, keep_probabilities=recompute == "none", split=split, ways=t)
        if recompute == "full":  # each layer's input, and one layer's activations while it is recomputed
            return sum(acts.layer_inputs.values()) + acts.largest_layer() + acts.by_layer.get(None, 0.0)
        return acts.total

    flops = float(facts.flops_per_token)
    attention_core = _attention_core_flops(g, seq, nb)
    handoff = _handoff_delay(g, fctx)
    d_model = g.graph["d_model"]
    moe_rows = sum(d["attrs"]["top_k"] for n in ordered_nodes(g) if (d := g.nodes[n])["op"] == "moe")
    tokens = global_batch * seq
    master = 4 if nb < 4 else 0  # 16-bit training keeps float32 master weights

    def link(layout: Layout, dims: tuple[str, ...]) -> float:
        """The bandwidth of a group over `dims`: intra-node when its ranks share a node, that is when
        the block of consecutive ranks from its outermost dimension inwards fits in one."""
        used = [DIMS.index(d) for d in dims if getattr(layout, d) > 1]
        if not used:
            return hw.intra_node_bandwidth
        span = math.prod(getattr(layout, d) for d in DIMS[min(used):])
        within = span <= hw.node_size and hw.node_size % span == 0
        return hw.intra_node_bandwidth if within else hw.inter_node_bandwidth

    kv_per_token = facts.kv_cache_bytes_per_token  # K and V of every attention layer, in `dtype`
    no_tp = dict(params=0, forward_width=0, backward_width=0)

    def _estimate(lay: Layout, found: dict) -> Candidate:
        t, p, cp, ep = lay.tp, lay.pp, lay.cp, lay.ep
        share = found.get("tp", no_tp)
        stage_flops, stage_params = found.get("pp", (1.0, 1.0))
        balanced = found.get("cp", True)
        dp = lay.data_parallel
        tokens_dev = tokens / (dp * cp)  # its data-parallel rank's tokens, its cp shard of them
        m = global_batch // (dp * batch)  # micro-batches per step
        # --- memory: this device's tp/pp slice of the weights, then what FSDP2 shards of it: the
        # dense weights over the data ranks that shard (dp_shard, ep, cp), not the experts
        dense_slice = (dense - share["params"] + share["params"] / t) * stage_params
        routed_slice = routed * stage_params / ep
        shard_group = lay.dp_shard * ep * cp
        expert_group = lay.dp_shard * cp  # the ranks holding the same experts shard them (FSDP2)
        states = dense_slice / shard_group + routed_slice / expert_group
        in_flight = batch * seq / cp  # one micro-batch (1F1B's first stage: p of them, 1/p of the layers each)
        memory = dict(weights=states * nb, gradients=states * nb, optimizer=states * (master + 8),
                      activations=act_per_token(t) * in_flight)
        # --- compute
        # the share every tp rank computes whole
        replicated = min(1.0, max(0.0, 1 - tp_flops / flops)) if t > 1 and flops else 0.0
        work = 3 * flops * tokens / (gpus * peak * mfu) * (1 + (t - 1) * replicated) * stage_flops * p
        if not balanced:  # contiguous causal shards: the last rank attends to every earlier block
            work *= 1 + (attention_core / flops if flops else 0.0) * (2 * cp / (cp + 1) - 1)
        # recurrent and convolutional layers hand their state from shard to shard: each run of them
        # between two attention layers ends (cp - 1) of its layers later on the last rank
        work *= 1 + (cp - 1) * (handoff / flops if flops else 0.0)
        seconds = dict(compute=work, bubble=work * (p - 1) / m)
        # --- communication
        forward_passes = 2 if recompute == "full" else 1
        seconds["tp"] = (2 * (t - 1) / t * tokens_dev * nb * stage_flops
                         * (forward_passes * share["forward_width"] + share["backward_width"]) / link(lay, ("tp",)))
        seconds["cp"] = 3 * (cp - 1) * tokens_dev * kv_per_token / t * stage_flops / link(lay, ("cp",))
        seconds["ep"] = 4 * (ep - 1) / ep * tokens_dev * moe_rows * d_model * nb * stage_flops / link(lay, ("ep",))
        seconds["pp"] = 2 * tokens_dev * d_model * nb / link(lay, ("pp",)) if p > 1 else 0.0
        dp_time = 0.0
        if shard_group > 1:  # FSDP2: all-gather forward and backward, reduce-scatter
            n = shard_group
            dp_time += 3 * (n - 1) / n * dense_slice * nb / link(lay, ("dp_shard", "ep", "cp"))
        if lay.dp_replicate > 1:  # HSDP's all-reduce of the shard across replicas (DDP's of all of it)
            r = lay.dp_replicate
            dp_time += 2 * (r - 1) / r * dense_slice / shard_group * nb / link(lay, ("dp_replicate",))
        if expert_group > 1 and routed_slice:  # the experts' FSDP2 over the ranks holding the same ones
            n = expert_group
            dp_time += 3 * (n - 1) / n * routed_slice * nb / link(lay, ("dp_shard", "cp"))
        if lay.dp_replicate > 1 and routed_slice:  # and its all-reduce across replicas
            r = lay.dp_replicate
            dp_time += 2 * (r - 1) / r * routed_slice / expert_group * nb / link(lay, ("dp_replicate",))
        seconds["dp"] = dp_time
        step = (max(seconds["compute"] + seconds["bubble"], dp_time)
                + seconds["tp"] + seconds["cp"] + seconds["ep"] + seconds["pp"])
        return Candidate(lay, sum(memory.values()), memory, step, tokens / step if step else 0.0, seconds, m)

    check = _Feasibility(g, model, seq)
    refused: dict[str, list[tuple[Layout, str]]] = {}  # family → (layout, what was said), in order
    too_big: list[Candidate] = []
    candidates: list[Candidate] = []
    all_layouts = layouts(gpus)
    for lay in all_layouts:
        found = {}
        reason = None
        for dim in ("ep", "tp", "pp", "cp"):
            n = getattr(lay, dim)
            if n > 1:
                found[dim] = check(dim, n)
                if isinstance(found[dim], str):
                    reason = f"{dim}: {found[dim]}"
                    break
        if reason is None and global_batch % (lay.data_parallel * batch):
            reason = (f"the global batch of {global_batch} sequences does not split into micro-batches of {batch} "
                      f"over {lay.data_parallel} data-parallel ranks")
        elif reason is None and lay.pp > global_batch // (lay.data_parallel * batch):
            reason = (f"a 1F1B pipeline of {lay.pp} stages needs at least {lay.pp} micro-batches, and each of the "
                      f"{lay.data_parallel} data-parallel ranks has {global_batch // (lay.data_parallel * batch)}")
        if reason is not None:
            refused.setdefault(_family(reason), []).append((lay, reason))
            continue
        cand = _estimate(lay, found)
        (too_big if cand.memory_bytes > hw.memory_bytes else candidates).append(cand)

    # ranking: step time; among equals, less traffic in all (overlapped or not), then less memory
    def traffic(c: Candidate) -> float:
        return sum(v for k, v in c.seconds.items() if k not in ("compute", "bubble"))

    def same(x: float) -> float:  # equal up to rounding: sums taken in another order differ in the last bits
        return float(f"{x:.9g}")

    candidates.sort(key=lambda c: (same(c.step_seconds), same(traffic(c)), same(c.memory_bytes), len(c.layout.mesh)))
    rejected = [Rejection(reason=family if len(items) > 1 else items[0][1], count=len(items),
                          example=items[0][0].label, message=items[0][1]) for family, items in refused.items()]
    if too_big:  # one family, shown by the layout that comes closest to fitting
        closest = min(too_big, key=lambda c: c.memory_bytes)
        limit = f"{hw.memory_bytes / 1e9:g} GB of {hw.name}"
        rejected.append(Rejection(
            reason=f"needs more than the {limit} per device for training", count=len(too_big),
            example=closest.layout.label,
            message=f"needs more than the {limit} per device for training; the closest to fitting needs "
                    f"{closest.memory_bytes / 1e9:,.1f} GB"))
    rejected.sort(key=lambda r: -r.count)
    best = candidates[0] if candidates else None
    assumptions = [
        f"{hw.description}: {hw.memory_bytes / 1e9:g} GB, {peak / 1e12:g} dense {dtype} TFLOP/s; "
        f"{hw.node_size} per node, {hw.intra_node_bandwidth / 1e9:g} GB/s inside a node and "
        f"{hw.inter_node_bandwidth / 1e9:g} GB/s between nodes per device and direction ({hw.interconnect_source})",
        f"training with a global batch of {global_batch} x {seq:,} tokens in micro-batches of {batch} in "
        f"{dtype}, recompute {recompute}, model FLOPs utilisation {mfu:g}",
        "AdamW in mixed precision: 16-bit weights and gradients, float32 master weights and moments"
        if master else "AdamW in float32: weights, gradients and two moments",
        "pipelines run 1F1B; their first stage holds p micro-batches of its 1/p of the layers",
        "activations: each rank keeps its context-parallel shard's; tensor parallelism splits those between a "
        "column- and a row-parallel projection, and no sequence parallelism splits the rest",
        "as shard(model, mesh) applies them: FSDP2 shards the dense weights over dp_shard x ep x cp and replicates "
        "them over dp_replicate (HSDP; DDP alone); the experts split over ep, then FSDP2 shards them over the "
        "ranks that hold the same ones (dp_shard x cp)",
        "data-parallel traffic overlaps compute; tensor-, context-, expert- and pipeline-parallel traffic does not",
        "collectives cost bytes over bandwidth, without latency: messages large enough to fill the links (small "
        "models are latency-bound in practice, and this favours splitting them more than it should)",
        "MoE routing uniform" if moes else "",
    ]
    return Advice(model=g.graph["name"], hardware=hw.name, gpus=gpus, seq=seq, global_batch=global_batch,
                  dtype=dtype, recompute=recompute, mfu=mfu, considered=len(all_layouts), feasible=len(candidates),
                  layouts=candidates[:top],
                  rejected=rejected, why=_why(candidates), code=_code(best, spec, hw, best.layout.cp > 1 and check("cp", best.layout.cp) is True)
                  if best else "",
                  assumptions=[a for a in assumptions if a])


def _why(ranked: list[Candidate]) -> str:
    """One line: where the best layout's step time beats the runner-up's."""
    if len(ranked) < 2:
        return "the only layout that runs and fits" if ranked else ""
    a, b = ranked[0], ranked[1]
    names = {"compute": "compute", "bubble": "pipeline bubble", "tp": "tensor-parallel all-reduces",
             "cp": "context-parallel ring passes", "ep": "expert-parallel all-to-alls",
             "pp": "pipeline sends", "dp": "data-parallel traffic (overlapped with compute)"}
    if b.step_seconds - a.step_seconds > 1e-12 * max(1.0, b.step_seconds):
        part = max(names, key=lambda k: b.seconds.get(k, 0.0) - a.seconds.get(k, 0.0))
        saved = b.seconds.get(part, 0.0) - a.seconds.get(part, 0.0)
        return (f"{a.layout.label} beats {b.layout.label} by {_ms(b.step_seconds - a.step_seconds)} per step, "
                f"most of it {_ms(saved)} less {names[part]}")
    ta = sum(v for k, v in a.seconds.items() if k not in ("compute", "bubble"))
    tb = sum(v for k, v in b.seconds.items() if k not in ("compute", "bubble"))
    if tb > ta:
        return (f"{a.layout.label} ties {b.layout.label} on step time and moves less data "
                f"({_ms(ta)} of communication against {_ms(tb)})")
    return (f"{a.layout.label} ties {b.layout.label} on step time and traffic and needs less memory "
            f"({a.memory_bytes / 1e9:,.1f} GB against {b.memory_bytes / 1e9:,.1f} GB)")


def _ms(s: float) -> str:
    return f"{s * 1e3:,.2f} ms"


def _code(best: Candidate, spec: str, hw: Hardware, load_balance: bool) -> str:
    """The lines that build the model and apply the layout, to copy."""
    layout = best.layout
    device = "cpu" if hw.name == "cpu" else "cuda"
    build = (f"model = archlang.build({spec!r}, disabled={TP_UNFUSED!r})  # tp splits q/k/v and gate/up apart"
             if layout.tp > 1 else f"model = archlang.build({spec!r})")
    mesh = layout.mesh
    if not mesh:
        return f"import archlang\n{build}  # one device: no mesh to apply"
    lines = ["import archlang", "from torch.distributed.device_mesh import init_device_mesh",
             "from archlang.distributed import shard"]
    if layout.cp > 1:
        lines.append("from archlang.context_parallel import context_parallel")
    lines += [build, f"mesh = init_device_mesh({device!r}, {tuple(mesh.values())!r}, "
                     f"mesh_dim_names={tuple(mesh)!r})"]
    balance = ", load_balance=True" if layout.cp > 1 and load_balance else ""
    if layout.pp > 1:
        lines.append(f"plan = shard(model, mesh, microbatches={best.microbatches}{balance})  "
                     "# plan.schedule.step(...) runs a step")
    else:
        lines.append(f"shard(model, mesh{balance})")
    if layout.cp > 1:
        lines.append(f"# each step: with context_parallel(model, mesh['cp']{balance}) as cp: "
                     "model(cp.shard(ids)), ...")
    return "\n".join(lines)


def meta_model(compiled):
    """The generated model of a compiled spec (api.Compiled) built on the meta device: every
    module and shape the runtime's checks read, and no memory."""
    import torch

    from archlang.api import _default_dtype, load_source, torch_dtype

    module = load_source(compiled.source, compiled.model.name)
    with _default_dtype(torch_dtype(compiled.model.dtype)), torch.device("meta"):
        return module.build()


# Mixers whose context-parallel shards wait for the previous shard's end state (context_parallel)
_HANDOFF_OPS = frozenset({"ssm", "mamba2", "gated_deltanet", "gla", "retention", "kda", "short_conv"})


def _handoff_delay(g, fctx) -> float:
    """FLOPs per token by which the last context-parallel rank trails per extra rank: one mean
    layer of each run of consecutive layers that hand state from shard to shard (a run ends at
    a layer without such a mixer, whose attention makes every rank wait for all)."""
    layers: dict[tuple, list] = {}
    for n in ordered_nodes(g):
        d = g.nodes[n]
        if d.get("stack") is not None and d.get("layer") is not None:
            entry = layers.setdefault((d["stack"], d["layer"]), [0.0, False])
            entry[0] += op_def(d["op"]).cost(d, fctx).flops
            entry[1] = entry[1] or d["op"] in _HANDOFF_OPS
    delay, run = 0.0, []
    for flops, hands_off in [*layers.values(), (0.0, False)]:
        if hands_off:
            run.append(flops)
        elif run:
            delay += sum(run) / len(run)
            run = []
    return delay

"""`archc estimate`: memory per device and time for training and inference of a spec on given
hardware and parallelism, from the IR's facts. Every assumption is a field of `Setup` and is
printed with the result; nothing is measured.

Training memory per device: weights, gradients and AdamW states (16 bytes per parameter in mixed
precision: 16-bit weights and gradients, float32 master weights and two moments, as in the ZeRO
paper), sharded by tensor (t), pipeline (p) and expert (e) parallelism and, with FSDP, by the
data-parallel ranks; activations from `activations.py`, divided by t (sequence parallelism), and
for a pipeline the first stage's (1F1B keeps p micro-batches of L/p layers: one micro-batch of
every layer). Time: the model's FLOPs (3x the forward) at an assumed model-FLOPs utilisation;
decoding one token reads the weights (MoE: the experts a batch touches, routing assumed uniform)
and the cache over memory bandwidth at an assumed bandwidth utilisation, or is compute bound,
whichever is slower. `advise.py` ranks every layout of N devices instead (`--advise`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import networkx as nx

from archlang.compiler import compute_facts
from archlang.compiler.facts import DTYPE_BYTES
from archlang.compiler.ir import ordered_nodes
from archlang.compiler.ops import FactsContext, op_def
from archlang.spec.errors import ArchError

from .activations import saved_activations
from .hardware import DTYPES, HARDWARE, Hardware, load_hardware_file

__all__ = ["HARDWARE", "Estimate", "Hardware", "Setup", "estimate", "load_hardware_file"]

RECOMPUTE = ("none", "selective", "full")
_DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class Setup:
    hardware: Hardware
    gpus: int = 1
    tp: int = 1
    pp: int = 1
    ep: int = 1
    fsdp: bool = False
    seq: int | None = None  # tokens per sequence; default: the spec's context
    batch: int = 1  # sequences per micro-batch on each data-parallel rank (training) / decoded together
    dtype: str | None = None  # compute and weight dtype; default: the spec's
    recompute: str = "selective"
    mfu: float = 0.4
    bandwidth_utilisation: float = 0.8

    @property
    def dp(self) -> int:
        return self.gpus // (self.tp * self.pp)


def _check(setup: Setup, experts: list[int]) -> None:
    def refuse(message, hint):
        raise ArchError(message, hint=hint, kind="usage")

    for name in ("gpus", "tp", "pp", "ep", "batch"):
        if getattr(setup, name) < 1:
            refuse(f"--{name} must be at least 1", "pass a positive integer")
    if setup.gpus % (setup.tp * setup.pp):
        refuse(f"{setup.gpus} GPUs do not split into tensor x pipeline groups of {setup.tp} x {setup.pp}",
               "make --gpus a multiple of --tp times --pp")
    if setup.dp % setup.ep:
        refuse(f"expert parallelism of {setup.ep} must divide the {setup.dp} data-parallel ranks",
               "choose --ep dividing --gpus / (--tp x --pp)")
    for e in experts:
        if e % setup.ep:
            refuse(f"{e} experts do not split over {setup.ep} expert-parallel ranks",
                   "choose --ep dividing the number of experts")
    if setup.ep > 1 and not experts:
        refuse("--ep needs a mixture-of-experts model", "remove --ep")
    if setup.recompute not in RECOMPUTE:
        refuse(f"unknown recompute policy {setup.recompute!r}", f"one of {', '.join(RECOMPUTE)}")
    if not 0 < setup.mfu <= 1 or not 0 < setup.bandwidth_utilisation <= 1:
        refuse("utilisations are fractions in (0, 1]", "e.g. --mfu 0.4 --bandwidth-utilisation 0.8")


@dataclass
class Estimate:
    model: str
    hardware: str
    gpus: int
    parallel: dict[str, int | bool]
    seq: int
    batch: int
    dtype: str
    recompute: str
    mfu: float
    bandwidth_utilisation: float
    training: dict[str, float | bool | str]
    inference: dict[str, float | bool | str]
    assumptions: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _weights(g: nx.MultiDiGraph, *, training: bool) -> tuple[float, float, list[tuple[int, int, int]]]:
    """(dense parameters, routed-expert parameters, [(experts, top_k, routed params)] per MoE
    use), counting a shared block's weights once. Multi-token-prediction modules are trained
    beside the model and take no part in inference: only training counts them."""
    facts = compute_facts(g)
    routed, mtp_routed = [], 0
    for node in ordered_nodes(g):
        d = g.nodes[node]
        if d["op"] == "moe":
            n = sum(_numel(s) for k, s in d["params"].items() if k.startswith("experts_"))
            routed.append((d["attrs"]["experts"], d["attrs"]["top_k"], n))
            mtp_routed += n if d["stack"] == "mtp" else 0
    total_routed = facts.breakdown.get("moe_experts", 0)
    dense = facts.params_total - total_routed
    if training:
        return dense, total_routed, routed
    return dense - (facts.params_mtp - mtp_routed), total_routed - mtp_routed, routed


def _decode_weight_reads(g: nx.MultiDiGraph, batch: int) -> float:
    """Parameters one decoding step reads for `batch` tokens: every weight of every op use (a
    shared block's at each use), the embedding's `batch` rows only, and of each MoE's routed
    experts the expected number that the batch's tokens touch, E(1 - (1 - k/E)^batch)."""
    n = 0.0
    for node in ordered_nodes(g):
        d = g.nodes[node]
        if op_def(d["op"]).role != "compute" or d["stack"] == "mtp":
            continue
        for name, shape in d["params"].items():
            size = _numel(shape)
            if d["op"] == "embedding":
                size = min(batch, shape[0]) * _numel(shape[1:])
            elif d["op"] == "moe" and name.startswith("experts_"):
                e, k = d["attrs"]["experts"], d["attrs"]["top_k"]
                size = size * (1 - (1 - k / e) ** batch)
            n += size
    return n


def _attention_core_flops(g: nx.MultiDiGraph, seq: int, nbytes: int) -> float:
    """Forward FLOPs per token of the attention cores (what selective recomputation repeats)."""
    ctx = FactsContext(context=seq, nbytes=nbytes)
    flops = 0.0
    for node in ordered_nodes(g):
        op = op_def(g.nodes[node]["op"])
        if op.picture == "attention" and (op.mixer_kinds or op.cross_attention_kinds):
            flops += op.cost(g.nodes[node], ctx).flops
    return flops


def estimate(g: nx.MultiDiGraph, setup: Setup) -> Estimate:
    seq = setup.seq or g.graph["context"]
    dtype = _DTYPE_NAMES.get(setup.dtype or g.graph["dtype"], setup.dtype or g.graph["dtype"])
    if dtype not in DTYPES:
        raise ArchError(f"unknown dtype {dtype!r}", hint=f"one of {', '.join(DTYPES)}", kind="usage")
    nbytes = DTYPE_BYTES[dtype]
    dense, routed, moes = _weights(g, training=True)
    _check(setup, [e for e, _, _ in moes])
    t, p, e, dp = setup.tp, setup.pp, setup.ep, setup.dp
    hw = setup.hardware
    facts = compute_facts(g, context=seq, dtype=dtype)

    # --- training memory per device
    if setup.fsdp:  # ZeRO-3: dense states over every data-parallel rank, experts over those holding the same experts
        states_per_device = dense / (t * p * dp) + routed / (t * p * e * (dp // e))
    else:
        states_per_device = dense / (t * p) + routed / (t * p * e)
    master = 4 if nbytes < 4 else 0  # 16-bit training keeps float32 master weights
    weights_b = states_per_device * nbytes
    grads_b = states_per_device * nbytes
    optimizer_b = states_per_device * (master + 8)
    acts = saved_activations(g, seq=seq, nbytes=nbytes, keep_probabilities=setup.recompute == "none")
    if setup.recompute == "full":  # each layer's input, and one layer's activations while it is recomputed
        per_token = sum(acts.layer_inputs.values()) + acts.largest_layer() + acts.by_layer.get(None, 0.0)
    else:
        per_token = acts.total
    activations_b = per_token * setup.batch * seq / t
    train_total = weights_b + grads_b + optimizer_b + activations_b
    tokens_per_step = setup.batch * seq * dp
    model_flops = 3 * facts.flops_per_token * tokens_per_step
    recomputed = {"none": 0.0, "selective": _attention_core_flops(g, seq, nbytes),
                  "full": float(facts.flops_per_token)}[setup.recompute] * tokens_per_step
    peak = hw.peak(dtype)
    step = model_flops / (setup.gpus * peak * setup.mfu)
    train_fits = train_total <= hw.memory_bytes
    training = dict(
        weights_bytes=weights_b, gradients_bytes=grads_b, optimizer_bytes=optimizer_b, activations_bytes=activations_b,
        total_bytes=train_total, fits=train_fits, tokens_per_step=tokens_per_step, model_flops_per_step=model_flops,
        executed_flops_per_step=model_flops + recomputed,
        hardware_utilisation=setup.mfu * (model_flops + recomputed) / model_flops if model_flops else 0.0,
        step_seconds=step, tokens_per_second=tokens_per_step / step if step else 0.0,
        bound="compute" if train_fits else "memory capacity",
    )

    # --- inference memory per device and time
    dense_i, routed_i, _ = _weights(g, training=False)
    weights_i = (dense_i / (t * p) + routed_i / (t * p * e)) * nbytes
    cache_i = (facts.kv_cache_bytes_at_context + facts.ssm_state_bytes_per_sequence) * setup.batch / (t * p)
    inf_total = weights_i + cache_i
    inf_fits = inf_total <= hw.memory_bytes
    prefill = facts.flops_per_token * setup.batch * seq / (t * peak * setup.mfu)  # pipeline stages run in turn
    read = _decode_weight_reads(g, setup.batch) * nbytes + (facts.kv_cache_bytes_at_context
                                                           + facts.ssm_state_bytes_per_sequence) * setup.batch
    memory_time = read / (t * hw.bandwidth * setup.bandwidth_utilisation)  # pipeline stages read in turn
    compute_time = facts.flops_per_token * setup.batch / (t * peak * setup.mfu)
    decode = max(memory_time, compute_time)
    replicas = setup.gpus // (t * p)
    inference = dict(
        weights_bytes=weights_i, cache_bytes=cache_i, total_bytes=inf_total, fits=inf_fits,
        prefill_seconds=prefill, decode_bytes_read_per_step=read, decode_step_seconds=decode,
        decode_tokens_per_second=replicas * setup.batch / decode if decode else 0.0,
        bound=("memory capacity" if not inf_fits else "bandwidth" if memory_time >= compute_time else "compute"),
    )
    assumptions = [
        f"{hw.description}: {hw.memory_bytes / 1e9:g} GB, {hw.bandwidth / 1e12:g} TB/s, {peak / 1e12:g} dense "
        f"{dtype} TFLOP/s ({hw.source})",
        f"model FLOPs utilisation {setup.mfu:g}; memory bandwidth utilisation {setup.bandwidth_utilisation:g}",
        "AdamW in mixed precision: 16-bit weights and gradients, float32 master weights and moments"
        if master else "AdamW in float32: weights, gradients and two moments",
        f"activations: recompute {setup.recompute}"
        + (", sequence parallelism divides them by the tensor-parallel degree" if t > 1 else "")
        + (", the first pipeline stage of 1F1B holds one micro-batch of every layer" if p > 1 else ""),
        "pipeline stages balanced; decoding and prefill pass through them in turn",
        "MoE routing uniform when counting the experts a decoding batch reads" if moes else "",
    ]
    return Estimate(
        model=g.graph["name"], hardware=hw.name, gpus=setup.gpus,
        parallel=dict(dp=dp, tp=t, pp=p, ep=e, fsdp=setup.fsdp), seq=seq, batch=setup.batch, dtype=dtype,
        recompute=setup.recompute, mfu=setup.mfu, bandwidth_utilisation=setup.bandwidth_utilisation,
        training=training, inference=inference, assumptions=[a for a in assumptions if a],
    )

"""Pipeline parallelism from outside the model (as torchtitan does), on torch.distributed.pipelining:
where to cut a decoder's layer stack (where the spec marks its stages with `|`, else balanced by the
IR's per-layer FLOPs and parameters), and the stage modules and schedule that run it.

    stages = pipeline_stages(compiled, pp)            # layer ranges, one per stage
    plan = apply_pipeline(model, pp_mesh, microbatches=4, schedule="1F1B", stages=stages)
    plan.schedule.step(input_ids, target=labels)      # first rank gives the inputs, last the targets

A stage module holds the generated model's own modules (no copies): the embedding on the first
stage, its layers, the final norm and LM head on the last. Its forward runs the model's own
`features()` (context, position tables) with the layers of other stages skipped, so the model's
set-up is never re-implemented here. Tied embeddings: the last stage holds the matrix too, and
the two ends sum its gradient after each step. What cannot be split exactly is refused
(ArchError, kind "distributed"): shared blocks used on two stages, auxiliary losses and
batch-dependent routing, and anything but a one-stack decoder.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from archlang.spec.errors import ArchError

SCHEDULES = ("1F1B", "gpipe", "interleaved")
# Top-level modules with weights that only transform the embeddings before the first layer: the
# first stage owns them; later stages never use their output.
_EMBEDDING_SIDE = ("embed", "pos_embed", "embed_norm")
_HEAD_SIDE = ("final_norm", "lm_head")
# Runtime functions through which a layer reads what another layer (or the model) left in the
# context rather than the stream: values that would not cross a stage boundary.
_CARRIED = {"concat_stack_input", "hand_off", "take_hand_off"}


# ----------------------------------------------------------------------------- where to cut


def layer_costs(model) -> list[tuple[int, int]]:
    """(FLOPs per token, parameters) of each layer of the stack, in order, with the embedding's
    cost added to the first layer and the final norm's and LM head's to the last (the stages
    that hold them pay for them). From the IR when `model` is a compiled spec (api.Compiled) or
    an IR graph: exact FLOPs; from parameter counts alone (FLOPs taken as 2 per weight of a layer,
    which leaves out attention scores) when it is a built module, which carries no IR."""
    if isinstance(model, nn.Module):
        seen: set[int] = set()  # a shared block's weights count at its first use
        params = [_param_count(layer, seen) for layer in _stack(model)]
        costs = [[2 * _param_count(layer, set()), n] for layer, n in zip(_stack(model), params)]
        for name, at in [(n, 0) for n in _EMBEDDING_SIDE] + [(n, -1) for n in _HEAD_SIDE]:
            module = getattr(model, name, None)
            if module is not None:
                n = _param_count(module, seen)
                costs[at][1] += n
                if name == "lm_head":
                    costs[at][0] += 2 * n
        return [(f, p) for f, p in costs]
    return _ir_layer_costs(_ir(model))


def _ir(model):
    """The IR graph of a compiled spec, or the graph itself (whose own `.graph` is its attributes)."""
    import networkx as nx

    return model if isinstance(model, nx.Graph) else model.graph


def _param_count(module: nn.Module, seen: set[int]) -> int:
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _ir_layer_costs(g) -> list[tuple[int, int]]:
    from archlang.compiler.facts import DTYPE_BYTES, _shared_repeats
    from archlang.compiler.ir import ordered_nodes
    from archlang.compiler.ops import FactsContext, op_def

    stacks = g.graph["stacks"]
    if set(stacks) != {"layers"}:
        raise ArchError(f"pipeline parallelism cuts one layer stack; this model has {', '.join(sorted(stacks))}",
                        kind="distributed")
    n = len(stacks["layers"])
    fctx = FactsContext(context=g.graph["context"], nbytes=DTYPE_BYTES.get(g.graph["dtype"], 4))
    repeats = _shared_repeats(g)
    flops = [0.0] * n
    params = [0] * n
    seen_stack = False
    for node in ordered_nodes(g):
        d = g.nodes[node]
        op = op_def(d["op"])
        if d["stack"] == "layers":
            seen_stack = True
            i = d["layer"]
        elif d["stack"] is None:
            i = n - 1 if seen_stack else 0  # before the stack: the first stage's; after: the last's
        else:  # multi-token prediction modules and other stacks are refused when applied
            continue
        if (d["stack"], d["layer"]) not in repeats:
            params[i] += sum(op.param_split(d)[0].values())
        flops[i] += op.cost(d, fctx).flops
    return [(int(round(f)), p) for f, p in zip(flops, params)]


def stage_marks(model) -> list[int]:
    """Where the spec's stage marks (`layers = dense * 2 | moe * 4`) start each stage after the
    first, as layer indices; [] when it marks none. `model`: a compiled spec (api.Compiled), its
    IR, or a built module (its `config` carries them)."""
    if model is None:
        return []
    if isinstance(model, nn.Module):
        return list(getattr(model, "config", {}).get("stage_marks", ()))
    ast = getattr(model, "model", None)
    if ast is not None and hasattr(ast, "stage_marks"):
        return list(ast.stage_marks)
    return list(_ir(model).graph.get("stage_marks", ()))


def _stack_depth(model) -> int:
    if isinstance(model, nn.Module):
        return len(_stack(model))
    ast = getattr(model, "model", None)
    if ast is not None and hasattr(ast, "layers"):
        return len(ast.layers)
    return len(_ir(model).graph["stacks"].get("layers", ()))


def _marked_stages(model, marks: list[int], n_stages: int) -> list[range]:
    bounds = [0, *marks, _stack_depth(model)]
    if any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ArchError(f"the stage marks {marks} do not cut the {bounds[-1]} layers into non-empty stages in order",
                        kind="distributed")
    marked = len(bounds) - 1
    if n_stages != marked:
        # Any other count would move a boundary the spec fixed, or (interleaved schedules) place
        # part of a marked stage on another rank: refused rather than guessed.
        ranges = ", ".join(f"{a}–{b - 1}" for a, b in zip(bounds, bounds[1:]))
        raise ArchError(f"the spec marks {marked} pipeline stages with `|` (layers {ranges}), and {n_stages} were "
                        "asked for",
                        hint=f"use {marked} stages, mark {n_stages} in the spec, or cut by cost with "
                        f"pipeline_stages(model, {n_stages}, marks=False)", kind="distributed")
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def pipeline_stages(model, n_stages: int, *, marks: bool = True) -> list[range]:
    """The layers of each of `n_stages` pipeline stages: contiguous ranges that cover the stack.
    Where the spec marks its stages with `|`, they are those stages, and `n_stages` must be their
    number (any other count is refused); with `marks=False`, or when the spec marks none, the
    stack is cut so that the costliest stage is as cheap as it can be, in FLOPs per token first
    and then in parameters (memory). `model`: a compiled spec (api.Compiled), its IR, or a built
    module (parameter counts only: see layer_costs). Refused when there are more stages than layers."""
    if n_stages < 1:
        raise ArchError(f"a pipeline needs at least one stage, got {n_stages}", kind="distributed")
    marked = stage_marks(model) if marks else []
    if marked:
        return _marked_stages(model, marked, n_stages)
    costs = layer_costs(model)
    n = len(costs)
    if n_stages > n:
        raise ArchError(f"cannot cut {n} layers into {n_stages} pipeline stages: every stage needs a layer",
                        hint=f"use at most {n} stages", kind="distributed")
    prefix = [(0, 0)]
    for f, p in costs:
        prefix.append((prefix[-1][0] + f, prefix[-1][1] + p))

    def cost(a: int, b: int) -> tuple[int, int]:
        return prefix[b][0] - prefix[a][0], prefix[b][1] - prefix[a][1]

    # best[k][j]: the least possible costliest stage when the first j layers make k stages
    inf = (float("inf"), float("inf"))
    best = [[inf] * (n + 1) for _ in range(n_stages + 1)]
    cut = [[0] * (n + 1) for _ in range(n_stages + 1)]
    best[0][0] = (0, 0)
    for k in range(1, n_stages + 1):
        for j in range(k, n - (n_stages - k) + 1):
            for i in range(k - 1, j):
                candidate = max(best[k - 1][i], cost(i, j))
                if candidate < best[k][j]:
                    best[k][j], cut[k][j] = candidate, i
    bounds = [n]
    for k in range(n_stages, 0, -1):
        bounds.append(cut[k][bounds[-1]])
    bounds.reverse()
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


# ----------------------------------------------------------------------------- the stage modules


def _stack(model: nn.Module) -> nn.ModuleList:
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ArchError("pipeline parallelism cuts the `layers` stack; this model has none", kind="distributed")
    return layers


def check_pipeline(model: nn.Module, stages: list[range]) -> None:
    """Refuse (ArchError) what a pipeline of these stages would not compute exactly as the whole
    model does."""
    config = model.config
    if config.get("family") != "decoder" or set(config.get("stacks", {})) != {"layers"}:
        raise ArchError(f"pipeline parallelism is implemented for decoders with one layer stack; this model is a "
                        f"{config.get('family')} with stacks {', '.join(config.get('stacks', {}))}",
                        kind="distributed")
    if config.get("mtp"):
        raise ArchError("pipeline parallelism cannot split a model with multi-token prediction modules: they read the "
                        "embeddings (first stage) and the last hidden states (last stage) together",
                        kind="distributed")
    layers = _stack(model)
    covered = [i for r in stages for i in r]
    if covered != list(range(len(layers))) or any(len(r) == 0 for r in stages):
        raise ArchError(f"the stages {[(r.start, r.stop) for r in stages]} do not cut layers 0..{len(layers) - 1} "
                        "into non-empty consecutive ranges", hint="use pipeline_stages(model, n)", kind="distributed")
    for name, child in model.named_children():
        if child is layers or name in _EMBEDDING_SIDE or name in _HEAD_SIDE:
            continue
        if any(True for _ in child.parameters()):
            raise ArchError(f"pipeline parallelism cannot place `{name}`: it has weights and is neither the embedding, "
                            "the final norm nor the LM head, so its output may reach layers on several stages",
                            kind="distributed")
    if "carry" in type(model).features.__code__.co_names or any(
            set(type(layer).forward.__code__.co_names) & _CARRIED for layer in layers):
        raise ArchError("pipeline parallelism cannot split this model: its layers pass values to one another through "
                        "the context (a zamba2 hybrid's stack input and hand-offs), which does not cross stages",
                        kind="distributed")
    stage_of: dict[int, int] = {}
    for s, r in enumerate(stages):
        for i in r:
            other = stage_of.setdefault(id(layers[i]), s)
            if other != s:
                raise ArchError(f"pipeline parallelism cannot split layer {i}: it is a shared block also used on "
                                f"stage {other}, and one set of weights cannot train on two stages",
                                hint="cut so that every use of a shared block is on one stage", kind="distributed")
    for name, module in model.named_modules():
        reason = _batch_coupling(module)
        if reason:
            raise ArchError(f"pipeline parallelism cannot split {name}: {reason}", kind="distributed")


def _batch_coupling(module: nn.Module) -> str | None:
    """Why a module's training forward would differ when the batch is cut into microbatches, or
    reach the loss other than through the last stage's output; None where it does not."""
    if getattr(module, "aux_coef", 0) or getattr(module, "z_coef", 0) or getattr(module, "seq_aux_coef", 0):
        return ("its auxiliary losses are computed on the stage that runs it, and the schedule's loss sees only the "
                "last stage's output")
    if type(module).__name__ == "DepthRouter" and getattr(module, "aux_loss", 0):
        return "its auxiliary loss is computed on its stage, and the schedule's loss sees only the last stage's output"
    if getattr(module, "capacity_factor", None) is not None:
        return "its expert capacity counts the tokens of the whole batch, which microbatches change"
    if getattr(module, "router_kind", None) == "expert_choice":
        return "its experts choose among the tokens of the whole batch, which microbatches change"
    if getattr(module, "bias_update_speed", 0):
        return "its routing bias is updated after every forward, which microbatches make more frequent"
    return None


class _Skip(nn.Module):
    """A layer of another stage: the stream passes through untouched."""

    def forward(self, x: torch.Tensor, ctx: Any) -> torch.Tensor:
        return x


class _Receive(nn.Module):
    """The last layer before this stage: its output is what the previous stage sent."""

    def __init__(self, stage: "PipelineStageModule"):
        super().__init__()
        object.__setattr__(self, "stage", stage)  # not a submodule: no weights of its own

    def forward(self, x: torch.Tensor, ctx: Any) -> torch.Tensor:
        if "stack_input" in getattr(ctx, "carry", {}):
            raise ArchError("pipeline parallelism cannot split this model: its layers read the stack's input "
                            "(ctx.carry['stack_input']), which only the first stage computes", kind="distributed")
        return self.stage.received


class _StageOutput(Exception):
    """Carries a stage's output out of the model's forward: nothing after its layers runs."""

    def __init__(self, x: torch.Tensor):
        super().__init__("the stage's output")
        self.x = x


class _Send(nn.Module):
    """The first layer after this stage: the stream it would take is what the stage sends on."""

    def forward(self, x: torch.Tensor, ctx: Any) -> torch.Tensor:
        if self.training and ctx.aux_losses:  # a backstop behind check_pipeline
            raise ArchError("pipeline parallelism lost an auxiliary loss: the schedule's loss sees only the last "
                            "stage's output", kind="distributed")
        raise _StageOutput(x)


class PipelineStageModule(nn.Module):
    """One pipeline stage of a generated decoder: its submodules are the model's own (the
    embedding on the first stage; layers.<i> for its layers; the final norm and LM head on the
    last), so its parameter names are the model's. Takes the token ids (first stage) or the hidden
    states (B, T, C) the previous stage sent; returns hidden states, or the logits (last stage).
    It runs the model's own forward, in which the layers before it give way to what it received
    and the first layer after it ends the forward with the stream (so whatever the model does
    after its stack, a final norm or a logit scale, runs on the last stage only). Move the model
    to its device before making stages: the stage holds only the modules it owns."""

    def __init__(self, model: nn.Module, layers: range, *, first: bool, last: bool):
        super().__init__()
        self.first, self.last, self.layer_range = first, last, layers
        stack = _stack(model)
        for name in _EMBEDDING_SIDE if first else ():
            if getattr(model, name, None) is not None:
                setattr(self, name, getattr(model, name))
        self.layers = nn.ModuleDict({str(i): stack[i] for i in layers})
        for name in _HEAD_SIDE if last else ():
            if getattr(model, name, None) is not None:
                setattr(self, name, getattr(model, name))
        if last and not first and model.config.get("tie_embeddings"):
            # the LM head is the embedding matrix: the last stage holds it too (in one process,
            # the same tensor; across ranks, a copy whose gradient tie_gradients sums with the first's)
            self.embed = model.embed
        self.received: torch.Tensor | None = None
        # The model as this stage sees it: the same modules, with other stages' layers skipped, so
        # that its own features() and forward() set up the context and tables. Not a submodule.
        view = copy.copy(model)
        view._modules, view._parameters, view._buffers = dict(model._modules), dict(model._parameters), dict(
            model._buffers)
        view.layers = nn.ModuleList(
            stack[i] if i in layers else _Receive(self) if i == layers.start - 1 else _Send() if i == layers.stop
            else _Skip() for i in range(len(stack)))
        # the model's set-up as it is when the stage runs, not when it was made: context
        # parallelism replaces make_context for the steps it runs
        view.make_context = lambda *args, **kwargs: model.make_context(*args, **kwargs)
        object.__setattr__(self, "view", view)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        view = self.view
        view.training = self.training  # its own set-up (embedding dropout) follows the stage's mode
        view.layers.train(self.training)  # (and the stand-ins for other stages' layers)
        view._aux_loss = None
        if self.first:
            inputs = {"input_ids": tokens}
        else:  # the model's set-up runs on a placeholder of the embeddings; _Receive puts the real stream in
            width = view.config.get("embedding_dim", view.config["d_model"])
            self.received = tokens
            inputs = {"inputs_embeds": tokens.new_zeros(()).expand(*tokens.shape[:2], width)}
        try:
            out = view(**inputs)
        except _StageOutput as done:  # a stage before the last: what follows its layers is another stage's
            out = done.x
        finally:
            self.received = None
        if self.training and view._aux_loss is not None:  # a backstop behind check_pipeline
            raise ArchError("pipeline parallelism lost an auxiliary loss: the schedule's loss sees only the last "
                            "stage's output", kind="distributed")
        return out


# ----------------------------------------------------------------------------- the schedule


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, V) against targets (B, T): the schedule's default loss."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


@dataclass
class PipelinePlan:
    """What torch.distributed.pipelining runs on this rank: its stages (PipelineStage), the stage
    modules they wrap, their layer ranges, and the schedule (`schedule.step(...)`)."""

    stages: list
    modules: list[PipelineStageModule]
    layers: list[range]
    schedule: Any


def pipeline_layout(model: nn.Module, pp: int, *, microbatches: int, schedule: str = "1F1B",
                    stages: list[range] | None = None, stages_per_rank: int | None = None) -> tuple[list[range], int]:
    """(the layer range of every stage, stages per rank) of a pipeline over `pp` ranks, after
    every check apply_pipeline makes (ArchError where it would not run exactly), with nothing
    built: archlang.distributed.shard checks a whole mesh before it changes the model."""
    if schedule not in SCHEDULES:
        raise ArchError(f"unknown pipeline schedule {schedule!r}", hint=f"one of {', '.join(SCHEDULES)}",
                        kind="distributed")
    per_rank = stages_per_rank or (2 if schedule == "interleaved" else 1)
    if per_rank != 1 and schedule != "interleaved":
        raise ArchError(f"the {schedule} schedule runs one stage per rank, got stages_per_rank={per_rank}",
                        hint='use schedule="interleaved"', kind="distributed")
    n_stages = pp * per_rank
    stages = list(stages) if stages is not None else pipeline_stages(model, n_stages)
    if len(stages) != n_stages:
        raise ArchError(f"{len(stages)} layer ranges for {n_stages} stages ({pp} ranks x {per_rank} per rank)",
                        kind="distributed")
    least = pp if schedule == "1F1B" else 1  # 1F1B's warm-up fills every stage
    if microbatches < least:
        raise ArchError(f"the {schedule} schedule over {pp} ranks needs at least {least} microbatches, "
                        f"got {microbatches}", kind="distributed")
    rounds = max(1, microbatches // pp)  # torch's interleaved schedule runs whole rounds
    if schedule == "interleaved" and microbatches % rounds:
        raise ArchError(f"the interleaved schedule over {pp} ranks runs {rounds} rounds, and {microbatches} "
                        "microbatches do not divide into them", hint=f"use a multiple of {pp} microbatches, or fewer "
                        f"than {2 * pp}", kind="distributed")
    check_pipeline(model, stages)
    return stages, per_rank


def apply_pipeline(model: nn.Module, pp_mesh, *, microbatches: int, schedule: str = "1F1B",
                   stages: list[range] | None = None, stages_per_rank: int | None = None,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = next_token_loss,
                   parallelize: Callable[[nn.Module], None] | None = None) -> PipelinePlan:
    """This rank's pipeline stages of `model` over the 1-D mesh `pp_mesh`, and the schedule that
    trains them with `microbatches` microbatches: "1F1B" and "gpipe" give each rank one stage,
    "interleaved" (interleaved 1F1B) `stages_per_rank` stages (default 2), stage s on rank
    s mod pp. `stages`: the layer ranges, one per stage (default: the stages the spec marks with
    `|`, else pipeline_stages on the module's parameter counts; pass pipeline_stages(compiled, n)
    to balance by the IR's FLOPs). The loss is the mean over microbatches of `loss_fn(logits, targets)`: equal to the whole batch's mean
    when the microbatches are equal, as torch's schedules scale the gradients by 1/microbatches.
    `parallelize`: applied to each stage module before torch wraps it (FSDP2 over the data ranks:
    archlang.distributed.shard passes it)."""
    from torch.distributed import pipelining

    pp = pp_mesh.size()
    stages, per_rank = pipeline_layout(model, pp, microbatches=microbatches, schedule=schedule, stages=stages,
                                       stages_per_rank=stages_per_rank)
    n_stages = len(stages)
    rank = pp_mesh.get_local_rank()
    device = torch.device(pp_mesh.device_type) if pp_mesh.device_type == "cpu" else torch.device(
        pp_mesh.device_type, torch.get_device_module(pp_mesh.device_type).current_device())
    group = pp_mesh.get_group()
    indices = [rank + k * pp for k in range(per_rank)]
    modules = [PipelineStageModule(model, stages[s], first=s == 0, last=s == n_stages - 1) for s in indices]
    for module in modules if parallelize is not None else ():
        parallelize(module)
    pipeline_stages_ = [pipelining.PipelineStage(m, s, n_stages, device, group=group) for m, s in zip(modules, indices)]
    if schedule == "interleaved":
        runner = pipelining.ScheduleInterleaved1F1B(pipeline_stages_, microbatches, loss_fn=loss_fn)
    else:
        kind = pipelining.Schedule1F1B if schedule == "1F1B" else pipelining.ScheduleGPipe
        runner = kind(pipeline_stages_[0], microbatches, loss_fn=loss_fn)
    if model.config.get("tie_embeddings") and pp > 1 and rank in (0, (n_stages - 1) % pp):
        _tie_gradients(runner, modules, peer=pp_mesh.mesh.tolist()[(n_stages - 1) % pp if rank == 0 else 0])
    return PipelinePlan(stages=pipeline_stages_, modules=modules, layers=[stages[s] for s in indices], schedule=runner)


def _tie_gradients(runner, modules: list[PipelineStageModule], peer: int) -> None:
    """Tied embeddings across stages (as Megatron-LM does): the first stage's rank and the last's
    each hold the matrix; after each step of the schedule the two exchange its gradient and add
    the other's, so both hold the gradient of the tied weight (its uses as embedding and as LM
    head) and the same optimizer step keeps the copies equal. After the step, not in backward:
    the LM head's gradient is ready before the last stage sends anything back, and waiting for
    the first stage there would stall the pipeline."""
    import torch.distributed as dist

    weight = next(m.embed.weight for m in modules if getattr(m, "embed", None) is not None)
    step = runner.step

    def step_and_tie(*args, **kwargs):
        out = step(*args, **kwargs)
        grad = weight.grad
        local = grad._local_tensor if hasattr(grad, "_local_tensor") else grad  # FSDP2: this rank's shard
        other = torch.empty_like(local)
        if dist.get_rank() < peer:  # a fixed order, so the two blocking exchanges meet
            dist.send(local.contiguous(), peer)
            dist.recv(other, peer)
        else:
            dist.recv(other, peer)
            dist.send(local.contiguous(), peer)
        local.add_(other)
        return out

    runner.step = step_and_tie


"""Mixture of experts: a router picks top-k experts per token; the chosen (token, expert) pairs
are sorted by expert and run through grouped matmuls (no Python loop over experts, no padding).

Routing variants (all off by default): DeepSeek-V3's selection-only correction bias, updated
without gradients from each training batch's load (auxiliary-loss-free balancing), and its
sequence-wise balance loss; expert groups (DeepSeek-V2/V3 group-limited top-k); a router bias
(gpt-oss); routing weights that scale the expert's input instead of its output (Llama 4); and
gpt-oss's clamped SwiGLU experts ("swiglu_oai")."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archlang.kernels import dispatch
from archlang.kernels.dispatch import grouped_matmul
from archlang.kernels.reference import ACTIVATIONS
from archlang.spec.errors import ArchError

from .context import Context

GROUP_SCORES = ("top2_sum", "max")
ROUTERS = ("softmax", "sigmoid", "hash", "expert_choice")


class MoE(nn.Module):
    def __init__(self, dim: int, experts: int, top_k: int, *, expert_kind: str, expert_act: str, expert_hidden: int,
                 expert_bias: bool = False, shared_kind: str | None = None, shared_act: str | None = None,
                 shared_hidden: int | None = None, shared_bias: bool = False, shared_gate: bool = False,
                 router: str = "softmax",
                 normalize_top_k: bool = True, routed_scale: float = 1.0, aux_loss: float = 0.0,
                 z_loss: float = 0.0, capacity_factor: float | None = None, router_bias: bool = False,
                 correction_bias: bool = False, bias_update_speed: float = 0.0, seq_aux_loss: float = 0.0,
                 n_group: int = 1, topk_group: int = 1, group_score: str = "top2_sum", scale_input: bool = False,
                 glu_limit: float | None = None, glu_alpha: float = 1.702, normalize_min: float = 0.0,
                 vocab: int | None = None):
        super().__init__()
        _check(experts, top_k, expert_kind=expert_kind, expert_act=expert_act, shared_act=shared_act,
               correction_bias=correction_bias, bias_update_speed=bias_update_speed, seq_aux_loss=seq_aux_loss,
               n_group=n_group, topk_group=topk_group, group_score=group_score, glu_limit=glu_limit,
               glu_alpha=glu_alpha)
        self.experts, self.top_k, self.router_kind = experts, top_k, router
        self.expert_glu, self.expert_act = expert_kind != "mlp", expert_act
        self.normalize_top_k, self.routed_scale = normalize_top_k, routed_scale
        self.normalize_min = normalize_min  # ERNIE 4.5 divides by max(sum of the top-k weights, this)
        self.aux_coef, self.z_coef, self.capacity_factor = aux_loss, z_loss, capacity_factor
        width = 2 * expert_hidden if self.expert_glu else expert_hidden
        if router not in ROUTERS:
            raise ArchError(f"unknown router {router!r}", hint=f"one of {', '.join(ROUTERS)}")
        if router == "hash":
            if vocab is None or top_k != 1:
                raise ArchError("hash routing needs the vocabulary size and top_k = 1")
            # Hash Layers' balanced random hash: a fixed permutation of the ids, dealt out to the
            # experts in turn; a persistent buffer, so a checkpoint carries the map it was trained with
            order = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))
            self.hash_table = nn.Buffer(torch.empty(vocab, dtype=torch.long).index_put_(
                (order,), torch.arange(vocab) % experts))
        else:
            self.router = nn.Parameter(torch.empty(experts, dim))
        self.router_bias = nn.Parameter(torch.zeros(experts)) if router_bias else None
        # a buffer, as in HF: saved with the model, moved by .to(), never given a gradient
        self.e_score_correction_bias = nn.Buffer(torch.zeros(experts)) if correction_bias else None
        self.bias_update_speed, self.seq_aux_coef = bias_update_speed, seq_aux_loss
        self.n_group, self.topk_group, self.group_score = n_group, topk_group, group_score
        self.scale_input, self.glu_limit, self.glu_alpha = scale_input, glu_limit, glu_alpha
        up = "experts_gate_up" if self.expert_glu else "experts_up"
        setattr(self, up, nn.Parameter(torch.empty(experts, width, dim)))
        self.experts_down = nn.Parameter(torch.empty(experts, dim, expert_hidden))
        self.expert_bias = expert_bias
        if expert_bias:
            setattr(self, f"{up}_bias", nn.Parameter(torch.zeros(experts, width)))
            self.experts_down_bias = nn.Parameter(torch.zeros(experts, dim))
        self.shared_glu = shared_kind is not None and shared_kind != "mlp"
        self.shared_act = shared_act
        self.shared_up_name = "shared_gate_up" if self.shared_glu else "shared_up"
        if shared_kind is not None:
            sw = 2 * shared_hidden if self.shared_glu else shared_hidden
            setattr(self, self.shared_up_name, nn.Parameter(torch.empty(sw, dim)))
            self.shared_down = nn.Parameter(torch.empty(dim, shared_hidden))
            if shared_bias:
                setattr(self, f"{self.shared_up_name}_bias", nn.Parameter(torch.zeros(sw)))
                self.shared_down_bias = nn.Parameter(torch.zeros(dim))
        self.has_shared = shared_kind is not None
        self.shared_bias = shared_kind is not None and shared_bias
        self.shared_gate = nn.Parameter(torch.empty(1, dim)) if shared_gate else None
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    def _apply(self, fn, recurse=True):
        """Casting the model (to bf16, ...) leaves the correction bias in float32, as DeepSeek-V3
        keeps it: its small update steps would round away, and expert choice would drift."""
        bias = self.e_score_correction_bias
        out = super()._apply(fn, recurse)
        if bias is not None and self.e_score_correction_bias.dtype != torch.float32:
            self.e_score_correction_bias = nn.Buffer(bias.to(self.e_score_correction_bias.device, torch.float32))
        return out

    #: expert parallelism (archlang.expert_parallel) sets this to run each row on the rank that owns its
    #: expert: called as expert_dispatch(self, xs, expert_of, counts) with the arguments of _experts
    expert_dispatch = None

    def _experts(self, xs: torch.Tensor, expert_of: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The expert FFN on rows sorted by expert: two grouped matmuls."""
        if self.expert_dispatch is not None:
            return self.expert_dispatch(self, xs, expert_of, counts)
        return self.expert_ffn(xs, expert_of, counts, {n: getattr(self, n) for n in self.expert_weight_names()})

    def expert_weight_names(self) -> list[str]:
        """The stacked (E, ...) parameters of the routed experts."""
        up = "experts_gate_up" if self.expert_glu else "experts_up"
        names = [up, "experts_down"]
        return names + [f"{up}_bias", "experts_down_bias"] if self.expert_bias else names

    def expert_ffn(self, xs: torch.Tensor, expert_of: torch.Tensor, counts: torch.Tensor,
                   weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """The experts whose stacked weights are given (by expert_weight_names) on rows sorted by expert."""
        up_name = "experts_gate_up" if self.expert_glu else "experts_up"
        h = grouped_matmul(xs, weights[up_name], counts, expert_of)
        if self.expert_bias:
            h = h + weights[f"{up_name}_bias"][expert_of]
        if self.expert_act == "swiglu_oai":
            gate, up = h.chunk(2, dim=-1)
            if self.glu_limit is not None:
                gate, up = gate.clamp(max=self.glu_limit), up.clamp(-self.glu_limit, self.glu_limit)
            h = (up + 1) * (gate * torch.sigmoid(self.glu_alpha * gate))
        elif self.expert_glu:
            gate, h = h.chunk(2, dim=-1)
            h = ACTIVATIONS[self.expert_act](gate) * h
        else:
            h = ACTIVATIONS[self.expert_act](h)
        h = grouped_matmul(h, weights["experts_down"], counts, expert_of)
        return h + weights["experts_down_bias"][expert_of] if self.expert_bias else h

    def _shared(self, x: torch.Tensor) -> torch.Tensor:
        up_bias = getattr(self, f"{self.shared_up_name}_bias") if self.shared_bias else None
        h = F.linear(x, getattr(self, self.shared_up_name), up_bias)
        if self.shared_glu:
            gate, h = h.chunk(2, dim=-1)
            h = ACTIVATIONS[self.shared_act](gate) * h
        else:
            h = ACTIVATIONS[self.shared_act](h)
        h = F.linear(h, self.shared_down, self.shared_down_bias if self.shared_bias else None)
        if self.shared_gate is not None:
            h = torch.sigmoid(F.linear(x, self.shared_gate)) * h
        return h

    def route(self, x: torch.Tensor):
        if self.e_score_correction_bias is not None:  # DeepSeek-V3 routes in float32 whatever the model's dtype
            bias = self.router_bias.float() if self.router_bias is not None else None
            logits = F.linear(x.float(), self.router.float(), bias)  # (N, E)
        else:
            logits = F.linear(x, self.router, self.router_bias).float()  # (N, E)
        probs, weights, index = dispatch.route(logits, self.top_k, sigmoid=self.router_kind == "sigmoid",
                                               normalize=self.normalize_top_k, scale=self.routed_scale,
                                               correction_bias=self.e_score_correction_bias, n_group=self.n_group,
                                               topk_group=self.topk_group, group_score=self.group_score,
                                               normalize_min=self.normalize_min)
        return logits, probs, weights, index  # weights, index: (N, k)

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        if self.router_kind == "expert_choice":
            return self._expert_choice(x, ctx)
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, C)
        n, k, e = x.shape[0], self.top_k, self.experts
        if self.router_kind == "hash":
            if ctx is None or ctx.input_ids is None:
                raise ArchError("hash routing reads each token's id, and this forward has none (inputs_embeds)",
                                kind="usage", hint="call the model with input_ids")
            index = self.hash_table[ctx.input_ids.reshape(-1)][:, None]  # (N, 1)
            logits = probs = None
            weights = torch.full(index.shape, self.routed_scale, dtype=torch.float32, device=x.device)
        else:
            logits, probs, weights, index = self.route(x)
        # Sort the N*k (token, expert) pairs by expert: each expert's tokens become one group.
        flat = index.reshape(-1)
        order = torch.argsort(flat, stable=True)
        expert_of = flat[order]
        token = order // k
        counts = torch.zeros(e, dtype=torch.long, device=x.device).index_add_(0, flat, torch.ones_like(flat))
        w = weights.reshape(-1)[order].to(x.dtype)
        kept = None
        if self.training and self.capacity_factor is not None:
            # tokens beyond an expert's capacity are dropped (they keep only the residual)
            capacity = math.ceil(self.capacity_factor * n * k / e)
            slot = torch.arange(n * k, device=x.device) - (torch.cumsum(counts, 0) - counts)[expert_of]
            kept = (slot < capacity).to(w.dtype)
        if self.scale_input:
            # Llama 4: the routing weight scales what the expert reads, not what it writes
            rows = self._experts(x[token] * w[:, None], expert_of, counts)  # (N*k, C)
            if kept is not None:
                rows = rows * kept[:, None]
        else:
            rows = self._experts(x[token], expert_of, counts)  # (N*k, C)
            # weight in place: nothing saved for the backward reads the experts' output
            rows.mul_((w if kept is None else w * kept)[:, None])
        out = x.new_zeros(x.shape).index_add_(0, token, rows)
        if self.has_shared:
            out = out + self._shared(x)
        if self.training and (self.bias_update_speed or (ctx is not None and self.seq_aux_coef)):
            real = _real_tokens(shape, ctx, x.device)  # (B, T) bool
        if self.training and self.bias_update_speed:
            self._update_correction_bias(index, real)
        if ctx is not None and self.training and logits is not None and (self.aux_coef or self.z_coef
                                                                          or self.seq_aux_coef):
            total = self.losses(logits, probs, index)
            if self.seq_aux_coef:
                total = total + self.seq_aux_coef * self.sequence_balance_loss(probs, index, real)
            ctx.aux_losses.append(total)
        return out.reshape(shape)

    def _expert_choice(self, x: torch.Tensor, ctx: Context | None) -> torch.Tensor:
        """Expert-choice routing (Zhou et al. 2022): per sequence, each expert takes the
        c = ceil(T · top_k / E) tokens with its highest softmax scores and weighs its output by
        that score; a token's output sums the experts that took it (none, one or several)."""
        if x.dim() != 3:
            raise ArchError("expert-choice routing ranks the tokens of each sequence: it needs (B, T, C) input")
        if ctx is not None and (ctx.attention_mask is not None or ctx.cache is not None):
            raise ArchError("expert-choice routing ranks the tokens of the whole sequence, and each expert's "
                            "share depends on its length: padding or a cache would change what it takes",
                            kind="usage", hint="give sequences without padding, one length per batch")
        bsz, t, c_dim = x.shape
        e = self.experts
        logits = F.linear(x, self.router, self.router_bias).float()  # (B, T, E)
        probs = torch.softmax(logits, dim=-1)
        capacity = min(t, math.ceil(t * self.top_k / e))
        gates, picked = torch.topk(probs.transpose(1, 2), capacity, dim=-1)  # (B, E, c): each expert's tokens
        # (token, expert) pairs grouped by expert, as the grouped matmuls want them
        token = (picked + torch.arange(bsz, device=x.device)[:, None, None] * t).transpose(0, 1).reshape(-1)
        w = (gates * self.routed_scale).transpose(0, 1).reshape(-1).to(x.dtype)
        counts = torch.full((e,), bsz * capacity, dtype=torch.long, device=x.device)
        expert_of = torch.arange(e, device=x.device).repeat_interleave(bsz * capacity)
        flat = x.reshape(-1, c_dim)
        rows = self._experts(flat[token], expert_of, counts) * w[:, None]
        out = flat.new_zeros(flat.shape).index_add_(0, token, rows)
        if self.has_shared:
            out = out + self._shared(flat)
        if ctx is not None and self.training and self.z_coef:
            ctx.aux_losses.append(self.z_coef * torch.logsumexp(logits, dim=-1).pow(2).mean())
        return out.reshape(x.shape)

    @torch.no_grad()
    def _update_correction_bias(self, index: torch.Tensor, real: torch.Tensor) -> None:
        """Auxiliary-loss-free balancing (DeepSeek-V3 §2.1.2): raise the bias of experts that got
        fewer than the mean number of real tokens, lower it for those that got more."""
        chosen = index[real.reshape(-1)].reshape(-1)
        load = torch.bincount(chosen, minlength=self.experts).float()  # (E,)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every data-parallel rank must move its copy of the bias the same way
            torch.distributed.all_reduce(load)
        self.e_score_correction_bias.add_(self.bias_update_speed * torch.sign(load.mean() - load))

    def sequence_balance_loss(self, probs: torch.Tensor, index: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """DeepSeek-V3 eq. 17-20, unweighted: per sequence, sum_i f_i P_i with f_i the fraction
        of the sequence's top-k picks on expert i times E/k, P_i its mean normalised score;
        averaged over the sequences that hold a real token."""
        b, t = real.shape
        e, k = self.experts, self.top_k
        mask = real.to(probs.dtype)  # (B, T)
        length = mask.sum(dim=1)  # (B,)
        picks = probs.new_zeros(b, e).scatter_add_(
            1, index.reshape(b, t * k), mask[:, :, None].expand(b, t, k).reshape(b, t * k))  # (B, E)
        f = picks * e / (k * length.clamp(min=1))[:, None]
        scores = probs / probs.sum(dim=-1, keepdim=True)  # (N, E) the sigmoid scores normalised
        p = (scores.reshape(b, t, e) * mask[:, :, None]).sum(dim=1) / length.clamp(min=1)[:, None]  # (B, E)
        has_tokens = length > 0
        return (f * p).sum(dim=1)[has_tokens].sum() / has_tokens.sum().clamp(min=1)

    def losses(self, logits: torch.Tensor, probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Switch-style load balancing (E * sum_e f_e P_e) and ST-MoE router z-loss, weighted."""
        e = self.experts
        total = logits.new_zeros(())
        if self.aux_coef:
            f = torch.bincount(index.reshape(-1), minlength=e).float() / index.numel()
            p = probs.mean(dim=0)
            total = total + self.aux_coef * e * (f * p).sum()
        if self.z_coef:
            total = total + self.z_coef * torch.logsumexp(logits, dim=-1).pow(2).mean()
        return total


def _real_tokens(shape: torch.Size, ctx: Context | None, device: torch.device) -> torch.Tensor:
    """(B, T) True for the tokens that are not padding; a 2-D input is one sequence."""
    b, t = (shape[0], shape[1]) if len(shape) == 3 else (1, shape[0])
    mask = None if ctx is None else ctx.attention_mask
    if mask is None:
        return torch.ones(b, t, dtype=torch.bool, device=device)
    return mask[:, -t:].to(device=device, dtype=torch.bool).reshape(b, t)


def _check(experts: int, top_k: int, *, expert_kind: str, expert_act: str, shared_act: str | None,
           correction_bias: bool, bias_update_speed: float, seq_aux_loss: float, n_group: int, topk_group: int,
           group_score: str, glu_limit: float | None, glu_alpha: float) -> None:
    """Refuse the combinations MoE cannot compute exactly (the compiler checks them with spans)."""
    if bias_update_speed < 0 or seq_aux_loss < 0:
        raise ArchError("bias_update_speed and seq_aux_loss must be >= 0")
    if bias_update_speed and not correction_bias:
        raise ArchError("bias_update_speed needs the correction bias", hint="set correction_bias=True")
    if group_score not in GROUP_SCORES:
        raise ArchError(f"unknown group_score {group_score!r}", hint=f"one of {', '.join(GROUP_SCORES)}")
    if n_group < 1 or experts % n_group:
        raise ArchError(f"n_group ({n_group}) must divide experts ({experts})")
    if not 1 <= topk_group <= n_group:
        raise ArchError(f"topk_group ({topk_group}) must be between 1 and n_group ({n_group})")
    if n_group > 1 and top_k > topk_group * (experts // n_group):
        raise ArchError(f"top_k ({top_k}) exceeds the {topk_group * (experts // n_group)} experts in the "
                        f"topk_group={topk_group} kept groups")
    if n_group > 1 and group_score == "top2_sum" and experts // n_group < 2:
        raise ArchError("group_score top2_sum needs at least 2 experts per group")
    if expert_act == "swiglu_oai" and expert_kind == "mlp":
        raise ArchError("expert_act swiglu_oai is a gated unit", hint="use a GLU expert kind")
    if shared_act == "swiglu_oai":
        raise ArchError("swiglu_oai is implemented for the routed experts only")
    if expert_act != "swiglu_oai" and (glu_limit is not None or glu_alpha != 1.702):
        raise ArchError("glu_limit and glu_alpha apply to expert_act swiglu_oai only")
    if glu_limit is not None and glu_limit <= 0:
        raise ArchError(f"glu_limit must be > 0, got {glu_limit}")

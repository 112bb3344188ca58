"""Mixture of experts: a router picks top-k experts per token; the chosen (token, expert) pairs
are sorted by expert and run through grouped matmuls (no Python loop over experts, no padding)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archlang.kernels import dispatch
from archlang.kernels.dispatch import grouped_matmul
from archlang.kernels.reference import ACTIVATIONS

from .context import Context


class MoE(nn.Module):
    def __init__(self, dim: int, experts: int, top_k: int, *, expert_kind: str, expert_act: str, expert_hidden: int,
                 expert_bias: bool = False, shared_kind: str | None = None, shared_act: str | None = None,
                 shared_hidden: int | None = None, shared_bias: bool = False, shared_gate: bool = False,
                 router: str = "softmax",
                 normalize_top_k: bool = True, routed_scale: float = 1.0, aux_loss: float = 0.0,
                 z_loss: float = 0.0, capacity_factor: float | None = None):
        super().__init__()
        self.experts, self.top_k, self.router_kind = experts, top_k, router
        self.expert_glu, self.expert_act = expert_kind != "mlp", expert_act
        self.normalize_top_k, self.routed_scale = normalize_top_k, routed_scale
        self.aux_coef, self.z_coef, self.capacity_factor = aux_loss, z_loss, capacity_factor
        width = 2 * expert_hidden if self.expert_glu else expert_hidden
        self.router = nn.Parameter(torch.empty(experts, dim))
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

    def _experts(self, xs: torch.Tensor, expert_of: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The expert FFN on rows sorted by expert: two grouped matmuls."""
        up_name = "experts_gate_up" if self.expert_glu else "experts_up"
        h = grouped_matmul(xs, getattr(self, up_name), counts, expert_of)
        if self.expert_bias:
            h = h + getattr(self, f"{up_name}_bias")[expert_of]
        if self.expert_glu:
            gate, h = h.chunk(2, dim=-1)
            h = ACTIVATIONS[self.expert_act](gate) * h
        else:
            h = ACTIVATIONS[self.expert_act](h)
        h = grouped_matmul(h, self.experts_down, counts, expert_of)
        return h + self.experts_down_bias[expert_of] if self.expert_bias else h

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
        logits = F.linear(x, self.router).float()  # (N, E)
        probs, weights, index = dispatch.route(logits, self.top_k, sigmoid=self.router_kind == "sigmoid",
                                               normalize=self.normalize_top_k, scale=self.routed_scale)
        return logits, probs, weights, index  # weights, index: (N, k)

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, C)
        n, k, e = x.shape[0], self.top_k, self.experts
        logits, probs, weights, index = self.route(x)
        # Sort the N*k (token, expert) pairs by expert: each expert's tokens become one group.
        flat = index.reshape(-1)
        order = torch.argsort(flat, stable=True)
        expert_of = flat[order]
        token = order // k
        counts = torch.zeros(e, dtype=torch.long, device=x.device).index_add_(0, flat, torch.ones_like(flat))
        w = weights.reshape(-1)[order].to(x.dtype)
        if self.training and self.capacity_factor is not None:
            # tokens beyond an expert's capacity are dropped (they keep only the residual)
            capacity = math.ceil(self.capacity_factor * n * k / e)
            slot = torch.arange(n * k, device=x.device) - (torch.cumsum(counts, 0) - counts)[expert_of]
            w = w * (slot < capacity).to(w.dtype)
        rows = self._experts(x[token], expert_of, counts)  # (N*k, C)
        # weight in place: nothing saved for the backward reads the experts' output
        out = x.new_zeros(x.shape).index_add_(0, token, rows.mul_(w[:, None]))
        if self.has_shared:
            out = out + self._shared(x)
        if ctx is not None and self.training and (self.aux_coef or self.z_coef):
            ctx.aux_losses.append(self.losses(logits, probs, index))
        return out.reshape(shape)

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

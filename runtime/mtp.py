"""Multi-token prediction (DeepSeek-V3 §2.2): the module each MTP depth adds, and the helpers
the generated `mtp_features` and the training loss use. The module's Transformer layer is an
instance of one of the spec's block classes, built by the generated model."""

from __future__ import annotations

import torch
from torch import nn

from .context import Context
from .norm import LayerNorm, RMSNorm


def _norm(kind: str, dim: int, eps: float, bias: bool, unit_offset: bool) -> nn.Module:
    return RMSNorm(dim, eps=eps, unit_offset=unit_offset) if kind == "rmsnorm" else LayerNorm(dim, eps=eps, bias=bias)


class MTPModule(nn.Module):
    """Module k: h'_i = eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)]), then its layer; the
    caller applies `head_norm` and the model's shared output head.

    The embedding comes first in the concatenation, as in DeepSeek-V3's released weights and
    every implementation that loads them (the paper writes the two the other way round)."""

    def __init__(self, d_model: int, block: nn.Module, *, norm: str = "rmsnorm", eps: float = 1e-6,
                 bias: bool = False, unit_offset: bool = False):
        super().__init__()
        self.enorm = _norm(norm, d_model, eps, bias, unit_offset)
        self.hnorm = _norm(norm, d_model, eps, bias, unit_offset)
        self.eh_proj = nn.Linear(2 * d_model, d_model, bias=False)
        self.block = block
        self.head_norm = _norm(norm, d_model, eps, bias, unit_offset)

    def forward(self, h: torch.Tensor, embeds: torch.Tensor, ctx: Context) -> torch.Tensor:
        x = self.eh_proj(torch.cat([self.enorm(embeds), self.hnorm(h)], dim=-1))  # (B, T - k, C)
        return self.block(x, ctx)


def mtp_context(model: nn.Module, input_ids: torch.Tensor, k: int) -> Context:
    """The context of MTP depth k: positions 0 .. T-k-1, the positions whose token k ahead exists."""
    if input_ids.shape[1] <= k:
        raise ValueError(f"multi-token prediction depth {k} needs sequences longer than {k} tokens, "
                         f"got {input_ids.shape[1]}")
    return model.make_context(input_ids[:, k:])


def add_aux_losses(model: nn.Module, ctx: Context) -> None:
    """Add the auxiliary losses an MTP layer reported (MoE balancing) to the model's."""
    if ctx.aux_losses:
        extra = torch.stack(ctx.aux_losses).sum()
        model._aux_loss = extra if model._aux_loss is None else model._aux_loss + extra


def mtp_loss(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100
             ) -> torch.Tensor:
    """L_main + (loss_weight / D) * sum_k L_k + auxiliary losses, from one pass. `labels` are the
    next-token targets (labels[:, i] = t_{i+1}), so depth k's target at position i, t_{i+k+1}, is
    labels[:, i + k]; each L_k is the mean over positions whose target is not `ignore_index`."""
    from archlang.kernels.dispatch import linear_cross_entropy

    config = model.config
    weight = model.embed.weight if config["tie_embeddings"] else model.lm_head.weight
    softcap = config.get("logit_softcap")

    def cross_entropy(hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), weight, target.reshape(-1),
                                    ignore_index=ignore_index, softcap=softcap)

    if labels.shape != input_ids.shape:
        raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
    hidden, depths = model.mtp_features(input_ids)
    loss = cross_entropy(hidden, labels)
    mtp = sum(cross_entropy(module.head_norm(h), labels[:, k:]) for k, (module, h) in enumerate(zip(model.mtp, depths), 1))
    return loss + config["mtp"]["loss_weight"] / len(depths) * mtp + model.aux_loss

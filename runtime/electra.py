"""ELECTRA (Clark et al. 2020, "Pre-training Text Encoders as Discriminators Rather Than
Generators"): the discriminator's replaced-token detection head, its loss, the classifier with a
dense layer of its own, and the pre-training objective that trains a generator and a
discriminator together."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from archlang.kernels.reference import ACTIVATIONS


class RTDHead(nn.Module):
    """logit_t = w₂ · act(W₁ h_t + b₁) + b₂: one score per token, "replaced" when positive
    (Hugging Face's ElectraDiscriminatorPredictions)."""

    def __init__(self, dim: int, *, act: str):
        super().__init__()
        self.act = act
        self.dense_weight = nn.Parameter(torch.empty(dim, dim))
        self.dense_bias = nn.Parameter(torch.zeros(dim))
        self.prediction_weight = nn.Parameter(torch.empty(1, dim))
        self.prediction_bias = nn.Parameter(torch.zeros(1))
        for p in (self.dense_weight, self.prediction_weight):
            nn.init.normal_(p, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = ACTIVATIONS[self.act](F.linear(x, self.dense_weight, self.dense_bias))
        return F.linear(h, self.prediction_weight, self.prediction_bias).squeeze(-1)  # (B, T)


class MLPClassifier(nn.Module):
    """Label scores from the first token: dropout, dense, activation, dropout, linear (Hugging
    Face's ElectraClassificationHead; BERT's classifier reads a tanh pooler instead)."""

    def __init__(self, dim: int, labels: int, *, act: str, dropout: float = 0.0):
        super().__init__()
        self.act, self.p = act, dropout
        self.dense_weight = nn.Parameter(torch.empty(dim, dim))
        self.dense_bias = nn.Parameter(torch.zeros(dim))
        self.out_weight = nn.Parameter(torch.empty(labels, dim))
        self.out_bias = nn.Parameter(torch.zeros(labels))
        for p in (self.dense_weight, self.out_weight):
            nn.init.normal_(p, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(x[:, 0], self.p, self.training)  # (B, d)
        h = ACTIVATIONS[self.act](F.linear(h, self.dense_weight, self.dense_bias))
        return F.linear(F.dropout(h, self.p, self.training), self.out_weight, self.out_bias)  # (B, labels)


def rtd_loss(logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             ignore_index: int = -100) -> torch.Tensor:
    """Binary cross-entropy of the replaced-token logits (B, T) against `labels` (1: replaced,
    0: original), the mean over the tokens that are not padding (attention_mask 1), as Hugging
    Face's ElectraForPreTraining takes it; tokens labelled `ignore_index` do not count either."""
    if labels.shape != logits.shape:
        raise ValueError(f"replaced-token labels are one per token, {tuple(logits.shape)}, got {tuple(labels.shape)}")
    active = labels != ignore_index
    if attention_mask is not None:
        active = active & (attention_mask == 1)
    return F.binary_cross_entropy_with_logits(logits.float()[active], labels[active].float())


@dataclass
class ElectraLoss:
    """One ELECTRA step's losses and what the discriminator saw."""

    total: torch.Tensor  # mlm + rtd_weight · rtd: what to minimise
    mlm: torch.Tensor  # the generator's masked-LM cross-entropy over the masked tokens
    rtd: torch.Tensor  # the discriminator's replaced-token loss over every non-padding token
    corrupted: torch.Tensor  # (B, T) the discriminator's input: the masked tokens replaced by samples
    replaced: torch.Tensor  # (B, T) bool, the RTD labels: where a sample differs from the original


def electra_loss(generator: nn.Module, discriminator: nn.Module, input_ids: torch.Tensor, masked: torch.Tensor, *,
                 mask_token_id: int, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None, rtd_weight: float = 50.0, temperature: float = 1.0,
                 sampler: torch.Generator | None = None) -> ElectraLoss:
    """ELECTRA's pre-training objective on `input_ids` (B, T), `masked` (B, T, bool) choosing the
    positions to corrupt. The generator (a `head = mlm(...)` encoder) reads the tokens with those
    positions set to `mask_token_id` and is trained on them by masked-LM; a token is sampled from
    its softmax (over logits / temperature, drawn with `sampler`) at each masked position; the
    discriminator (a `head = rtd(...)` encoder) reads the result and learns which tokens were
    replaced: a sample equal to the original counts as original. The sampling is not
    differentiable, so the generator learns from its MLM loss alone (as in the paper);
    total = mlm + rtd_weight · rtd (λ = 50 in the paper). The models' MoE auxiliary losses, when
    training, are added to the total."""
    for model, kind, role in ((generator, "mlm", "generator"), (discriminator, "rtd", "discriminator")):
        head = getattr(model, "config", {}).get("head") or {}
        if head.get("kind") != kind:
            raise ValueError(f"the {role} must be an encoder with head = {kind}(...), "
                             f"not {head.get('kind', 'no head')}")
    if masked.shape != input_ids.shape or masked.dtype != torch.bool:
        raise ValueError(f"masked must be a bool tensor of the shape of input_ids, {tuple(input_ids.shape)}")
    inputs = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
    logits = generator(input_ids.masked_fill(masked, mask_token_id), **inputs)  # (B, T, vocab)
    mlm = F.cross_entropy(logits[masked].float(), input_ids[masked])
    gen_aux = generator.aux_loss
    with torch.no_grad():
        probs = torch.softmax(logits[masked].float() / temperature, dim=-1)  # (masked tokens, vocab)
        sampled = torch.multinomial(probs, 1, generator=sampler).squeeze(-1)
    corrupted = input_ids.masked_scatter(masked, sampled)
    replaced = corrupted != input_ids
    rtd = rtd_loss(discriminator(corrupted, **inputs), replaced.long(), attention_mask)
    total = mlm + rtd_weight * rtd + gen_aux + discriminator.aux_loss
    return ElectraLoss(total, mlm, rtd, corrupted, replaced)

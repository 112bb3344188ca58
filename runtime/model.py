"""The base class of every generated model: context set-up, weight initialisation, loading
unfused checkpoints into fused projections, auxiliary losses and generation."""

from __future__ import annotations

import re

import torch
from torch import nn

from .context import Cache, Context


class ArchModel(nn.Module):
    config: dict = {}
    fusions: dict[str, tuple[tuple[str, int], ...]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.aux_loss: torch.Tensor | None = None

    # ------------------------------------------------------------------ forward helpers
    def make_context(self, input_ids: torch.Tensor, *, cache: Cache | None = None, stack: str = "layers",
                     attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                     memory: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None) -> Context:
        t = input_ids.shape[1]
        offset = cache.offset if cache is not None else 0
        if offset + t > self.config["context"]:
            raise ValueError(f"sequence of {offset + t} tokens exceeds the model's context of {self.config['context']}")
        positions = torch.arange(offset, offset + t, device=input_ids.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        return Context(positions=positions, cache=cache, attention_mask=attention_mask, token_type_ids=token_type_ids,
                       memory=memory, memory_mask=memory_mask, stack=stack)

    def finish(self, ctx: Context) -> None:
        if ctx.cache is not None:
            ctx.cache.offset += len(ctx.positions)
        self.aux_loss = torch.stack(ctx.aux_losses).sum() if ctx.aux_losses else None

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """GPT-2 style: normal(0, std) for matrices, zeros for biases, ones for norms."""
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.dim() >= 2:
                nn.init.normal_(p, std=std)
            elif leaf in ("bias",) or leaf.endswith("_bias"):
                nn.init.zeros_(p)
        for module in self.modules():
            if hasattr(module, "unit_offset") and getattr(module, "unit_offset"):
                nn.init.zeros_(module.weight)

    def fuse_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rewrite unfused weights (q_proj, k_proj, v_proj; gate_proj, up_proj) into this
        model's fused projections, by stacking them along the output dimension."""
        out = dict(state)
        own = set(self.state_dict())
        for fused, parts in self.fusions.items():
            pattern = re.compile(rf"^(.*\.){re.escape(parts[0][0])}\.(weight|bias)$")
            for key in list(out):
                m = pattern.match(key)
                if not m:
                    continue
                prefix, kind = m.groups()
                names = [f"{prefix}{p}.{kind}" for p, _ in parts]
                if f"{prefix}{fused}.{kind}" in own and all(n in out for n in names):
                    out[f"{prefix}{fused}.{kind}"] = torch.cat([out.pop(n) for n in names], dim=0)
        return out

    def load_unfused_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True):
        return self.load_state_dict(self.fuse_state_dict(state), strict=strict)

    def unfuse_state_dict(self) -> dict[str, torch.Tensor]:
        """This model's weights with fused projections split back into their parts."""
        out = {}
        for key, value in self.state_dict().items():
            prefix, _, rest = key.rpartition(".")
            owner, _, leaf = prefix.rpartition(".")
            if leaf in self.fusions:
                sizes = [w for _, w in self.fusions[leaf]]
                for (part, _), chunk in zip(self.fusions[leaf], value.split(sizes, dim=0)):
                    out[f"{owner}.{part}.{rest}" if owner else f"{part}.{rest}"] = chunk.clone()
            else:
                out[key] = value
        return out

    # ------------------------------------------------------------------ training
    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100) -> torch.Tensor:
        """Mean next-token cross-entropy of `labels` (B, T) given `input_ids` (B, T), through the
        fused LM head + cross-entropy: the (tokens x vocab) logits are never all in memory on
        the kernel path. MoE auxiliary losses are added when training."""
        from archlang.kernels.dispatch import linear_cross_entropy

        hidden = self.features(input_ids)
        weight = self.embed.weight if self.config["tie_embeddings"] else self.lm_head.weight
        loss = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1),
                                    ignore_index=ignore_index, softcap=self.config.get("logit_softcap"))
        return loss + self.aux_loss if self.aux_loss is not None else loss

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
                 use_cache: bool = True, generator: torch.Generator | None = None,
                 decoder_start_token_id: int = 0) -> torch.Tensor:
        """Greedy (temperature 0) or sampled continuation. Returns prompt + new tokens (or, for
        encoder-decoder models, the decoder tokens including the start token)."""
        from .generate import generate

        return generate(self, input_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        eos_token_id=eos_token_id, use_cache=use_cache, generator=generator,
                        decoder_start_token_id=decoder_start_token_id)

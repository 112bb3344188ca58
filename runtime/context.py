"""Per-forward state handed to every layer: positions, constant tables, the inference cache,
encoder memory, and the auxiliary losses layers report (MoE load balancing, z-loss)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch


class Cache:
    """Inference state for every layer of one model, keyed by "stack.layer".

    Attention layers keep keys, values and their absolute positions (sliding-window layers keep
    only the last `window`); MLA keeps the compressed latent; Mamba and linear attention keep
    their recurrent state. `offset` is the number of tokens already processed.
    """

    def __init__(self) -> None:
        self.layers: dict[str, dict[str, torch.Tensor]] = {}
        self.offset = 0

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        return self.layers.get(key)

    def put(self, key: str, **state: torch.Tensor) -> None:
        self.layers[key] = state

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self.layers.values() for t in s.values())

    def scoped(self, scope: str) -> "ScopedCache":
        return ScopedCache(self, scope)


class ScopedCache:
    """A view of a cache whose keys live under `scope`: the uses of one shared layer keep
    their state apart (the layer's own key is the same at every use)."""

    def __init__(self, base: Cache, scope: str) -> None:
        self.base, self.scope = base, scope

    @property
    def offset(self) -> int:
        return self.base.offset

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        return self.base.get(f"{self.scope}/{key}")

    def put(self, key: str, **state: torch.Tensor) -> None:
        self.base.put(f"{self.scope}/{key}", **state)


@dataclass
class Context:
    positions: torch.Tensor  # (T,) absolute positions of the tokens in this forward
    cache: Cache | None = None
    tables: dict[str, Any] = field(default_factory=dict)  # constant tables, e.g. "rope_table" → (cos, sin)
    memory: torch.Tensor | None = None  # encoder output, for cross-attention
    memory_mask: torch.Tensor | None = None  # (B, S) 1 for real encoder tokens
    attention_mask: torch.Tensor | None = None  # (B, S_total) 1 for real tokens, 0 for padding
    token_type_ids: torch.Tensor | None = None
    stack: str = "layers"
    aux_losses: list[torch.Tensor] = field(default_factory=list)
    layer: int | None = None  # the index in its stack of the shared layer being run (per-use adapters read it)

    def for_layer(self, stack: str, index: int) -> "Context":
        """The context of one use of a shared layer: its cache entries are its own, and `layer`
        says which use it is; everything else (positions, tables, the auxiliary losses list) is
        this context's."""
        return replace(self, cache=self.cache.scoped(f"{stack}.{index}") if self.cache is not None else None,
                       layer=index)

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

    def snapshot(self) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
        """The cache as it is now, to roll back to. Cheap: layers replace their entries, never
        write into them, so the snapshot holds references, not copies."""
        return dict(self.layers), self.offset

    def rollback(self, snapshot: tuple[dict[str, dict[str, torch.Tensor]], int], keep: int) -> bool:
        """Forget all but the first `keep` tokens fed since `snapshot` (rejected draft tokens).

        An attention entry that grew by exactly those tokens (nothing evicted from a window) is
        cut back in place. Recurrent states (Mamba, linear attention) cannot be cut; nor can a
        window that evicted entries. Then the whole cache returns to the snapshot and False says
        that the caller must feed the kept tokens again."""
        layers, offset = snapshot
        fed = self.offset - offset
        if not 0 <= keep <= fed:
            raise ValueError(f"cannot keep {keep} of the {fed} tokens fed since the snapshot")
        cut: dict[str, dict[str, torch.Tensor]] = {}
        for key, entry in self.layers.items():
            before = layers.get(key)
            if before is not None and entry is before:
                cut[key] = entry  # untouched since the snapshot
                continue
            pos = entry.get("pos")
            had = len(before["pos"]) if before is not None and "pos" in before else 0
            if pos is None or (before is not None and "pos" not in before) or len(pos) != had + fed or any(
                    name != "pos" and t.shape[-2] != len(pos) for name, t in entry.items()):
                self.layers, self.offset = dict(layers), offset
                return False
            n = had + keep
            cut[key] = {name: (t[:n] if name == "pos" else t[..., :n, :]) for name, t in entry.items()}
        self.layers, self.offset = cut, offset + keep
        return True

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
    input_ids: torch.Tensor | None = None  # (B, T) this forward's token ids; None for inputs_embeds
    stack: str = "layers"
    aux_losses: list[torch.Tensor] = field(default_factory=list)
    layer: int | None = None  # the index in its stack of the shared layer being run (per-use adapters read it)
    # Values layers pass beside the stream (Zamba2: the stack's input, and a hybrid block's output
    # for the next layer); one dict for the whole forward, which for_layer's copies share.
    carry: dict[str, torch.Tensor] = field(default_factory=dict)

    def for_layer(self, stack: str, index: int) -> "Context":
        """The context of one use of a shared layer: its cache entries are its own, and `layer`
        says which use it is; everything else (positions, tables, the auxiliary losses list) is
        this context's."""
        return replace(self, cache=self.cache.scoped(f"{stack}.{index}") if self.cache is not None else None,
                       layer=index)

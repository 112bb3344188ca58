"""Left-padded batches in generation: checking the mask, and deciding whether the rows can share
one forward.

A decoder batch of prompts of different lengths is padded on the left, so every row's next
token sits in the last column. The model sees the padding through `attention_mask`: attention
masks the padded keys, and recurrent mixers neither decay nor write their state at a padded
token (each says so with `left_padding_exact`). The rows then share positions 0..T-1, so a row
with p pads has its real tokens at positions p, p+1, ...: the result is that of the unpadded
row exactly when nothing depends on absolute positions (RoPE, ALiBi, relative biases, windows
and recurrences only see differences). Absolute position embeddings, Llama 4's chunks, sink and
global tokens, temperature tuning and length-dependent RoPE scaling do; so does a mixer that does
not declare how it treats padding. Such a model decodes each row in a forward of its own,
unpadded: exact too, with one forward per row and step."""

from __future__ import annotations

import torch
from torch import nn

from archlang.spec.errors import ArchError


def checked_mask(attention_mask: torch.Tensor | None, input_ids: torch.Tensor, what: str = "prompts"
                 ) -> torch.Tensor | None:
    """The (B, T) 0/1 mask as a long tensor, or None when it masks nothing. Refused: another shape
    than the tokens', values other than 0 and 1, a row with no token."""
    if attention_mask is None:
        return None
    if attention_mask.shape != input_ids.shape:
        raise ArchError(f"attention_mask has shape {tuple(attention_mask.shape)}, the {what} "
                        f"{tuple(input_ids.shape)}", kind="usage", hint="give one 0/1 entry per token")
    mask = attention_mask.long()
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ArchError("attention_mask holds values other than 0 and 1", kind="usage",
                        hint="mark real tokens with 1 and padding with 0")
    if bool((mask.sum(dim=1) == 0).any()):
        raise ArchError("a row of attention_mask has no real token", kind="usage",
                        hint="every row needs at least one token")
    return None if bool(mask.all()) else mask


def left_padding(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor | None:
    """`checked_mask`, with the padding on the left only (a decoder's prompts)."""
    mask = checked_mask(attention_mask, input_ids)
    if mask is not None and bool((mask[:, 1:] < mask[:, :-1]).any()):  # a 0 after a 1
        raise ArchError("generation takes prompts padded on the left: a row of attention_mask has padding "
                        "after a real token", kind="usage",
                        hint="pad on the left (tokenizer.padding_side = 'left'), so each row ends with its "
                             "last real token")
    return mask


def rows_must_run_alone(model: nn.Module) -> str | None:
    """Why the rows of a padded batch cannot share a forward exactly (a module and its reason), or
    None when they can."""
    for name, module in model.named_modules():
        exact = getattr(module, "left_padding_exact", None)
        if callable(exact):
            exact = exact()
        if exact is None and hasattr(module, "cache_key"):
            exact = False  # a mixer that keeps state but does not say how it treats padding
        if exact is False:
            return f"{name or 'the model'} ({type(module).__name__})"
    return None

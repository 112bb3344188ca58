"""The base class of every generated model: context set-up, weight initialisation, loading
unfused checkpoints into fused projections, auxiliary losses and generation."""

from __future__ import annotations

import re

import torch
from torch import nn

from .context import Cache, Context


def layer_stack(layout: list[type[nn.Module]], shared: set[type[nn.Module]]) -> nn.ModuleList:
    """The layers of a stack, one per entry of `layout`, except that every use of a class in
    `shared` is the module built at its first use: one set of weights, in the state dict under
    each index it holds."""
    first: dict[type[nn.Module], nn.Module] = {}
    layers = []
    for i, block in enumerate(layout):
        if block in shared:
            layers.append(first.setdefault(block, block(i)))
        else:
            layers.append(block(i))
    return nn.ModuleList(layers)


class ArchModel(nn.Module):
    config: dict = {}
    fusions: dict[str, tuple[tuple[str, int], ...]] = {}

    def __init__(self) -> None:
        super().__init__()
        self._aux_loss: torch.Tensor | None = None

    @property
    def aux_loss(self) -> torch.Tensor:
        """The auxiliary losses (MoE load balancing, z-loss) of the last forward, weighted and
        summed; a zero tensor where there were none, so `loss + model.aux_loss` always works."""
        if self._aux_loss is not None:
            return self._aux_loss
        p = next(self.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None, dtype=p.dtype if p is not None else None)

    # ------------------------------------------------------------------ forward helpers
    def make_context(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None = None, *,
                     positions: torch.Tensor | None = None, cache: Cache | None = None, stack: str = "layers",
                     attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                     memory: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None) -> Context:
        """The context of one forward. The tokens come as ids (B, T) or as embeddings (B, T, C);
        their positions follow the cache (0.. without one) unless `positions` (T,) gives them."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give either input_ids or inputs_embeds")
        tokens = input_ids if input_ids is not None else inputs_embeds
        width = self.config.get("embedding_dim", self.config["d_model"])
        if inputs_embeds is not None and (inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != width):
            raise ValueError(f"inputs_embeds must be (batch, tokens, {width}), "
                             f"got {tuple(inputs_embeds.shape)}")
        t = tokens.shape[1]
        offset = cache.offset if cache is not None else 0
        end = offset + t
        if positions is None:
            positions = torch.arange(offset, end, device=tokens.device)
        elif positions.shape != (t,) or positions.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"positions must be {t} integers, one per token, got {tuple(positions.shape)} {positions.dtype}")
        elif t:
            end = max(end, int(positions.max()) + 1)  # (read only when given: it syncs with the device)
        if end > self.config["context"]:
            raise ValueError(f"sequence of {end} tokens exceeds the model's context of {self.config['context']}")
        if token_type_ids is None:
            token_type_ids = torch.zeros(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        return Context(positions=positions, cache=cache, attention_mask=attention_mask, token_type_ids=token_type_ids,
                       memory=memory, memory_mask=memory_mask, stack=stack, input_ids=input_ids)

    def finish(self, ctx: Context) -> None:
        if ctx.cache is not None:
            ctx.cache.offset += len(ctx.positions)
        self._aux_loss = torch.stack(ctx.aux_losses).sum() if ctx.aux_losses else None

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
        return self.load_state_dict(self._with_aliases(self.fuse_state_dict(state)), strict=strict)

    def _with_aliases(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A weight of a shared block has a name per use; a checkpoint holds it under one: give
        it every name (the same tensor loads once)."""
        names: dict[int, list[str]] = {}
        for name, tensor in self.state_dict(keep_vars=True).items():
            names.setdefault(id(tensor), []).append(name)  # the same Parameter object under each name
        out = dict(state)
        for group in names.values():
            given = next((n for n in group if n in state), None)
            if given is not None:
                for n in group:
                    out.setdefault(n, state[given])
        return out

    def repeated_modules(self) -> list[str]:
        """The names under which a module appears again (the later uses of a shared block)."""
        seen: set[int] = set()
        repeats = []
        for name, module in self.named_modules(remove_duplicate=False):
            if id(module) in seen and name:
                repeats.append(name)
            seen.add(id(module))
        return repeats

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
    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100,
             **inputs) -> torch.Tensor:
        """The training loss of this model's family, plus the MoE auxiliary losses when training.

        - decoder: mean next-token cross-entropy of `labels` (B, T), already shifted by the
          caller, given `input_ids` (B, T), through the fused LM head + cross-entropy: the
          (tokens x vocab) logits are never all in memory on the kernel path.
        - encoder: masked-LM cross-entropy of `labels` (B, T) at the same positions as
          `input_ids` (the masked tokens; -100 elsewhere), with the final hidden states
          projected on the token embeddings (the spec has no MLM transform, so the head is the
          tied embedding matrix). `attention_mask` and `token_type_ids` may be given.
          With `head = rtd(...)`: binary cross-entropy of `labels` (B, T), 1 where a token was
          replaced, over the tokens that are not padding.
        - encoder_decoder: sequence-to-sequence cross-entropy as in Hugging Face's T5:
          `input_ids` (B, S) are the encoder's tokens, `labels` (B, T) the decoder's targets; the
          decoder reads the labels shifted right behind `decoder_start_token_id` (default 0),
          with -100 read as `pad_token_id` (default 0), unless `decoder_input_ids` are given.
          `encoder_mask` may be given.
        Positions whose label is `ignore_index` do not count."""
        from archlang.kernels.dispatch import linear_cross_entropy

        family = self.config["family"]
        if family == "encoder_decoder":
            loss = self._seq2seq_loss(input_ids, labels, ignore_index=ignore_index, **inputs)
        else:
            allowed = {"attention_mask", "token_type_ids"} if family == "encoder" else set()
            unknown = sorted(set(inputs) - allowed)
            if unknown:
                raise TypeError(f"loss() of a {family} model takes no argument {', '.join(unknown)}")
            if self.config.get("mtp"):  # the next-token loss and the MTP modules', from one pass
                from .mtp import mtp_loss

                return mtp_loss(self, input_ids, labels, ignore_index=ignore_index)
            head = self.config.get("head")
            if family == "encoder" and head is not None:
                if head["kind"] == "rtd":  # ELECTRA's discriminator: over the tokens that are not padding
                    from .electra import rtd_loss

                    return rtd_loss(self(input_ids, **inputs), labels, inputs.get("attention_mask"),
                                    ignore_index=ignore_index) + self.aux_loss
                return self._head_loss(head, self(input_ids, **inputs), labels, ignore_index) + self.aux_loss
            if family == "encoder":
                out = self(input_ids, **inputs)
                hidden = out[0] if isinstance(out, tuple) else out
                weight = self.embed.weight
            else:
                hidden = self.features(input_ids)
                weight = self.embed.weight if self.config["tie_embeddings"] else self.lm_head.weight
            loss = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1),
                                        ignore_index=ignore_index, softcap=self.config.get("logit_softcap"))
        return loss + self.aux_loss

    @staticmethod
    def _head_loss(head: dict, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
        """An encoder head's loss, as Hugging Face's heads take it: masked-LM cross-entropy over the
        labelled positions; a classifier's cross-entropy over labels (B,), or with one label the
        mean squared error (regression)."""
        if head["kind"] == "classifier" and head["labels"] == 1:
            return nn.functional.mse_loss(logits.float().squeeze(-1), labels.float())
        if head["kind"] == "classifier" and labels.shape != logits.shape[:1]:
            raise ValueError(f"a classifier's labels are one per sequence, {tuple(logits.shape[:1])}, "
                             f"got {tuple(labels.shape)}")
        return nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=ignore_index)

    def _seq2seq_loss(self, input_ids: torch.Tensor, labels: torch.Tensor, *, ignore_index: int,
                      decoder_input_ids: torch.Tensor | None = None, decoder_start_token_id: int = 0,
                      pad_token_id: int = 0, encoder_mask: torch.Tensor | None = None) -> torch.Tensor:
        if decoder_input_ids is None:
            decoder_input_ids = labels.new_full(labels.shape, decoder_start_token_id)
            decoder_input_ids[:, 1:] = labels[:, :-1]
            decoder_input_ids = decoder_input_ids.masked_fill(decoder_input_ids == ignore_index, pad_token_id)
        logits = self(decoder_input_ids, input_ids, encoder_mask=encoder_mask)  # (B, T, vocab)
        return nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=ignore_index)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int | None = None, *, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, eos_token_id: int | list[int] | None = None,
                 pad_token_id: int | None = None, attention_mask: torch.Tensor | None = None,
                 use_cache: bool = True, generator: torch.Generator | None = None,
                 decoder_start_token_id: int = 0, max_length: int | None = None, streamer=None,
                 draft=None, draft_tokens: int = 4, stats: dict | None = None) -> torch.Tensor:
        """Greedy (temperature 0) or sampled continuation. Returns prompt + new tokens (or, for
        encoder-decoder models, the decoder tokens including the start token). Generation stops,
        with a warning, when the sequence reaches the model's context; a prompt already at the
        context is refused. Encoder models cannot generate.

        - `max_new_tokens` and/or `max_length` (tokens in all) bound the length.
        - `eos_token_id`, one id or several: a row stops at any of them, then repeats
          `pad_token_id` (default: the first stop id).
        - `attention_mask` (B, T): prompts of different lengths, padded on the left (for an
          encoder-decoder model: the encoder input's padding, anywhere). Padding never changes a
          row's tokens: each row equals its unpadded run (runtime/padding.py).
        - `streamer(tokens)` is called with each step's new tokens (B,) as they are made; `stream`
          gives them as an iterator instead.
        - `draft`: speculative decoding (one sequence), with another compiled model of the same
          vocabulary, `draft = k` (this model's first k layers) or `draft = "mtp"` (its
          multi-token prediction modules, at most one proposal per depth); an encoder-decoder
          model drafts with another encoder-decoder model. `draft_tokens` proposals per step. Greedy output equals plain greedy decoding; sampling follows this model's
          distribution exactly. A dict passed as `stats` receives the acceptance rate and the
          tokens made per forward of this model."""
        from .generate import generate

        return generate(self, input_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        eos_token_id=eos_token_id, pad_token_id=pad_token_id, attention_mask=attention_mask,
                        use_cache=use_cache, generator=generator, decoder_start_token_id=decoder_start_token_id,
                        max_length=max_length, streamer=streamer, draft=draft, draft_tokens=draft_tokens,
                        stats=stats)

    def stream(self, input_ids: torch.Tensor, max_new_tokens: int | None = None, **options):
        """The tokens `generate` would make, as an iterator of (B,) tensors, one per step (several
        steps per forward with a draft); `.start` holds the prompt they follow. Takes generate's
        options but `streamer`. Every check runs at the call, before any forward."""
        from .generate import stream

        return stream(self, input_ids, max_new_tokens, **options)

"""The Byte Latent Transformer (Pagnoni et al. 2024, "Byte Latent Transformer: Patches Scale Better
Than Tokens"), as Hugging Face's `BltForCausalLM` computes it.

Bytes are embedded (a byte table plus hashed n-gram tables), a small local encoder runs over the
bytes, its states are pooled into patches (max over each patch's bytes, then cross-attention from
the patch to its bytes), a large global transformer runs over the patches, and a local decoder
reads, for each byte, the global state of the patch that ends before it (cross-attention) and
predicts the next byte. Patch boundaries come from a small byte-level entropy model: a new patch
starts where the entropy of its next-byte prediction exceeds a threshold; or every byte is a patch.

Every stack is a pre-norm transformer (RMSNorm, grouped-query attention with RoPE on interleaved
pairs, SwiGLU); the local stacks and the entropy model attend within a sliding window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .norm import RMSNorm

# The primes of the n-gram hashes, one per hash function (cycled when there are more functions).
HASH_PRIMES = (1000000007, 5915587277, 1500450271, 3267000013, 5754853343, 4093082899, 9576890767,
               3628273133, 2860486313, 5463458053, 3367900313)


@dataclass(frozen=True)
class StackSpec:
    """One transformer stack: width, depth and the layer's hyper-parameters."""

    dim: int
    layers: int
    heads: int
    kv_heads: int
    hidden: int  # SwiGLU width
    theta: float
    eps: float
    window: int | None = None  # keys within the last `window` positions (the query's own included)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


# ---------------------------------------------------------------------------- n-gram hashes
def ngram_hash_ids(tokens: torch.Tensor, n: int, prime: int, buckets: int) -> torch.Tensor:
    """The bucket of the n bytes ending at each position (zeros before the start): the polynomial
    sum(b_i * prime**i) in wrapping int64 arithmetic, then modulo `buckets` (non-negative)."""
    padded = torch.cat([tokens.new_zeros(tokens.shape[0], n - 1), tokens.long()], dim=1)
    windows = padded.unfold(1, n, 1)  # (B, T, n)
    powers = torch.tensor(prime, dtype=torch.int64, device=tokens.device) ** torch.arange(n, device=tokens.device)
    return torch.sum(windows * powers, dim=-1) % buckets  # (B, T)


class NgramHashEmbedding(nn.Module):
    """Byte embeddings plus one hashed table per (hash function, n): all tables stacked in one
    `hash_embed` of functions * len(ngrams) * buckets rows."""

    def __init__(self, vocab: int, dim: int, ngrams: tuple[int, ...], buckets: int, functions: int):
        super().__init__()
        self.ngrams, self.buckets, self.functions = tuple(ngrams), buckets, functions
        self.embed = nn.Embedding(vocab, dim)
        self.hash_embed = nn.Embedding(functions * len(self.ngrams) * buckets, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # (B, T, C)
        table = 0
        for f in range(self.functions):
            prime = HASH_PRIMES[f % len(HASH_PRIMES)]
            for n in self.ngrams:
                x = x + self.hash_embed(ngram_hash_ids(tokens, n, prime, self.buckets) + table * self.buckets)
                table += 1
        return x


# ---------------------------------------------------------------------------- patching
def entropy_patch_starts(entropies: torch.Tensor, threshold: float) -> list[list[int]]:
    """Per sequence, the first byte of each patch: bytes 0 and 1 always start one; byte t >= 2
    starts one where the entropy of its prediction (at position t - 1) exceeds the threshold.
    A start may fall at T (the last prediction is uncertain): that patch is empty."""
    return [[0, 1] + (torch.nonzero(row[1:] > threshold).flatten() + 2).tolist() for row in entropies]


def split_long_patches(lengths: list[int], max_length: int) -> list[int]:
    """Patches longer than `max_length` become runs of `max_length` and a remainder; empty ones
    (and the reference code's negative padding) go."""
    out = []
    for n in lengths:
        if n <= 0:
            continue
        out.extend([max_length] * (n // max_length) + ([n % max_length] if n % max_length else []))
    return out


def patch_ids(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, P) patch lengths → (B, T) the patch of each byte."""
    starts = torch.cat([lengths.new_zeros(lengths.shape[0], 1), lengths.cumsum(-1)[:, :-1]], dim=-1)
    return (starts.unsqueeze(1) <= torch.arange(T, device=lengths.device)[None, :, None]).sum(-1) - 1


# ---------------------------------------------------------------------------- layers
def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE on interleaved pairs (x[2i], x[2i+1]), as the BLT reference code rotates."""
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float, device=x.device) / hd))
    freqs = positions.float()[:, None] * inv_freq  # (T, hd/2)
    emb = torch.repeat_interleave(freqs, 2, dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    rotated = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)
    return x * cos + rotated * sin


def _attend(q, k, v, mask: torch.Tensor) -> torch.Tensor:
    """q (B, H, Tq, hd), k/v (B, Hkv, Tk, hd), boolean mask (B or 1, 1, Tq, Tk) → (B, Tq, H * hd).
    A query that may see no key (an empty patch) takes the plain mean of the values, as an
    additive mask of the dtype's minimum makes Hugging Face's softmax uniform there."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, torch.finfo(q.dtype).min)
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + bias
    out = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v
    return out.transpose(1, 2).flatten(2)


class BltLayer(nn.Module):
    """x + attn(norm(x)), then + swiglu(norm(x))."""

    def __init__(self, s: StackSpec):
        super().__init__()
        self.s = s
        self.attn_norm = RMSNorm(s.dim, eps=s.eps)
        self.q_proj = nn.Linear(s.dim, s.heads * s.head_dim, bias=False)
        self.k_proj = nn.Linear(s.dim, s.kv_heads * s.head_dim, bias=False)
        self.v_proj = nn.Linear(s.dim, s.kv_heads * s.head_dim, bias=False)
        self.o_proj = nn.Linear(s.heads * s.head_dim, s.dim, bias=False)
        self.ffn_norm = RMSNorm(s.dim, eps=s.eps)
        self.gate_proj = nn.Linear(s.dim, s.hidden, bias=False)
        self.up_proj = nn.Linear(s.dim, s.hidden, bias=False)
        self.down_proj = nn.Linear(s.hidden, s.dim, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        s = self.s
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, T, s.heads, s.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(h).view(B, T, s.kv_heads, s.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(B, T, s.kv_heads, s.head_dim).transpose(1, 2)
        q, k = _rope(q, positions, s.theta), _rope(k, positions, s.theta)
        x = x + self.o_proj(_attend(q, k, v, mask))
        h = self.ffn_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class PatchCrossAttention(nn.Module):
    """Cross-attention between bytes and patches: queries and keys/values each RMS-normed first
    (one norm for keys and values), no positions; the queries are added back, in the module and
    again by the caller, as the reference code does (q + (q + o))."""

    def __init__(self, dim: int, heads: int, kv_heads: int, eps: float):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q_norm = RMSNorm(dim, eps=eps)
        self.kv_norm = RMSNorm(dim, eps=eps)
        self.q_proj = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, Tq, _ = x.shape
        q = self.q_proj(self.q_norm(x)).view(B, Tq, self.heads, self.head_dim).transpose(1, 2)
        m = self.kv_norm(memory)
        k = self.k_proj(m).view(B, -1, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(m).view(B, -1, self.kv_heads, self.head_dim).transpose(1, 2)
        return x + (x + self.o_proj(_attend(q, k, v, mask)))


def _causal_mask(T: int, window: int | None, device) -> torch.Tensor:
    i = torch.arange(T, device=device)
    mask = i[None, :] <= i[:, None]
    if window is not None:
        mask &= i[:, None] - i[None, :] < window
    return mask[None, None]  # (1, 1, T, T)


class EntropyModel(nn.Module):
    """A small byte-level language model whose next-byte entropies place the patch boundaries."""

    def __init__(self, vocab: int, s: StackSpec):
        super().__init__()
        self.s = s
        self.embed = nn.Embedding(vocab, s.dim)
        self.layers = nn.ModuleList(BltLayer(s) for _ in range(s.layers))
        self.final_norm = RMSNorm(s.dim, eps=s.eps)
        self.lm_head = nn.Linear(s.dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) bytes → (B, T) entropy (nats) of each next-byte prediction."""
        x = self.embed(tokens)
        T = tokens.shape[1]
        positions, mask = torch.arange(T, device=tokens.device), _causal_mask(T, self.s.window, tokens.device)
        for layer in self.layers:
            x = layer(x, positions, mask)
        logits = self.lm_head(self.final_norm(x)).float()
        return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)


class ByteLatentTransformer(nn.Module):
    """Bytes (B, T) → next-byte logits (B, T, vocab).

    `patching` is "entropy" (an entropy model and `threshold`) or "bytes" (every byte a patch).
    `encoder_cross_all`: a pooling cross-attention after every encoder layer (each one re-pools;
    the last decides) rather than after the last only; `decoder_cross_all`: a cross-attention
    before every decoder layer rather than before the first only."""

    def __init__(self, vocab: int, encoder: StackSpec, global_: StackSpec, decoder: StackSpec,
                 entropy: StackSpec | None, *, ngrams: tuple[int, ...], hash_buckets: int, hash_functions: int,
                 cross_k: int, encoder_cross_all: bool, decoder_cross_all: bool, threshold: float | None = None,
                 max_patch: int | None = None, final_eps: float | None = None):
        super().__init__()
        if encoder.dim != decoder.dim:
            raise ValueError("the local decoder reads the local encoder's byte states: their widths must agree")
        self.k, self.threshold, self.max_patch = cross_k, threshold, max_patch
        self.enc_s, self.glob_s, self.dec_s = encoder, global_, decoder
        self.embed = NgramHashEmbedding(vocab, encoder.dim, ngrams, hash_buckets, hash_functions)
        self.entropy = EntropyModel(vocab, entropy) if entropy is not None else None
        self.encoder = nn.ModuleList(BltLayer(encoder) for _ in range(encoder.layers))
        self.encoder_patch_proj = nn.Linear(encoder.dim, encoder.dim * cross_k, bias=False)
        self.encoder_cross = nn.ModuleList(
            PatchCrossAttention(encoder.dim, encoder.heads, encoder.kv_heads, encoder.eps)
            for _ in range(encoder.layers if encoder_cross_all else 1))
        width = encoder.dim * cross_k
        self.global_in_proj = nn.Linear(width, global_.dim, bias=False) if width != global_.dim else None
        self.global_layers = nn.ModuleList(BltLayer(global_) for _ in range(global_.layers))
        self.decoder_patch_proj = nn.Linear(global_.dim, decoder.dim * cross_k, bias=False)
        self.decoder_cross = nn.ModuleList(
            PatchCrossAttention(decoder.dim, decoder.heads, decoder.kv_heads, decoder.eps)
            for _ in range(decoder.layers if decoder_cross_all else 1))
        self.decoder = nn.ModuleList(BltLayer(decoder) for _ in range(decoder.layers))
        self.final_norm = RMSNorm(decoder.dim, eps=decoder.eps if final_eps is None else final_eps)
        self.lm_head = nn.Linear(decoder.dim, vocab, bias=False)

    @torch.no_grad()
    def patch_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) bytes → (B, P) patch lengths. Without an entropy model every byte is a patch, and
        one empty patch follows (the reference code's T + 1 patches).

        A row with fewer patches than the batch's most is padded as the reference code pads it:
        its last patch one byte longer, then empty patches, the very last of length -1. Only the
        bytes' patch assignment reads these, and it is the same as with exact lengths except that
        the last byte reads the global state of its own patch's predecessor, as in a full row.
        Splitting long patches (`max_patch`) drops the empty and negative ones and pads with zeros."""
        B, T = tokens.shape
        if self.entropy is None:
            rows = [[1] * (T + 1)] * B
        else:
            starts = entropy_patch_starts(self.entropy(tokens), self.threshold)
            P = max(len(s) for s in starts)
            rows = []
            for s in starts:
                padded = s + [T + 1] * (P - len(s))
                rows.append([b - a for a, b in zip(padded, padded[1:])] + [T - padded[-1]])
        if self.max_patch is not None:
            rows = [split_long_patches(r, self.max_patch) for r in rows]
        P = max(len(r) for r in rows)
        return torch.tensor([r + [0] * (P - len(r)) for r in rows], dtype=torch.long, device=tokens.device)

    def forward(self, tokens: torch.Tensor, patch_lengths: torch.Tensor | None = None) -> torch.Tensor:
        B, T = tokens.shape
        if patch_lengths is None:
            patch_lengths = self.patch_lengths(tokens)
        P, k = patch_lengths.shape[1], self.k
        byte_patch = patch_ids(patch_lengths, T)  # (B, T)
        # byte t predicts byte t + 1 from the patches that end at or before t: the patch of t + 1, less one
        next_patch = patch_ids(patch_lengths[:, 1:], T)  # (B, T)
        patch_index = torch.arange(P, device=tokens.device)
        enc_mask = (patch_index[None, :, None] == byte_patch[:, None, :]).repeat_interleave(k, dim=1)[:, None]
        dec_mask = (next_patch[:, :, None] == patch_index[None, None, :]).repeat_interleave(k, dim=-1)[:, None]

        x = self.embed(tokens)  # (B, T, De)
        positions = torch.arange(T, device=tokens.device)
        local_mask = _causal_mask(T, self.enc_s.window, tokens.device)
        patches = None
        for i, layer in enumerate(self.encoder):
            x = layer(x, positions, local_mask)
            if i == len(self.encoder) - 1 or len(self.encoder_cross) > 1:
                pooled = x.new_zeros(B, P, x.shape[-1]).scatter_reduce(
                    1, byte_patch[..., None].expand_as(x), x, reduce="amax", include_self=False)  # (B, P, De)
                patches = self.encoder_patch_proj(pooled).reshape(B, P * k, -1)  # (B, P*k, De)
                patches = self.encoder_cross[i if len(self.encoder_cross) > 1 else 0](patches, x, enc_mask)

        g = patches.reshape(B, P, -1)  # (B, P, k*De)
        if self.global_in_proj is not None:
            g = self.global_in_proj(g)  # (B, P, Dg)
        global_mask = _causal_mask(P, None, tokens.device)
        for layer in self.global_layers:
            g = layer(g, patch_index, global_mask)

        memory = self.decoder_patch_proj(g).reshape(B, P * k, -1)  # (B, P*k, Dd)
        for i, layer in enumerate(self.decoder):
            if i == 0 or len(self.decoder_cross) > 1:
                x = self.decoder_cross[i](x, memory, dec_mask)
            x = layer(x, positions, local_mask)
        return self.lm_head(self.final_norm(x)).float()  # (B, T, vocab)

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding. Patch boundaries move as bytes arrive, so each step recomputes the
        whole prefix (no cache): the result is exactly what the full forward predicts."""
        for _ in range(max_new_tokens):
            nxt = self(tokens)[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, nxt], dim=1)
        return tokens


def flops_per_token(s: StackSpec, context: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of one position through a stack, attention over `context` keys."""
    hd = s.head_dim
    proj = s.dim * (s.heads + 2 * s.kv_heads) * hd + s.heads * hd * s.dim + 3 * s.dim * s.hidden
    keys = context if s.window is None else min(context, s.window)
    return s.layers * 2 * (proj + 2 * s.heads * hd * keys)


__all__ = ["ByteLatentTransformer", "EntropyModel", "NgramHashEmbedding", "PatchCrossAttention", "StackSpec",
           "entropy_patch_starts", "flops_per_token", "ngram_hash_ids", "patch_ids", "split_long_patches",
           "HASH_PRIMES"]

"""PyTorch references of every kernel: what runs on CPU, and what the Triton kernels are
tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import scan_autograd

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu2": lambda x: F.relu(x).square(),  # squared ReLU (So et al. 2021, Primer; Nemotron-H's MLP)
}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] channels of x (B, H, T, D) as two halves; the rest pass."""
    rot = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if rot == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


def rms_norm(x, weight, eps, unit_offset=False, residual=None):
    if residual is not None:
        x = residual + x
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    w = weight.float()
    if unit_offset:
        out = (h * (1.0 + w)).to(dtype)
    else:
        out = w.to(dtype) * h.to(dtype) if dtype != torch.float32 else w * h
    return (x, out) if residual is not None else out


def layer_norm(x, weight, bias, eps, residual=None):
    if residual is not None:
        x = residual + x
    out = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return (x, out) if residual is not None else out


def glu(x, act: str):
    """act(gate) * up for x = [gate | up] stacked on the last dim."""
    gate, up = x.chunk(2, dim=-1)
    return ACTIVATIONS[act](gate) * up


def position_mask(q_pos, k_pos, *, causal: bool, window=None, chunk=None, sink_tokens=0, dilation=1,
                  global_tokens=0) -> torch.Tensor | None:
    """(T, S) True where a query at q_pos may attend a key at k_pos, by absolute positions: the
    causal, sliding-window (dilated, with sink and global tokens) and chunk masks `attention`
    documents; None when none applies."""
    if not (causal or window or chunk):
        return None
    rel = q_pos[:, None] - k_pos[None, :]
    mask = rel >= 0 if causal else None
    if window:
        near = rel.abs() < window * dilation
        if dilation > 1:
            near = near & (rel.abs() % dilation == 0)
        if sink_tokens:
            near = near | (k_pos[None, :] < sink_tokens)
        if global_tokens:
            near = near | (k_pos[None, :] < global_tokens) | (q_pos[:, None] < global_tokens)
        mask = near if mask is None else mask & near
    if chunk:
        same = (q_pos[:, None] // chunk) == (k_pos[None, :] // chunk)
        mask = same if mask is None else mask & same
    return mask


def attention(q, k, v, q_pos, k_pos, *, causal: bool, scale: float, window=None, softcap=None, bias=None,
              key_mask=None, sinks=None, chunk=None, sink_tokens=0, dropout=0.0, dilation=1, global_tokens=0,
              allow=None):
    """Scaled dot-product attention. q (B, H, T, D); k, v (B, KV, S, D) with H a multiple of KV.

    q_pos (T,) and k_pos (S,) are absolute positions: causal and sliding-window masks compare
    them, so the same code serves a full sequence and a cached decode step. `window` lets a
    query see the last `window` positions including its own; with `sink_tokens` = n it also sees
    positions 0 .. n-1 (StreamingLLM). `chunk` restricts a query to keys of its own chunk,
    floor(pos / chunk) equal (Llama 4). `bias` (H, T, S) is added to the scores (ALiBi, T5
    buckets); `key_mask` (B, S) is 1 for real tokens. `sinks` (H,) is a learned logit per head that
    joins every query's softmax denominator and carries no value (gpt-oss). `dropout` zeroes
    attention probabilities with that probability (training), one draw over the (B, H, T, S)
    probabilities after the softmax, as eager attention does.

    `dilation` = d spreads the window (Longformer): a query sees every d-th position of the last
    window * d, its own included. `global_tokens` = n (with a window): positions 0 .. n-1 see
    every position and are seen by every position, within causality. `allow` (B, T, S) is a
    boolean mask of the keys each query may attend beside the others (a sparse selection, e.g.
    DeepSeek-V3.2's indexer).
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    plain = softcap is None and bias is None and sinks is None and not dropout
    # Without a cache the keys are the queries' own positions (the same tensor): plain causal,
    # which SDPA masks itself, so no (T, S) mask is built.
    if plain and causal and not window and not chunk and key_mask is None and allow is None and k_pos is q_pos:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=heads != kv_heads)
    # True where attending is allowed; (T, S) or (B, 1, T, S)
    mask = position_mask(q_pos, k_pos, causal=causal, window=window, chunk=chunk, sink_tokens=sink_tokens,
                         dilation=dilation, global_tokens=global_tokens)
    if key_mask is not None:
        km = key_mask[:, None, None, :].bool()
        mask = km if mask is None else mask & km
    if allow is not None:
        mask = allow[:, None] if mask is None else mask & allow[:, None]
    if plain:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=heads != kv_heads)
    if heads != kv_heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, T, S)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    if sinks is None:
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    else:
        # the sink is one more logit per head in the denominator; its column is dropped after the softmax
        sink = sinks.float()[None, :, None, None].expand(scores.shape[0], -1, scores.shape[2], 1)
        probs = torch.softmax(torch.cat((scores.float(), sink), dim=-1), dim=-1)[..., :-1].to(q.dtype)
    if dropout:
        probs = F.dropout(probs, dropout)
    return probs @ v


def grouped_matmul(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor, expert_of: torch.Tensor) -> torch.Tensor:
    """Rows of x grouped by expert (group e has counts[e] consecutive rows; row i belongs to
    expert_of[i]) times weight[e]^T.

    x (M, in), weight (E, out, in) → (M, out): one grouped GEMM through PyTorch's grouped
    matmul, with no loop over experts and no padding. Under torch.compile (whose CPU fake
    kernel for it takes bf16 only) it is a batched matmul over a buffer padded to M rows per
    expert, which keeps every shape static.
    """
    aligned = all((size * x.element_size()) % 16 == 0 for size in (weight.shape[1], weight.shape[2]))
    if torch.compiler.is_compiling() or not hasattr(torch, "_grouped_mm") or not aligned:
        # the grouped kernel needs 16-byte aligned rows; odd widths take the padded batched matmul
        return _padded_grouped_matmul(x, weight, counts, expert_of)
    offs = torch.cumsum(counts, 0).to(torch.int32)
    out = torch._grouped_mm(x, weight.transpose(1, 2), offs=offs)
    if out.requires_grad:
        # the grouped matmul's backward needs a materialised gradient (not an expanded one)
        out.register_hook(lambda g: g.contiguous())
    return out


def _padded_grouped_matmul(x, weight, counts, expert_of) -> torch.Tensor:
    rows, experts = x.shape[0], weight.shape[0]
    slot = torch.arange(rows, device=x.device) - (torch.cumsum(counts, 0) - counts)[expert_of]
    buf = x.new_zeros(experts, rows, x.shape[1])
    buf[expert_of, slot] = x
    return torch.bmm(buf, weight.transpose(1, 2))[expert_of, slot]


def linear_cross_entropy(hidden, weight, target, *, ignore_index: int = -100, softcap=None):
    """Mean cross-entropy of `hidden @ weight.T` (optionally soft-capped) against `target`."""
    logits = hidden.float() @ weight.float().t()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


CHUNK = 64


def selective_scan(u, delta, A, B, C, D, state=None, chunk: int = CHUNK):
    """y_t = C_t · h_t + D u_t with h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t.

    u, delta (B, di, T); A (di, N); B, C (B, T, N); D (di,); state (B, di, N) or None.
    Returns y (B, di, T) and the final state, all in float32.

    The sequence is cut into chunks; for each, the discretised decays exp(delta A) and inputs
    delta B u are computed for the whole chunk at once, then the recurrence runs step by step
    over it, one fused multiply-add per step, and the readout C_t · h_t is one batched product
    per chunk. Memory stays at a few chunks of (B, L, N, di) instead of the whole sequence; on
    a CPU the short sequential loop beats log-depth parallel scans, which do log(L) times the work.
    With autograd the scan is `scan_autograd.SelectiveScan`, whose backward recomputes each
    chunk's states from its start (only the chunk boundaries' states are kept).
    """
    bsz, di, t = u.shape
    # Internally the state is (B, N, di) and chunks are (B, L, N, di): every broadcast product
    # then runs along the long, contiguous channel axis, and each step's slice is one block.
    h = state.float().transpose(1, 2) if state is not None else u.new_zeros(bsz, A.shape[1], di, dtype=torch.float32)
    u, delta = u.float().transpose(1, 2).contiguous(), delta.float().transpose(1, 2).contiguous()  # (B, T, di)
    A = A.float().t().contiguous()  # (N, di)
    B, C = B.float().contiguous(), C.float().contiguous()
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in (u, delta, A, B, C, h))):
        # Without autograd the states overwrite the chunk's inputs in place.
        ys = []
        for start in range(0, t, chunk):
            states, h = scan_autograd.run_chunk_in_place(*scan_autograd.chunk_inputs(u, delta, A, B, start, chunk), h)
            ys.append(scan_autograd.readout(states, C, start, chunk))  # (B, di, L)
    elif not torch.compiler.is_compiling():
        # Training: the same in-place forward, and a backward that recomputes each chunk's states
        # from the state at its start and runs the adjoint recurrence (kernels/scan_autograd.py).
        y, h = scan_autograd.SelectiveScan.apply(u, delta, A, B, C, h if state is not None else None, chunk)
        ys = [y]
    else:
        # Under torch.compile autograd records each step: a new tensor per step, since in-place
        # writes would invalidate what the backward saved.
        ys = []
        for start in range(0, t, chunk):
            decay, drive = scan_autograd.chunk_inputs(u, delta, A, B, start, chunk)
            steps = []
            for i in range(drive.shape[1]):
                h = torch.addcmul(drive[:, i], decay[:, i], h)
                steps.append(h)
            ys.append(scan_autograd.readout(torch.stack(steps, dim=1), C, start, chunk))
    y = torch.cat(ys, dim=2) if ys else u.new_zeros(bsz, di, 0)
    # the final state back in (B, di, N), as its own tensor (not a view into a chunk's buffer)
    h = h.transpose(1, 2).clone(memory_format=torch.contiguous_format)
    return y + u.transpose(1, 2) * D[None, :, None].float(), h


def route(logits: torch.Tensor, top_k: int, *, sigmoid: bool, normalize: bool, scale: float,
          correction_bias: torch.Tensor | None = None, n_group: int = 1, topk_group: int = 1,
          group_score: str = "top2_sum", normalize_min: float = 0.0):
    """MoE routing: (probs (N, E), weights (N, k), index (N, k)) from router logits (N, E).

    `correction_bias` (E,) is added to the scores for choosing experts only (DeepSeek-V3); the
    weights stay the uncorrected scores. With `n_group` > 1 the experts form n_group equal
    groups, each scored by the sum of its top-2 choice scores ("top2_sum", DeepSeek-V3) or its
    best score ("max", DeepSeek-V2 group_limited_greedy); the top-k are then taken within the
    best `topk_group` groups. `normalize_min` > 0 floors the sum the weights are divided by
    (ERNIE 4.5's moe_norm_min)."""
    logits = logits.float()
    probs = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=-1)
    if correction_bias is None and n_group == 1:
        weights, index = torch.topk(probs, top_k, dim=-1)
    else:
        choice = probs.detach()  # (N, E) selection is not differentiable
        if correction_bias is not None:
            choice = choice + correction_bias.float()
        if n_group > 1:
            grouped = choice.view(choice.shape[0], n_group, -1)  # (N, G, E/G)
            if group_score == "top2_sum":
                group = grouped.topk(2, dim=-1).values.sum(dim=-1)
            else:
                group = grouped.amax(dim=-1)  # (N, G)
            kept = torch.zeros_like(group, dtype=torch.bool).scatter_(1, group.topk(topk_group, dim=-1).indices, True)
            choice = choice.masked_fill(~kept.repeat_interleave(grouped.shape[-1], dim=1), float("-inf"))
        index = torch.topk(choice, top_k, dim=-1).indices
        weights = probs.gather(1, index)
    if normalize:
        total = weights.sum(dim=-1, keepdim=True)
        weights = weights / (total.clamp(min=normalize_min) if normalize_min else total)
    return probs, weights * scale, index


def _segment_sum(a: torch.Tensor) -> torch.Tensor:
    """(..., L) → (..., L, L): entry [i, j] is a_{j+1} + … + a_i for j ≤ i, and -inf above the
    diagonal. Masked cumulative sums instead of differences of one cumulative sum, which lose
    precision once the sums grow large (Mamba-2's `segsum`)."""
    length = a.shape[-1]
    a = a[..., None].expand(*a.shape, length)  # [..., k, j] = a_k
    a = a.masked_fill(~torch.ones(length, length, dtype=torch.bool, device=a.device).tril(-1), 0)
    sums = a.cumsum(dim=-2)
    return sums.masked_fill(~torch.ones(length, length, dtype=torch.bool, device=a.device).tril(), float("-inf"))


def ssd_chunked(x, dt, A, B, C, chunk: int, initial_state=None):
    """Mamba-2's state space duality (Dao & Gu 2024): y_t = C_t · h_t with
    h_t = exp(dt_t A) h_{t-1} + dt_t x_t ⊗ B_t, one scalar decay per head.

    x (B, T, H, P); dt (B, T, H), already positive; A (H,); B, C (B, T, G, N) with G dividing H
    (head h reads group h // (H / G)); initial_state (B, H, P, N) or None.
    Returns y (B, T, H, P) and the final state (B, H, P, N), both float32; no D skip.

    Within a chunk of `chunk` steps the output is a masked, attention-like product
    (C_l · B_s, decayed from s to l, times dt_s x_s); each chunk's contribution to the state at
    its end is one product too; the states are then carried from chunk to chunk by their total
    decays, and each chunk reads the state it starts from through C. The last chunk is padded
    with dt = 0 steps, which neither decay nor feed the state.
    """
    bsz, t, heads, p = x.shape
    groups = B.shape[2]
    x, dt, A = x.float(), dt.float(), A.float()
    B = B.float().repeat_interleave(heads // groups, dim=2)  # (B, T, H, N)
    C = C.float().repeat_interleave(heads // groups, dim=2)
    chunk = max(1, min(chunk, t))  # a short prefill is one chunk, not one padded to `chunk`
    pad = (-t) % chunk
    if pad:
        x, B, C = (F.pad(v, (0, 0, 0, 0, 0, pad)) for v in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    n_chunks = (t + pad) // chunk
    x = (x * dt[..., None]).view(bsz, n_chunks, chunk, heads, p)  # (B, c, L, H, P) the input dt_s x_s
    B = B.view(bsz, n_chunks, chunk, heads, -1)  # (B, c, L, H, N)
    C = C.view(bsz, n_chunks, chunk, heads, -1)
    log_decay = (dt * A).view(bsz, n_chunks, chunk, heads).permute(0, 3, 1, 2)  # (B, H, c, L)
    cum = log_decay.cumsum(dim=-1)  # (B, H, c, L)

    # 1. within each chunk: the quadratic, attention-like form
    mask = torch.exp(_segment_sum(log_decay))  # (B, H, c, L, S) decay from s to l, 0 for s > l
    scores = torch.einsum("bclhn,bcshn->bhcls", C, B) * mask
    y_within = torch.einsum("bhcls,bcshp->bclhp", scores, x)
    # 2. each chunk's own inputs, decayed to its end
    to_end = torch.exp(cum[..., -1:] - cum)  # (B, H, c, L)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, to_end, x)  # (B, c, H, P, N)
    # 3. the states between chunks: entry z is the state at the start of chunk z, the last the final state
    h0 = chunk_states.new_zeros(chunk_states[:, 0].shape) if initial_state is None else initial_state.float()
    chunk_states = torch.cat((h0[:, None], chunk_states), dim=1)  # (B, c+1, H, P, N)
    carry = torch.exp(_segment_sum(F.pad(cum[..., -1], (1, 0))))  # (B, H, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", carry, chunk_states)  # (B, c+1, H, P, N)
    # 4. each chunk reads the state it starts from, decayed to each step
    y_carried = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states[:, :-1], torch.exp(cum))
    y = (y_within + y_carried).reshape(bsz, n_chunks * chunk, heads, p)[:, :t]
    return y, states[:, -1]


def ssd_step(x, dt, A, B, C, state=None):
    """One step of `ssd_chunked`'s recurrence, for decoding: x (B, H, P), dt (B, H), A (H,),
    B, C (B, G, N), state (B, H, P, N) or None. Returns y (B, H, P) and the new state, float32."""
    heads, groups = x.shape[1], B.shape[1]
    B = B.float().repeat_interleave(heads // groups, dim=1)  # (B, H, N)
    C = C.float().repeat_interleave(heads // groups, dim=1)
    dt = dt.float()
    drive = (dt[..., None] * x.float())[..., None] * B[:, :, None, :]  # (B, H, P, N)
    if state is not None:
        drive = drive + torch.exp(dt * A.float())[..., None, None] * state.float()
    return torch.einsum("bhpn,bhn->bhp", drive, C), drive


def gated_linear_recurrent(q, k, v, log_decay, beta=None, state=None, scale=None):
    """The gated linear recurrence one token at a time (the decoding form), per head:

        S_t = exp(log_decay_t) ⊙ S_{t-1} + update_t,    o_t = S_t^T (scale · q_t)

    with update_t = k_t v_t^T, or with `beta` the delta rule
    update_t = β_t k_t (v_t - S'^T k_t)^T where S' is the decayed S_{t-1}.
    q, k (B, H, T, dk); v (B, H, T, dv); log_decay (B, H, T) one decay per head or (B, H, T, dk)
    one per key dimension; beta (B, H, T); state (B, H, dk, dv). Returns (o (B, H, T, dv) in v's
    dtype, the final state in float32, or float64 for float64 inputs). `scale` defaults to dk^-0.5."""
    bsz, heads, t, dk = q.shape
    dv, out_dtype = v.shape[-1], v.dtype
    scale = dk ** -0.5 if scale is None else scale
    acc = torch.promote_types(v.dtype, torch.float32)  # the state accumulates in float32 at least
    q, k, v, decay = q.to(acc) * scale, k.to(acc), v.to(acc), log_decay.to(acc).exp()
    decay = decay[..., None] if decay.dim() == 4 else decay[..., None, None]  # broadcasts over dv
    s = state.to(acc) if state is not None else q.new_zeros(bsz, heads, dk, dv)
    outs = []
    for i in range(t):
        s = s * decay[:, :, i]
        if beta is None:
            update = v[:, :, i]
        else:
            update = beta[:, :, i, None].to(acc) * (v[:, :, i] - torch.einsum("bhkv,bhk->bhv", s, k[:, :, i]))
        s = s + k[:, :, i, :, None] * update[:, :, None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", s, q[:, :, i]))
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(bsz, heads, 0, dv)
    return o.to(out_dtype), s


# Diagonal blocks of the per-dimension decayed scores: the pairwise work is L·SUB·dk per chunk and
# the factored one about L²·dk / (2·SUB) exponentials, least near SUB = sqrt(L / 2); 4 measured
# fastest at L = 64 on a CPU (bench/README.md).
SUB_BLOCK = 4


def _decayed_scores(x, ys, cx, cy, *, strict: bool, sub: int = SUB_BLOCK):
    """Causal scores with one decay per key dimension, for each y in `ys`: (..., L, L) with entry
    [t, j] = Σ_d x_td y_jd exp(cx_td - cy_jd) for j <= t (j < t if `strict`), 0 elsewhere.

    x, each y, cx, cy (..., L, dk); cy is a cumulative log decay (non-increasing along L) and cx is
    cy itself or cy one step earlier, so every exponent of a kept entry is <= 0. Blocks of `sub`
    positions on the diagonal take the pairwise (sub, sub, dk) decays; below them the decay from
    j to t factors through r = cy at the position just before t's block, as
    exp(cx_t - r) · exp(r - cy_j) with both exponents <= 0, so the block is one matmul
    (GLA's secondary chunking, Yang et al. 2024). This costs L·sub·dk elementwise work per
    chunk instead of L·L·dk, with nothing that can overflow.
    """
    length = x.shape[-2]
    outs = [x.new_zeros(*x.shape[:-1], length) for _ in ys]
    rows = torch.arange(min(sub, length), device=x.device)
    keep = (rows[:, None] > rows[None, :]) if strict else (rows[:, None] >= rows[None, :])
    for lo in range(0, length, sub):
        hi = min(lo + sub, length)
        size = hi - lo
        x_blk, cx_blk = x[..., lo:hi, :], cx[..., lo:hi, :]
        pair = (cx_blk[..., :, None, :] - cy[..., None, lo:hi, :])  # (..., s, s, dk)
        pair = pair.masked_fill(~keep[:size, :size, None], float("-inf")).exp()
        if lo:
            ref = cy[..., lo - 1:lo, :]  # (..., 1, dk) the log decay just before this block
            x_read = x_blk * (cx_blk - ref).exp()
            before = (ref - cy[..., :lo, :]).exp()  # (..., lo, dk) from each earlier j to the reference
        for out, y in zip(outs, ys):
            out[..., lo:hi, lo:hi] = torch.einsum("...td,...jd,...tjd->...tj", x_blk, y[..., lo:hi, :], pair)
            if lo:
                out[..., lo:hi, :lo] = x_read @ (y[..., :lo, :] * before).transpose(-1, -2)
    return outs


def gated_linear_chunked(q, k, v, log_decay, beta=None, state=None, scale=None, chunk=64):
    """The same recurrence as `gated_linear_recurrent`, `chunk` tokens at a time (the training and
    prefill form): within a chunk, attention weighted by the pairwise decays; across chunks, the state.

    Decays stay in log space and are only exponentiated as differences c_i - c_j with i >= j
    (or c_i - c_start, c_end - c_j), all <= 0, so nothing overflows however strong the gates.
    One decay per key dimension takes `_decayed_scores` (pairwise decays within small blocks,
    matmuls between them). The delta rule
    (with `beta`) needs one decay per head: the chunk's updates are folded by the UT transform
    (a unit lower-triangular solve), as in Gated DeltaNet (Yang et al. 2025)."""
    bsz, heads, t, dk = q.shape
    dv, out_dtype = v.shape[-1], v.dtype
    per_dim = log_decay.dim() == 4
    if beta is not None and per_dim:
        from archlang.spec.errors import ArchError  # kernels import nothing from spec at module load

        raise ArchError("the chunked delta rule takes one decay per head, not one per key dimension")
    scale = dk ** -0.5 if scale is None else scale
    acc = torch.promote_types(v.dtype, torch.float32)  # the state accumulates in float32 at least
    pad = (chunk - t % chunk) % chunk
    # padding tokens carry no update (k = 0) and no decay (log 1 = 0): the final state is unchanged
    q, k, v = (F.pad(x.to(acc), (0, 0, 0, pad)) for x in (q, k, v))
    g = F.pad(log_decay.to(acc), (0, 0, 0, pad) if per_dim else (0, pad))
    n = (t + pad) // chunk
    q, k, v = (x.view(bsz, heads, n, chunk, -1) for x in (q * scale, k, v))  # (B, H, N, L, d)
    c = g.view(bsz, heads, n, chunk, -1) if per_dim else g.view(bsz, heads, n, chunk, 1)  # (B, H, N, L, dk or 1)
    c = c.cumsum(dim=3)  # log of the decay from the chunk's start to each position
    future = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1)

    if per_dim:
        attn, = _decayed_scores(q, (k,), c, c, strict=False)  # (B, H, N, L, L)
    else:
        pair = (c - c.transpose(-1, -2)).masked_fill(future, float("-inf")).exp()  # (B, H, N, L, L)
        attn = (q @ k.transpose(-1, -2)) * pair
    last = c[:, :, :, -1:]  # (B, H, N, 1, dk or 1)
    q_old = q * c.exp()  # reads the state left by the previous chunks, decayed to position i
    k_end = k * (last - c).exp()  # writes position j's update, decayed to the chunk's end
    chunk_decay = last.exp().transpose(-1, -2)  # (B, H, N, dk or 1, 1)
    if beta is not None:
        b = F.pad(beta.to(acc), (0, pad)).view(bsz, heads, n, chunk, 1)
        system = (b * k) @ k.transpose(-1, -2) * pair  # unit diagonal implied by the solve
        v = torch.linalg.solve_triangular(system, b * v, upper=False, unitriangular=True)
        k_read = torch.linalg.solve_triangular(system, b * k * c.exp(), upper=False, unitriangular=True)
    s = state.to(acc) if state is not None else q.new_zeros(bsz, heads, dk, dv)
    outs = []
    for i in range(n):
        v_i = v[:, :, i] if beta is None else v[:, :, i] - k_read[:, :, i] @ s  # the delta: what S does not predict
        outs.append(q_old[:, :, i] @ s + attn[:, :, i] @ v_i)
        s = s * chunk_decay[:, :, i] + k_end[:, :, i].transpose(-1, -2) @ v_i
    o = torch.cat(outs, dim=2)[:, :, :t] if outs else v.new_zeros(bsz, heads, 0, dv)
    return o.to(out_dtype), s


def generalized_delta_recurrent(q, k, v, log_decay, a, b, state=None, scale=1.0):
    """The diagonal-plus-low-rank recurrence of RWKV-7 one token at a time, per head:

        S_t = diag(exp(log_decay_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T,    o_t = S_t^T (scale · q_t)

    q, k, a, b, log_decay (B, H, T, dk); v (B, H, T, dv); state (B, H, dk, dv). RWKV-7 writes its
    state transposed, wkv_t = wkv_{t-1} (diag(w_t) + a_t^T b_t) + v_t^T k_t, with a = -κ̂ and
    b = κ̂ ⊙ (its in-context learning rate). Returns (o in v's dtype, the final state in float32 at least)."""
    bsz, heads, t, dk = q.shape
    dv, out_dtype = v.shape[-1], v.dtype
    acc = torch.promote_types(v.dtype, torch.float32)
    q, k, v, a, b = q.to(acc) * scale, k.to(acc), v.to(acc), a.to(acc), b.to(acc)
    decay = log_decay.to(acc).exp()
    s = state.to(acc) if state is not None else q.new_zeros(bsz, heads, dk, dv)
    outs = []
    for i in range(t):
        read = torch.einsum("bhkv,bhk->bhv", s, a[:, :, i])  # a_t^T S_{t-1}
        s = s * decay[:, :, i, :, None] + b[:, :, i, :, None] * read[:, :, None]
        s = s + k[:, :, i, :, None] * v[:, :, i, None]
        outs.append(torch.einsum("bhkv,bhk->bhv", s, q[:, :, i]))
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(bsz, heads, 0, dv)
    return o.to(out_dtype), s


def generalized_delta_chunked(q, k, v, log_decay, a, b, state=None, scale=1.0, chunk=64):
    """`generalized_delta_recurrent`, `chunk` tokens at a time. Within a chunk the reads
    u_t = S_{t-1}^T a_t solve a unit lower-triangular system, (I - A_ab) U = (a ⊙ Γ_{t-1}) S_0 + A_ak V,
    with A_xy[t, j] = Σ_d x_td y_jd exp(c_{t-1,d} - c_{j,d}) for j < t (c the in-chunk cumulative
    log decay); outputs and the next state are then sums over k v^T and b u^T. Every exponent is a
    decay from a later to an earlier position, <= 0: stable for any gates. The score matrices come
    from `_decayed_scores`, for all chunks at once."""
    bsz, heads, t, dk = q.shape
    dv, out_dtype = v.shape[-1], v.dtype
    acc = torch.promote_types(v.dtype, torch.float32)
    pad = (chunk - t % chunk) % chunk
    # padding tokens carry no update (k = b = 0) and no decay: the final state is unchanged
    q, k, v, a, b, g = (F.pad(x.to(acc), (0, 0, 0, pad)) for x in (q * scale, k, v, a, b, log_decay))
    n = (t + pad) // chunk
    q, k, v, a, b, g = (x.view(bsz, heads, n, chunk, -1) for x in (q, k, v, a, b, g))  # (B, H, N, L, d)
    c = g.cumsum(dim=3)  # inclusive: the decay from the chunk's start through position t
    c_before = c - g  # exclusive: through position t - 1
    # the four within-chunk score matrices of every chunk, (B, H, N, L, L) each
    a_b, a_k = _decayed_scores(a, (b, k), c_before, c, strict=True)  # j < t, decayed from j to t - 1
    q_k, q_b = _decayed_scores(q, (k, b), c, c, strict=False)  # j <= t, decayed from j to t
    q_old = q * c.exp()
    last = c[:, :, :, -1:]  # (B, H, N, 1, dk)
    k_end, b_end = k * (last - c).exp(), b * (last - c).exp()
    chunk_decay = last.exp().transpose(-1, -2)  # (B, H, N, dk, 1)
    s = state.to(acc) if state is not None else q.new_zeros(bsz, heads, dk, dv)
    outs = []
    for i in range(n):
        vi = v[:, :, i]
        rhs = (a[:, :, i] * c_before[:, :, i].exp()) @ s + a_k[:, :, i] @ vi  # u = S_{t-1}^T a_t, solved
        # I - A_ab, its unit diagonal implied by the solve
        u = torch.linalg.solve_triangular(-a_b[:, :, i], rhs, upper=False, unitriangular=True)  # (B, H, L, dv)
        outs.append(q_old[:, :, i] @ s + q_k[:, :, i] @ vi + q_b[:, :, i] @ u)
        s = (s * chunk_decay[:, :, i] + k_end[:, :, i].transpose(-1, -2) @ vi
             + b_end[:, :, i].transpose(-1, -2) @ u)
    o = torch.cat(outs, dim=2)[:, :, :t] if outs else v.new_zeros(bsz, heads, 0, dv)
    return o.to(out_dtype), s

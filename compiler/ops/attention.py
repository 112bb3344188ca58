"""Attention cores: scaled dot-product attention (MHA, MQA, GQA, differential), DeepSeek's
multi-head latent attention, and causal linear attention. Their projections are separate
linears; these ops attend, keep the cache and apply the positions they take."""

from __future__ import annotations

from .base import Cost, OpDef, Refusal, Saved, attr, register

_NO_SCORES = "has no score matrix to add a bias to"
_LINEAR_INSTEAD = "use position = sinusoidal() or learned(), or another attention kind"


def attended(context: int, causal: bool, window: int | None, chunk: int | None = None, sink_tokens: int = 0,
             dilation: int | None = None, global_tokens: int = 0) -> float:
    """Mean number of keys a query attends to over a full sequence of `context` tokens."""
    if (dilation or 1) > 1 or global_tokens:
        return _attended_dilated(context, causal, window, dilation or 1, global_tokens)
    if not causal:
        if window and window < context:  # both ways: 2w - 1 keys, fewer for the w - 1 queries at each end
            keys = 2 * window - 1 - window * (window - 1) / context
        else:
            keys = float(context)
        return min(keys + sink_tokens, float(context))
    if chunk is not None and chunk < context:
        # a query sees the keys of its own chunk up to itself: 1 .. chunk, then again
        full, rest = divmod(context, chunk)
        return (full * chunk * (chunk + 1) / 2 + rest * (rest + 1) / 2) / context
    if window is None or window >= context:
        return (context + 1) / 2
    # positions 0..w-1 see i+1 keys, the rest see w
    keys = window * (window + 1) / 2 + (context - window) * window
    if sink_tokens:
        # query i also sees min(sink_tokens, i - window + 1) first positions that left its window
        past = context - window
        keys += past * (past + 1) / 2 if past <= sink_tokens else \
            sink_tokens * (sink_tokens + 1) / 2 + (past - sink_tokens) * sink_tokens
    return keys / context


def _dilated_window_keys(length: int, window: int, dilation: int) -> float:
    """Sum over causal queries t = 0 .. length-1 of min(window, t // dilation + 1): the positions
    t, t - d, ... a dilated window holds."""
    full = min(length, window * dilation)
    q, r = divmod(full, dilation)
    return dilation * q * (q + 1) / 2 + r * (q + 1) + (length - full) * window


def _attended_dilated(context: int, causal: bool, window: int, dilation: int, global_tokens: int) -> float:
    """attended() for a dilated window with `global_tokens` (Longformer's masks)."""
    n = min(global_tokens, context)
    if not causal:  # interior queries: 2 * window - 1 window keys plus the global ones; global queries see all
        keys = min(2 * window - 1 + n, context)
        return (n * context + (context - n) * keys) / context
    # query i < n sees its i + 1 keys; query i >= n the n global keys and the window keys of i - n
    return (n * (n + 1) / 2 + n * (context - n) + _dilated_window_keys(context - n, window, dilation)) / context


def cache_span(window: int | None, dilation: int | None) -> int | None:
    """How many of the latest positions a (dilated) window still needs: (window - 1) * dilation + 1."""
    return (window - 1) * (dilation or 1) + 1 if window else None


def cached(tokens: int, window: int | None, chunk: int | None = None, sink_tokens: int = 0) -> int:
    """How many tokens' keys and values a layer holds after `tokens` tokens: at most the window
    (and the first `sink_tokens`), or at most one chunk."""
    if chunk:
        return min(tokens, chunk)
    return min(tokens, window + sink_tokens) if window else tokens


# The options of the 2024–2026 attention layers, which the softmax cores of mha/mqa/gqa implement.
MODERN_OPTIONS = ("qk_norm", "sinks", "chunk", "sink_tokens", "temperature_tuning", "floor_scale", "attn_scale")
# Longformer's masks beside the sliding window, which the softmax cores of mha/mqa/gqa implement.
MASK_OPTIONS = ("dilation", "global_tokens")


def _refuse_masks(kind: str, reason: str) -> dict[tuple[str, str], Refusal]:
    return {(kind, option): Refusal(reason, f"remove {option}, or use mha/gqa") for option in MASK_OPTIONS}


def _refuse_modern(kind: str, reason: str) -> dict[tuple[str, str], Refusal]:
    return {(kind, option): Refusal(reason, f"remove {option}, or use mha/gqa") for option in MODERN_OPTIONS}


def _window_check(node, a, ctx) -> None:
    if a["window"] and ctx.context and a["window"] > ctx.context:
        ctx.fail(node, f"window ({a['window']}) is longer than the context ({ctx.context})",
                 "a window at least as long as the context is full attention: remove it")


class _Attention(OpDef):
    abstract = True
    picture = "attention"

    def category(self, d):
        return "attention"


def _core_saved(maps: int, ctx, dropout: float | None, private: float = 0.0) -> Saved:
    """An attention core keeps q, k and v (its inputs) for backward, and then either its `maps`
    probability maps (per token, one row of T scores each: eager attention materialises the
    whole T × T matrix whatever the mask), with a mask and the dropped copy under dropout, or
    (recomputing them: FlashAttention, selective recomputation) its output and one float32
    log-sum-exp per map."""
    if ctx.keep_probabilities:
        scores = maps * ctx.seq
        kept = scores * ctx.nbytes + (scores * (1 + ctx.nbytes) if dropout else 0)
        return Saved(private_bytes=private + kept)
    return Saved(outputs=(0,), private_bytes=private + 4 * maps)


@register
class Attention(_Attention):
    name = "attention"
    summary = "scaled dot-product attention: MHA, MQA, GQA, differential"
    attrs = {
        "kind": attr(str, doc="mha | mqa | gqa | differential"),
        "heads": attr(int), "kv_heads": attr(int), "head_dim": attr(int),
        "causal": attr(bool), "window": attr(int, default=None), "softcap": attr(float, default=None),
        "scale": attr(float),
        "rope": attr(dict, default=None, doc="{dim}: q and k rotated inside (fold-rope); the table is an input"),
        "packed": attr(bool, default=False, doc="one input holding q, k and v side by side (fuse-qkv)"),
        "cross": attr(bool, default=False, doc="keys and values from the encoder"),
        "qk_norm": attr(dict, default=None, doc="{kind, eps, unit_offset, scope[, after_rope]}: q and k normalised "
                        "(rmsnorm, layernorm: before RoPE unless after_rope; l2: after)"),
        "sinks": attr(bool, default=None, doc="a learned logit per head in the softmax denominator"),
        "chunk": attr(int, default=None, doc="attend within chunks of this many positions"),
        "sink_tokens": attr(int, default=None, doc="with a window: the first positions stay visible and cached"),
        "temperature": attr(dict, default=None, doc="{floor_scale, attn_scale}: Llama 4's NoPE query scaling"),
        "dilation": attr(int, default=None, doc="with a window: every dilation-th position of window * dilation"),
        "global_tokens": attr(int, default=None, doc="with a window: the first positions see and are seen by all"),
        "alibi": attr(bool, default=False, doc="an ALiBi slopes input"),
        "rel_bias": attr(bool, default=False, doc="a relative position bias input"),
        "lambda_init": attr(float, default=None, doc="differential: λ's initial value (None: by depth)"),
        "dropout": attr(float, default=None, doc="dropout on the attention probabilities, in training"),
    }
    arity = (1, 5)
    mixer_kinds = ("mha", "mqa", "gqa", "differential")
    cross_attention_kinds = ("mha", "mqa", "gqa")
    refused_cross_options = {
        "window": Refusal("a sliding window over the encoder's output is not defined", "remove window"),
        "chunk": Refusal("chunks bound causal self-attention; the encoder's output is read whole", "remove chunk"),
        "temperature_tuning": Refusal("Llama 4 tunes the temperature of causal NoPE self-attention",
                                      "remove temperature_tuning"),
        **{option: Refusal("masks beside a sliding window bound self-attention; the encoder's output is read whole",
                           f"remove {option}") for option in MASK_OPTIONS},
    }
    refused_options = {**_refuse_modern("differential", "the Differential Transformer's two softmax maps are defined "
                                                        "without these 2024–2026 options"),
                       **_refuse_masks("differential", "the Differential Transformer is defined with plain "
                                                       "sliding windows only")}
    refused_positions = {
        ("differential", "alibi"): Refusal("the Differential Transformer is defined with RoPE only",
                                           "use position = rope(...) with differential attention"),
        ("differential", "relative"): Refusal("the Differential Transformer is defined with RoPE only",
                                              "use position = rope(...) with differential attention"),
    }

    def params(self, a, shape):
        if a["kind"] != "differential":
            out = {}
            norm = a["qk_norm"]
            if norm and norm["kind"] != "l2":
                per_head = norm["scope"] == "head"
                widths = {"q": a["head_dim"] if per_head else a["heads"] * a["head_dim"],
                          "k": a["head_dim"] if per_head else a["kv_heads"] * a["head_dim"]}
                for x, width in widths.items():
                    out[f"{x}_norm"] = (width,)
                    if norm["kind"] == "layernorm":
                        out[f"{x}_norm_bias"] = (width,)
            if a["sinks"]:
                out["sinks"] = (a["heads"],)
            return out
        half = a["head_dim"] // 2  # each head holds two sub-heads
        return {"lambda_q1": (half,), "lambda_k1": (half,), "lambda_q2": (half,), "lambda_k2": (half,),
                "subln": (a["head_dim"],)}

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        heads, kv, hd = a["heads"], a["kv_heads"], a["head_dim"]
        if heads % kv:
            ctx.fail(node, f"heads ({heads}) must be divisible by kv_heads ({kv})")
        expected = [(heads + 2 * kv) * hd] if a["packed"] else [heads * hd, kv * hd, kv * hd]
        got = widths[: len(expected)]
        if got != expected:
            ctx.fail(node, f"attention expects q/k/v widths {expected}, gets {got}")
        _window_check(node, a, ctx)
        if a["window"] and a["dilation"] and ctx.context and cache_span(a["window"], a["dilation"]) > ctx.context:
            ctx.fail(node, f"a window of {a['window']} dilated {a['dilation']} times spans "
                           f"{cache_span(a['window'], a['dilation'])} positions, more than the context ({ctx.context})",
                     "a narrower window or a smaller dilation")
        rope = a["rope"]
        if rope and (rope["dim"] % 2 or rope["dim"] > hd):
            ctx.fail(node, f"rope rotates {rope['dim']} channels of a {hd}-wide head; it must be even and at most {hd}")

    def memory_inputs(self, d):
        return slice(1, 3) if d["attrs"]["cross"] else None

    def splits_heads(self, d):
        a = d["attrs"]
        # whole heads per shard, unless q/k/v are packed or a position input is indexed by all heads
        # nor where a weight spans all heads: a projection-wide q/k norm, one sink per head
        whole = (a["qk_norm"] or {}).get("scope") == "projection" or a["sinks"]
        return not (a["packed"] or a["cross"] or a["alibi"] or a["rel_bias"] or whole)

    def cost(self, d, ctx):
        a = d["attrs"]
        keys = attended(ctx.context, a["causal"], a["window"], a["chunk"], a["sink_tokens"] or 0, a["dilation"],
                        a["global_tokens"] or 0)
        cost = Cost(flops=2 * a["heads"] * (a["head_dim"] + a["head_dim"]) * keys)
        if a["causal"] and not a["cross"]:  # encoders and cross-attention do not grow a decode cache
            per_token = 2 * a["kv_heads"] * a["head_dim"] * ctx.nbytes
            cost.kv_bytes_per_token = per_token
            # a dilated window keeps the positions it spans; global tokens stay, as sink tokens do
            kept_first = (a["sink_tokens"] or 0) + (a["global_tokens"] or 0)
            cost.kv_bytes_at_context = per_token * cached(ctx.context, cache_span(a["window"], a["dilation"]),
                                                          a["chunk"], kept_first)
        return cost

    def saved(self, d, ctx):
        a = d["attrs"]
        maps = a["heads"] * (2 if a["kind"] == "differential" else 1)  # two softmax maps per differential head
        return _core_saved(maps, ctx, a["dropout"])

    def module(self, d, emit):
        a = d["attrs"]
        common = (f"{a['heads']}, {a['kv_heads']}, {a['head_dim']}, causal={a['causal']!r}, scale={a['scale']!r}, "
                  f"window={a['window']!r}, softcap={a['softcap']!r}, packed={a['packed']!r}{_modern_keywords(a)}")
        if a["kind"] == "differential":
            return (f"rt.DifferentialAttention({common}, layer={emit.layer}, lambda_init={a['lambda_init']!r}, "
                    f"cache_key={emit.cache_key})")
        dropout = f", dropout={a['dropout']!r}" if a["dropout"] else ""
        return f"rt.Attention({common}, cross={a['cross']!r}{dropout}, cache_key={emit.cache_key})"

    def call(self, d, args, emit):
        from . import REGISTRY

        n_qkv = 1 if d["attrs"]["packed"] else 3
        # inputs past q/k/v are position tables and biases, passed by keyword
        extras = [f"{REGISTRY[p['op']].attention_keyword(p)}={arg}"
                  for p, arg in zip(emit.producers[n_qkv:], args[n_qkv:])]
        return f"self.{d['name']}({', '.join(args[:n_qkv])}, ctx=ctx{''.join(', ' + e for e in extras)})"


def _modern_keywords(a) -> str:
    """The runtime keywords of the options that are set (none: the line stays as it was)."""
    words = []
    norm = a["qk_norm"]
    if norm:
        words.append(f"qk_norm={norm['kind']!r}")
        if norm["scope"] != "head":
            words.append(f"qk_norm_scope={norm['scope']!r}")
        words.append(f"qk_norm_eps={norm['eps']!r}")
        if norm["unit_offset"]:
            words.append("qk_norm_unit_offset=True")
        if norm.get("after_rope"):
            words.append("qk_norm_after_rope=True")
    if a["sinks"]:
        words.append("sinks=True")
    if a["chunk"]:
        words.append(f"chunk={a['chunk']!r}")
    if a["sink_tokens"]:
        words.append(f"sink_tokens={a['sink_tokens']!r}")
    if a["temperature"]:
        t = a["temperature"]
        words.append(f"temperature_tuning=True, floor_scale={t['floor_scale']!r}, attn_scale={t['attn_scale']!r}")
    if a["dilation"]:
        words.append(f"dilation={a['dilation']!r}")
    if a["global_tokens"]:
        words.append(f"global_tokens={a['global_tokens']!r}")
    return "".join(", " + w for w in words)


@register
class MLAttention(_Attention):
    name = "mla_attention"
    summary = "multi-head latent attention (DeepSeek-V2/V3): caches the compressed latent"
    attrs = {
        "heads": attr(int), "kv_lora_rank": attr(int), "rope_head_dim": attr(int), "nope_head_dim": attr(int),
        "v_head_dim": attr(int), "causal": attr(bool), "scale": attr(float), "window": attr(int, default=None),
        "softcap": attr(float, default=None), "rope": attr(bool, default=None, doc="a RoPE table input"),
        "norm_eps": attr(float),
        "top_k": attr(int, default=None, doc="attend to the keys a lightning indexer input keeps (its top_k)"),
    }
    arity = (2, 4)
    mixer_kinds = ("mla",)
    hf_params = {"kv_a_norm": "kv_a_layernorm.weight", "kv_b_proj": "kv_b_proj.weight"}
    refused_positions = {
        ("mla", "alibi"): Refusal("DeepSeek's latent attention takes its position from the shared rotary key",
                                  "use position = rope(...) with mla"),
        ("mla", "relative"): Refusal("DeepSeek's latent attention takes its position from the shared rotary key",
                                     "use position = rope(...) with mla"),
    }
    refused_options = {("mla", "bias"): Refusal("DeepSeek's latent attention projections have no bias", "remove bias"),
                       ("mla", "output_gate"): Refusal("DeepSeek's latent attention defines no output gate",
                                                       "remove output_gate, or use mha/gqa"),
                       **_refuse_modern("mla", "DeepSeek's latent attention rebuilds its keys from a cached latent "
                                               "and defines none of these options"),
                       **_refuse_masks("mla", "DeepSeek's latent attention is defined with plain sliding windows only")}

    def params(self, a, shape):
        return {"kv_a_norm": (a["kv_lora_rank"],),
                "kv_b_proj": (a["heads"] * (a["nope_head_dim"] + a["v_head_dim"]), a["kv_lora_rank"])}

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        expected = [a["heads"] * (a["nope_head_dim"] + a["rope_head_dim"]), a["kv_lora_rank"] + a["rope_head_dim"]]
        if widths[:2] != expected:
            ctx.fail(node, f"latent attention expects q/kv widths {expected}, gets {widths[:2]}")
        _window_check(node, a, ctx)

    def cost(self, d, ctx):
        a = d["attrs"]
        # an indexer's top_k bounds the keys a query attends as a window of top_k would
        keys = attended(ctx.context, a["causal"], a["window"] or a["top_k"])
        qk = a["nope_head_dim"] + a["rope_head_dim"]
        flops = 2 * a["heads"] * (qk + a["v_head_dim"]) * keys
        flops += 2 * a["kv_lora_rank"] * a["heads"] * (a["nope_head_dim"] + a["v_head_dim"])  # kv_b_proj
        per_token = (a["kv_lora_rank"] + a["rope_head_dim"]) * ctx.nbytes
        return Cost(flops=flops, kv_bytes_per_token=per_token,
                    kv_bytes_at_context=per_token * cached(ctx.context, a["window"]))

    def saved(self, d, ctx):
        # beside its inputs (queries and the latent), the keys and values it expands from the latent
        a = d["attrs"]
        expanded = a["heads"] * (a["nope_head_dim"] + a["rope_head_dim"] + a["v_head_dim"]) * ctx.nbytes
        return _core_saved(a["heads"], ctx, None, private=expanded)

    def module(self, d, emit):
        a = d["attrs"]
        return (f"rt.MLAttention({a['heads']}, {a['kv_lora_rank']}, {a['rope_head_dim']}, {a['nope_head_dim']}, "
                f"{a['v_head_dim']}, causal={a['causal']!r}, scale={a['scale']!r}, window={a['window']!r}, "
                f"softcap={a['softcap']!r}, norm_eps={a['norm_eps']!r}, cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        from . import REGISTRY

        # inputs past q and kv (the RoPE table, the indexer's keep mask) are passed by keyword
        extras = "".join(f", {REGISTRY[p['op']].attention_keyword(p)}={arg}"
                         for p, arg in zip(emit.producers[2:], args[2:]))
        return f"self.{d['name']}({args[0]}, {args[1]}{extras}, ctx=ctx)"


@register
class LinearAttention(_Attention):
    name = "linear_attention"
    summary = "linear attention with a feature map (elu + 1, relu, identity): a running state instead of a cache"
    attrs = {"heads": attr(int), "head_dim": attr(int), "causal": attr(bool),
             "kv_heads": attr(int, default=None, doc="key/value heads, each read by heads / kv_heads query heads; "
                                                     "None: heads"),
             "feature_map": attr(str, default=None, doc="relu | identity; None: elu + 1")}
    arity = (3, 3)
    mixer_kinds = ("linear",)
    refused_positions = {
        ("linear", "rope"): Refusal("linear attention is defined on unrotated features", _LINEAR_INSTEAD),
        ("linear", "alibi"): Refusal(f"linear attention {_NO_SCORES}", _LINEAR_INSTEAD),
        ("linear", "relative"): Refusal(f"linear attention {_NO_SCORES}", _LINEAR_INSTEAD),
    }
    refused_options = {
        ("linear", "window"): Refusal("linear attention keeps one running state over the whole past",
                                      "remove window, or use mha/gqa with a window"),
        ("linear", "softcap"): Refusal("linear attention has no scores to cap", "remove softcap"),
        ("linear", "scale"): Refusal("linear attention's feature maps have no score scale", "remove scale"),
        **_refuse_modern("linear", "linear attention has no softmax, cache or positions for these options to act on"),
        **_refuse_masks("linear", "linear attention keeps one running state over the whole past, with no mask"),
    }

    def params(self, a, shape):
        return {}

    @staticmethod
    def kv_heads(a) -> int:
        return a["kv_heads"] if a["kv_heads"] is not None else a["heads"]

    def verify(self, node, d, widths, ctx):
        a = d["attrs"]
        q_width, kv_width = a["heads"] * a["head_dim"], self.kv_heads(a) * a["head_dim"]
        if widths != [q_width, kv_width, kv_width]:
            ctx.fail(node, f"linear attention expects q/k/v widths {[q_width, kv_width, kv_width]}, gets {widths}")
        if a["heads"] % self.kv_heads(a):
            ctx.fail(node, f"linear attention: kv_heads ({self.kv_heads(a)}) must divide heads ({a['heads']})")
        if a["feature_map"] not in (None, "relu", "identity"):
            ctx.fail(node, f"linear attention: unknown feature map {a['feature_map']!r}")

    def cost(self, d, ctx):
        """The state update φ(k)ᵀv per key/value head and the readout φ(q)·S per query head
        (the normaliser's vectors are counted in the state, not the FLOPs)."""
        a = d["attrs"]
        hd, kv = a["head_dim"], self.kv_heads(a)
        return Cost(flops=2 * (kv + a["heads"]) * hd * hd, state_bytes=kv * hd * (hd + 1) * ctx.nbytes)

    def module(self, d, emit):
        a = d["attrs"]
        extra = f", kv_heads={a['kv_heads']}" if a["kv_heads"] is not None else ""
        extra += f", feature_map={a['feature_map']!r}" if a["feature_map"] is not None else ""
        return (f"rt.LinearAttention({a['heads']}, {a['head_dim']}, causal={a['causal']!r}{extra}, "
                f"cache_key={emit.cache_key})")

    def call(self, d, args, emit):
        return f"self.{d['name']}({', '.join(args)}, ctx=ctx)"

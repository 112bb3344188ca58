"""Weight names between Hugging Face transformers and archlang, as reversible rules.

Each rule ties one or more HF tensors to one or more archlang tensors (archlang's unfused names:
q_proj, gate_proj, ...) with a transform that runs both ways, so one table serves importing HF
checkpoints and writing checkpoints HF can load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from archlang.compiler.ops import op_def
from archlang.spec.errors import ArchError


@dataclass(frozen=True)
class Rule:
    ours: tuple[str, ...]
    theirs: tuple[str, ...]
    kind: str = "same"  # same | transpose | split | cat | permute
    arg: Any = None

    def to_ours(self, t: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.kind == "same":
            return t
        if self.kind == "transpose":
            return [t[0].t().contiguous()]
        if self.kind == "split":  # one HF tensor (Conv1D layout when arg[1]) → several of ours
            sizes, conv1d = self.arg
            w = t[0].t() if conv1d else t[0]
            return [p.contiguous() for p in w.split(sizes, dim=0)]
        if self.kind == "cat":
            return [torch.cat(t, dim=0)]
        if self.kind == "permute":
            return [_permute(t[0], *self.arg, inverse=False)]
        if self.kind == "stack":  # one tensor per expert → (E, ...)
            return [torch.stack(t)]
        if self.kind == "stack_glu":  # gate_0..gate_E-1, up_0..up_E-1 → (E, 2h, d)
            e = len(t) // 2
            return [torch.cat((torch.stack(t[:e]), torch.stack(t[e:])), dim=1)]
        if self.kind == "experts_t":  # (E, in, out), input-major → (E, out, in)
            return [t[0].transpose(1, 2).contiguous()]
        if self.kind == "deinterleave":  # gate, up alternating along the last dim → gate then up; arg: also experts_t
            w = torch.cat((t[0][..., 0::2], t[0][..., 1::2]), dim=-1)
            return [w.transpose(1, 2).contiguous() if self.arg else w]
        if self.kind == "reshape":  # HF's tensor of shape `arg` → ours, flat
            return [t[0].reshape(-1)]
        if self.kind == "qkv_per_head":  # rows [q_h, k_h, v_h] for each head h (GPT-NeoX) → q, k, v
            w = t[0].reshape(self.arg, 3, -1, *t[0].shape[1:])
            return [w[:, j].reshape(-1, *t[0].shape[1:]).contiguous() for j in range(3)]
        if self.kind == "per_head":  # arg (groups, sizes): rows [part_0, part_1, ...] for each group → parts
            groups, sizes = self.arg
            w = t[0].reshape(groups, sum(sizes), *t[0].shape[1:])
            return [x.reshape(-1, *t[0].shape[1:]).contiguous() for x in w.split(sizes, dim=1)]
        raise AssertionError(self.kind)

    def to_theirs(self, t: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.kind == "same":
            return t
        if self.kind == "transpose":
            return [t[0].t().contiguous()]
        if self.kind == "split":
            sizes, conv1d = self.arg
            w = torch.cat(t, dim=0)
            return [w.t().contiguous() if conv1d else w]
        if self.kind == "cat":
            return [p.contiguous() for p in t[0].split(self.arg, dim=0)]
        if self.kind == "permute":
            return [_permute(t[0], *self.arg, inverse=True)]
        if self.kind == "stack":
            return [x.contiguous() for x in t[0].unbind(0)]
        if self.kind == "stack_glu":
            gate, up = t[0].chunk(2, dim=1)
            return [x.contiguous() for x in (*gate.unbind(0), *up.unbind(0))]
        if self.kind == "experts_t":
            return [t[0].transpose(1, 2).contiguous()]
        if self.kind == "deinterleave":
            w = t[0].transpose(1, 2) if self.arg else t[0]
            gate, up = w.chunk(2, dim=-1)
            return [torch.stack((gate, up), dim=-1).flatten(-2).contiguous()]
        if self.kind == "reshape":
            return [t[0].reshape(self.arg)]
        if self.kind == "qkv_per_head":
            rest = t[0].shape[1:]
            w = torch.stack([x.reshape(self.arg, -1, *rest) for x in t], dim=1)
            return [w.reshape(-1, *rest).contiguous()]
        if self.kind == "per_head":
            groups, sizes = self.arg
            rest = t[0].shape[1:]
            w = torch.cat([x.reshape(groups, size, *rest) for x, size in zip(t, sizes)], dim=1)
            return [w.reshape(-1, *rest).contiguous()]
        raise AssertionError(self.kind)


def _permute(w: torch.Tensor, heads: int, offset: int, width: int, rope: int, inverse: bool) -> torch.Tensor:
    """DeepSeek rotates channel pairs (2i, 2i+1); archlang rotates halves (i, i + rope/2): the same
    rotation after permuting the rope channels, which changes neither q·k nor the output. The rope
    rows [offset, offset + rope) of each of `heads` row groups of `width` are reordered."""
    order = torch.cat((torch.arange(0, rope, 2), torch.arange(1, rope, 2)))
    if inverse:
        order = torch.argsort(order)
    w = w.clone()
    groups = w.view(heads, width, *w.shape[1:])
    groups[:, offset:offset + rope] = groups[:, offset:offset + rope][:, order]
    return w


class _Rules:
    """Collects the rules of one model, keeping only those whose HF tensors exist."""

    def __init__(self, hf_keys: set[str], on_disk: bool = False):
        self.keys = hf_keys
        self.on_disk = on_disk  # write the layout of HF checkpoint files rather than of its modules
        self.rules: list[Rule] = []

    def add(self, ours, theirs, kind: str = "same", arg: Any = None, assume: bool = False) -> None:
        ours = (ours,) if isinstance(ours, str) else tuple(ours)
        theirs = (theirs,) if isinstance(theirs, str) else tuple(theirs)
        if assume or all(t in self.keys for t in theirs):
            self.rules.append(Rule(ours, theirs, kind, arg))

    def op(self, op: str, ours: str, theirs: str) -> None:
        """The weights of one op (our node `ours`) under the names its definition gives them in
        HF's module of that op (at `theirs`); those a checkpoint lacks are skipped."""
        for mine, hf in op_def(op).hf_params.items():
            self.add(f"{ours}.{mine}", f"{theirs}.{hf}")

    def linear(self, ours: str, theirs: str) -> None:
        self.op("linear", ours, theirs)


def _llama_family(c, r: _Rules) -> None:
    t = c.model_type
    r.add("embed.weight", "model.embed_tokens.weight")
    r.add("final_norm.weight", "model.final_layernorm.weight" if t == "jamba" else "model.norm.weight")
    if not getattr(c, "tie_word_embeddings", False):
        r.add("lm_head.weight", "lm_head.weight")
    for i in range(c.num_hidden_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            r.linear(f"{p}{n}", f"{q}self_attn.{n}")
        if t == "phi3":  # q, k, v stacked in one projection, gate and up in another
            hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
            sizes = [c.num_attention_heads * hd, c.num_key_value_heads * hd, c.num_key_value_heads * hd]
            r.add([f"{p}q_proj.weight", f"{p}k_proj.weight", f"{p}v_proj.weight"], f"{q}self_attn.qkv_proj.weight",
                  "split", (sizes, False))
            r.add([f"{p}gate_proj.weight", f"{p}up_proj.weight"], f"{q}mlp.gate_up_proj.weight", "split",
                  ([c.intermediate_size] * 2, False))
        for n in ("q_norm", "k_norm"):  # QK-norm (Qwen3, OLMo 2, Gemma 3): weights of the attention core
            r.add(f"{p}attn.{n}", f"{q}self_attn.{n}.weight")
        mixer_norm = "attn_norm"
        if f"{q}mamba.in_proj.weight" in r.keys:
            mixer_norm = "ssm_norm"
            r.op("ssm", f"{p}ssm", f"{q}mamba")
        r.add(f"{p}{mixer_norm}.weight", f"{q}input_layernorm.weight")
        if t in ("olmo2", "olmo3", "exaone4"):  # norms on the branches' outputs only
            r.add(f"{p}attn_post_norm.weight", f"{q}post_attention_layernorm.weight")
            r.add(f"{p}ffn_post_norm.weight", f"{q}post_feedforward_layernorm.weight")
        elif t in ("gemma2", "gemma3_text"):
            r.add(f"{p}attn_post_norm.weight", f"{q}post_attention_layernorm.weight")
            r.add(f"{p}ffn_norm.weight", f"{q}pre_feedforward_layernorm.weight")
            r.add(f"{p}ffn_post_norm.weight", f"{q}post_feedforward_layernorm.weight")
        elif t == "jamba":
            r.add(f"{p}ffn_norm.weight", f"{q}pre_ff_layernorm.weight")
        else:
            r.add(f"{p}ffn_norm.weight", f"{q}post_attention_layernorm.weight")
        mlp = f"{q}feed_forward." if t == "jamba" else f"{q}mlp."
        for n in ("gate_proj", "up_proj", "down_proj"):
            r.linear(f"{p}{n}", f"{mlp}{n}")
        r.add(f"{p}moe.router", f"{mlp}router.weight" if t == "jamba" else f"{mlp}gate.weight")
        _experts(c, r, p, mlp, f"{q}block_sparse_moe." if t == "mixtral" else mlp)
        shared = f"{mlp}shared_expert." if t == "qwen2_moe" else f"{mlp}shared_experts."
        if f"{shared}gate_proj.weight" in r.keys:
            hidden = c.shared_expert_intermediate_size if t == "qwen2_moe" else c.moe_intermediate_size * (
                c.moe_num_shared_experts if t == "ernie4_5_moe" else c.n_shared_experts)
            r.add(f"{p}moe.shared_gate_up", (f"{shared}gate_proj.weight", f"{shared}up_proj.weight"), "cat", [hidden, hidden])
            r.add(f"{p}moe.shared_down", f"{shared}down_proj.weight")
        r.add(f"{p}moe.shared_gate", f"{mlp}shared_expert_gate.weight")


def _experts(c, r: _Rules, p: str, mlp: str, legacy: str) -> None:
    """Experts are one stacked tensor in transformers' modules but one tensor per expert in its
    checkpoint files (Mixtral's named w1, w3, w2, under block_sparse_moe)."""
    fused = f"{mlp}experts.gate_up_proj"
    mixtral = c.model_type in ("mixtral", "minimax")  # minimax's checkpoint files use Mixtral's names
    e = getattr(c, "num_local_experts", None) or getattr(c, "num_experts", None) or getattr(c, "n_routed_experts", None)
    names = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
    per = [[f"{legacy}experts.{j}.{n}.weight" for j in range(e or 0)] for n in names]
    if not r.on_disk:
        r.add(f"{p}moe.experts_gate_up", fused)
        r.add(f"{p}moe.experts_down", f"{mlp}experts.down_proj")
    has_moe = fused in r.keys or (per[0] and per[0][0] in r.keys)
    if e and has_moe and (r.on_disk or per[0][0] in r.keys):
        r.add(f"{p}moe.experts_gate_up", per[0] + per[1], "stack_glu", assume=True)
        r.add(f"{p}moe.experts_down", per[2], "stack", assume=True)
        if mixtral:
            r.add(f"{p}moe.router", f"{legacy}gate.weight", assume=r.on_disk)


def _deepseek_v2(c, r: _Rules) -> None:
    """DeepSeek-V2 and V3 (same names; V3 adds the router's correction bias)."""
    _llama_family(c, r)  # embeddings, norms, FFN and MoE share Llama's names
    heads, nope, rope, v = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
    # V2 always rotates channel pairs; V3 does unless rope_interleave is off (then halves, as archlang)
    pairs = getattr(c, "rope_interleave", True)
    for i in range(c.num_hidden_layers):
        p, a = f"layers.{i}.", f"model.layers.{i}.self_attn."
        r.add(f"{p}moe.e_score_correction_bias", f"model.layers.{i}.mlp.gate.e_score_correction_bias")
        q_perm = (heads, nope, nope + rope, rope)
        kind = "permute" if pairs else "same"
        r.add(f"{p}q_proj.weight", f"{a}q_proj.weight", kind, q_perm if pairs else None)
        r.add(f"{p}q_a_proj.weight", f"{a}q_a_proj.weight")
        r.add(f"{p}q_a_norm.weight", f"{a}q_a_layernorm.weight")
        r.add(f"{p}q_b_proj.weight", f"{a}q_b_proj.weight", kind, q_perm if pairs else None)
        r.add(f"{p}kv_a_proj.weight", f"{a}kv_a_proj_with_mqa.weight", kind,
              (1, c.kv_lora_rank, c.kv_lora_rank + rope, rope) if pairs else None)
        r.op("mla_attention", f"{p}attn", a.rstrip("."))
        r.add(f"{p}o_proj.weight", f"{a}o_proj.weight")
    del v


def _deepseek_v32(c, r: _Rules) -> None:
    """DeepSeek-V3's names, and each layer's lightning indexer (half-split RoPE: no permutation)."""
    _deepseek_v2(c, r)
    for i in range(c.num_hidden_layers):
        r.op("lightning_indexer", f"layers.{i}.indexer", f"model.layers.{i}.self_attn.indexer")


def _glm4_moe(c, r: _Rules) -> None:
    _llama_family(c, r)  # Llama's names, DeepSeek-V3's MoE
    for i in range(c.num_hidden_layers):
        r.add(f"layers.{i}.moe.e_score_correction_bias", f"model.layers.{i}.mlp.gate.e_score_correction_bias")


def _attention_and_norms(c, r: _Rules, i: int, ffn: str, pairs: bool = False) -> tuple[str, str]:
    """Llama's names for one layer's attention projections (with their biases) and its two
    norms; the FFN's module is `ffn` (mlp, feed_forward). `pairs`: HF rotates channel pairs
    (2i, 2i+1) of each head and archlang halves, so q and k rows are permuted per head, which
    changes neither q·k nor a per-head norm."""
    p, q = f"layers.{i}.", f"model.layers.{i}."
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        heads = {"q_proj": c.num_attention_heads, "k_proj": c.num_key_value_heads}.get(n)
        if pairs and heads:
            for t in ("weight", "bias"):
                r.add(f"{p}{n}.{t}", f"{q}self_attn.{n}.{t}", "permute", (heads, 0, c.head_dim, c.head_dim))
        else:
            r.linear(f"{p}{n}", f"{q}self_attn.{n}")
    r.add(f"{p}attn_norm.weight", f"{q}input_layernorm.weight")
    r.add(f"{p}ffn_norm.weight", f"{q}post_attention_layernorm.weight")
    return p, f"{q}{ffn}."


def _embeddings_and_head(c, r: _Rules) -> None:
    r.add("embed.weight", "model.embed_tokens.weight")
    r.add("final_norm.weight", "model.norm.weight")
    if not c.tie_word_embeddings:
        r.add("lm_head.weight", "lm_head.weight")


def _gpt_oss(c, r: _Rules) -> None:
    """gpt-oss keeps its experts input-major, (E, d, 2h) and (E, h, d), with gate and up
    interleaved along 2h (gate = [..., 0::2]), in its modules and its bf16 checkpoints alike."""
    _embeddings_and_head(c, r)
    for i in range(c.num_hidden_layers):
        p, mlp = _attention_and_norms(c, r, i, "mlp")
        r.add(f"{p}attn.sinks", f"model.layers.{i}.self_attn.sinks")
        r.add(f"{p}moe.router", f"{mlp}router.weight")
        r.add(f"{p}moe.router_bias", f"{mlp}router.bias")
        r.add(f"{p}moe.experts_gate_up", f"{mlp}experts.gate_up_proj", "deinterleave", True)
        r.add(f"{p}moe.experts_gate_up_bias", f"{mlp}experts.gate_up_proj_bias", "deinterleave", False)
        r.add(f"{p}moe.experts_down", f"{mlp}experts.down_proj", "experts_t")
        r.add(f"{p}moe.experts_down_bias", f"{mlp}experts.down_proj_bias")


def _llama4_text(c, r: _Rules) -> None:
    """Llama 4: interleaved RoPE pairs (q and k permuted to halves, the weightless L2 norm is
    per head), experts input-major, (E, d, 2h) and (E, h, d), gate then up."""
    _embeddings_and_head(c, r)
    for i in range(c.num_hidden_layers):
        p, ffn = _attention_and_norms(c, r, i, "feed_forward", pairs=True)
        for n in ("gate_proj", "up_proj", "down_proj"):
            r.linear(f"{p}{n}", f"{ffn}{n}")
        r.add(f"{p}moe.router", f"{ffn}router.weight")
        r.add(f"{p}moe.experts_gate_up", f"{ffn}experts.gate_up_proj", "experts_t")
        r.add(f"{p}moe.experts_down", f"{ffn}experts.down_proj", "experts_t")
        shared = f"{ffn}shared_expert."
        r.add(f"{p}moe.shared_gate_up", (f"{shared}gate_proj.weight", f"{shared}up_proj.weight"), "cat",
              [c.intermediate_size, c.intermediate_size])
        r.add(f"{p}moe.shared_down", f"{shared}down_proj.weight")


def _ernie4_5_moe(c, r: _Rules) -> None:
    """Llama's names; the correction bias is a (1, E) tensor; q and k are permuted so that
    archlang's half-split RoPE computes ERNIE's rotation of channel pairs (2i, 2i+1)."""
    _llama_family(c, r)
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    pairs = {f"layers.{i}.{n}.weight" for i in range(c.num_hidden_layers) for n in ("q_proj", "k_proj")}
    r.rules = [x for x in r.rules if x.ours[0] not in pairs]
    for i in range(c.num_hidden_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        for n, heads in (("q_proj", c.num_attention_heads), ("k_proj", c.num_key_value_heads)):
            r.add(f"{p}{n}.weight", f"{q}self_attn.{n}.weight", "permute", (heads, 0, hd, hd))
        # the module holds it under the router (gate); checkpoint files beside it
        module, disk = f"{q}mlp.gate.moe_statics.e_score_correction_bias", f"{q}mlp.moe_statics.e_score_correction_bias"
        if not r.on_disk:
            r.add(f"{p}moe.e_score_correction_bias", module, "reshape", (1, c.num_experts))
        has_moe = f"{q}mlp.gate.weight" in r.keys
        r.add(f"{p}moe.e_score_correction_bias", disk, "reshape", (1, c.num_experts), assume=r.on_disk and has_moe)


def _hunyuan_v1_moe(c, r: _Rules) -> None:
    """Llama's names, with Hunyuan's QK-norm, router and shared MLP names."""
    _llama_family(c, r)
    for i in range(c.num_hidden_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        r.add(f"{p}attn.q_norm", f"{q}self_attn.query_layernorm.weight")
        r.add(f"{p}attn.k_norm", f"{q}self_attn.key_layernorm.weight")
        r.add(f"{p}moe.router", f"{q}mlp.gate.wg.weight")
        shared = f"{q}mlp.shared_mlp."
        r.add(f"{p}moe.shared_gate_up", (f"{shared}gate_proj.weight", f"{shared}up_proj.weight"), "cat",
              [c.intermediate_size] * 2)
        r.add(f"{p}moe.shared_down", f"{shared}down_proj.weight")


def _starcoder2(c, r: _Rules) -> None:
    r.add("embed.weight", "model.embed_tokens.weight")
    r.linear("final_norm", "model.norm")
    if not c.tie_word_embeddings:
        r.add("lm_head.weight", "lm_head.weight")
    for i in range(c.num_hidden_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        for ours, theirs in (("q_proj", "self_attn.q_proj"), ("k_proj", "self_attn.k_proj"),
                             ("v_proj", "self_attn.v_proj"), ("o_proj", "self_attn.o_proj"),
                             ("up_proj", "mlp.c_fc"), ("down_proj", "mlp.c_proj"),
                             ("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            r.linear(f"{p}{ours}", f"{q}{theirs}")


def _granitemoe(c, r: _Rules) -> None:
    """Llama's names, and experts stacked as HF's modules hold them (gate and up halves in one
    (E, 2I, D) tensor, as archlang's); checkpoint files name them input_linear / output_linear."""
    _llama_family(c, r)
    for i in range(c.num_hidden_layers):
        p, q = f"layers.{i}.moe.", f"model.layers.{i}.block_sparse_moe."
        for ours, module, disk in (("router", "router.weight", "router.layer.weight"),
                                   ("experts_gate_up", "experts.gate_up_proj", "input_linear.weight"),
                                   ("experts_down", "experts.down_proj", "output_linear.weight")):
            r.add(f"{p}{ours}", f"{q}{module}")
            r.add(f"{p}{ours}", f"{q}{disk}")


def _gpt_neox(c, r: _Rules) -> None:
    r.add("embed.weight", "gpt_neox.embed_in.weight")
    r.linear("final_norm", "gpt_neox.final_layer_norm")
    if not c.tie_word_embeddings:
        r.add("lm_head.weight", "lm_head.weight")
        r.add("lm_head.weight", "embed_out.weight")  # the name in checkpoint files
    for i in range(c.num_hidden_layers):
        p, q = f"layers.{i}.", f"gpt_neox.layers.{i}."
        # query_key_value interleaves the heads: its rows are [q_0, k_0, v_0, q_1, k_1, v_1, ...]
        for part in ("weight", "bias"):
            r.add([f"{p}q_proj.{part}", f"{p}k_proj.{part}", f"{p}v_proj.{part}"],
                  f"{q}attention.query_key_value.{part}", "qkv_per_head", c.num_attention_heads)
        for ours, theirs in (("o_proj", "attention.dense"), ("up_proj", "mlp.dense_h_to_4h"),
                             ("down_proj", "mlp.dense_4h_to_h"), ("attn_norm", "input_layernorm"),
                             ("ffn_norm", "post_attention_layernorm")):
            r.linear(f"{p}{ours}", f"{q}{theirs}")


def _gpt2(c, r: _Rules) -> None:
    r.add("embed.weight", "transformer.wte.weight")
    r.add("pos_embed.weight", "transformer.wpe.weight")
    r.linear("final_norm", "transformer.ln_f")
    d = c.n_embd
    for i in range(c.n_layer):
        p, q = f"layers.{i}.", f"transformer.h.{i}."
        r.linear(f"{p}attn_norm", f"{q}ln_1")
        r.linear(f"{p}ffn_norm", f"{q}ln_2")
        # Conv1D stores (in, out); c_attn stacks q, k and v
        r.add([f"{p}q_proj.weight", f"{p}k_proj.weight", f"{p}v_proj.weight"], f"{q}attn.c_attn.weight", "split", ([d] * 3, True))
        r.add([f"{p}q_proj.bias", f"{p}k_proj.bias", f"{p}v_proj.bias"], f"{q}attn.c_attn.bias", "split", ([d] * 3, False))
        for ours, theirs in (("o_proj", "attn.c_proj"), ("up_proj", "mlp.c_fc"), ("down_proj", "mlp.c_proj")):
            r.add(f"{p}{ours}.weight", f"{q}{theirs}.weight", "transpose")
            r.add(f"{p}{ours}.bias", f"{q}{theirs}.bias")


def _bert_embeddings(r: _Rules, pre: str) -> None:
    """BERT's embeddings (word, position, token type, their LayerNorm), as its descendants keep them."""
    r.add("embed.weight", f"{pre}embeddings.word_embeddings.weight")
    r.add("pos_embed.weight", f"{pre}embeddings.position_embeddings.weight")
    r.add("type_embed.weight", f"{pre}embeddings.token_type_embeddings.weight")
    r.linear("embed_norm", f"{pre}embeddings.LayerNorm")


def _bert_layers(c, r: _Rules, pre: str) -> None:
    """BERT's post-norm encoder layers (ELECTRA keeps the same names)."""
    for i in range(c.num_hidden_layers):
        p, q = f"layers.{i}.", f"{pre}encoder.layer.{i}."
        for ours, theirs in (("q_proj", "attention.self.query"), ("k_proj", "attention.self.key"),
                             ("v_proj", "attention.self.value"), ("o_proj", "attention.output.dense"),
                             ("attn_norm", "attention.output.LayerNorm"), ("up_proj", "intermediate.dense"),
                             ("down_proj", "output.dense"), ("ffn_norm", "output.LayerNorm")):
            r.linear(f"{p}{ours}", f"{q}{theirs}")


def _bert(c, r: _Rules) -> None:
    pre = "bert." if any(k.startswith("bert.") for k in r.keys) else ""
    _bert_embeddings(r, pre)
    r.op("pooler", "pooler", f"{pre}pooler")
    for mine, hf in op_def("mlm_head").hf_params.items():  # BertForMaskedLM's prediction head (tied)
        if mine != "decoder_weight":  # the embedding table itself
            r.add(f"mlm_head.{mine}", f"cls.predictions.{hf}")
    r.op("classifier", "classifier", "classifier")  # BertForSequenceClassification
    _bert_layers(c, r, pre)


def _albert(c, r: _Rules) -> None:
    pre = "albert." if any(k.startswith("albert.") for k in r.keys) else ""
    _bert_embeddings(r, pre)
    r.linear("embed_proj", f"{pre}encoder.embedding_hidden_mapping_in")
    r.linear("pooler", f"{pre}pooler")
    # the one shared layer: every use reads these weights (its other names are aliases)
    q = f"{pre}encoder.albert_layer_groups.0.albert_layers.0."
    for ours, theirs in (("q_proj", "attention.query"), ("k_proj", "attention.key"), ("v_proj", "attention.value"),
                         ("o_proj", "attention.dense"), ("attn_norm", "attention.LayerNorm"), ("up_proj", "ffn"),
                         ("down_proj", "ffn_output"), ("ffn_norm", "full_layer_layer_norm")):
        r.linear(f"layers.0.{ours}", f"{q}{theirs}")
    for mine, theirs in (("dense_weight", "dense.weight"), ("dense_bias", "dense.bias"),
                         ("norm_weight", "LayerNorm.weight"), ("norm_bias", "LayerNorm.bias"), ("bias", "bias")):
        r.add(f"mlm_head.{mine}", f"predictions.{theirs}")  # AlbertForMaskedLM (its decoder: the embeddings)
    r.op("classifier", "classifier", "classifier")


def _deberta_v2(c, r: _Rules) -> None:
    pre = "deberta." if any(k.startswith("deberta.") for k in r.keys) else ""
    _bert_embeddings(r, pre)
    r.op("rel_embedding", "layers_rel_embed", f"{pre}encoder")
    for mine, hf in op_def("mlm_head").hf_params.items():  # the legacy head (cls.predictions), or lm_predictions
        if mine != "decoder_weight":
            r.add(f"mlm_head.{mine}", f"cls.predictions.{hf}")
            r.add(f"mlm_head.{mine}", f"lm_predictions.lm_head.{hf.removeprefix('transform.')}")
    r.linear("pooler", "pooler.dense")  # the ContextPooler of DebertaV2ForSequenceClassification
    r.op("classifier", "classifier", "classifier")
    for i in range(c.num_hidden_layers):
        p, q = f"layers.{i}.", f"{pre}encoder.layer.{i}."
        projections = (("o_proj", "attention.output.dense"), ("attn_norm", "attention.output.LayerNorm"),
                       ("up_proj", "intermediate.dense"), ("down_proj", "output.dense"), ("ffn_norm", "output.LayerNorm"))
        if c.relative_attention:  # the disentangled attention holds q/k/v and the position projections
            r.op("disentangled_attention", f"{p}attn", f"{q}attention.self")
        else:  # without relative terms it is mha with plain projections
            projections += (("q_proj", "attention.self.query_proj"), ("k_proj", "attention.self.key_proj"),
                            ("v_proj", "attention.self.value_proj"))
        for ours, theirs in projections:
            r.linear(f"{p}{ours}", f"{q}{theirs}")


def _electra(c, r: _Rules) -> None:
    pre = "electra." if any(k.startswith("electra.") for k in r.keys) else ""
    _bert_embeddings(r, pre)
    r.linear("embed_proj", f"{pre}embeddings_project")  # where embedding_size differs from hidden_size
    _bert_layers(c, r, pre)
    r.op("rtd_head", "rtd_head", "discriminator_predictions")  # ElectraForPreTraining
    for mine, theirs in (("dense_weight", "generator_predictions.dense.weight"),  # ElectraForMaskedLM
                         ("dense_bias", "generator_predictions.dense.bias"),
                         ("norm_weight", "generator_predictions.LayerNorm.weight"),
                         ("norm_bias", "generator_predictions.LayerNorm.bias"), ("bias", "generator_lm_head.bias")):
        r.add(f"mlm_head.{mine}", theirs)
    if not c.tie_word_embeddings:  # tied, generator_lm_head.weight is the embedding table
        r.add("mlm_head.decoder_weight", "generator_lm_head.weight")
    r.op("mlp_classifier", "classifier", "classifier")  # ElectraForSequenceClassification


def _modernbert(c, r: _Rules) -> None:
    pre = "model." if any(k.startswith("model.") for k in r.keys) else ""
    d, hidden = c.hidden_size, c.intermediate_size
    r.add("embed.weight", f"{pre}embeddings.tok_embeddings.weight")
    r.linear("embed_norm", f"{pre}embeddings.norm")
    r.linear("final_norm", f"{pre}final_norm")
    for i in range(c.num_hidden_layers):
        p, q = f"layers.{i}.", f"{pre}layers.{i}."
        for part in ("weight", "bias"):
            # Wqkv's rows are q, k, v in turn (viewed as (3, heads, head_dim)); Wi's are the activated
            # half ("input") then the multiplier ("gate"): archlang's gate_proj then up_proj
            r.add([f"{p}q_proj.{part}", f"{p}k_proj.{part}", f"{p}v_proj.{part}"], f"{q}attn.Wqkv.{part}", "split",
                  ([d] * 3, False))
            r.add([f"{p}gate_proj.{part}", f"{p}up_proj.{part}"], f"{q}mlp.Wi.{part}", "split", ([hidden] * 2, False))
        for ours, theirs in (("attn_norm", "attn_norm"), ("o_proj", "attn.Wo"), ("ffn_norm", "mlp_norm"),
                             ("down_proj", "mlp.Wo")):
            r.linear(f"{p}{ours}", f"{q}{theirs}")
    # ModernBertPredictionHead, before the decoder (ForMaskedLM) or the classifier
    head = "head_transform" if "classifier.weight" in r.keys else "mlm_head"
    for mine, theirs in op_def("head_transform").hf_params.items():
        r.add(f"{head}.{mine}", f"head.{theirs}")
    r.add("mlm_head.bias", "decoder.bias")
    if not c.tie_word_embeddings:
        r.add("mlm_head.decoder_weight", "decoder.weight")
    r.op("classifier", "classifier", "classifier")


def _t5(c, r: _Rules) -> None:
    r.add("embed.weight", "shared.weight")
    for stack in ("encoder", "decoder"):
        r.add(f"{stack}_rel_bias.weight", f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        r.add(f"{stack}_final_norm.weight", f"{stack}.final_layer_norm.weight")
    layers = {"encoder": c.num_layers, "decoder": c.num_decoder_layers or c.num_layers}
    for stack, n in layers.items():
        for i in range(n):
            p, q = f"{stack}.{i}.", f"{stack}.block.{i}.layer."
            subs = [("", "0.SelfAttention", "attn_norm")]
            if stack == "decoder":
                subs.append(("cross_", "1.EncDecAttention", "cross_norm"))
            for prefix, theirs, norm in subs:
                for n_ in ("q", "k", "v", "o"):
                    r.add(f"{p}{prefix}{n_}_proj.weight", f"{q}{theirs}.{n_}.weight")
                r.add(f"{p}{norm}.weight", f"{q}{theirs.split('.')[0]}.layer_norm.weight")
            ff = "2" if stack == "decoder" else "1"
            r.add(f"{p}up_proj.weight", f"{q}{ff}.DenseReluDense.wi.weight")
            r.add(f"{p}gate_proj.weight", f"{q}{ff}.DenseReluDense.wi_0.weight")
            r.add(f"{p}up_proj.weight", f"{q}{ff}.DenseReluDense.wi_1.weight")
            r.add(f"{p}down_proj.weight", f"{q}{ff}.DenseReluDense.wo.weight")
            r.add(f"{p}ffn_norm.weight", f"{q}{ff}.layer_norm.weight")


def _mamba2(c, r: _Rules) -> None:
    r.add("embed.weight", "backbone.embeddings.weight")
    r.add("final_norm.weight", "backbone.norm_f.weight")
    if not getattr(c, "tie_word_embeddings", False):
        r.add("lm_head.weight", "lm_head.weight")
    for i in range(c.num_hidden_layers):
        p, q = f"layers.{i}.", f"backbone.layers.{i}."
        r.add(f"{p}ssm_norm.weight", f"{q}norm.weight")
        r.op("mamba2", f"{p}ssm", f"{q}mixer")


def _mamba1(c, r: _Rules) -> None:
    """Mamba-1 and Falcon-Mamba: Mamba-2's layout with the Mamba mixer. Falcon-Mamba's inner norms
    hold only non-persistent buffers of ones, never read: they map to nothing."""
    r.add("embed.weight", "backbone.embeddings.weight")
    r.add("final_norm.weight", "backbone.norm_f.weight")
    if not getattr(c, "tie_word_embeddings", False):
        r.add("lm_head.weight", "lm_head.weight")
    inner_norms = ("dt_norm", "b_norm", "c_norm")
    for i in range(c.num_hidden_layers):
        p, q = f"layers.{i}.", f"backbone.layers.{i}."
        r.add(f"{p}ssm_norm.weight", f"{q}norm.weight")
        for mine, hf in op_def("ssm").hf_params.items():
            if mine not in inner_norms:
                r.add(f"{p}ssm.{mine}", f"{q}mixer.{hf}")


def _qwen3_next(c, r: _Rules) -> None:
    """Qwen3-Next: Llama's embeddings and norms; the full-attention layers' q_proj holds each head's
    query and output gate side by side; the linear-attention layers' in_proj_qkvz and in_proj_ba
    hold q, k, v, z and b, a side by side for each key head; Qwen2-MoE's experts and gated shared
    expert."""
    _embeddings_and_head(c, r)
    hd, heads = c.head_dim, c.num_attention_heads
    kh, group = c.linear_num_key_heads, c.linear_num_value_heads // c.linear_num_key_heads
    dk, dv = c.linear_key_head_dim, c.linear_value_head_dim
    for i, kind in enumerate(c.layer_types):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        if kind == "linear_attention":
            a = f"{q}linear_attn."
            r.add([f"{p}ssm.{n}" for n in ("q_proj", "k_proj", "v_proj", "z_proj")], f"{a}in_proj_qkvz.weight",
                  "per_head", (kh, [dk, dk, group * dv, group * dv]))
            r.add([f"{p}ssm.b_proj", f"{p}ssm.a_proj"], f"{a}in_proj_ba.weight", "per_head", (kh, [group, group]))
            for ours, theirs in (("conv_weight", "conv1d.weight"), ("A_log", "A_log"), ("dt_bias", "dt_bias"),
                                 ("norm_weight", "norm.weight"), ("out_proj", "out_proj.weight")):
                r.add(f"{p}ssm.{ours}", f"{a}{theirs}")
            r.add(f"{p}ssm_norm.weight", f"{q}input_layernorm.weight")
        else:
            a = f"{q}self_attn."
            for t in ("weight", "bias"):
                r.add([f"{p}q_proj.{t}", f"{p}attn_gate_proj.{t}"], f"{a}q_proj.{t}", "per_head", (heads, [hd, hd]))
            for n in ("k_proj", "v_proj", "o_proj"):
                r.linear(f"{p}{n}", f"{a}{n}")
            for n in ("q_norm", "k_norm"):
                r.add(f"{p}attn.{n}", f"{a}{n}.weight")
            r.add(f"{p}attn_norm.weight", f"{q}input_layernorm.weight")
        r.add(f"{p}ffn_norm.weight", f"{q}post_attention_layernorm.weight")
        mlp = f"{q}mlp."
        for n in ("gate_proj", "up_proj", "down_proj"):
            r.linear(f"{p}{n}", f"{mlp}{n}")
        r.add(f"{p}moe.router", f"{mlp}gate.weight")
        _experts(c, r, p, mlp, mlp)
        shared, hidden = f"{mlp}shared_expert.", c.shared_expert_intermediate_size
        r.add(f"{p}moe.shared_gate_up", (f"{shared}gate_proj.weight", f"{shared}up_proj.weight"), "cat", [hidden, hidden])
        r.add(f"{p}moe.shared_down", f"{shared}down_proj.weight")
        r.add(f"{p}moe.shared_gate", f"{mlp}shared_expert_gate.weight")


def _nemotron_h(c, r: _Rules) -> None:
    """One sublayer per block, each transformers module named `mixer` whatever it is. NVIDIA's
    checkpoint files name the model `backbone` and keep one tensor per expert; transformers'
    modules name it `model` and stack the experts (E, I, D) and (E, D, I), as archlang does."""
    for prefix in ("model.", "backbone."):  # backbone.*: names in the published checkpoint files
        _nemotron_h_names(c, r, prefix)
    r.add("lm_head.weight", "lm_head.weight")  # never tied, whatever tie_word_embeddings says


def _nemotron_h_names(c, r: _Rules, prefix: str) -> None:
    r.add("embed.weight", f"{prefix}embeddings.weight")
    r.add("final_norm.weight", f"{prefix}norm_f.weight")
    norms = {"linear_attention": "ssm_norm", "full_attention": "attn_norm", "mlp": "ffn_norm", "moe": "ffn_norm"}
    for i, kind in enumerate(c.layers_block_type):
        p, q = f"layers.{i}.", f"{prefix}layers.{i}."
        r.add(f"{p}{norms.get(kind, 'norm')}.weight", f"{q}norm.weight")
        if kind == "linear_attention":
            r.op("mamba2", f"{p}ssm", f"{q}mixer")
        for n in ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"):
            r.linear(f"{p}{n}", f"{q}mixer.{n}")
        if kind != "moe":
            continue
        m = f"{q}mixer."
        r.add(f"{p}moe.router", f"{m}gate.weight")
        r.add(f"{p}moe.e_score_correction_bias", f"{m}gate.e_score_correction_bias")
        for n in ("up", "down"):
            r.add(f"{p}moe.experts_{n}", f"{m}experts.{n}_proj")
            per = [f"{m}experts.{j}.{n}_proj.weight" for j in range(c.n_routed_experts)]
            if per[0] in r.keys:
                r.add(f"{p}moe.experts_{n}", per, "stack")
            r.add(f"{p}moe.shared_{n}", f"{m}shared_experts.{n}_proj.weight")
        r.add(f"{p}moe.shared_up_bias", f"{m}shared_experts.up_proj.bias")
        r.add(f"{p}moe.shared_down_bias", f"{m}shared_experts.down_proj.bias")


def _bamba(c, r: _Rules) -> None:
    """Bamba and GraniteMoeHybrid: a Mamba-2 (`mamba`) or attention (`self_attn`) layer, then
    the FFN (Bamba's `feed_forward`; Granite's `shared_mlp`, beside its experts)."""
    r.add("embed.weight", "model.embed_tokens.weight")
    r.add("final_norm.weight", "model.final_layernorm.weight" if c.model_type == "bamba" else "model.norm.weight")
    if not c.tie_word_embeddings:
        r.add("lm_head.weight", "lm_head.weight")
    for i, kind in enumerate(c.layers_block_type):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        mamba = kind in ("linear_attention", "mamba")
        r.add(f"{p}{'ssm_norm' if mamba else 'attn_norm'}.weight", f"{q}input_layernorm.weight")
        if mamba:
            r.op("mamba2", f"{p}ssm", f"{q}mamba")
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            r.linear(f"{p}{n}", f"{q}self_attn.{n}")
        r.add(f"{p}ffn_norm.weight", f"{q}pre_ff_layernorm.weight")
        for n in ("gate_proj", "up_proj", "down_proj"):
            r.linear(f"{p}{n}", f"{q}feed_forward.{n}")
        if c.model_type == "granitemoehybrid":
            _granite_hybrid_ffn(c, r, p, q)


def _falcon_h1(c, r: _Rules) -> None:
    """Falcon-H1: each layer's input_layernorm feeds both `mamba` and `self_attn`; its µP vector
    (mup_vector) is a buffer transformers computes from the config, not a weight."""
    r.add("embed.weight", "model.embed_tokens.weight")
    r.add("final_norm.weight", "model.final_layernorm.weight")
    if not c.tie_word_embeddings:
        r.add("lm_head.weight", "lm_head.weight")
    for i in range(c.num_hidden_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        r.add(f"{p}mixers_norm.weight", f"{q}input_layernorm.weight")
        r.op("mamba2", f"{p}ssm", f"{q}mamba")
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            r.linear(f"{p}{n}", f"{q}self_attn.{n}")
        r.add(f"{p}ffn_norm.weight", f"{q}pre_ff_layernorm.weight")
        for n in ("gate_proj", "up_proj", "down_proj"):
            r.linear(f"{p}{n}", f"{q}feed_forward.{n}")


def _granite_hybrid_ffn(c, r: _Rules, p: str, q: str) -> None:
    """The shared MLP's [gate; up] input_linear is the MoE's shared_gate_up as it is, or the dense
    FFN's gate and up split; the experts as GraniteMoe's (module and checkpoint-file names)."""
    r.add(f"{p}ffn_norm.weight", f"{q}post_attention_layernorm.weight")
    mlp = f"{q}shared_mlp."
    if c.num_local_experts:
        r.add(f"{p}moe.shared_gate_up", f"{mlp}input_linear.weight")
        r.add(f"{p}moe.shared_down", f"{mlp}output_linear.weight")
    else:
        r.add([f"{p}gate_proj.weight", f"{p}up_proj.weight"], f"{mlp}input_linear.weight", "split",
              ([c.shared_intermediate_size] * 2, False))
        r.add(f"{p}down_proj.weight", f"{mlp}output_linear.weight")
    moe = f"{q}block_sparse_moe."
    for ours, module, disk in (("router", "router.weight", "router.layer.weight"),
                               ("experts_gate_up", "experts.gate_up_proj", "input_linear.weight"),
                               ("experts_down", "experts.down_proj", "output_linear.weight")):
        r.add(f"{p}moe.{ours}", f"{moe}{module}")
        r.add(f"{p}moe.{ours}", f"{moe}{disk}")


def _lfm2(c, r: _Rules) -> None:
    """LFM2: `operator_norm` before each mixer (a short conv or attention), `ffn_norm` before the
    SwiGLU (w1 gate, w3 up, w2 down); the attention's output is `out_proj` and its per-head
    QK-norms `q_layernorm` / `k_layernorm`; the final norm is `embedding_norm`."""
    r.add("embed.weight", "model.embed_tokens.weight")
    r.add("final_norm.weight", "model.embedding_norm.weight")
    if not c.tie_word_embeddings:
        r.add("lm_head.weight", "lm_head.weight")
    for i, t in enumerate(c.layer_types):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        if t == "conv":
            r.op("short_conv", f"{p}ssm", f"{q}conv")
            r.add(f"{p}ssm_norm.weight", f"{q}operator_norm.weight")
        else:
            for n in ("q_proj", "k_proj", "v_proj"):
                r.linear(f"{p}{n}", f"{q}self_attn.{n}")
            r.linear(f"{p}o_proj", f"{q}self_attn.out_proj")
            r.add(f"{p}attn.q_norm", f"{q}self_attn.q_layernorm.weight")
            r.add(f"{p}attn.k_norm", f"{q}self_attn.k_layernorm.weight")
            r.add(f"{p}attn_norm.weight", f"{q}operator_norm.weight")
        r.add(f"{p}ffn_norm.weight", f"{q}ffn_norm.weight")
        for ours, theirs in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
            r.linear(f"{p}{ours}", f"{q}feed_forward.{theirs}")


def _xlstm(c, r: _Rules) -> None:
    """xLSTM: `backbone.blocks.{i}` hold norm_mlstm, the mlstm_layer and norm_ffn, then the FFN
    (proj_up_gate is the silu'd half, proj_up the other, proj_down); the final norm is out_norm.
    weight_mode "fused" stacks q, k, v and the output gate in qkv_opreact, the input and forget
    gates in ifgate_preact (weight and bias) and the FFN's halves in proj_up_gate_z."""
    r.add("embed.weight", "backbone.embeddings.weight")
    r.add("final_norm.weight", "backbone.out_norm.weight")
    r.add("lm_head.weight", "lm_head.weight")
    key_dim, value_dim, hidden = _xlstm_widths(c)
    keys, values, heads = c.num_heads * key_dim, c.num_heads * value_dim, c.num_heads
    for i in range(c.num_hidden_layers):
        p, q = f"layers.{i}.", f"backbone.blocks.{i}."
        r.add(f"{p}ssm_norm.weight", f"{q}norm_mlstm.weight")
        r.add(f"{p}ffn_norm.weight", f"{q}norm_ffn.weight")
        r.add(f"{p}down_proj.weight", f"{q}ffn.proj_down.weight")
        m = f"{q}mlstm_layer."
        if c.weight_mode == "fused":
            ours = [f"{p}ssm.{n}" for n in ("q_proj", "k_proj", "v_proj", "ogate_proj")]
            r.add(ours, f"{m}qkv_opreact.weight", "split", ([keys, keys, values, values], False))
            r.add([f"{p}ssm.igate_proj", f"{p}ssm.fgate_proj"], f"{m}ifgate_preact.weight", "split",
                  ([heads, heads], False))
            r.add([f"{p}ssm.igate_bias", f"{p}ssm.fgate_bias"], f"{m}ifgate_preact.bias", "split",
                  ([heads, heads], False))
            for n in ("norm_weight", "out_proj"):
                r.add(f"{p}ssm.{n}", f"{m}{op_def('mlstm').hf_params[n]}")
            r.add([f"{p}gate_proj.weight", f"{p}up_proj.weight"], f"{q}ffn.proj_up_gate_z.weight", "split",
                  ([hidden, hidden], False))
        else:
            r.op("mlstm", f"{p}ssm", m.rstrip("."))
            r.add(f"{p}gate_proj.weight", f"{q}ffn.proj_up_gate.weight")
            r.add(f"{p}up_proj.weight", f"{q}ffn.proj_up.weight")


def _xlstm_widths(c) -> tuple[int, int, int]:
    from .hf import xlstm_widths  # the spec writer's rule, so names and shapes never disagree

    return xlstm_widths(c)


def _rwkv(c, r: _Rules) -> None:
    """RWKV-4: `rwkv.embeddings`, layer 0's `pre_ln` (our embed_norm), per block `ln1` / `ln2` before
    the time mixing (`attention`) and the channel mixing (`feed_forward`), `rwkv.ln_out`, `head`. The
    lerp weights time_mix_* are (1, 1, d_model) there, (d_model,) here."""
    d = c.hidden_size
    r.add("embed.weight", "rwkv.embeddings.weight")
    r.add("embed_norm.weight", "rwkv.blocks.0.pre_ln.weight")
    r.add("embed_norm.bias", "rwkv.blocks.0.pre_ln.bias")
    r.add("final_norm.weight", "rwkv.ln_out.weight")
    r.add("final_norm.bias", "rwkv.ln_out.bias")
    if not c.tie_word_embeddings:
        r.add("lm_head.weight", "head.weight")
    for i in range(c.num_hidden_layers):
        p, q = f"layers.{i}.", f"rwkv.blocks.{i}."
        for ours, theirs in (("ssm_norm", "ln1"), ("ffn_norm", "ln2")):
            r.add(f"{p}{ours}.weight", f"{q}{theirs}.weight")
            r.add(f"{p}{ours}.bias", f"{q}{theirs}.bias")
        for mine, module, names in (("ssm", "attention", ("key", "value", "receptance")),
                                    ("channel_mix", "feed_forward", ("key", "receptance"))):
            for n in names:
                r.add(f"{p}{mine}.time_mix_{n}", f"{q}{module}.time_mix_{n}", "reshape", (1, 1, d))
        for n in ("time_decay", "time_first"):
            r.add(f"{p}ssm.{n}", f"{q}attention.{n}")
        for n in ("key", "value", "receptance", "output"):
            r.add(f"{p}ssm.{n}", f"{q}attention.{n}.weight")
        for n in ("key", "receptance", "value"):
            r.add(f"{p}channel_mix.{n}", f"{q}feed_forward.{n}.weight")


def _recurrent_gemma(c, r: _Rules) -> None:
    """RecurrentGemma: `temporal_pre_norm` before each mixer (`temporal_block`: the recurrent
    block, whose names the rglru op gives, or attention), `channel_pre_norm` before the biased
    GeGLU (`mlp_block`); the final norm is `final_norm`."""
    r.add("embed.weight", "model.embed_tokens.weight")
    r.add("final_norm.weight", "model.final_norm.weight")
    if not c.tie_word_embeddings:
        r.add("lm_head.weight", "lm_head.weight")
    for i, kind in enumerate(c.layers_block_type):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        if kind == "linear_attention":
            r.op("rglru", f"{p}ssm", f"{q}temporal_block")
            r.add(f"{p}ssm_norm.weight", f"{q}temporal_pre_norm.weight")
        else:
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                r.linear(f"{p}{n}", f"{q}temporal_block.{n}")
            r.add(f"{p}attn_norm.weight", f"{q}temporal_pre_norm.weight")
        r.add(f"{p}ffn_norm.weight", f"{q}channel_pre_norm.weight")
        for n in ("gate_proj", "up_proj", "down_proj"):
            r.linear(f"{p}{n}", f"{q}mlp_block.{n}")


def _minimax(c, r: _Rules) -> None:
    """MiniMax: `input_layernorm` before each mixer, `post_attention_layernorm` before the MoE
    (Mixtral's names); the lightning layers' q, k and v fused in qkv_proj, [q; k; v] per head,
    their output gate `output_gate` and whole-width norm `norm`."""
    r.add("embed.weight", "model.embed_tokens.weight")
    r.add("final_norm.weight", "model.norm.weight")
    if not c.tie_word_embeddings:
        r.add("lm_head.weight", "lm_head.weight")
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    for i, kind in enumerate(c.layer_types):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        if kind == "linear_attention":
            r.add([f"{p}ssm.q_proj", f"{p}ssm.k_proj", f"{p}ssm.v_proj"], f"{q}self_attn.qkv_proj.weight", "per_head",
                  (c.num_attention_heads, [hd, hd, hd]))
            for ours, theirs in (("gate_proj", "output_gate.weight"), ("norm_weight", "norm.weight"),
                                 ("out_proj", "out_proj.weight")):
                r.add(f"{p}ssm.{ours}", f"{q}self_attn.{theirs}")
            r.add(f"{p}ssm_norm.weight", f"{q}input_layernorm.weight")
        else:
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                r.linear(f"{p}{n}", f"{q}self_attn.{n}")
            r.add(f"{p}attn_norm.weight", f"{q}input_layernorm.weight")
        r.add(f"{p}ffn_norm.weight", f"{q}post_attention_layernorm.weight")
        r.add(f"{p}moe.router", f"{q}mlp.gate.weight")
        _experts(c, r, p, f"{q}mlp.", f"{q}block_sparse_moe.")
# Kimi Delta Attention's weights: archlang's name → (the name in Hugging Face's KimiLinearDeltaAttention,
# the name in the checkpoint files, Moonshot's layout that transformers renames on load and back on save).
_KDA_NAMES = {"q_proj": ("q_proj.weight",) * 2, "k_proj": ("k_proj.weight",) * 2, "v_proj": ("v_proj.weight",) * 2,
              "f_a_proj": ("forget_gate.f_a_proj.weight", "f_a_proj.weight"),
              "f_b_proj": ("forget_gate.f_b_proj.weight", "f_b_proj.weight"),
              "dt_bias": ("forget_gate.dt_bias", "dt_bias"), "b_proj": ("b_proj.weight",) * 2,
              "g_a_proj": ("g_a_proj.weight",) * 2, "g_b_proj": ("g_b_proj.weight",) * 2,
              "norm_weight": ("o_norm.weight",) * 2, "out_proj": ("o_proj.weight",) * 2}


def _kimi_linear(c, r: _Rules) -> None:
    """Kimi Linear: Llama's embeddings and norms (no tied head: transformers ties nothing here); each
    layer's self_attn is a KimiLinearDeltaAttention (KDA) or an MLA without RoPE (DeepSeek-V3's names,
    no channel permutation since nothing is rotated); DeepSeek-V3's experts with shared experts, or a
    dense SwiGLU. The checkpoint files keep Moonshot's layout, which transformers converts on load
    and writes back on save: the forget gate's weights directly under self_attn, one conv per q, k
    and v, every FFN under block_sparse_moe, and one w1 (gate), w3 (up), w2 (down) per expert."""
    r.add("embed.weight", "model.embed_tokens.weight")
    r.add("final_norm.weight", "model.norm.weight")
    r.add("lm_head.weight", "lm_head.weight")

    def layouts(ours, module, disk, kind="same", arg=None, disk_kind=None, disk_arg=None) -> None:
        """One weight in the modules' layout and in the files'; writing files, only where the module has it."""
        if r.on_disk:
            if all(t in r.keys for t in ((module,) if isinstance(module, str) else module)):
                r.add(ours, disk, disk_kind or kind, disk_arg if disk_kind else arg, assume=True)
            return
        r.add(ours, module, kind, arg)
        r.add(ours, disk, disk_kind or kind, disk_arg if disk_kind else arg)

    hidden, width = c.moe_intermediate_size * c.n_shared_experts, c.linear_num_heads * c.linear_head_dim
    experts = range(c.num_local_experts)
    for i, kind in enumerate(c.layer_types):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        a = f"{q}self_attn."
        if kind == "linear_attention":
            for ours, (module, disk) in _KDA_NAMES.items():
                layouts(f"{p}ssm.{ours}", f"{a}{module}", f"{a}{disk}")
            layouts(f"{p}ssm.A_log", f"{a}forget_gate.A_log", f"{a}A_log", "reshape", (1, 1, c.linear_num_heads, 1))
            layouts(f"{p}ssm.conv_weight", f"{a}conv1d.weight", [f"{a}{n}_conv1d.weight" for n in "qkv"],
                    disk_kind="cat", disk_arg=[width] * 3)
            r.add(f"{p}ssm_norm.weight", f"{q}input_layernorm.weight")
        else:
            for n in ("q_proj", "q_a_proj", "q_b_proj", "o_proj"):
                r.add(f"{p}{n}.weight", f"{a}{n}.weight")
            r.add(f"{p}q_a_norm.weight", f"{a}q_a_layernorm.weight")
            r.add(f"{p}kv_a_proj.weight", f"{a}kv_a_proj_with_mqa.weight")
            r.op("mla_attention", f"{p}attn", a.rstrip("."))
            r.add(f"{p}attn_norm.weight", f"{q}input_layernorm.weight")
        r.add(f"{p}ffn_norm.weight", f"{q}post_attention_layernorm.weight")
        mlp, disk = f"{q}mlp.", f"{q}block_sparse_moe."
        for n in ("gate_proj", "up_proj", "down_proj"):
            layouts(f"{p}{n}.weight", f"{mlp}{n}.weight", f"{disk}{n}.weight")
        layouts(f"{p}moe.router", f"{mlp}gate.weight", f"{disk}gate.weight")
        layouts(f"{p}moe.e_score_correction_bias", f"{mlp}gate.e_score_correction_bias",
                f"{disk}gate.e_score_correction_bias")
        layouts(f"{p}moe.experts_gate_up", f"{mlp}experts.gate_up_proj",
                [f"{disk}experts.{j}.{w}.weight" for w in ("w1", "w3") for j in experts], disk_kind="stack_glu")
        layouts(f"{p}moe.experts_down", f"{mlp}experts.down_proj", [f"{disk}experts.{j}.w2.weight" for j in experts],
                disk_kind="stack")
        shared = [(f"{mlp}shared_experts.{n}.weight", f"{disk}shared_experts.{n}.weight") for n in ("gate_proj", "up_proj")]
        layouts(f"{p}moe.shared_gate_up", tuple(m for m, _ in shared), tuple(d for _, d in shared), "cat", [hidden, hidden])
        layouts(f"{p}moe.shared_down", f"{mlp}shared_experts.down_proj.weight", f"{disk}shared_experts.down_proj.weight")


def _zamba2(c, r: _Rules) -> None:
    """Zamba2: HF layer i is our mamba layer, or for a hybrid layer our shared block then our
    mamba layer (hf.zamba2_layout). transformers ties each shared transformer to its block's first
    hybrid layer (when it ties weights at all: hf.zamba2_blocks), which holds every use's adapters
    (list slot j: the j-th hybrid layer); ours live
    in the block's module at its first use, named by our layer index of each use."""
    from .hf import zamba2_layout  # the layer order the spec writer chose

    r.add("embed.weight", "model.embed_tokens.weight")
    r.add("final_norm.weight", "model.final_layernorm.weight")
    if not c.tie_word_embeddings:
        r.add("lm_head.weight", "lm_head.weight")
    layout, first = zamba2_layout(c), {}  # (our first use, HF's first hybrid layer) of each block
    hybrids = [i for i, t in enumerate(c.layers_block_type) if t == "hybrid"]
    hf_layer, ordinal = 0, 0
    for k, (kind, b) in enumerate(layout):
        p = f"model.layers.{hf_layer}."
        if kind == "mamba":
            q = p + ("mamba_decoder." if c.layers_block_type[hf_layer] == "hybrid" else "")
            r.add(f"layers.{k}.ssm_norm.weight", f"{q}input_layernorm.weight")
            r.op("mamba2", f"layers.{k}.ssm", f"{q}mamba")
            hf_layer += 1
            continue
        f, i_b = first.setdefault(b, (k, hybrids[ordinal]))
        ours, q = f"layers.{f}.", f"model.layers.{i_b}.shared_transformer."
        r.add(f"{ours}hybrid_proj.weight.{k}", f"{p}linear.weight")
        adapters = [("gate_up", "feed_forward.gate_up_proj_adapter_list")]
        if c.use_shared_attention_adapter:
            adapters += [(n, f"self_attn.linear_{n}_adapter_list") for n in ("q", "k", "v")]
        for target, theirs in adapters:
            r.add(f"{ours}{target}_lora.A.{k}", f"{q}{theirs}.{ordinal}.0.weight")
            r.add(f"{ours}{target}_lora.B.{k}", f"{q}{theirs}.{ordinal}.1.weight")
        if f == k:  # the block's weights, once
            r.add(f"{ours}attn_norm.weight", f"{q}input_layernorm.weight")
            r.add(f"{ours}ffn_norm.weight", f"{q}pre_ff_layernorm.weight")
            for n in ("q", "k", "v", "o"):
                r.add(f"{ours}{n}_proj.weight", f"{q}self_attn.{n}_proj.weight")
            h = c.intermediate_size
            for kind_ in ("weight", "bias"):
                r.add((f"{ours}gate_proj.{kind_}", f"{ours}up_proj.{kind_}"),
                      f"{q}feed_forward.gate_up_proj.{kind_}", "split", ([h, h], False))
                r.add(f"{ours}down_proj.{kind_}", f"{q}feed_forward.down_proj.{kind_}")
        ordinal += 1
# The Byte Latent Transformer's layers (HF name → runtime/blt.py's), its cross-attentions likewise.
_BLT_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "q_proj",
              "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj", "self_attn.o_proj": "o_proj",
              "mlp.gate_proj": "gate_proj", "mlp.up_proj": "up_proj", "mlp.down_proj": "down_proj"}
_BLT_CROSS = {"q_norm": "q_norm", "k_norm": "kv_norm", "q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj",
              "o_proj": "o_proj"}


def _blt(c, r: _Rules) -> None:
    """One module, `blt` (runtime/blt.py's ByteLatentTransformer), holds every weight."""
    enc, dec = c.encoder_config, c.decoder_config

    def layers(ours: str, theirs: str, n: int, names: dict[str, str]) -> None:
        for i in range(n):
            for hf, mine in names.items():
                r.add(f"blt.{ours}.{i}.{mine}.weight", f"model.{theirs}.{i}.{hf}.weight")

    r.add("blt.embed.embed.weight", "model.local_encoder.embed_tokens.weight")
    r.add("blt.embed.hash_embed.weight", "model.encoder_hash_tok_embedding.weight")
    r.add("blt.entropy.embed.weight", "model.patcher.embed_tokens.weight")
    layers("entropy.layers", "patcher.layers", c.patcher_config.num_hidden_layers, _BLT_LAYER)
    r.add("blt.entropy.final_norm.weight", "model.patcher.norm.weight")
    r.add("blt.entropy.lm_head.weight", "model.patcher.lm_head.weight")
    layers("encoder", "local_encoder.layers", enc.num_hidden_layers, _BLT_LAYER)
    r.add("blt.encoder_patch_proj.weight", "model.local_encoder.patch_embedding_projection.weight")
    layers("encoder_cross", "local_encoder.cross_attn_layers", enc.num_hidden_layers if enc.cross_attn_all_layers
           else 1, _BLT_CROSS)
    r.add("blt.global_in_proj.weight", "model.global_transformer.token_embedding_projection.weight")
    layers("global_layers", "global_transformer.layers", c.global_config.num_hidden_layers, _BLT_LAYER)
    r.add("blt.decoder_patch_proj.weight", "model.local_decoder.patch_embedding_projection.weight")
    layers("decoder_cross", "local_decoder.cross_attn_layers", dec.num_hidden_layers if dec.cross_attn_all_layers
           else 1, _BLT_CROSS)
    layers("decoder", "local_decoder.layers", dec.num_hidden_layers, _BLT_LAYER)
    r.add("blt.final_norm.weight", "model.local_decoder.norm.weight")
    r.add("blt.lm_head.weight", "lm_head.weight")


_FAMILIES = {
    "llama": _llama_family, "mistral": _llama_family, "qwen2": _llama_family, "mixtral": _llama_family,
    "qwen2_moe": _llama_family, "gemma2": _llama_family, "qwen3": _llama_family, "olmo2": _llama_family,
    "gemma3_text": _llama_family, "smollm3": _llama_family, "phi3": _llama_family, "jamba": _llama_family,
    "deepseek_v2": _deepseek_v2, "deepseek_v3": _deepseek_v2, "glm4_moe": _glm4_moe,
    "gpt2": _gpt2, "bert": _bert, "t5": _t5, "mamba2": _mamba2, "gpt_oss": _gpt_oss, "llama4_text": _llama4_text,
    "albert": _albert,
    "qwen3_moe": _llama_family, "olmoe": _llama_family, "olmo3": _llama_family,
    "exaone4": _llama_family, "ernie4_5_moe": _ernie4_5_moe, "hunyuan_v1_moe": _hunyuan_v1_moe,
    "gemma": _llama_family, "starcoder2": _starcoder2, "granite": _llama_family, "granitemoe": _granitemoe,
    "gpt_neox": _gpt_neox,
    "deepseek_v32": _deepseek_v32,
    "mamba": _mamba1, "falcon_mamba": _mamba1,
    "qwen3_next": _qwen3_next,
    "nemotron_h": _nemotron_h,
    "bamba": _bamba,
    "granitemoehybrid": _bamba,
    "lfm2": _lfm2,
    "xlstm": _xlstm,
    "rwkv": _rwkv,
    "recurrent_gemma": _recurrent_gemma,
    "minimax": _minimax,
    "falcon_h1": _falcon_h1,
    "kimi_linear": _kimi_linear,
    "electra": _electra,
    "zamba2": _zamba2,
    "modernbert": _modernbert,
    "deberta-v2": _deberta_v2,
    "blt": _blt,
}


def rules_for(config, hf_keys: set[str], on_disk: bool = False) -> list[Rule]:
    if config.model_type not in _FAMILIES:
        raise ArchError(f"weights of model_type {config.model_type!r} cannot be mapped yet", kind="interop")
    r = _Rules(hf_keys, on_disk)
    _FAMILIES[config.model_type](config, r)
    if on_disk:  # a checkpoint file holds each tensor once: drop module-layout names of the same weights
        mixtral_moe = {k for k in hf_keys if ".mlp.gate.weight" in k} if config.model_type in ("mixtral", "minimax") else set()
        r.rules = [x for x in r.rules if not set(x.theirs) & mixtral_moe]
    return r.rules


# Buffers that transformers keeps in state dicts and the config alone determines (RoPE tables,
# MiniMax's lightning-attention decays, archlang's lightning_slopes): no weights to carry.
DETERMINED_BY_CONFIG = ("rotary_emb.inv_freq", "self_attn.slope_rate", "self_attn.query_decay",
                         "self_attn.key_decay", "self_attn.diagonal_decay")


def to_archlang(config, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF tensors under archlang's unfused names. An HF tensor that no rule takes is refused,
    unless it is another name of a tensor that one does (tied weights) or a RoPE table that the
    config determines."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for rule in rules_for(config, set(hf_state)):
        used.update(rule.theirs)
        for name, tensor in zip(rule.ours, rule.to_ours([hf_state[k] for k in rule.theirs])):
            out[name] = tensor
    storage = {(hf_state[k].data_ptr(), hf_state[k].shape) for k in used if hf_state[k].device.type != "meta"}
    left = sorted(k for k in set(hf_state) - used if not k.endswith(DETERMINED_BY_CONFIG)
                  and (hf_state[k].data_ptr(), hf_state[k].shape) not in storage)
    if left:
        shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        raise ArchError(f"{len(left)} Hugging Face tensors have no place in the archlang model of this "
                        f"{config.model_type} config: {shown}", hint="the weights and config.json disagree, or "
                        "these tensors are not mapped yet", kind="interop")
    return out


def to_hf(config, state: dict[str, torch.Tensor], hf_keys: set[str]) -> dict[str, torch.Tensor]:
    """archlang tensors (unfused names) under the names of HF checkpoint files, given the tensor
    names of the HF model's modules."""
    out: dict[str, torch.Tensor] = {}
    for rule in rules_for(config, hf_keys, on_disk=True):
        if not all(k in state for k in rule.ours):
            continue
        for name, tensor in zip(rule.theirs, rule.to_theirs([state[k] for k in rule.ours])):
            out[name] = tensor.contiguous()
    return out

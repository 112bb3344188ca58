"""Every mixer × position × attention option the language accepts computes what it says, and
every one it refuses is refused at check time with a located error.

The cells come from spec/compat.py, which reads the mixer, position and option kinds off the
AST, so a kind added to the language is covered here without editing this file: a cell is
either refused by the table (and must give a located error) or accepted (and must pass every
property below). Tiny decoders: d_model 32, 2 layers, T ≤ 12.
"""

from __future__ import annotations

import functools
import re

import pytest
import torch

from archlang.api import compile_spec, load_source
from archlang.compiler import compute_facts
from archlang.runtime import Cache
from archlang.spec import ArchError, ArchErrors, ast as A, compat, load_models

VOCAB, T = 61, 12

# Tiny values for the arguments a mixer needs (or would default too large); an unknown
# required argument of a new kind fails here, on purpose, until it gets a tiny value.
TINY_ARGS = {"heads": 4, "kv_heads": 2, "key_heads": 2, "kv_lora_rank": 8, "rope_head_dim": 4, "nope_head_dim": 8,
             "v_head_dim": 8, "d_state": 4, "expand": 2}
OPTION_VALUES = {"bias": "true", "out_bias": "true", "window": "4", "softcap": "2.0", "scale": "0.3",
                 "qk_norm": "rmsnorm(eps = 1e-6)", "sinks": "true", "chunk": "4", "sink_tokens": "2, window = 4",
                 # a small floor_scale, so that the temperature moves within T = 12 positions
                 "temperature_tuning": "true, floor_scale = 4", "floor_scale": "4, temperature_tuning = true",
                 "attn_scale": "0.5, temperature_tuning = true, floor_scale = 3",
                 "dilation": "2, window = 3", "global_tokens": "2, window = 3", "output_gate": "true"}
# Options that need a position of their own: temperature tuning is for NoPE layers.
OPTION_POSITIONS = {"temperature_tuning": "none", "floor_scale": "none", "attn_scale": "none"}
# Options that read absolute positions (the first tokens, the query's position): shifting moves them.
ABSOLUTE_OPTIONS = ("sink_tokens", "temperature_tuning", "floor_scale", "attn_scale", "global_tokens")
# Mixers that read absolute positions: rglru restarts its recurrence at position 0 (RecurrentGemma).
ABSOLUTE_MIXERS = ("rglru",)
# Options that bound what the cache holds, like a window.
BOUNDED_CACHE_OPTIONS = ("window", "chunk", "sink_tokens", "dilation", "global_tokens")
# Schemes that depend on distances only: shifting every position changes nothing.
RELATIVE_SCHEMES = ("none", "rope", "alibi", "relative")


def _mixer_class(kind: str):
    return {**A.SLOT_CLASSES["attention"], **A.SLOT_CLASSES["ssm"], **A.SLOT_CLASSES["gau"]}[kind]


def mixer_text(kind: str, option: str | None = None) -> str:
    cls = _mixer_class(kind)
    args = [f"{name} = {TINY_ARGS[name]}" for name, info in cls.model_fields.items()
            if name in TINY_ARGS or (info.is_required() and name not in ("kind", "head_dim", "dt_rank", "key_dim"))]
    if option is not None:
        args.append(f"{option} = {OPTION_VALUES[option]}")
    slot = "attention" if kind in compat.ATTENTION_KINDS else "gau" if kind in A.SLOT_KINDS["gau"] else "ssm"
    return f"{slot} = {kind}({', '.join(args)})"


def spec_text(mixer: str, position: str, option: str | None = None) -> str:
    pos = "" if position == "none" else f"    position = {position}()\n"
    return (f"model cell {{\n    vocab = {VOCAB}\n    d_model = 32\n    context = 128\n    dtype = fp32\n{pos}"
            f"    final_norm = rmsnorm()\n    block layer {{\n        norm = rmsnorm()\n"
            f"        {mixer_text(mixer, option)}\n    }}\n    layers = layer * 2\n}}\n")


def _accepted(mixer, position, option=None) -> bool:
    if compat.position_refusal(mixer, position) is not None:
        return False
    return option is None or (mixer in compat.ATTENTION_KINDS and compat.option_refusal(mixer, option) is None)


POSITION_CELLS = [(m, p, None) for m in compat.MIXERS for p in compat.POSITIONS if _accepted(m, p)]
# Every accepted option of every attention kind, with RoPE where the kind takes it ...
OPTION_CELLS = [(m, OPTION_POSITIONS.get(o, "rope" if _accepted(m, "rope") else "none"), o)
                for m in compat.ATTENTION_KINDS for o in compat.OPTIONS if _accepted(m, "none", o)]
# ... of which the fast path runs one per option, each option on a different kind in turn.
_KINDS = compat.ATTENTION_KINDS
FAST_OPTION_CELLS = [next(c for k in _KINDS[i % len(_KINDS):] + _KINDS for c in OPTION_CELLS if c[:1] == (k,)
                          and c[2] == o) for i, o in enumerate(compat.OPTIONS)]
# The slow path runs the whole cross-product.
EXHAUSTIVE = [(m, p, o) for m in compat.ATTENTION_KINDS for p in compat.POSITIONS for o in compat.OPTIONS
              if _accepted(m, p, o) and (m, p, o) not in FAST_OPTION_CELLS
              and OPTION_POSITIONS.get(o, p) == p]
CELLS = POSITION_CELLS + FAST_OPTION_CELLS + [pytest.param(*c, marks=pytest.mark.slow) for c in EXHAUSTIVE]


def _id(v):
    return "-" if v is None else str(v)


@functools.lru_cache(maxsize=None)
def _compiled(mixer, position, option):
    return compile_spec(spec_text(mixer, position, option))


def build(mixer, position, option=None, seed=0):
    """The cell's model with perturbed weights: matrices large enough for soft-capping and
    positions to matter, norm weights away from 1 and biases away from 0."""
    compiled = _compiled(mixer, position, option)
    model = load_source(compiled.source, "cell").build().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() >= 2:
                p.copy_(noise * 0.2)
            elif name.endswith("bias"):
                p.copy_(noise * 0.1)
            else:
                p.add_(noise * 0.1)
    return model, compiled


def _ids(seed=1, t=T):
    return torch.randint(0, VOCAB, (2, t), generator=torch.Generator().manual_seed(seed))


def _check_causal(model, ids):
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-5, rtol=1e-5, msg="a later token changed an earlier output")
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4


def _check_cache(model, ids):
    """Step by step, past the window too: T = 12 is three windows of 4."""
    with torch.no_grad():
        full = model(ids)
        cache = Cache()
        steps = [model(ids[:, :3], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(3, T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4,
                               msg="cached decoding differs from the full forward")
    return full


def _check_shift(model, ids, full):
    """An empty cache at offset 100 runs the same tokens at positions 100..111: RoPE, ALiBi and
    relative biases see only distances, so the outputs must not move."""
    shifted = Cache()
    shifted.offset = 100
    with torch.no_grad():
        torch.testing.assert_close(model(ids, cache=shifted), full, atol=1e-4, rtol=1e-4,
                                   msg="shifting every position changed the output")


def _check_gradients(model, ids):
    model.train()
    logits = model(ids)
    (logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    model.eval()
    bad = [n for n, p in model.named_parameters()
           if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0]
    assert not bad, f"no finite, non-zero gradient for {bad}"


def _check_cache_bytes(model, compiled, option):
    """Below and above the window, the stats equal the keys, values and states the cache holds
    (its per-layer position index is bookkeeping, not keys or values)."""
    for tokens in (3, T):
        cache = Cache()
        with torch.no_grad():
            model(_ids(t=tokens)[:1], cache=cache)
        held = sum(t.numel() * t.element_size() for state in cache.layers.values()
                   for name, t in state.items() if name != "pos")
        facts = compute_facts(compiled.graph, context=tokens, dtype="float32")
        assert held == facts.kv_cache_bytes_at_context + facts.ssm_state_bytes_per_sequence, tokens
        if option not in BOUNDED_CACHE_OPTIONS:
            assert facts.kv_cache_bytes_at_context == tokens * facts.kv_cache_bytes_per_token


@pytest.mark.parametrize("mixer,position,option", CELLS, ids=_id)
def test_accepted_cell_keeps_the_contract(mixer, position, option):
    """Causality, cache = full forward, shift invariance of distance-only schemes, gradients on
    every parameter, and `archc stats` cache bytes = what the cache holds."""
    model, compiled = build(mixer, position, option)
    ids = _ids()
    _check_causal(model, ids)
    full = _check_cache(model, ids)
    if position in RELATIVE_SCHEMES and option not in ABSOLUTE_OPTIONS and mixer not in ABSOLUTE_MIXERS:
        _check_shift(model, ids, full)
    _check_cache_bytes(model, compiled, option)
    _check_gradients(model, ids)


@pytest.mark.parametrize("mixer,position", [(m, p) for m, p, _ in POSITION_CELLS if p != "none"], ids=_id)
def test_every_accepted_position_changes_the_output(mixer, position):
    with_position, _ = build(mixer, position)
    without, _ = build(mixer, "none")
    missing, _ = without.load_state_dict(with_position.state_dict(), strict=False)
    assert not missing  # the same weights, except the position's own
    ids = _ids()
    with torch.no_grad():
        assert (with_position(ids) - without(ids)).abs().max() > 1e-3


@pytest.mark.parametrize("mixer,position,option", FAST_OPTION_CELLS + [
    pytest.param(*c, marks=pytest.mark.slow) for c in OPTION_CELLS if c not in FAST_OPTION_CELLS], ids=_id)
def test_every_accepted_option_changes_the_output(mixer, position, option):
    with_option, _ = build(mixer, position, option)
    without, _ = build(mixer, position)
    without.load_state_dict(with_option.state_dict(), strict=False)
    ids = _ids()
    with torch.no_grad():
        assert (with_option(ids) - without(ids)).abs().max() > 1e-3


REFUSED = ([(m, p, None) for m in compat.MIXERS for p in compat.POSITIONS if not _accepted(m, p)]
           + [(m, "none", o) for m in compat.ATTENTION_KINDS for o in compat.OPTIONS if not _accepted(m, "none", o)])


@pytest.mark.parametrize("mixer,position,option", REFUSED, ids=_id)
def test_every_refused_cell_gives_a_located_error(mixer, position, option):
    text = spec_text(mixer, position, option)
    with pytest.raises((ArchError, ArchErrors)) as info:
        load_models(source=text)
    errors = info.value.errors if isinstance(info.value, ArchErrors) else [info.value]
    assert len(errors) == 1
    err = errors[0]
    mixer_line = next(i for i, line in enumerate(text.splitlines(), 1) if f"{mixer}(" in line)
    assert err.span is not None and err.span.line == mixer_line and err.span.column > 1
    # an option written with the options it needs (sink_tokens with a window) may be refused for those
    written = [option, *re.findall(r"(\w+) =", OPTION_VALUES[option])] if option else [position]
    assert mixer in err.message and any(w in err.message for w in written)
    assert err.hint


def test_refused_cell_through_archc_check(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "cell.arch"
    text = spec_text("mla", "relative")
    path.write_text(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "mla(" in s)
    run = subprocess.run([sys.executable, "-m", "archlang", "check", str(path)], capture_output=True, text=True)
    assert run.returncode not in (0, 70) and "Traceback" not in run.stderr + run.stdout
    assert f"{path}:{line}:" in run.stderr + run.stdout and "relative" in run.stderr + run.stdout


HYBRID = """
model hybrid {
    vocab = 61
    d_model = 32
    context = 64
    dtype = fp32
    position = rope()
    block attn { norm = rmsnorm()  attention = gqa(heads = 4, kv_heads = 2) }
    block ssm { norm = rmsnorm()  ssm = mamba(d_state = 4) }
    layers = [ssm, attn]
}
"""


def test_attention_position_in_a_hybrid_acts_on_the_attention_layers():
    """Mamba takes order from its recurrence; the model's RoPE rotates the attention layers'."""
    (model,) = load_models(source=HYBRID)
    assert model.position.kind == "rope"
    with pytest.raises((ArchError, ArchErrors), match="mamba"):
        load_models(source=HYBRID.replace("layers = [ssm, attn]", "layers = ssm * 2"))


CROSS = """
model seq2seq {
    family = encoder_decoder
    vocab = 61
    d_model = 32
    context = 64
    block enc { norm = rmsnorm()  attention = mha(heads = 4) }
    block dec { norm = rmsnorm()  attention = mha(heads = 4)  cross_attention = KIND }
    encoder_layers = enc * 1
    decoder_layers = dec * 1
}
"""


@pytest.mark.parametrize("kind", [k for k in compat.ATTENTION_KINDS if k not in compat.CROSS_ATTENTION_KINDS])
def test_cross_attention_kinds_without_an_encoder_path_are_refused(kind):
    text = CROSS.replace("KIND", mixer_text(kind).split(" = ", 1)[1])
    with pytest.raises((ArchError, ArchErrors), match=f"{kind} attention cannot be cross-attention") as info:
        load_models(source=text)
    err = info.value.errors[0] if isinstance(info.value, ArchErrors) else info.value
    assert err.span is not None and err.span.line == 8


def test_the_matrix_covers_every_kind_of_the_language():
    assert set(compat.MIXERS) == set(A.SLOT_KINDS["attention"]) | set(A.SLOT_KINDS["ssm"]) | set(A.SLOT_KINDS["gau"])
    assert set(compat.POSITIONS) == {"none", *A.SLOT_KINDS["position"]}
    assert {"window", "softcap", "scale", "bias", "out_bias"} <= set(compat.OPTIONS)


def test_docs_show_the_current_matrix():
    """docs/language.md carries compat.matrix_markdown() verbatim between its markers."""
    from ..conftest import ROOT

    docs = (ROOT / "docs" / "language.md").read_text()
    begin, end = "<!-- compat-matrix:begin -->\n", "<!-- compat-matrix:end -->"
    assert begin in docs and end in docs
    shown = docs.split(begin, 1)[1].split(end, 1)[0]
    assert shown == compat.matrix_markdown(), "regenerate the table from spec/compat.matrix_markdown()"


CROSS_WINDOW = CROSS.replace("KIND", "mha(heads = 4, window = 4)")


def test_cross_attention_window_is_refused():
    with pytest.raises((ArchError, ArchErrors), match="window") as info:
        load_models(source=CROSS_WINDOW)
    err = info.value.errors[0] if isinstance(info.value, ArchErrors) else info.value
    assert err.span is not None and err.span.line == 8 and "cross" in err.message and err.hint


ENCODER_CELLS = [(m, p) for m, p, _ in POSITION_CELLS if m in compat.ATTENTION_KINDS]


@pytest.mark.parametrize("mixer,position", ENCODER_CELLS, ids=_id)
def test_encoder_cell_sees_both_directions(mixer, position):
    """The same cells in an encoder: every token reaches every output, gradients reach every weight."""
    text = spec_text(mixer, position).replace("    vocab", "    family = encoder\n    vocab", 1)
    torch.manual_seed(0)
    model = load_source(compile_spec(text).source, "cell").build().eval()
    ids = _ids()
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert ((a - b).abs().amax(dim=-1) > 1e-6).all()  # every position, before and after the change
    model.train()
    out = model(ids)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    assert not [n for n, p in model.named_parameters()
                if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0]


@pytest.mark.parametrize("kind", A.SLOT_KINDS["ssm"])
def test_causal_mixers_are_refused_in_encoders(kind):
    text = spec_text(kind, "none").replace("    vocab", "    family = encoder\n    vocab", 1)
    with pytest.raises((ArchError, ArchErrors), match=f"{kind} in an encoder") as info:
        load_models(source=text)
    err = info.value.errors[0] if isinstance(info.value, ArchErrors) else info.value
    assert err.span is not None and err.span.line == next(
        i for i, s in enumerate(text.splitlines(), 1) if f"{kind}(" in s) and err.hint


def test_relative_bias_needs_one_head_count_per_stack():
    text = spec_text("mha", "relative").replace("    layers = layer * 2",
                                                "    block narrow { norm = rmsnorm()  attention = mha(heads = 2) }\n"
                                                "    layers = [layer, narrow]")
    with pytest.raises((ArchError, ArchErrors), match="shares one bias table") as info:
        load_models(source=text)
    err = info.value.errors[0] if isinstance(info.value, ArchErrors) else info.value
    assert err.span is not None and "narrow" in text.splitlines()[err.span.line - 1]

"""The Gated Attention Unit (runtime/gau.py) against a plain-PyTorch re-expression of the paper's
pseudo-code (Hua et al. 2022, Code 1 for GAU / FLASH-Quad, Code 2 for FLASH's mixed chunks), with
the same weights; causality, cached decoding, gradients, RoPE shift invariance; the encoder and
decoder forms; and the language's refusals around it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archlang import runtime as rt
from archlang.api import compile_spec, load_source
from archlang.spec import ArchError, ArchErrors

FP32 = dict(atol=1e-5, rtol=1e-5)
D, E, S = 16, 32, 8


# ----------------------------------------------------------------------------- the paper's code


def paper_rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The paper's `rope(x, axis)`: inv_freq = 10000^(-i / half), halves rotated, x (B, T, ..., s)."""
    half = x.shape[-1] // 2
    inv_freq = 10000.0 ** -(torch.arange(half, dtype=torch.float64) / half)
    sinusoid = positions.double()[:, None] * inv_freq[None]  # (T, half)
    sin, cos = sinusoid.sin().float(), sinusoid.cos().float()
    while sin.dim() < x.dim() - 1:  # broadcast over the parts axis
        sin, cos = sin[:, None], cos[:, None]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def paper_gau(unit: rt.GAU, x: torch.Tensor, *, rope: bool) -> torch.Tensor:
    """Code 1 / FLASH-Quad: one dense to 2e + s, swish, split; scale-offset by einsum; RoPE on the
    base; kernel = relu(qk / n)² (causal: n the row's key count, masked), or the softmax ablation."""
    n = x.shape[1]
    uv = F.silu(x @ unit.in_proj.T + (unit.in_bias if unit.in_bias is not None else 0))
    u, v, base = torch.split(uv, [unit.hidden, unit.hidden, unit.key_dim], dim=-1)
    base = torch.einsum("bnr,hr->bnhr", base, unit.gamma) + unit.beta
    if rope:
        base = paper_rope(base, torch.arange(n))
    q, k = base.unbind(dim=-2)
    qk = torch.einsum("bnd,bmd->bnm", q, k)
    causal_mask = torch.ones(n, n).tril()
    if unit.scores == "softmax":
        logits = qk / math.sqrt(unit.key_dim)
        if unit.causal:
            logits = logits.masked_fill(causal_mask == 0, float("-inf"))
        kernel = logits.softmax(dim=-1)
    else:
        scale = torch.arange(1, n + 1, dtype=x.dtype)[:, None] if unit.causal else n
        scale = unit.length or scale  # a fixed length where one is given
        kernel = torch.square(torch.relu(qk / scale))
        if unit.causal:
            kernel = kernel * causal_mask
    x = u * torch.einsum("bnm,bme->bne", kernel, v)
    return x @ unit.out_proj.T + (unit.out_bias if unit.out_bias is not None else 0)


def paper_flash(unit: rt.GAU, x: torch.Tensor, *, rope: bool) -> torch.Tensor:
    """Code 2 / FLASH: the sequence zero-padded to whole groups of group_size; four scale-offsets;
    local quadratic attention relu(qk / group_size)² (band-masked when causal); global linear
    attention: an exclusive cumsum over groups divided by group_size when causal (the cacheable
    form), the sum over all tokens divided by n when not."""
    b, n, _ = x.shape
    g_size = unit.chunk
    uv = F.silu(x @ unit.in_proj.T + (unit.in_bias if unit.in_bias is not None else 0))
    u, v, base = torch.split(uv, [unit.hidden, unit.hidden, unit.key_dim], dim=-1)
    base = torch.einsum("bnr,hr->bnhr", base, unit.gamma) + unit.beta
    if rope:
        base = paper_rope(base, torch.arange(n))
    quad_q, quad_k, lin_q, lin_k = base.unbind(dim=-2)
    padding = -n % g_size
    groups = (n + padding) // g_size

    def group(t):
        return F.pad(t, (0, 0, 0, padding)).reshape(b, groups, g_size, t.shape[-1])

    quad_q, quad_k, lin_q, lin_k, vg = map(group, (quad_q, quad_k, lin_q, lin_k, v))
    # _local_quadratic_attention
    qk = torch.einsum("bgns,bgms->bgnm", quad_q, quad_k)
    kernel = torch.square(torch.relu(qk / g_size))
    if unit.causal:
        kernel = kernel * torch.ones(g_size, g_size).tril()
    quadratic = torch.einsum("bgnm,bgme->bgne", kernel, vg)
    # _global_linear_attention
    if unit.causal:
        lin_kv = torch.einsum("bgnk,bgne->bgke", lin_k, vg) / g_size
        lin_kv = torch.cumsum(lin_kv, dim=1)
        lin_kv = F.pad(lin_kv, (0, 0, 0, 0, 1, 0))[:, :-1]  # exclusive
        linear = torch.einsum("bgnk,bgke->bgne", lin_q, lin_kv)
    else:
        lin_kv = torch.einsum("bgnk,bgne->bke", lin_k, vg) / n
        linear = torch.einsum("bgnk,bke->bgne", lin_q, lin_kv)
    out = (quadratic + linear).reshape(b, groups * g_size, -1)[:, :n]
    x = u * out
    return x @ unit.out_proj.T + (unit.out_bias if unit.out_bias is not None else 0)


# ----------------------------------------------------------------------------- the unit


def unit(scores="relu2", causal=True, chunk=None, bias=True, length=None, seed=0) -> rt.GAU:
    torch.manual_seed(seed)
    m = rt.GAU(D, E, S, scores=scores, causal=causal, chunk=chunk, bias=bias, length=length, cache_key="gau")
    with torch.no_grad():  # weights large enough that relu² is away from zero and biases matter
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return m


def run(m: rt.GAU, x, *, rope: bool, positions=None, cache=None):
    positions = torch.arange(x.shape[1]) if positions is None else positions
    table = rt.RopeTable(S, 256)(positions) if rope else None
    return m(x, rt.Context(positions=positions, cache=cache), rope=table)


FORMS = [  # (scores, chunk, rope)
    ("relu2", None, True), ("relu2", None, False), ("softmax", None, True), ("relu2", 4, True), ("relu2", 5, False),
]


@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("scores,chunk,rope", FORMS)
def test_unit_matches_the_papers_code(scores, chunk, rope, causal):
    m = unit(scores, causal, chunk)
    x = torch.randn(2, 11, D)  # 11: a short last chunk
    reference = (paper_gau if chunk is None else paper_flash)(m, x, rope=rope)
    torch.testing.assert_close(run(m, x, rope=rope), reference, **FP32)


def test_without_bias_matches_the_papers_code():
    m = unit(bias=False)
    assert m.in_bias is None and m.out_bias is None
    x = torch.randn(1, 6, D)
    torch.testing.assert_close(run(m, x, rope=True), paper_gau(m, x, rope=True), **FP32)


@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
def test_fixed_length_matches_the_papers_code_and_decodes_exactly(causal):
    m = unit(causal=causal, length=16)
    x = torch.randn(2, 9, D)
    full = run(m, x, rope=True)
    torch.testing.assert_close(full, paper_gau(m, x, rope=True), **FP32)
    if causal:
        cache = rt.Cache()
        outs = [run(m, x[:, :5], rope=True, cache=cache)]
        outs += [run(m, x[:, i:i + 1], rope=True, positions=torch.arange(i, i + 1), cache=cache) for i in range(5, 9)]
        torch.testing.assert_close(torch.cat(outs, 1), full, **FP32)


@pytest.mark.parametrize("scores,chunk,rope", FORMS)
def test_decoder_is_causal(scores, chunk, rope):
    m = unit(scores, True, chunk)
    x = torch.randn(1, 10, D)
    y = x.clone()
    y[:, 7:] = torch.randn(1, 3, D)
    torch.testing.assert_close(run(m, x, rope=rope)[:, :7], run(m, y, rope=rope)[:, :7], **FP32)


def test_encoder_sees_both_directions():
    for chunk in (None, 4):
        m = unit(causal=False, chunk=chunk)
        x = torch.randn(1, 10, D)
        y = x.clone()
        y[:, -1] = torch.randn(D)
        assert not torch.allclose(run(m, x, rope=True)[:, 0], run(m, y, rope=True)[:, 0])


@pytest.mark.parametrize("scores,chunk,rope", FORMS)
def test_cached_decoding_equals_the_full_forward(scores, chunk, rope):
    """Prefill, then pieces of 1, 3, 1, 2 ... tokens (across chunk boundaries), against one forward."""
    m = unit(scores, True, chunk)
    x = torch.randn(2, 17, D)
    full = run(m, x, rope=rope)
    cache, outs, start = rt.Cache(), [], 0
    for size in (3, 1, 3, 1, 2, 5, 1, 1):
        positions = torch.arange(start, start + size)
        outs.append(run(m, x[:, start:start + size], rope=rope, positions=positions, cache=cache))
        start += size
    assert start == 17
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **FP32)


def test_chunked_cache_is_bounded():
    """The mixed-chunk form keeps the state and at most chunk - 1 tokens, however long the sequence."""
    m = unit(chunk=4)
    cache = rt.Cache()
    run(m, torch.randn(1, 18, D), rope=True, cache=cache)
    entry = cache.get("gau")
    assert entry["state"].shape == (1, S, E) and entry["v"].shape[1] == 18 % 4
    assert entry["quad_k"].shape[1] == entry["lin_k"].shape[1] == 2


@pytest.mark.parametrize("scores,chunk", [("relu2", None), ("softmax", None), ("relu2", 4)])
@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
def test_rope_shift_invariance(scores, chunk, causal):
    """Only distances enter through RoPE; the normaliser counts keys, not positions."""
    m = unit(scores, causal, chunk)
    x = torch.randn(1, 9, D)
    shifted = run(m, x, rope=True, positions=torch.arange(9) + 13)
    torch.testing.assert_close(shifted, run(m, x, rope=True), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk", [None, 4])
def test_gradients_reach_every_parameter(chunk):
    m = unit(chunk=chunk)
    run(m, torch.randn(1, 9, D), rope=True).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_padding_mask_is_refused():
    m = unit()
    ctx = rt.Context(positions=torch.arange(4), attention_mask=torch.tensor([[0, 1, 1, 1]]))
    with pytest.raises(ArchError, match="padding mask"):
        m(torch.randn(1, 4, D), ctx)


def test_chunked_softmax_is_refused_by_the_runtime():
    with pytest.raises(ArchError, match="relu2"):
        rt.GAU(D, E, S, scores="softmax", chunk=4)


# ----------------------------------------------------------------------------- the language


def spec(block: str, *, family: str = "", position: str = "rope()", extra: str = "") -> str:
    fam = f"    family = {family}\n" if family else ""
    pos = f"    position = {position}\n" if position else ""
    return (f"model g {{\n{fam}    vocab = 61\n    d_model = 32\n    context = 64\n    dtype = fp32\n{pos}"
            f"    final_norm = layernorm()\n    block unit {{\n        norm = layernorm()\n{block}    }}\n"
            f"{extra}    layers = unit * 2\n}}\n")


GAU_LINE = "        gau = gau(key_dim = 8)\n"


@pytest.mark.parametrize("other", [
    "attention = mha(heads = 4)", "ffn = swiglu(hidden = 64)", "ssm = mamba()",
])
def test_gau_beside_attention_ffn_or_ssm_is_refused_where_written(other):
    text = spec(GAU_LINE + f"        {other}\n")
    with pytest.raises((ArchError, ArchErrors)) as info:
        compile_spec(text)
    message = str(info.value)
    assert "takes the place of attention and ffn" in message and ":11:" in message, message


@pytest.mark.parametrize("position,word", [("alibi()", "ALiBi"), ("relative()", "relative")])
def test_positions_the_gau_does_not_implement_are_refused(position, word):
    with pytest.raises((ArchError, ArchErrors), match=word):
        compile_spec(spec(GAU_LINE, position=position))


@pytest.mark.parametrize("args,word", [("chunk = 4, length = 16", "chunk"), ("scores = softmax, length = 16", "√")])
def test_length_beside_chunk_or_softmax_is_refused(args, word):
    with pytest.raises((ArchError, ArchErrors), match=word) as info:
        compile_spec(spec(f"        gau = gau({args})\n"))
    assert "length" in str(info.value) and ":10:" in str(info.value)


def test_chunked_softmax_is_refused_at_check_time():
    with pytest.raises((ArchError, ArchErrors), match="relu2") as info:
        compile_spec(spec("        gau = gau(scores = softmax, chunk = 4)\n"))
    assert ":10:" in str(info.value)


def _model(text):
    compiled = compile_spec(text)
    return load_source(compiled.source, "g").build().eval(), compiled


def test_encoder_form_is_bidirectional_and_has_no_cache():
    model, compiled = _model(spec("        gau = gau(key_dim = 8, chunk = 4)\n", family="encoder",
                                  extra="    head = mlm()\n"))
    assert "causal=False" in compiled.source
    ids = torch.randint(0, 61, (1, 9))
    other = ids.clone()
    other[0, -1] = (ids[0, -1] + 1) % 61
    with torch.no_grad():
        assert not torch.allclose(model(ids)[0, 0], model(other)[0, 0])
    from archlang.compiler import compute_facts
    facts = compute_facts(compiled.graph)
    assert facts.kv_cache_bytes_per_token == 0 and facts.ssm_state_bytes_per_sequence == 0


def test_decoder_facts_count_the_cache():
    """The quadratic form caches k and v: (key_dim + hidden) values per token per layer; the
    mixed-chunk form a fixed state."""
    _, quad = _model(spec(GAU_LINE))
    from archlang.compiler import compute_facts
    facts = compute_facts(quad.graph)
    assert facts.kv_cache_bytes_per_token == 2 * (8 + 64) * 4
    _, flash = _model(spec("        gau = gau(key_dim = 8, chunk = 4)\n"))
    facts = compute_facts(flash.graph)
    assert facts.kv_cache_bytes_per_token == 0
    assert facts.ssm_state_bytes_per_sequence == 2 * (8 * 64 + 3 * (2 * 8 + 64)) * 4


def test_parameter_count_is_the_formula():
    """Per layer: in_proj (2e + s)·d + 2e + s, γ and β 2·parts·s, out_proj e·d + d, the norm 2d."""
    model, _ = _model(spec("        gau = gau(key_dim = 8, chunk = 4)\n"))
    d, e, s = 32, 64, 8
    layer = (2 * e + s) * d + (2 * e + s) + 2 * 4 * s + e * d + d + 2 * d
    total = 61 * d + 2 * layer + 2 * d + 61 * d  # embedding, layers, final norm, untied head
    assert sum(p.numel() for p in model.parameters()) == total


def test_example_parameter_count_is_the_formula():
    """examples/gau_base.arch: 24 units of d = 768, e = 2d, s = 128, chunked (four scale-offsets),
    each with (2e + s)·d + 2e + s weights in, 2·4·s in γ and β, e·d + d out and 2d in its
    layernorm; tied 32,000-token embeddings and the final layernorm."""
    from archlang.compiler import compute_facts

    from ..conftest import EXAMPLES

    d, e, s, layers, vocab = 768, 1536, 128, 24, 32000
    unit = (2 * e + s) * d + 2 * e + s + 2 * 4 * s + e * d + d + 2 * d
    expected = layers * unit + vocab * d + 2 * d
    assert expected == 112_028_160  # the number the example's header states
    assert compute_facts(compile_spec(EXAMPLES / "gau_base.arch").graph).params_total == expected


@pytest.mark.parametrize("position,gau", [("rope(dim = 12)", GAU_LINE), ("rope()", "        gau = gau(key_dim = 7)\n")])
def test_rope_the_keys_cannot_hold_is_refused(position, gau):
    with pytest.raises((ArchError, ArchErrors), match="needs an even number of at most key_dim"):
        compile_spec(spec(gau, position=position))


@pytest.mark.parametrize("line,causal,attention", [
    (GAU_LINE, True, lambda s, e, c: 2 * (s + e) * (c + 1) / 2),  # the causal mean of i + 1 keys
    (GAU_LINE, False, lambda s, e, c: 2 * (s + e) * c),
    ("        gau = gau(key_dim = 8, chunk = 4)\n", True, lambda s, e, c: 2 * (s + e) * 5 / 2 + 4 * s * e),
    ("        gau = gau(key_dim = 8, chunk = 4)\n", False, lambda s, e, c: 2 * (s + e) * 4 + 4 * s * e),
])
def test_flops_per_token_are_the_formula(line, causal, attention):
    """Projections 2·d·(2e + s) + 2·e·d, then scores and A·v per attended key (and the chunked
    form's linear term), per unit, at the context of 64."""
    from archlang.compiler.ops import REGISTRY, FactsContext

    graph = compile_spec(spec(line, family="" if causal else "encoder")).graph
    units = [d for _, d in graph.nodes(data=True) if d["op"] == "gau"]
    assert len(units) == 2
    d, e, s, context = 32, 64, 8, 64
    expected = 2 * d * (2 * e + s) + 2 * e * d + attention(s, e, context)
    for node in units:
        assert REGISTRY["gau"].cost(node, FactsContext(context=context, nbytes=4)).flops == pytest.approx(expected)


@pytest.mark.parametrize("line,tokens", [(GAU_LINE, 9), ("        gau = gau(key_dim = 8, chunk = 4)\n", 11)])
def test_cache_holds_what_stats_reports(line, tokens):
    """The quadratic form's k and v grow by kv_cache_bytes_per_token a token; the chunked form's
    entry, with the most tokens it ever keeps (4·2 + 3), is the reported state."""
    from archlang.compiler import compute_facts

    model, compiled = _model(spec(line))
    facts = compute_facts(compiled.graph, dtype="fp32")
    cache = rt.Cache()
    with torch.no_grad():
        model(torch.randint(0, 61, (1, tokens)), cache=cache)
    held = sum(t.numel() * t.element_size() for entry in cache.layers.values() for t in entry.values())
    assert held == tokens * facts.kv_cache_bytes_per_token + facts.ssm_state_bytes_per_sequence

"""DeBERTa's disentangled attention (runtime/disentangled.py) against the paper's equations written
out in plain PyTorch (He et al. 2021, eq. 4 with DeBERTaV3's log buckets), and against Hugging
Face's DisentangledSelfAttention with the same weights; gradients reach every parameter; a causal
layer decodes with its cache as the full forward does; the spec refuses what it cannot compute."""

import math

import pytest
import torch

from archlang.api import compile_spec, load_source
from archlang.runtime import Cache, Context, DisentangledAttention, RelativeEmbeddings
from archlang.runtime.disentangled import log_bucket
from archlang.spec import ArchError, ArchErrors

D, HEADS, HD = 32, 4, 8
EXACT = dict(atol=1e-5, rtol=1e-5)  # float64 throughout, but the attention core takes its softmax in float32


def bucket(distance: int, buckets: int, max_position: int) -> int:
    """The paper's log bucket of one distance (DeBERTa's make_log_bucket_position), in float64."""
    mid = buckets // 2
    if abs(distance) <= mid:
        return distance
    scaled = math.log(abs(distance) / mid) / math.log((max_position - 1) / mid) * (mid - 1)
    return int(math.copysign(math.ceil(scaled) + mid, distance))


def reference(layer: DisentangledAttention, table: torch.Tensor, x: torch.Tensor, causal: bool = False):
    """softmax_j((q_i·k_j + q_i·kr_δ + k_j·qr_δ) / sqrt(d · (1 + terms))) v_j, one score at a time."""
    w = {n: (getattr(layer, f"{n}_weight"), getattr(layer, f"{n}_bias"))
         for n in ("q", "k", "v", "pos_k", "pos_q") if hasattr(layer, f"{n}_weight")}
    proj = lambda t, n: t @ w[n][0].T + w[n][1]  # noqa: E731
    pos_k = proj(table, "k" if layer.share_keys else "pos_k") if "c2p" in layer.terms else None
    pos_q = proj(table, "q" if layer.share_keys else "pos_q") if "p2c" in layer.terms else None
    b, t, _ = x.shape
    out = torch.zeros(b, t, HEADS * HD, dtype=x.dtype)
    denominator = math.sqrt(HD * (1 + len(layer.terms)))
    for h in range(HEADS):
        s = slice(h * HD, (h + 1) * HD)
        q, k, v = proj(x, "q")[..., s], proj(x, "k")[..., s], proj(x, "v")[..., s]
        scores = torch.full((b, t, t), float("-inf"), dtype=x.dtype)
        for i in range(t):
            for j in range(t if not causal else i + 1):
                d = i - j if layer.buckets is None else bucket(i - j, layer.buckets, layer.max_relative)
                r = min(max(d + layer.span, 0), 2 * layer.span - 1)
                score = (q[:, i] * k[:, j]).sum(-1)
                if pos_k is not None:
                    score = score + (q[:, i] * pos_k[r, s]).sum(-1)
                if pos_q is not None:
                    score = score + (k[:, j] * pos_q[r, s]).sum(-1)
                scores[:, i, j] = score / denominator
        out[..., s] = torch.softmax(scores, -1) @ v
    return out


def layer_and_table(seed=0, *, terms=("c2p", "p2c"), span=8, buckets=8, max_relative=24, share_keys=False,
                    causal=False):
    torch.manual_seed(seed)
    layer = DisentangledAttention(D, HEADS, HD, terms=terms, span=span, buckets=buckets, max_relative=max_relative,
                                  share_keys=share_keys, causal=causal).double()
    table = RelativeEmbeddings(2 * span, D, norm="layernorm", eps=1e-7).double()
    with torch.no_grad():
        for p in [*layer.parameters(), *table.parameters()]:
            p.copy_(torch.randn_like(p) * 0.5)
    return layer, table


SETTINGS = {
    "v3": dict(share_keys=True),
    "own_projections": dict(),
    "c2p_clipped": dict(terms=("c2p",), buckets=None, span=5, max_relative=5),
    "p2c": dict(terms=("p2c",)),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_layer_computes_the_papers_equations(name):
    layer, table = layer_and_table(**SETTINGS[name])
    x = torch.randn(2, 14, D, dtype=torch.float64)  # distances up to 13: past the 4 kept as they are
    got = layer(x, ctx=Context(positions=torch.arange(14)), rel_embeddings=table())
    torch.testing.assert_close(got, reference(layer, table(), x), **EXACT)


def test_log_buckets_are_deberta_v3s():
    """Every distance DeBERTaV3 (256 buckets, 512 positions) can see, against the float64 formula,
    and against transformers' own function."""
    distances = torch.arange(-1100, 1100)
    got = log_bucket(distances, 256, 512)
    assert got.tolist() == [bucket(d, 256, 512) for d in distances.tolist()]
    hf = pytest.importorskip("transformers.models.deberta_v2.modeling_deberta_v2")
    assert torch.equal(got, hf.make_log_bucket_position(distances, 256, 512).long())


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_layer_equals_transformers_disentangled_self_attention(name):
    T = pytest.importorskip("transformers")
    from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention, build_relative_position

    setting = SETTINGS[name]
    layer, table = layer_and_table(**setting)
    layer, table = layer.float(), table.float()
    config = T.DebertaV2Config(hidden_size=D, num_attention_heads=HEADS, relative_attention=True,
                               pos_att_type=list(layer.terms), position_buckets=setting.get("buckets", 8) or -1,
                               max_relative_positions=layer.max_relative, share_att_key=layer.share_keys,
                               max_position_embeddings=64)
    theirs = DisentangledSelfAttention(config).eval()
    names = {"q": "query_proj", "k": "key_proj", "v": "value_proj", "pos_k": "pos_key_proj", "pos_q": "pos_query_proj"}
    with torch.no_grad():
        for ours, hf in names.items():
            if hasattr(theirs, hf):
                getattr(theirs, hf).weight.copy_(getattr(layer, f"{ours}_weight"))
                getattr(theirs, hf).bias.copy_(getattr(layer, f"{ours}_bias"))
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in layer.parameters())
    x = torch.randn(2, 20, D)
    relative = build_relative_position(x, x, bucket_size=config.position_buckets, max_position=layer.max_relative)
    with torch.no_grad():
        want, _ = theirs(x, torch.ones(2, 1, 20, 20, dtype=torch.bool), relative_pos=relative,
                         rel_embeddings=table())
        got = layer(x, ctx=Context(positions=torch.arange(20)), rel_embeddings=table())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("share_keys", [False, True])
def test_gradients_reach_every_parameter_and_the_table(share_keys):
    layer, table = layer_and_table(share_keys=share_keys)
    x = torch.randn(2, 12, D, dtype=torch.float64, requires_grad=True)
    out = layer(x, ctx=Context(positions=torch.arange(12)), rel_embeddings=table())
    (out * torch.randn_like(out)).sum().backward()
    for name, p in [*layer.named_parameters(), *table.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_a_causal_layer_decodes_from_its_cache_as_the_full_forward_does():
    layer, table = layer_and_table(causal=True)
    x = torch.randn(1, 14, D, dtype=torch.float64)
    with torch.no_grad():
        full = layer(x, ctx=Context(positions=torch.arange(14)), rel_embeddings=table())
        torch.testing.assert_close(full, reference(layer, table(), x, causal=True), **EXACT)
        cache, steps = Cache(), []
        for start, stop in [(0, 5)] + [(t, t + 1) for t in range(5, 14)]:
            steps.append(layer(x[:, start:stop], ctx=Context(positions=torch.arange(start, stop), cache=cache),
                               rel_embeddings=table()))
    torch.testing.assert_close(torch.cat(steps, 1), full, **EXACT)


def spec(attention: str, *, position: str = "", lora: str = "", second: str | None = None) -> str:
    layers = "layer * 2" if second is None else "[layer, other]"
    other = "" if second is None else f"""
    block other {{
        norm = layernorm(placement = post)
        attention = {second}
        ffn = mlp(hidden = 64)
    }}"""
    return f"""model d {{
    family = encoder
    vocab = 97
    d_model = 32
    context = 64
    {position}
    block layer {{
        norm = layernorm(placement = post)
        attention = {attention}
        ffn = mlp(hidden = 64)
        {lora}
    }}{other}
    layers = {layers}
}}
"""


def test_a_spec_builds_and_runs():
    compiled = compile_spec(spec("disentangled(heads = 4, buckets = 8, share_keys = true, rel_norm = layernorm())"))
    model = load_source(compiled.source, "d").build().eval()
    assert "rt.DisentangledAttention(" in compiled.source and "layers_rel_embed" in compiled.source
    with torch.no_grad():
        assert model(torch.randint(0, 97, (2, 10))).shape == (2, 10, 32)


@pytest.mark.parametrize("text,message,column", [
    (spec("disentangled(heads = 4)", position="position = rope()"), "position rope", None),
    (spec("disentangled(heads = 4, window = 8)"), "window", "window"),
    (spec("disentangled(heads = 4, scale = 0.5)"), "scale", "scale"),
    (spec("disentangled(heads = 4, terms = [c2p, c2p])"), "names a term twice", "terms"),
    (spec("disentangled(heads = 4, buckets = 64, max_relative = 20)"), "max_relative", "max_relative"),
    (spec("disentangled(heads = 4)", lora="shared = true\n        lora = lora(rank = 4, targets = [q])"),
     "adapts an mha/mqa/gqa projection", "targets"),
    (spec("disentangled(heads = 4, buckets = 8)", second="disentangled(heads = 4, buckets = 16)"),
     "one relative embedding table", None),
    (spec("disentangled(heads = 4, buckets = 128)"), "the context) above 65", "buckets"),  # context 64
], ids=["rope", "window", "scale", "terms", "max_relative", "lora", "two_tables", "buckets_past_context"])
def test_what_it_cannot_compute_is_refused_where_it_is_written(text, message, column):
    with pytest.raises((ArchError, ArchErrors)) as info:
        compile_spec(text)
    errors = getattr(info.value, "errors", [info.value])
    assert any(message in e.message for e in errors), [e.message for e in errors]
    first = next(e for e in errors if message in e.message)
    assert first.span is not None and first.span.line > 1
    if column is not None:
        line = text.splitlines()[first.span.line - 1]
        assert column in line[first.span.column - 1:] or column in line


def test_facts_count_the_relative_terms_beside_mha():
    """Per token and layer, beside what mha(bias = true) costs: one (2·span)-wide product per term
    (c2p: q against the table's keys, p2c: k against its queries) and each term's projection of
    the 2·span-row table, once per forward, spread over the context; the parameters add the
    table, its norm and the position projections."""
    from archlang.compiler import compute_facts

    plain = compute_facts(compile_spec(spec("mha(heads = 4, bias = true)")).graph)
    ours = compute_facts(compile_spec(spec("disentangled(heads = 4, bias = true, buckets = 8, "
                                           "rel_norm = layernorm())")).graph)
    rows, width, context, layers = 16, 32, 64, 2
    per_layer = 2 * (2 * width * rows) + 2 * (2 * rows * D * width) / context
    assert ours.flops_per_token - plain.flops_per_token == pytest.approx(layers * per_layer)
    assert ours.params_total - plain.params_total == rows * D + 2 * D + layers * 2 * (D * width + width)

"""Each rule fires on a spec with its issue, at the value the issue is about, and the examples
get exactly the findings documented below (each a real property of the published model)."""

from __future__ import annotations

import pytest

from archlang.lint import RULES, LintConfig, lint_models
from archlang.spec import SourceMap, load_models

from ..conftest import EXAMPLES

MOE = "moe(experts = {e}, top_k = {k}, expert = swiglu(hidden = 256){more})"

# code, the spec's changed fields, settings, the text of the line the finding must point at,
# and what the message or fix must say
CASES = [
    ("ARC101", dict(attention="gqa(heads = 8, kv_heads = 8, head_dim = 36)"), {}, "head_dim = 36", "use 32 or 40"),
    ("ARC102", dict(vocab="1000"), {}, "vocab = 1000", "pad vocab to 1,024"),
    ("ARC102", dict(vocab="1000"), dict(tensor_parallel=8), "vocab = 1000", "pad vocab to 1,024"),
    ("ARC102", dict(vocab="1100"), dict(tensor_parallel=8), "vocab = 1100", "pad vocab to 1,536"),
    ("ARC103", dict(d_model="264", attention="gqa(heads = 8, kv_heads = 8, head_dim = 32)"), {}, "d_model = 264",
     "use 256 or 384"),
    ("ARC104", dict(ffn="swiglu(hidden = 500)"), {}, "hidden = 500", "use 384 or 512"),
    ("ARC104", dict(ffn=MOE.format(e=8, k=2, more=", aux_loss = 0.01").replace("256", "200")), {}, "hidden = 200",
     "experts of block `layer`"),
    ("ARC105", dict(attention="gqa(heads = 12, kv_heads = 4)", d_model="768"), dict(tensor_parallel=8), "heads = 12",
     "12 heads of block `layer` do not split over tensor_parallel 8"),
    ("ARC106", dict(attention="gqa(heads = 8, kv_heads = 2)"), dict(tensor_parallel=4), "kv_heads = 2",
     "replicated on 2 ranks"),
    ("ARC106", dict(attention="gqa(heads = 12, kv_heads = 6)", d_model="768"), dict(tensor_parallel=4), "kv_heads = 6",
     "do not split over tensor_parallel 4"),
    ("ARC107", dict(ffn=MOE.format(e=6, k=2, more=", aux_loss = 0.01")), dict(expert_parallel=4), "experts = 6",
     "6 experts of block `layer` do not split over expert_parallel 4"),
    ("ARC108", dict(vocab="1088", extra="    tie_embeddings = true"), dict(tensor_parallel=3), "tie_embeddings = true",
     "tied to the embedding table"),
    ("ARC108", dict(vocab="1088"), dict(tensor_parallel=3), "vocab = 1088", "do not split over tensor_parallel 3"),
    ("ARC109", dict(attention="gqa(heads = 8, kv_heads = 8, window = 4096)"), {}, "window = 4096", "masks nothing"),
    ("ARC109", dict(attention="gqa(heads = 8, kv_heads = 8, chunk = 8192)"), {}, "chunk = 8192", "masks nothing"),
    ("ARC110", dict(position="rope(theta = 100)"), {}, "theta = 100", "use θ ≥ 652"),
    ("ARC111", dict(position="rope(theta = 10000, scaling = yarn(factor = 2, original_context = 1024))"), {},
     "factor = 2", "use factor ≥ 4"),
    ("ARC112", dict(ffn=MOE.format(e=4, k=3, more=", aux_loss = 0.01")), {}, "top_k = 3",
     "more than half of its 4 experts"),
    ("ARC113", dict(ffn=MOE.format(e=8, k=2, more=", aux_loss = 0.01, capacity_factor = 0.5")), {},
     "capacity_factor = 0.5", "drops tokens even under balanced routing"),
    ("ARC113", dict(ffn=MOE.format(e=8, k=2, more=", aux_loss = 0.01, capacity_factor = 4")), {},
     "capacity_factor = 4", "no token can ever be dropped"),
    ("ARC114", dict(ffn=MOE.format(e=8, k=2, more="")), {}, "ffn = moe(", "no load balancing"),
    ("ARC115", dict(attention="gqa(heads = 8, kv_heads = 8, window = 128, dilation = 2)"), {}, "dilation = 2",
     "unfused reference: dilation 2"),
    ("ARC115", dict(extra="    attention_dropout = 0.1"), {}, "attention_dropout = 0.1", "in training"),
    ("ARC116", dict(d_model="16384", ffn="swiglu(hidden = 65536)", attention="gqa(heads = 128, kv_heads = 8)",
                    layers="layer * 20"), {}, "model m {", "needs 152.1 GB per device"),
    ("ARC116", dict(d_model="16384", ffn="swiglu(hidden = 65536)", attention="gqa(heads = 128, kv_heads = 8)",
                    layers="layer * 20"), dict(hardware="a100"), "model m {", "80 GB of NVIDIA A100"),
    ("ARC117", dict(ffn="swiglu(hidden = 512)"), dict(tensor_parallel=3), "hidden = 512",
     "does not split over tensor_parallel 3"),
]


@pytest.mark.parametrize("code,fields,settings,line,says", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_fires_at_the_value(lint_spec, tmp_path, code, fields, settings, line, says):
    result = lint_spec(LintConfig(**settings), **fields)
    hits = [f for f in result.findings if f.code == code]
    assert len(hits) == 1, [(f.code, f.message) for f in result.findings]
    (f,) = hits
    assert says in f.message + " " + f.fix
    text = (tmp_path / "m.arch").read_text().split("\n")[f.span.line - 1]
    assert line in text and text.index(line) <= f.span.column - 1 < text.index(line) + len(line) + 1, (text, f.span)
    assert f.why == RULES[code].why and f.title == RULES[code].title


def test_every_rule_has_a_case():
    assert {c[0] for c in CASES} == set(RULES)


@pytest.mark.parametrize("settings", [{}, dict(tensor_parallel=8, expert_parallel=4), dict(hardware="a100")])
def test_the_aligned_spec_is_clean(lint_spec, settings):
    assert lint_spec(LintConfig(**settings)).findings == []


def test_a_rope_over_a_short_window_is_fine(lint_spec):
    """The θ rule measures the distance attention sees: a window shorter than 2π·θ is covered."""
    assert not lint_spec(position="rope(theta = 100)", attention="gqa(heads = 8, kv_heads = 8, window = 512)").findings


def test_a_model_that_fits_at_its_degree_is_clean(lint_spec):
    big = dict(d_model="16384", ffn="swiglu(hidden = 65536)", attention="gqa(heads = 128, kv_heads = 8)",
               layers="layer * 20")
    assert "use tensor_parallel ≥ 2" in lint_spec(**big).findings[0].fix
    assert not lint_spec(LintConfig(tensor_parallel=2), **big).findings
    assert not lint_spec(LintConfig(hardware="b200"), **big).findings  # 180 GB


def test_moe_within_limits_is_clean(lint_spec):
    ffn = MOE.format(e=8, k=2, more=", aux_loss = 0.01, capacity_factor = 1.25")
    assert not lint_spec(LintConfig(expert_parallel=4), ffn=ffn).findings


def test_an_inherited_value_is_one_finding_at_the_value(tmp_path):
    from .conftest import lint_text

    text = """model m {
    vocab = 1024
    d_model = 256
    context = 4096
    block a {
        norm = rmsnorm(eps = 1e-5)
        attention = gqa(heads = 8, kv_heads = 8, head_dim = 36)
        ffn = swiglu(hidden = 512)
    }
    block b extends a { attention.window = 512 }
    layers = [a, b] * 2
}
model n extends m { context = 8192 }
"""
    result = lint_text(text, tmp_path / "m.arch")
    assert [(f.code, f.span.line) for f in result.findings] == [("ARC101", 7)]


# What lint finds on the examples with default settings: each is a property of the published model
# (its checkpoint's vocabulary, widths, attention and routing as released), not a mistake of the spec.
EXAMPLE_FINDINGS = {
    "albert_base.arch": ["ARC102"],  # vocab 30,000
    "blt_1b.arch": ["ARC102"],  # 260 byte values (256 bytes and 4 specials)
    "bert_base.arch": ["ARC102", "ARC115"],  # vocab 30,522; attention dropout 0.1
    "deberta_v3_base.arch": ["ARC102"],  # vocab 128,100
    "deepseek_v2_lite.arch": ["ARC104", "ARC115"],  # dense FFN 10,944 wide; MLA's 128-wide values vs 192-wide keys
    "deepseek_v3.arch": ["ARC115", "ARC116"],  # MLA values; 671B parameters do not fit one H100
    "gemma2_2b.arch": [],
    "gemma3_27b.arch": [],
    "gau_base.arch": [],
    "gpt2.arch": ["ARC102", "ARC115"],  # vocab 50,257; attention dropout 0.1
    "gpt_oss_20b.arch": ["ARC103", "ARC104", "ARC114"],  # d_model and experts 2,880 wide; no aux loss in the spec
    "jamba.arch": ["ARC116"],  # 52B parameters in bf16
    "kimi_linear_48b_a3b.arch": ["ARC114", "ARC115", "ARC116"],  # no aux loss; MLA values; 49B parameters in bf16
    "llama3_8b.arch": [],
    "lfm2_1_2b.arch": [],
    "xlstm_7b.arch": ["ARC104"],  # FFN 10,944 wide (4096 · 2.667 rounded up to 64)
    "falcon_h1_7b.arch": ["ARC102"],  # vocab 130,049
    "llama4_scout.arch": ["ARC114", "ARC116"],  # no aux loss in the spec; 109B parameters and a 10M-token cache
    "mamba2_2_7b.arch": ["ARC102"],  # vocab 50,288 (a multiple of 16 only)
    "modernbert_base.arch": [],
    "mistral_7b.arch": [],
    "mixtral_8x7b.arch": ["ARC116"],  # 46.7B parameters in bf16
    "nemotron_h_8b.arch": [],
    "olmo2_7b.arch": [],
    "qwen3_30b_a3b.arch": ["ARC114"],  # no aux loss in the spec
    "qwen3_next_80b_a3b.arch": ["ARC114", "ARC116"],  # no aux loss in the spec; 80B parameters in bf16
    "t5_small.arch": ["ARC115"],  # the learned relative bias needs the reference in training
    "zamba2_2_7b.arch": [],
}


def test_examples_get_exactly_their_documented_findings():
    got = {}
    for path in sorted(EXAMPLES.glob("*.arch")):
        sources = SourceMap()
        result = lint_models(load_models(path, sources=sources), LintConfig(), sources)
        got[path.name] = sorted(f.code for f in result.findings)
    assert got == EXAMPLE_FINDINGS


@pytest.mark.parametrize("settings", [{}, dict(tensor_parallel=8, expert_parallel=4, hardware="cpu")])
def test_every_tiny_spec_lints_without_failing(settings):
    from ..conftest import SPECS

    for path in sorted(SPECS.glob("*.arch")):
        sources = SourceMap()
        result = lint_models(load_models(path, sources=sources), LintConfig(**settings), sources)
        assert all(f.span is not None and f.span.file == str(path) for f in result.findings), path


def test_random_valid_specs_lint_with_located_findings(tmp_path):
    from hypothesis import HealthCheck, given, settings

    from ..strategies import valid_spec

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(valid_spec())
    def check(text):
        path = tmp_path / "r.arch"
        path.write_text(text)
        sources = SourceMap()
        models = load_models(path, sources=sources)
        for config in (LintConfig(), LintConfig(tensor_parallel=8, expert_parallel=4)):
            for f in lint_models(models, config, sources).findings:
                assert f.code in RULES and f.span is not None and sources.line(f.span) is not None

    check()

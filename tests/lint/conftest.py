"""A small spec with every value aligned, so that each rule's test changes one thing."""

from __future__ import annotations

import pytest

from archlang.lint import LintConfig, lint_models
from archlang.spec import SourceMap, load_models

BASE = dict(
    vocab="1024", d_model="256", context="4096", position="rope(theta = 10000)",
    attention="gqa(heads = 8, kv_heads = 8)", ffn="swiglu(hidden = 512)", layers="layer * 2", extra="",
)


def spec_text(**fields) -> str:
    f = {**BASE, **fields}
    return f"""model m {{
    vocab = {f['vocab']}
    d_model = {f['d_model']}
    context = {f['context']}
    position = {f['position']}
    final_norm = rmsnorm(eps = 1e-5)
{f['extra']}
    block layer {{
        norm = rmsnorm(eps = 1e-5)
        attention = {f['attention']}
        ffn = {f['ffn']}
    }}
    layers = {f['layers']}
}}
"""


def lint_text(text: str, path, config: LintConfig | None = None):
    path.write_text(text)
    sources = SourceMap()
    models = load_models(path, sources=sources)
    return lint_models(models, config or LintConfig(), sources)


@pytest.fixture
def lint_spec(tmp_path):
    def run(config: LintConfig | None = None, **fields):
        return lint_text(spec_text(**fields), tmp_path / "m.arch", config)

    return run

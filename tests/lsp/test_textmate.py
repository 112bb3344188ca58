"""The TextMate grammar in editors/: valid JSON whose patterns compile, with the language's
keywords (as arch.lark declares them) and the tokens of the examples scoped."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GRAMMAR = json.loads((ROOT / "editors" / "arch.tmLanguage.json").read_text())


def _patterns(node):
    if isinstance(node, dict):
        for key in ("match", "begin", "end"):
            if key in node:
                yield node[key]
        for value in node.values():
            yield from _patterns(value)
    elif isinstance(node, list):
        for item in node:
            yield from _patterns(item)


def test_every_pattern_compiles():
    patterns = list(_patterns(GRAMMAR))
    assert len(patterns) > 8
    for p in patterns:
        re.compile(p)  # the Oniguruma subset used here is also Python's


def test_keywords_follow_the_grammar():
    lark = (ROOT / "spec" / "arch.lark").read_text()
    keywords = set(re.findall(r"^_([A-Z]+)\.2:", lark, re.M))
    text = json.dumps(GRAMMAR)
    for kw in keywords:
        assert re.search(rf"\b{kw.lower()}\b", text), kw


def test_scopes_on_an_example():
    line = '    block mamba_moe extends mamba { ffn = moe(experts = 16, top_k = 2, bias = true) }  # c'
    repo = GRAMMAR["repository"]
    decl = re.search(repo["declaration"]["match"], line)
    assert decl.groups() == ("block", "mamba_moe", "extends", "mamba")
    assert [m.group(1) for m in re.finditer(repo["call"]["match"], line)] == ["moe"]
    assert [m.group(1) for m in re.finditer(repo["field"]["match"], line)] == ["ffn", "experts", "top_k", "bias"]
    assert re.search(repo["comment"]["match"], line).group() == "# c"
    assert re.fullmatch(repo["number"]["match"], "256k") and re.fullmatch(repo["number"]["match"], "1e-5")

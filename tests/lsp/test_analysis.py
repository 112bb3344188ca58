"""The language server's answers, computed from a document's text: diagnostics, go to
definition, hover."""

from pathlib import Path

from archlang.lsp import analysis

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
JAMBA = EXAMPLES / "jamba.arch"


def _position(text: str, needle: str, nth: int = 0, offset: int = 0) -> tuple[int, int]:
    """0-based (line, column) of the nth occurrence of needle (plus offset characters)."""
    at = -1
    for _ in range(nth + 1):
        at = text.index(needle, at + 1)
    at += offset
    return text.count("\n", 0, at), at - (text.rfind("\n", 0, at) + 1)


def test_a_valid_spec_has_only_its_lint_findings_as_warnings():
    llama = EXAMPLES / "llama3_8b.arch"
    assert analysis.diagnostics(llama.read_text(), llama) == []
    text = llama.read_text().replace("vocab = 128256", "vocab = 128257")
    (d,) = analysis.diagnostics(text, llama)
    assert (d.severity, d.code, d.range.line) == ("warning", "ARC102", _position(text, "vocab = 128257")[0])
    assert "fix:" in d.message


def test_errors_are_located_with_their_hint(tmp_path):
    text = JAMBA.read_text().replace("kv_heads = 8", "kv_heads = 3")
    (d,) = analysis.diagnostics(text, tmp_path / "jamba.arch")
    assert (d.range.line, d.severity) == (_position(text, "gqa(")[0], "error")
    assert "kv_heads (3)" in d.message and "hint:" in d.message


def test_syntax_errors_are_all_reported(tmp_path):
    text = "model m {\n    vocab = = 97\n    d_model = 32\n    context = ]\n}\n"
    found = analysis.diagnostics(text, tmp_path / "m.arch")
    assert [d.range.line for d in found] == [1, 3]


def test_an_error_in_an_imported_file_is_shown_on_the_import(tmp_path):
    (tmp_path / "base.arch").write_text("model base { vocab = = 1 }\n")
    text = 'import "base.arch"\nmodel m extends base { d_model = 32 }\n'
    d = analysis.diagnostics(text, tmp_path / "m.arch")[0]  # then the fields the broken base left unset
    assert d.range.line == 0 and "base.arch:1:22: expected a value" in d.message


def test_definition_of_blocks_lets_models_and_imports(tmp_path):
    text = JAMBA.read_text()
    use = _position(text, "M = mamba", offset=4)  # `mamba` in the pattern
    found = analysis.definition(text, JAMBA, *use)
    assert found.path == str(JAMBA) and (found.range.line, found.range.column) == _position(text, "block mamba {", offset=6)
    parent = analysis.definition(text, JAMBA, *_position(text, "extends mamba", offset=8))
    assert parent.range.line == _position(text, "block mamba {")[0]
    let = analysis.definition(text, JAMBA, *_position(text, "eps = eps", nth=0, offset=6))
    assert let.range.line == _position(text, "let eps")[0]
    (tmp_path / "base.arch").write_text("model base {\n    vocab = 97\n}\n")
    child = 'import "base.arch"\nmodel m extends base { d_model = 32 }\n'
    assert analysis.definition(child, tmp_path / "m.arch", 0, 10).path == str(tmp_path / "base.arch")
    model = analysis.definition(child, tmp_path / "m.arch", 1, 18)  # `base` after extends
    assert model.path == str(tmp_path / "base.arch") and model.range.line == 0
    assert analysis.definition(text, JAMBA, 0, 3) is None  # a comment


def test_hover_shows_facts_blocks_and_constructs():
    text = JAMBA.read_text()
    model = analysis.hover(text, JAMBA, *_position(text, "model jamba", offset=7))
    assert "51,570,323,328 total" in model and "12,110,311,296 active" in model
    block = analysis.hover(text, JAMBA, *_position(text, "A = attn", offset=5))
    assert block.startswith("**block attn** in model jamba: 4 layer(s)") and "gqa(heads=32" in block
    construct = analysis.hover(text, JAMBA, *_position(text, "gqa(", offset=1))
    assert construct.startswith("**gqa**")
    assert "Mamba's selective state space layer" in analysis.hover(text, JAMBA, *_position(text, "mamba(d_state"))
    assert analysis.hover(text.replace("kv_heads = 8", "kv_heads = 3"), JAMBA,
                          *_position(text, "model jamba", offset=7)) is None  # invalid: diagnostics say why

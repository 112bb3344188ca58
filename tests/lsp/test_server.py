"""`archc lsp` over the real protocol: an editor's client (pygls') talks to the server in a
subprocess over standard input and output."""

import asyncio
import sys
from pathlib import Path

import pytest

pytest.importorskip("pygls")

from lsprotocol import types  # noqa: E402
from pygls.lsp.client import LanguageClient  # noqa: E402

MESSY = "model m{vocab=97 d_model=32 context=64\nblock b{norm=rmsnorm() attention=gqa(heads=4,kv_heads=3) ffn=mlp(hidden=8)} layers=b*2}\n"


async def _session(tmp_path: Path) -> dict:
    client = LanguageClient("test", "1")
    published: list[types.PublishDiagnosticsParams] = []
    got = asyncio.Event()

    @client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def on_diagnostics(params):
        published.append(params)
        got.set()

    await client.start_io(sys.executable, "-m", "archlang", "lsp")
    try:
        await client.initialize_async(types.InitializeParams(capabilities=types.ClientCapabilities(),
                                                             root_uri=tmp_path.as_uri()))
        client.initialized(types.InitializedParams())
        uri = (tmp_path / "m.arch").as_uri()
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="arch", version=1, text=MESSY)))
        await asyncio.wait_for(got.wait(), 60)
        hover = await client.text_document_hover_async(types.HoverParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=1, character=34)))
        edits = await client.text_document_formatting_async(types.DocumentFormattingParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            options=types.FormattingOptions(tab_size=4, insert_spaces=True)))
        definition = await client.text_document_definition_async(types.DefinitionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=1, character=83)))
        await client.shutdown_async(None)
        client.exit(None)
        return {"diagnostics": published[0], "hover": hover, "edits": edits, "definition": definition}
    finally:
        await client.stop()


def test_the_server_answers_an_editor(tmp_path):
    answers = asyncio.run(asyncio.wait_for(_session(tmp_path), 120))
    (diag,) = answers["diagnostics"].diagnostics
    assert diag.severity == types.DiagnosticSeverity.Error and "kv_heads (3)" in diag.message
    assert diag.range.start.line == 1
    assert answers["hover"].contents.value.startswith("**gqa**")
    (edit,) = answers["edits"]
    assert edit.new_text.startswith("model m {\n    vocab = 97\n")
    assert answers["definition"].range.start == types.Position(line=1, character=6)  # `block b`

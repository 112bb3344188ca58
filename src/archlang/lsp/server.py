"""The protocol side of `archc lsp`, through pygls: it keeps the open documents, and on every
change publishes `analysis.diagnostics`; hover, definition and formatting requests are answered
from the document's current text."""

from __future__ import annotations

from pathlib import Path

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path

from archlang import __version__
from archlang.spec.errors import ArchError, ArchErrors

from . import analysis

_SEVERITY = {"error": types.DiagnosticSeverity.Error, "warning": types.DiagnosticSeverity.Warning}


def _range(r: analysis.Range) -> types.Range:
    return types.Range(start=types.Position(line=r.line, character=r.column),
                       end=types.Position(line=r.end_line, character=r.end_column))


def _path(uri: str) -> Path:
    return Path(to_fs_path(uri) or uri)


def build_server() -> LanguageServer:
    server = LanguageServer("archc", __version__, text_document_sync_kind=types.TextDocumentSyncKind.Full)

    def publish(uri: str) -> None:
        doc = server.workspace.get_text_document(uri)
        found = analysis.diagnostics(doc.source, _path(uri))
        server.text_document_publish_diagnostics(types.PublishDiagnosticsParams(
            uri=uri, version=doc.version,
            diagnostics=[types.Diagnostic(range=_range(d.range), message=d.message, severity=_SEVERITY[d.severity],
                                          code=d.code, source="archc") for d in found]))

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(params: types.DidOpenTextDocumentParams) -> None:
        publish(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(params: types.DidChangeTextDocumentParams) -> None:
        publish(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def did_save(params: types.DidSaveTextDocumentParams) -> None:
        publish(params.text_document.uri)  # an imported file may have changed on disk

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(params: types.DidCloseTextDocumentParams) -> None:
        server.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=params.text_document.uri,
                                                                                diagnostics=[]))

    @server.feature(types.TEXT_DOCUMENT_HOVER)
    def hover(params: types.HoverParams) -> types.Hover | None:
        doc = server.workspace.get_text_document(params.text_document.uri)
        text = analysis.hover(doc.source, _path(doc.uri), params.position.line, params.position.character)
        if text is None:
            return None
        return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=text))

    @server.feature(types.TEXT_DOCUMENT_DEFINITION)
    def definition(params: types.DefinitionParams) -> types.Location | None:
        doc = server.workspace.get_text_document(params.text_document.uri)
        found = analysis.definition(doc.source, _path(doc.uri), params.position.line, params.position.character)
        if found is None:
            return None
        return types.Location(uri=from_fs_path(found.path) or found.path, range=_range(found.range))

    @server.feature(types.TEXT_DOCUMENT_FORMATTING)
    def formatting(params: types.DocumentFormattingParams) -> list[types.TextEdit] | None:
        from archlang.spec.format import format_source

        doc = server.workspace.get_text_document(params.text_document.uri)
        try:
            formatted = format_source(doc.source, str(_path(doc.uri)))
        except (ArchError, ArchErrors):
            return None  # a spec that does not parse is left as it is; its diagnostics say why
        if formatted == doc.source:
            return []
        lines = doc.source.split("\n")
        whole = types.Range(start=types.Position(line=0, character=0),
                            end=types.Position(line=len(lines), character=0))
        return [types.TextEdit(range=whole, new_text=formatted)]

    return server


def serve() -> None:
    build_server().start_io()

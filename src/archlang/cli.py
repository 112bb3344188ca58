"""`archc`: the command line. Each command is a thin shell over one library function.

Exit codes: 0 success, 1 an invalid spec (or, for `diff` and `fmt --check`, a difference),
2 a usage error (bad flags, missing files).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console

from archlang.spec.errors import ArchError, ArchErrors, SourceMap, all_errors

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A problem with the command line itself (exit 2)."""


def _console(stream=None) -> Console:
    no_color = bool(os.environ.get("NO_COLOR"))
    return Console(file=stream or sys.stdout, no_color=no_color, highlight=False, soft_wrap=True)


def _err_console() -> Console:
    return _console(sys.stderr)


# ----------------------------------------------------------------------------- check


def _error_record(err: ArchError) -> dict:
    span = err.span
    return {
        "file": span.file if span else None,
        "line": span.line if span else None,
        "column": span.column if span else None,
        "end_line": span.end_line if span else None,
        "end_column": span.end_column if span else None,
        "message": err.message,
        "hint": err.hint,
        "notes": list(err.notes),
        "kind": err.kind,
    }


def _sarif(records: list[dict]) -> dict:
    from archlang import __version__

    results = []
    for r in records:
        result = {
            "ruleId": r["kind"].split(":")[0],
            "level": "error",
            "message": {"text": r["message"] + (f" (hint: {r['hint']})" if r["hint"] else "")},
        }
        if r["file"]:
            region = {"startLine": r["line"], "startColumn": r["column"]}
            if r["end_line"] and r["end_column"]:
                region.update(endLine=r["end_line"], endColumn=r["end_column"])
            result["locations"] = [{"physicalLocation": {"artifactLocation": {"uri": r["file"]}, "region": region}}]
        results.append(result)
    rules = sorted({res["ruleId"] for res in results})
    return {
        "version": "2.1.0",
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "runs": [{
            "tool": {"driver": {"name": "archc", "version": __version__, "informationUri": "https://github.com/archlang/archlang",
                                "rules": [{"id": r, "shortDescription": {"text": f"archlang {r} error"}} for r in rules]}},
            "results": results,
        }],
    }


def _github_escape(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def cmd_check(args) -> int:
    from archlang.api import check_file

    _existing_files(args.files)
    records: list[dict] = []
    summary: list[dict] = []
    rendered: list[str] = []
    for file in args.files:
        sources = SourceMap()
        try:
            models = check_file(file, sources=sources, allow_outside_root=args.allow_outside_root, run=args.run)
            summary.append({"file": file, "models": [m.name for m in models], "ok": True})
        except (ArchError, ArchErrors) as exc:
            errs = all_errors(exc)
            records.extend(_error_record(e) for e in errs)
            rendered.extend(e.render(sources) for e in errs)
            summary.append({"file": file, "models": [], "ok": False})
    out = _console()
    if args.format == "json":
        print(json.dumps({"ok": not records, "files": summary, "errors": records}, indent=2))
    elif args.format == "sarif":
        print(json.dumps(_sarif(records), indent=2))
    elif args.format == "github":
        for r in records:
            loc = f"file={r['file']},line={r['line']},col={r['column']}" if r["file"] else ""
            text = r["message"] + (f" (hint: {r['hint']})" if r["hint"] else "")
            print(f"::error {loc}::{_github_escape(text)}")
    else:
        err = _err_console()
        for block in rendered:
            err.print(block, markup=False)
        for s in summary:
            if s["ok"]:
                out.print(f"[green]ok[/green] {s['file']}: {', '.join(s['models'])}")
        bad = sum(1 for s in summary if not s["ok"])
        if bad:
            err.print(f"[red]{len(records)} error(s) in {bad} file(s)[/red]")
    return EXIT_INVALID if records else EXIT_OK


# ----------------------------------------------------------------------------- main


def _existing_files(files: Sequence[str]) -> None:
    for file in files:
        if not Path(file).is_file():
            raise UsageError(f"no such file: {file}")


def build_parser() -> argparse.ArgumentParser:
    from archlang import __version__

    parser = argparse.ArgumentParser(prog="archc", description="The archlang compiler: .arch specs → PyTorch models.")
    parser.add_argument("--version", action="version", version=f"archc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check", help="parse and validate specs (exit 0 valid, 1 invalid)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--format", choices=["text", "json", "github", "sarif"], default="text")
    p.add_argument("--run", action="store_true", help="also build the model at tiny size and check a forward pass for NaN/Inf")
    p.add_argument("--allow-outside-root", action="store_true", help="let imports leave the spec's folder")
    p.set_defaults(func=cmd_check)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except UsageError as exc:
        _err_console().print(f"archc {args.command}: error: {exc}", markup=False)
        return EXIT_USAGE
    except (ArchError, ArchErrors) as exc:
        _err_console().print(exc.render(getattr(exc, "sources", None)), markup=False)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug in archc itself: say so plainly, no traceback
        if os.environ.get("ARCHC_DEBUG"):
            raise
        _err_console().print(
            f"archc {args.command}: internal error: {type(exc).__name__}: {exc}\n"
            "this is a bug in archc; rerun with ARCHC_DEBUG=1 for the traceback and report it",
            markup=False,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())

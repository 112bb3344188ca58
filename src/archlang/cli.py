"""`archc`: the command line. Each command is a thin shell over one library function.

Exit codes: 0 success, 1 an invalid spec (or, for `diff` and `fmt --check`, a difference; for
`diff --fail-on`, a tripped guard), 2 a usage error (bad flags, missing files), 70 only for a bug
in archc. Everything printed that came from the user (file names, spec text in messages) is shown
literally and bounded (cli_text.py).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.text import Text

from archlang.cli_text import bounded, bounded_lines, github_data, github_property, literal, literal_block
from archlang.spec.ast import MAX_DIM
from archlang.spec.errors import ArchError, ArchErrors, SourceMap, all_errors

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 70

# One bad file must not flood a terminal or a CI log: 4,000 errors on one 150 KB line once
# printed 900 MB. Beyond these, the output says how much was left out.
MAX_ERRORS_PER_FILE = 50
MAX_LINE_WIDTH = 400  # characters of one printed line (a source excerpt can be one huge line)
MAX_MESSAGE = 2_000  # characters of one message or hint in machine formats
MAX_GENERATED_BYTES = 10_000_000  # how much of an existing output file is read to see whether archc wrote it


class UsageError(Exception):
    """A problem with the command line itself (exit 2)."""


def _console(stream=None) -> Console:
    """A console that never interprets text: styles come only from `Text` objects built here."""
    no_color = bool(os.environ.get("NO_COLOR"))
    return Console(file=stream or sys.stdout, no_color=no_color, highlight=False, soft_wrap=True, markup=False,
                   emoji=False)


def _err_console() -> Console:
    return _console(sys.stderr)


def _progress(items: Sequence, description: str):
    """The items, with a progress bar on standard error while it is a terminal and the work is
    long enough to want one; nothing at all in pipes and CI logs. The bar erases itself."""
    console = _err_console()
    if len(items) < 3 or not console.is_terminal:
        return items
    from rich.progress import track

    return track(items, description=description, console=console, transient=True)


# ----------------------------------------------------------------------------- errors


def _error_record(err: ArchError) -> dict:
    span = err.span
    return {
        "file": span.file if span else None,
        "line": span.line if span else None,
        "column": span.column if span else None,
        "end_line": span.end_line if span else None,
        "end_column": span.end_column if span else None,
        "message": bounded(err.message, MAX_MESSAGE),
        "hint": bounded(err.hint, MAX_MESSAGE) if err.hint else err.hint,
        "notes": [bounded(n, MAX_MESSAGE) for n in err.notes[:MAX_ERRORS_PER_FILE]],
        "kind": err.kind,
    }


def _rendered(errs: Sequence[ArchError], sources: SourceMap | None) -> str:
    """The compiler-style text of (at most MAX_ERRORS_PER_FILE of) these errors, safe to print."""
    blocks = [bounded_lines(literal_block(e.render(sources)), MAX_LINE_WIDTH) for e in errs[:MAX_ERRORS_PER_FILE]]
    return "\n".join(blocks)


def _more(omitted: int, file: object) -> str:
    return f"and {omitted:,} more error{'s' if omitted != 1 else ''} in {literal(file)}"


def _print_errors(exc: ArchError | ArchErrors, sources: SourceMap | None, file: object) -> None:
    errs = all_errors(exc)
    err = _err_console()
    err.print(_rendered(errs, sources))
    if len(errs) > MAX_ERRORS_PER_FILE:
        err.print(_more(len(errs) - MAX_ERRORS_PER_FILE, file))


# ----------------------------------------------------------------------------- check


def _sarif(records: list[dict], summary: list[dict], warnings=(), level: str = "warning") -> dict:
    from archlang import __version__
    from archlang.lint.report import sarif_result, sarif_rule

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
    rules = [{"id": r, "shortDescription": {"text": f"archlang {r} error"}} for r in sorted({res["ruleId"] for res in results})]
    rules += [sarif_rule(code) for code in sorted({f.code for f in warnings})]
    results += [sarif_result(f, level=level) for f in warnings]
    # Errors left out of `results` (past the per-file cap) are counted where a reader looks.
    notifications = [{"level": "warning", "message": {"text": _more(s["errors_omitted"], s["file"])}}
                     for s in summary if s["errors_omitted"]]
    return {
        "version": "2.1.0",
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "runs": [{
            "tool": {"driver": {"name": "archc", "version": __version__, "informationUri": "https://github.com/archlang/archlang",
                                "rules": rules}},
            "invocations": [{"executionSuccessful": True, "toolExecutionNotifications": notifications}],
            "results": results,
        }],
    }


def _github_line(r: dict) -> str:
    """One `::error` workflow command; nothing from the user can end it or add properties."""
    props = ""
    if r["file"]:
        props = f" file={github_property(r['file'])},line={r['line']},col={r['column']}"
    text = r["message"] + (f" (hint: {r['hint']})" if r["hint"] else "")
    return f"::error{props}::{github_data(text)}"


def _check_one(path: Path, args) -> tuple[list, list[ArchError], SourceMap]:
    """The models of one file, or its errors: a file that cannot be read is an error of that file."""
    from archlang.api import check_file, check_source

    sources = SourceMap()
    if str(path) == STDIN:
        try:
            models = check_source(_read_stdin(), name=STDIN_NAME, sources=sources, run=getattr(args, "run", False))
        except (ArchError, ArchErrors) as exc:
            return [], all_errors(exc), sources
        return models, [], sources
    if not os.path.lexists(path):
        return [], [ArchError(f"no such file: {literal(path)}", kind="usage")], sources
    try:
        models = check_file(path, sources=sources, allow_outside_root=args.allow_outside_root,
                            run=getattr(args, "run", False))
    except (ArchError, ArchErrors) as exc:
        return [], all_errors(exc), sources
    except OSError as exc:
        return [], [ArchError(f"cannot read {literal(path)}: {exc.strerror or exc}", kind="io")], sources
    return models, [], sources


def _lint_one(path: Path, models, sources: SourceMap, args, *, whole_ir: bool = True):
    """The lint findings on a file's models, under its project's settings and the command line's."""
    from archlang.lint import lint_models, load_config

    config = load_config(path).overridden(tensor_parallel=getattr(args, "tp", None), expert_parallel=getattr(args, "ep", None),
                                          hardware=getattr(args, "hardware", None), ignore=getattr(args, "ignore", ()))
    return lint_models(models, config, sources, whole_ir=whole_ir).findings


class _Run:
    """What checking (and linting) a list of files produced, ready for any output format."""

    def __init__(self, files, args, *, whole_ir: bool):
        self.records: list[dict] = []
        self.summary: list[dict] = []
        self.rendered: list[str] = []
        self.findings: list = []  # shown, at most MAX_ERRORS_PER_FILE per file
        self.finding_sources: list[SourceMap] = []  # the texts each finding's file run read
        self.usage = False
        for file in _progress(files, "checking" if not getattr(args, "run", False) else "checking and running"):
            models, errs, sources = _check_one(Path(file), args)
            self.usage = self.usage or any(e.kind == "usage" for e in errs)
            shown = errs[:MAX_ERRORS_PER_FILE]
            omitted = len(errs) - len(shown)
            self.records.extend(_error_record(e) for e in shown)
            if errs:
                self.rendered.append(_rendered(shown, sources) + (f"\n{_more(omitted, file)}" if omitted else ""))
            # a loader that gives only the models' names has nothing to lint: its file is checked alone
            names = [m if isinstance(m, str) else m.name for m in models]
            models = [m for m in models if not isinstance(m, str)]
            findings = _lint_one(Path(file), models, sources, args, whole_ir=whole_ir) if models else []
            self.findings += findings[:MAX_ERRORS_PER_FILE]
            self.finding_sources += [sources] * len(findings[:MAX_ERRORS_PER_FILE])
            self.summary.append({"file": STDIN_NAME if file == STDIN else file, "models": names, "ok": not errs, "error_count": len(errs),
                                 "errors_omitted": omitted, "warning_count": len(findings),
                                 "warnings_omitted": max(0, len(findings) - MAX_ERRORS_PER_FILE)})

    def omitted(self, kind: str) -> list[tuple[str, str]]:
        """(file, text) of the errors (kind "errors") or findings ("warnings") the per-file caps left out."""
        out = []
        for s in self.summary:
            n = s[f"{kind}_omitted"]
            if n and kind == "errors":
                out.append((s["file"], _more(n, s["file"])))
            elif n:
                out.append((s["file"], f"and {n:,} more finding{'s' if n != 1 else ''} in {literal(s['file'])}"))
        return out

    def print(self, fmt: str, *, level: str = "warning", ok_lines: bool = True, findings_fail: bool = False) -> None:
        from archlang.lint.report import finding_json, github_line, render_text

        if fmt == "json":
            print(json.dumps({"ok": not self.records and not (findings_fail and self.findings),
                              "truncated": any(s["errors_omitted"] or s["warnings_omitted"] for s in self.summary),
                              "files": self.summary, "errors": self.records,
                              "warnings": [finding_json(f) for f in self.findings]}, indent=2))
        elif fmt == "markdown":
            from archlang.lint.markdown import check_summary

            sys.stdout.write(check_summary(self.summary, self.records, self.findings, strict=findings_fail))
        elif fmt == "sarif":
            sarif = _sarif(self.records, self.summary, self.findings, level)
            notes = sarif["runs"][0]["invocations"][0]["toolExecutionNotifications"]
            notes += [{"level": "warning", "message": {"text": text}} for _, text in self.omitted("warnings")]
            print(json.dumps(sarif, indent=2))
        elif fmt == "github":
            for r in self.records:
                print(_github_line(r))
            for f in self.findings:
                print(github_line(f, level=level))
            for kind, command in (("errors", "error"), ("warnings", level)):
                for file, text in self.omitted(kind):
                    print(f"::{command} file={github_property(file)}::{github_data(text)}")
        else:
            out, err = _console(), _err_console()
            for block in self.rendered:
                err.print(block)
            for f, sources in zip(self.findings, self.finding_sources):
                err.print(bounded_lines(literal_block(render_text(f, sources, level=level)), MAX_LINE_WIDTH))
            for _, text in self.omitted("warnings"):
                err.print(text)
            if ok_lines:
                for s in self.summary:
                    if s["ok"]:
                        out.print(Text.assemble(("ok", "green"), f" {literal(s['file'])}: {', '.join(s['models'])}"))
            bad = [s for s in self.summary if not s["ok"]]
            if bad:
                total = sum(s["error_count"] for s in bad)
                err.print(Text(f"{total} error(s) in {len(bad)} file(s)", style="red"))
            warned = [s for s in self.summary if s["warning_count"]]
            if warned:
                total = sum(s["warning_count"] for s in warned)
                err.print(Text(f"{total} finding(s) in {len(warned)} file(s)", style="yellow"))


def cmd_check(args) -> int:
    run = _Run(args.files, args, whole_ir=False)  # check's work grows with block kinds, not depth
    run.print(args.format, level="error" if args.strict else "warning", findings_fail=args.strict)
    if run.usage:
        return EXIT_USAGE
    return EXIT_INVALID if run.records or (args.strict and run.findings) else EXIT_OK


# ----------------------------------------------------------------------------- lint


def cmd_lint(args) -> int:
    from archlang.lint.report import rules_json, rules_markdown, rules_text

    if args.list_rules:
        if args.files:
            raise UsageError("--list-rules takes no files")
        listing = {"text": rules_text, "markdown": rules_markdown, "json": lambda: json.dumps(rules_json(), indent=2)}
        if args.format not in listing:
            raise UsageError(f"--list-rules prints text, json or markdown, not {args.format}")
        sys.stdout.write(listing[args.format]().rstrip("\n") + "\n")
        return EXIT_OK
    if not args.files:
        raise UsageError("give one or more spec files, or --list-rules")
    if args.format == "markdown":
        raise UsageError("markdown is for --list-rules; findings print as text, github, sarif or json")
    run = _Run(args.files, args, whole_ir=True)
    run.print(args.format, ok_lines=False, findings_fail=True)
    if run.usage or run.records:  # a spec that does not check is not linted: exit 2, as a usage error does
        return EXIT_USAGE
    return EXIT_INVALID if run.findings else EXIT_OK


# ----------------------------------------------------------------------------- compile

# The header compiler/codegen.py writes at the top of every generated module. Its hash is of the
# spec text (which the output does not contain), so archc recognises its own files by the whole
# header's shape plus the `SPEC = ` line agreeing with it, not by a prefix anyone can type.
_GENERATED_HEADER = re.compile(
    r"# Generated by archc \S+ from (?P<spec>[^\n]*)\. Do not edit: change the spec and recompile\.\n"
    r"# spec sha256: [0-9a-f]{64}\n"
    r"# passes: [^\n]*\n"
)
_TEMP_SUFFIX = ".archc-tmp-"


def written_by_archc(text: str) -> bool:
    """Whether `text` is a module `archc compile` wrote (and so may be replaced without --force)."""
    header = _GENERATED_HEADER.match(text)
    if not header:
        return False
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    for node in tree.body:
        if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["SPEC"]
                and isinstance(node.value, ast.Constant)):
            return str(node.value.value) == header["spec"]
    return False


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{_TEMP_SUFFIX}{os.getpid()}")


def _remove_stale_temps(path: Path) -> None:
    """Delete temporaries an earlier, killed run left beside `path`: only names of our exact
    pattern, and only when the process that made them is gone."""
    pattern = re.compile(re.escape(f".{path.name}{_TEMP_SUFFIX}") + r"(\d+)")
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return
    for candidate in candidates:
        match = pattern.fullmatch(candidate.name)
        if not match or int(match[1]) == os.getpid():
            continue
        try:
            os.kill(int(match[1]), 0)
            continue  # still running: its temporary is in use
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, ValueError):
            continue  # alive under another user, or no such pid could exist: leave it
        try:
            if candidate.is_file() and not candidate.is_symlink():
                candidate.unlink()
        except OSError:
            pass


def _cannot_write(path: Path, exc: OSError) -> UsageError:
    reason = {FileExistsError: "a parent of it is a file", NotADirectoryError: "a parent of it is a file",
              IsADirectoryError: "it is a directory", PermissionError: "permission denied"}.get(type(exc))
    return UsageError(f"cannot write {literal(path)}: {reason or exc.strerror or exc}")


def replace_file(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    if path.is_dir():
        raise UsageError(f"cannot write {literal(path)}: it is a directory")
    tmp = _temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    finally:
        try:
            if tmp.is_file():
                tmp.unlink()
        except OSError:
            pass


def write_atomic(path: Path, text: str, *, force: bool = False, ours=written_by_archc) -> None:
    """Write `text` atomically; refuse to replace a file that archc did not write unless forced."""
    if path.is_dir():
        raise UsageError(f"cannot write {literal(path)}: it is a directory")
    if path.exists() and not force:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                existing = f.read(MAX_GENERATED_BYTES)
        except OSError:
            existing = ""
        if not ours(existing):
            raise UsageError(f"{literal(path)} exists and was not written by archc; pass --force to overwrite it")
    replace_file(path, text.encode("utf-8"))


def _passes_args(p) -> None:
    from archlang.compiler import DEFAULT_PIPELINE

    p.add_argument("--model", help="which model of the file (when it declares several)")
    p.add_argument("--passes", default=DEFAULT_PIPELINE, help=f"comma-separated pass pipeline (default: {DEFAULT_PIPELINE}); '' for none")
    p.add_argument("--disable-pass", action="append", default=[], metavar="NAME", help="drop a pass from the pipeline")
    p.add_argument("--verify-each", action="store_true", help="validate the IR after every pass, not only at the end")
    p.add_argument("--allow-outside-root", action="store_true", help="let imports leave the spec's folder")


def _compile(args, on_step=None, sources: SourceMap | None = None):
    from archlang.api import compile_spec

    _existing_files([args.file])
    sources = sources if sources is not None else SourceMap()
    try:  # a command-line argument is a path, whatever its name ends with
        return compile_spec(Path(args.file), model=args.model, passes=args.passes, disabled=tuple(args.disable_pass),
                            sources=sources, allow_outside_root=args.allow_outside_root, on_step=on_step,
                            verify_each=getattr(args, "verify_each", False))
    except (ArchError, ArchErrors) as exc:
        exc.sources = sources  # type: ignore[attr-defined]
        raise


def cmd_compile(args) -> int:
    from archlang.compiler.ir import dump

    def on_step(name, g):
        if args.print_after_all or (args.print_ir_after and name in args.print_ir_after):
            sys.stderr.write(f"// ----- IR after {name}\n{dump(g)}")

    out = Path(args.output) if args.output else Path(args.file).with_suffix(".py")
    if out.exists() and Path(args.file).exists() and out.samefile(args.file):
        raise UsageError(f"the output {literal(out)} is the spec itself; choose another with -o")
    printing = args.print_after_all or args.print_ir_after
    compiled = _compile(args, on_step if printing else None)  # without a printer, compile the folded IR
    write_atomic(out, compiled.source, force=args.force)
    _err_console().print(f"wrote {literal(out)} ({compiled.model.name}, passes: {', '.join(compiled.passes) or 'none'})")
    return EXIT_OK


def cmd_ir(args) -> int:
    from archlang.compiler.ir import dump

    compiled = _compile(args)
    sys.stdout.write(dump(compiled.graph))
    return EXIT_OK


# ----------------------------------------------------------------------------- stats


def _dimension(text: str) -> int:
    """An argparse type: a whole number from 1 to the language's MAX_DIM."""
    try:
        value = int(text) if len(text) <= 20 else None
    except ValueError:
        value = None
    if value is None or not 1 <= value <= MAX_DIM:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_DIM:,}, got {literal(bounded(text, 40))!r}")
    return value


def _human(n: int | float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "B" if not unit else "G"), (1e6, "M"), (1e3, "K" if not unit else "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


def _facts(args, compiled):
    from archlang.compiler import compute_facts

    try:
        return compute_facts(compiled.graph, context=args.context, dtype=args.dtype)
    except ValueError as exc:
        raise UsageError(literal(exc)) from None


def cmd_stats(args) -> int:
    from rich.table import Table

    compiled = _compile(args)
    f = _facts(args, compiled)
    if args.json:
        print(json.dumps(f.to_json(), indent=2, sort_keys=True))
        return EXIT_OK
    table = Table(title=f"{literal(f.model)}  ({f.layers} layers, context {f.context:,}, {f.dtype})", show_header=True)
    table.add_column("fact", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    table.add_column("", justify="right", overflow="fold")
    table.add_row("parameters (total)", f"{f.params_total:,}", _human(f.params_total))
    table.add_row("parameters (active / token)", f"{f.params_active:,}", _human(f.params_active))
    if f.params_mtp:
        table.add_row("  of which mtp params (training only)", f"{f.params_mtp:,}", _human(f.params_mtp))
    table.add_row(f"weights ({f.dtype})", f"{f.weight_bytes:,} B", _human(f.weight_bytes, "B"))
    table.add_row("FLOPs / token (forward)", f"{f.flops_per_token:,}", _human(f.flops_per_token, "FLOP"))
    if f.flops_per_patch is not None:  # byte_latent: the tokens are bytes, the global stack runs per patch
        table.add_row(f"FLOPs / patch (forward, {f.bytes_per_patch:g} bytes)", f"{f.flops_per_patch:,}",
                      _human(f.flops_per_patch, "FLOP"))
    table.add_row("KV cache / token", f"{f.kv_cache_bytes_per_token:,} B", _human(f.kv_cache_bytes_per_token, "B"))
    table.add_row(f"KV cache at {f.context:,} tokens", f"{f.kv_cache_bytes_at_context:,} B", _human(f.kv_cache_bytes_at_context, "B"))
    if f.ssm_state_bytes_per_sequence:
        table.add_row("recurrent state / sequence", f"{f.ssm_state_bytes_per_sequence:,} B", _human(f.ssm_state_bytes_per_sequence, "B"))
    if f.ssm_state_bytes_per_sequence and f.kv_cache_bytes_at_context:
        table.add_row(f"cache / sequence at {f.context:,} tokens", f"{f.cache_bytes_at_context:,} B",
                      _human(f.cache_bytes_at_context, "B"))
    table.add_row("activations / token (training, est.)", f"{f.activation_bytes_per_token:,} B", _human(f.activation_bytes_per_token, "B"))
    for k, v in f.breakdown.items():
        active = f.breakdown_active.get(k, 0)
        table.add_row(f"  {literal(k)}", f"{v:,}", f"active {_human(active)}" if active != v else "")
    _console().print(table)
    return EXIT_OK


# ----------------------------------------------------------------------------- estimate


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB"


def _seconds(s: float) -> str:
    return f"{s * 1e3:,.3f} ms" if s < 1 else f"{s:,.3f} s"


def cmd_estimate(args) -> int:
    from rich.table import Table

    from archlang.estimate import HARDWARE, Setup, estimate, load_hardware_file

    known = dict(HARDWARE)
    if args.hardware_file:
        _existing_files([args.hardware_file])
        known.update(load_hardware_file(args.hardware_file))
    if args.hardware not in known:
        raise UsageError(f"unknown hardware {literal(args.hardware)}; known: {', '.join(sorted(known))}")
    if args.advise:
        return _advise(args, known[args.hardware])
    if args.global_batch is not None or args.top is not None:
        raise UsageError(f"{'--global-batch' if args.global_batch is not None else '--top'} is for --advise: one "
                         "layout's estimate takes --batch per data-parallel rank and lists nothing")
    compiled = _compile(args)
    setup = Setup(hardware=known[args.hardware], gpus=args.gpus, tp=args.tp, pp=args.pp, ep=args.ep, fsdp=args.fsdp,
                  seq=args.seq, batch=args.batch, dtype=args.dtype, recompute=args.recompute, mfu=args.mfu,
                  bandwidth_utilisation=args.bandwidth_utilisation)
    e = estimate(compiled.graph, setup)
    if args.json:
        print(json.dumps(e.to_json(), indent=2, sort_keys=True))
        return EXIT_OK
    par = e.parallel
    title = (f"{literal(e.model)} on {e.gpus} x {e.hardware}  (dp {par['dp']}, tp {par['tp']}, pp {par['pp']}, "
             f"ep {par['ep']}{', fsdp' if par['fsdp'] else ''}; {e.batch} x {e.seq:,} tokens, {e.dtype})")
    tr, inf = e.training, e.inference
    table = Table(title=title, show_header=True)
    table.add_column("training (per device)", overflow="fold")
    table.add_column("", justify="right", overflow="fold")
    table.add_column("inference (per device)", overflow="fold")
    table.add_column("", justify="right", overflow="fold")
    rows = [
        ("weights", _gb(tr["weights_bytes"]), "weights", _gb(inf["weights_bytes"])),
        ("gradients", _gb(tr["gradients_bytes"]), "KV cache + state", _gb(inf["cache_bytes"])),
        ("optimizer states", _gb(tr["optimizer_bytes"]), "", ""),
        (f"activations ({e.recompute} recompute)", _gb(tr["activations_bytes"]), "", ""),
        ("total", _gb(tr["total_bytes"]), "total", _gb(inf["total_bytes"])),
        ("fits", "yes" if tr["fits"] else "NO", "fits", "yes" if inf["fits"] else "NO"),
        ("step time", _seconds(tr["step_seconds"]), "prefill", _seconds(inf["prefill_seconds"])),
        ("tokens / s (all devices)", f"{tr['tokens_per_second']:,.0f}", "decode step", _seconds(inf["decode_step_seconds"])),
        ("bound by", tr["bound"], "decode tokens / s", f"{inf['decode_tokens_per_second']:,.0f}"),
        ("hardware FLOPs utilisation", f"{tr['hardware_utilisation']:.2f}", "bound by", inf["bound"]),
    ]
    for row in rows:
        table.add_row(*row)
    console = _console()
    console.print(table)
    for a in e.assumptions:
        console.print(f"  assumes {literal(a)}", highlight=False)
    return EXIT_OK


def _advise(args, hardware) -> int:
    from argparse import Namespace

    from rich.table import Table

    from archlang.estimate.advise import TP_UNFUSED, advise, meta_model

    chosen = [f"--{k}" for k in ("tp", "pp", "ep") if getattr(args, k) != 1] + (["--fsdp"] if args.fsdp else [])
    if chosen:
        raise UsageError(f"--advise chooses the layout itself; drop {', '.join(chosen)} (or drop --advise to "
                         "estimate that one layout)")
    if args.gpus < 1:
        raise UsageError(f"--gpus must be at least 1, got {args.gpus}")
    if args.global_batch is not None and args.global_batch < 1:
        raise UsageError(f"--global-batch must be at least 1, got {args.global_batch}")
    # tensor parallelism splits q/k/v and gate/up apart: advise on the model built without those fusions
    compiled = _compile(Namespace(**{**vars(args), "disable_pass": [*args.disable_pass, *TP_UNFUSED]}))
    a = advise(compiled.graph, meta_model(compiled), hardware=hardware, gpus=args.gpus, seq=args.seq,
               batch=args.batch, global_batch=args.global_batch, dtype=args.dtype, recompute=args.recompute,
               mfu=args.mfu, top=5 if args.top is None else args.top, spec=args.file)
    if args.json:
        print(json.dumps(a.to_json(), indent=2, sort_keys=True))
        return EXIT_OK if a.layouts else EXIT_INVALID
    console = _console()
    title = (f"{literal(a.model)}: training layouts of {a.gpus} x {a.hardware}  ({a.global_batch} x {a.seq:,} tokens "
             f"per step, {a.dtype})")
    if a.layouts:
        table = Table(title=title, show_header=True)
        for col in ("#", "mesh", "memory / device", "step", "tokens / s", "exposed communication"):
            table.add_column(col, justify="left" if col == "mesh" else "right", overflow="fold")
        for i, c in enumerate(a.layouts, 1):
            exposed = sum(c.seconds[k] for k in ("tp", "cp", "ep", "pp"))
            exposed += max(0.0, c.seconds["dp"] - c.seconds["compute"] - c.seconds["bubble"])
            table.add_row(str(i), c.layout.label, _gb(c.memory_bytes), _seconds(c.step_seconds),
                          f"{c.tokens_per_second:,.0f}", _seconds(exposed))
        console.print(table)
        console.print(f"why: {literal(a.why)}", highlight=False)
    console.print(f"{a.feasible} of the {a.considered} layouts of {a.gpus} devices run and fit; dropped:",
                  highlight=False)
    for r in a.rejected:
        console.print(f"  {r.count} x {literal(r.message)}  (e.g. {r.example})", highlight=False)
    if not a.layouts:
        _err_console().print(f"archc estimate: no layout of {a.gpus} x {a.hardware} runs and fits this model; "
                             "more devices, a shorter --seq, --recompute full or hardware with more memory may")
        return EXIT_INVALID
    console.print("to apply the best:", highlight=False)
    for line in a.code.splitlines():
        console.print(f"    {literal(line)}", highlight=False)
    for assumption in a.assumptions:
        console.print(f"  assumes {literal(assumption)}", highlight=False)
    return EXIT_OK


# ----------------------------------------------------------------------------- diff


def cmd_diff(args) -> int:
    from argparse import Namespace

    from archlang.compiler.diff import check_guard, diff_models

    sources_a, sources_b = SourceMap(), SourceMap()
    ca = _compile(Namespace(**{**vars(args), "file": args.a}), sources=sources_a)
    cb = _compile(Namespace(**{**vars(args), "file": args.b}), sources=sources_b)
    d = diff_models(ca.model, cb.model, _facts(args, ca), _facts(args, cb))
    tripped = []
    for guard in args.fail_on:
        try:
            msg = check_guard(guard, d)
        except ValueError as exc:
            raise UsageError(literal(exc)) from None
        if msg:
            tripped.append(msg)
    if args.json or args.format == "json":
        print(json.dumps({**d.to_json(), "guards_tripped": tripped}, indent=2, sort_keys=True))
    elif args.format == "markdown":  # a pull-request comment, with the lint findings the change adds
        from archlang.lint.markdown import diff_comment

        findings_a = _lint_one(Path(args.a), [ca.model], sources_a, args)
        findings_b = _lint_one(Path(args.b), [cb.model], sources_b, args)
        sys.stdout.write(diff_comment(args.a, args.b, d, findings_a, findings_b, tripped))
    else:
        out = _console()
        if not d.changed:
            out.print("no architectural change")
        for c in d.changes:
            out.print(Text.assemble((literal(c.where), "bold"), f": {literal(c.what)} {literal(c.before)} ",
                                    ("→", "yellow"), f" {literal(c.after)}"))
        for note in d.notes:
            out.print(f"note: {literal(note)}")
        if d.changed:
            from rich.table import Table

            table = Table(show_header=True)  # cells fold: a narrow log wraps a number, never cuts it
            for col in ("fact", literal(args.a), literal(args.b), "delta", "%"):
                table.add_column(col, justify="right" if col != "fact" else "left", overflow="fold")
            for k, (a, b) in d.facts.items():
                pct = "" if a == 0 else f"{100 * (b - a) / a:+.2f}%"
                table.add_row(literal(k), f"{a:,}", f"{b:,}", f"{b - a:+,}", pct)
            out.print(table)
        for msg in tripped:
            _err_console().print(f"guard tripped: {literal(msg)}")
    if args.fail_on:  # a gate: changes are allowed, only a tripped guard fails
        return EXIT_INVALID if tripped else EXIT_OK
    return EXIT_INVALID if d.changed else EXIT_OK


# ----------------------------------------------------------------------------- report


def cmd_report(args) -> int:
    from argparse import Namespace

    from archlang import __version__
    from archlang.compiler.diff import diff_models
    from archlang.compiler.svg import render as render_svg
    from archlang.estimate import Setup, estimate
    from archlang.report import Report, render

    known = _hardware_names()
    if args.hardware not in known:
        raise UsageError(f"unknown hardware {literal(args.hardware)}; known: {', '.join(sorted(known))}")
    out = Path(args.output)
    sources = SourceMap()  # the spec's text, where inline `# archc: ignore[...]` comments are read
    compiled = _compile(args, sources=sources)
    facts = _facts(args, compiled)
    setup = Setup(hardware=known[args.hardware], gpus=args.gpus, tp=args.tp, pp=args.pp, ep=args.ep, fsdp=args.fsdp)
    report = Report(spec=args.file, model=compiled.model.name, family=compiled.model.family, version=__version__,
                    picture_svg=render_svg(compiled.lowered), facts=facts, estimate=estimate(compiled.graph, setup))
    report.findings = _lint_one(Path(args.file), [compiled.model], sources, Namespace(hardware=args.hardware))
    if args.base:
        base = _compile(Namespace(**{**vars(args), "file": args.base}))
        report.base, report.diff = args.base, diff_models(base.model, compiled.model, _facts(args, base), facts)
    replace_file(out, render(report).encode("utf-8"))
    _err_console().print(f"wrote {literal(out)}")
    return EXIT_OK


# ----------------------------------------------------------------------------- fmt


def _read_stdin() -> str:
    """Spec text piped in (`archc fmt -`, `archc check -`), held to the size limit of a spec file."""
    from archlang.spec.resolve import MAX_FILE_BYTES

    data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ArchError(f"{STDIN_NAME} is too large: more than {MAX_FILE_BYTES:,} bytes", kind="io",
                        hint="a spec file is at most 1 MB; split it with `import`")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArchError(f"{STDIN_NAME} is not UTF-8 text (byte {exc.start})", kind="io",
                        hint="save the spec as UTF-8") from None


def _fmt_stdin(args) -> int:
    """`archc fmt -`: the formatted spec on standard output (with --check, only the exit code)."""
    from archlang.spec.format import format_source

    sources = SourceMap()
    try:
        text = _read_stdin()
        sources.add(STDIN_NAME, text)
        out = format_source(text, STDIN_NAME)
    except (ArchError, ArchErrors) as exc:
        _print_errors(exc, sources, STDIN_NAME)
        return EXIT_INVALID
    if args.check:
        if out != text:
            _err_console().print(f"would reformat {STDIN_NAME}")
            return EXIT_INVALID
        return EXIT_OK
    sys.stdout.write(out)
    return EXIT_OK


def cmd_fmt(args) -> int:
    from archlang.spec.format import format_source
    from archlang.spec.resolve import read_spec

    if STDIN in args.files:
        if len(args.files) > 1:
            raise UsageError("`-` (standard input) cannot be formatted together with files")
        return _fmt_stdin(args)
    _existing_files(args.files)
    changed = []
    failed = False
    for file in args.files:
        path = Path(file)
        sources = SourceMap()
        try:
            text = read_spec(path, literal(path))
            sources.add(file, text)
            out = format_source(text, file)
        except (ArchError, ArchErrors) as exc:  # report it and go on with the other files
            _print_errors(exc, sources, file)
            failed = True
            continue
        if out != text:
            changed.append(file)
            if not args.check:
                replace_file(path, out.encode("utf-8"))
    # Only the names: a diff of a huge file would flood the log.
    for file in changed:
        _err_console().print(f"{'would reformat' if args.check else 'reformatted'} {literal(file)}")
    return EXIT_INVALID if failed or (args.check and changed) else EXIT_OK


# ----------------------------------------------------------------------------- graph


def _missing_dependency(what: str, hint: str) -> ArchError:
    return ArchError(f"`archc graph` needs {what}, which is not installed", hint=hint, kind="dependency")


def cmd_graph(args) -> int:
    out = Path(args.output)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in ("svg", "png", "dot"):
        raise UsageError(f"cannot write a picture as .{literal(fmt)}; use .svg, .png or .dot")
    engine = "dot" if fmt == "dot" else args.engine  # .dot is Graphviz's own language
    if engine == "dot":
        try:
            import pydot  # noqa: F401
        except ImportError:
            raise _missing_dependency("the pydot package", "pip install 'archlang[graph]'") from None
        if fmt != "dot" and shutil.which("dot") is None:  # .dot is text: only layout needs Graphviz
            raise _missing_dependency("Graphviz's `dot` program to lay out .svg and .png with --engine dot",
                                      "install Graphviz (apt-get install graphviz, dnf install graphviz, brew install "
                                      "graphviz), or leave out --engine dot to draw natively")
    elif fmt == "png":
        try:
            import resvg_py
        except ImportError:
            raise _missing_dependency("the resvg-py package to turn the picture into a PNG",
                                      "pip install 'archlang[png]', or write .svg") from None
    compiled = _compile(args)
    graph = compiled.graph if args.expand else compiled.lowered
    if engine == "native":
        from archlang.compiler.svg import render as render_svg

        data = render_svg(graph, expand=args.expand).encode()
        if fmt == "png":
            try:
                data = bytes(resvg_py.svg_to_bytes(svg_string=data.decode()))
            except Exception as exc:  # the renderer reports its own failures as bare exceptions
                raise ArchError(f"resvg could not draw the PNG: {bounded(literal(exc), MAX_MESSAGE)}",
                                kind="dependency", hint="write .svg instead") from None
    else:
        from archlang.compiler.picture import render

        try:
            data = render(graph, fmt, expand=args.expand)
        except ArchError:
            raise
        except Exception as exc:  # pydot raises bare exceptions when `dot` fails or vanishes mid-run
            raise ArchError(f"Graphviz could not draw the picture: {bounded(literal(exc), MAX_MESSAGE)}",
                            kind="dependency", hint="check that Graphviz's `dot` runs, or write .dot") from None
    replace_file(out, data)
    _err_console().print(f"wrote {literal(out)}")
    return EXIT_OK


# ----------------------------------------------------------------------------- import-hf


def _imported_spec(text: str) -> bool:
    return text.startswith("# Imported from a Hugging Face")


def cmd_import_hf(args) -> int:
    from archlang.interop.hf import spec_from_config

    _existing_files([args.config])
    text = spec_from_config(args.config, name=args.name)  # reads and checks the file: only ArchError escapes
    if args.output:
        write_atomic(Path(args.output), text, force=args.force, ours=_imported_spec)
        _err_console().print(f"wrote {literal(args.output)}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


# ----------------------------------------------------------------------------- export-hf


def cmd_export_hf(args) -> int:
    from archlang.interop.hf_export import export_hf

    _existing_files([args.file] + ([args.weights] if args.weights else []))
    sources = SourceMap()
    sources.add(args.file, Path(args.file).read_text(encoding="utf-8", errors="replace"))
    try:
        model_type = export_hf(Path(args.file), args.output, model=args.model, model_type=args.model_type,
                               weights=args.weights, seed=args.random_seed, force=args.force)
    except (ArchError, ArchErrors) as exc:
        exc.sources = sources  # type: ignore[attr-defined]
        raise
    _err_console().print(f"wrote {literal(args.output)} ({model_type}: config.json, model.safetensors)")
    return EXIT_OK


# ----------------------------------------------------------------------------- main


STDIN, STDIN_NAME = "-", "<stdin>"


def _existing_files(files: Sequence[str]) -> None:
    for file in files:
        if not Path(file).is_file():
            what = "not a regular file" if os.path.lexists(file) else "no such file"
            raise UsageError(f"{what}: {literal(file)}")


def _hardware_names():
    from archlang.estimate.hardware import HARDWARE

    return HARDWARE


def _hardware_args(p) -> None:
    """The accelerator and parallelism options `estimate` and `report` share."""
    hardware = p.add_argument("--hardware", default="h100", help="accelerator (default h100)")
    # not `choices`: a --hardware-file adds names; completion offers the built-in ones
    hardware.completer = lambda **_: sorted(_hardware_names())  # type: ignore[attr-defined]
    p.add_argument("--gpus", type=int, default=1, help="devices in all (default 1)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel degree")
    p.add_argument("--ep", type=int, default=1, help="expert-parallel degree (within the data-parallel ranks)")
    p.add_argument("--fsdp", action="store_true", help="shard weights, gradients and optimizer states (ZeRO-3)")


def build_parser() -> argparse.ArgumentParser:
    from archlang import __version__

    parser = argparse.ArgumentParser(prog="archc", description="The archlang compiler: .arch specs → PyTorch models.")
    parser.add_argument("--version", action="version", version=f"archc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check", help="parse and validate specs (exit 0 valid, 1 invalid)")
    p.add_argument("files", nargs="+", metavar="FILE", help="spec files; - reads one from standard input")
    p.add_argument("--format", choices=["text", "json", "github", "sarif", "markdown"], default="text",
                   help="markdown: a GitHub step summary (>> $GITHUB_STEP_SUMMARY)")
    p.add_argument("--run", action="store_true",
                   help="also run a small stand-in of each model on random input and report the first op giving NaN/Inf")
    p.add_argument("--allow-outside-root", action="store_true", help="let imports leave the spec's folder")
    p.add_argument("--strict", "--warnings-as-errors", dest="strict", action="store_true",
                   help="exit 1 on lint findings too (they are warnings otherwise; see archc lint)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("lint", help="design-review findings with stable codes (exit 0 none, 1 findings, 2 usage or "
                                    "invalid spec)", description="Rules: `archc lint --list-rules`, docs/lint.md. "
                       "Settings: [tool.archc] in the nearest pyproject.toml; these options override it.")
    p.add_argument("files", nargs="*", metavar="SPEC")
    p.add_argument("--format", choices=["text", "github", "sarif", "json", "markdown"], default="text")
    p.add_argument("--list-rules", action="store_true", help="print every rule: code, title, why, fix")
    p.add_argument("--tp", type=int, help="intended tensor-parallel degree (overrides tensor_parallel)")
    p.add_argument("--ep", type=int, help="intended expert-parallel degree (overrides expert_parallel)")
    p.add_argument("--hardware", help="accelerator for ARC116 (overrides hardware; default h100)")
    p.add_argument("--ignore", action="append", default=[], metavar="CODE", help="a rule not to report (adds to ignore)")
    p.add_argument("--allow-outside-root", action="store_true", help="let imports leave the spec's folder")
    p.set_defaults(func=cmd_lint)

    p = sub.add_parser("compile", help="generate the PyTorch module of a spec")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", help="output .py (default: FILE with .py)")
    p.add_argument("--force", action="store_true", help="overwrite a file archc did not write")
    p.add_argument("--print-after-all", action="store_true", help="dump the IR to stderr after lowering and every pass")
    p.add_argument("--print-ir-after", action="append", default=[], metavar="PASS", help="dump the IR after this pass")
    _passes_args(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("ir", help="print the optimized IR as text")
    p.add_argument("file", metavar="FILE")
    _passes_args(p)
    p.set_defaults(func=cmd_ir)

    def fact_args(p):
        p.add_argument("--context", type=_dimension, help="sequence length for FLOPs (default: the model's context)")
        p.add_argument("--dtype", help="storage dtype for bytes (default: the model's dtype), e.g. bf16, fp32, fp8")

    p = sub.add_parser("stats", help="parameters, FLOPs, KV cache and memory of a model")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true")
    fact_args(p)
    _passes_args(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("estimate", help="memory per device and time for training and inference on given hardware",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="hardware: " + ", ".join(sorted(_hardware_names())) + ". Add one with --hardware-file "
                              "FILE.toml:\n  [hardware.NAME]\n  description = \"...\"\n  memory_gb = 96\n"
                              "  bandwidth_tb_s = 4.0\n  tflops = { bf16 = 800, fp8 = 1600, fp32 = 60 }  # dense\n"
                              "  source = \"...\"\n  node_size = 8  # --advise needs these three\n"
                              "  intra_node_gb_s = 450  # per device and direction\n  inter_node_gb_s = 50")
    p.add_argument("file", metavar="FILE")
    _hardware_args(p)
    p.add_argument("--hardware-file", metavar="TOML", help="more accelerators, as [hardware.NAME] tables")
    p.add_argument("--seq", type=_dimension, help="tokens per sequence (default: the model's context)")
    p.add_argument("--batch", type=int, default=1, help="sequences per micro-batch per data-parallel rank, and "
                                                        "sequences decoded together (default 1)")
    p.add_argument("--global-batch", type=int, metavar="N",
                   help="with --advise: sequences per training step (default --batch x --gpus)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp8", "fp32"], help="compute dtype (default: the model's)")
    p.add_argument("--recompute", choices=["none", "selective", "full"], default="selective",
                   help="activation recomputation (default selective: the attention core, as FlashAttention does)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed (default 0.4)")
    p.add_argument("--bandwidth-utilisation", type=float, default=0.8,
                   help="fraction of peak memory bandwidth assumed when decoding (default 0.8)")
    p.add_argument("--advise", action="store_true",
                   help="rank the training layouts of --gpus devices over pp, dp_replicate, dp_shard, ep, cp and "
                        "tp instead of estimating one, and print the mesh that applies the best")
    p.add_argument("--top", type=int, help="layouts --advise lists (default 5)")
    p.add_argument("--json", action="store_true")
    _passes_args(p)
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("diff", help="semantic architecture diff (exit 1 when they differ; with --fail-on, exactly when a guard trips)")
    p.add_argument("a", metavar="A.arch")
    p.add_argument("b", metavar="B.arch")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("--format", choices=["text", "json", "markdown"], default="text",
                   help="markdown: a pull-request comment with the facts and the lint findings the change adds")
    p.add_argument("--fail-on", action="append", default=[], metavar="GUARD",
                   help="e.g. 'params_total>+5%%'; exit 1 only when a guard trips, 0 otherwise")
    fact_args(p)
    _passes_args(p)
    p.set_defaults(func=cmd_diff, file=None)

    p = sub.add_parser("fmt", help="format specs canonically")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="spec files, rewritten in place; - formats standard input to standard output")
    p.add_argument("--check", action="store_true", help="exit 1 if a file would change; write nothing")
    p.set_defaults(func=cmd_fmt)

    p = sub.add_parser("graph", help="draw the architecture (.svg, .png or .dot)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--expand", action="store_true", help="draw every op of the optimized IR")
    p.add_argument("--engine", choices=("native", "dot"), default="native",
                   help="lay out the picture natively (the default: no system packages) or with Graphviz's dot")
    _passes_args(p)
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("import-hf", help="write the spec of a Hugging Face config.json")
    p.add_argument("config", metavar="CONFIG.json")
    p.add_argument("-o", "--output")
    p.add_argument("--name", help="model name in the spec (default: the model_type)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_import_hf)

    p = sub.add_parser("export-hf", help="write a Hugging Face checkpoint folder (config.json + model.safetensors) of a spec")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("--model", help="which model of the file (when it declares several)")
    p.add_argument("--model-type", help="the Hugging Face model_type to write (default: the first family that fits)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--weights", metavar="FILE.safetensors", help="an archlang checkpoint (archlang.save) of the spec")
    weights.add_argument("--random-seed", type=int, default=0, metavar="N", help="random weights from this seed (default 0)")
    p.add_argument("--force", action="store_true", help="replace a folder that is not empty")
    p.set_defaults(func=cmd_export_hf)
    p = sub.add_parser("report", help="one self-contained HTML page: picture, facts, estimate, diff against a base")
    p.add_argument("file", metavar="FILE")
    p.add_argument("base", nargs="?", metavar="BASE", help="a spec to diff against (the base branch's)")
    p.add_argument("-o", "--output", required=True, metavar="HTML")
    _hardware_args(p)
    p.add_argument("--context", type=int, help="sequence length of the facts (default: the spec's context)")
    p.add_argument("--dtype", help="storage dtype of the facts (default: the spec's)")
    _passes_args(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("lsp", help="run the language server on standard input and output (for editors)")
    p.set_defaults(func=cmd_lsp)

    p = sub.add_parser("completion", help="print the shell completion script (bash, zsh or fish)",
                       description="Print the completion script for a shell. Load it from the shell's start-up file: "
                                   "bash: eval \"$(archc completion bash)\"; zsh: eval \"$(archc completion zsh)\"; "
                                   "fish: archc completion fish | source")
    p.add_argument("shell", choices=("bash", "zsh", "fish"))
    p.set_defaults(func=cmd_completion)

    return parser


def _complete(parser: argparse.ArgumentParser) -> None:
    """Shell completion: the script `archc completion SHELL` prints calls archc back with
    _ARGCOMPLETE set, and argcomplete answers from the parser (commands, options, choices, files)
    and exits."""
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser)


def cmd_lsp(args) -> int:
    try:
        from archlang.lsp.server import serve
    except ImportError as exc:
        if exc.name not in ("pygls", "lsprotocol") and not str(exc.name or "").startswith(("pygls.", "lsprotocol.")):
            raise
        raise ArchError("`archc lsp` needs the pygls package, which is not installed",
                        hint="pip install 'archlang[lsp]'", kind="dependency") from None
    serve()
    return EXIT_OK


def cmd_completion(args) -> int:
    import argcomplete

    sys.stdout.write(argcomplete.shellcode(["archc"], shell=args.shell))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if argv is None:
        _complete(parser)
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
        _err_console().print(f"archc {args.command}: error: {literal_block(exc)}")
        return EXIT_USAGE
    except (ArchError, ArchErrors) as exc:
        if isinstance(exc, ArchError) and exc.kind == "usage":
            _err_console().print(f"archc {args.command}: error: {literal_block(bounded(exc.message, MAX_MESSAGE))}")
            return EXIT_USAGE
        _print_errors(exc, getattr(exc, "sources", None), getattr(args, "file", None) or "the input")
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug in archc itself: say so plainly, no traceback
        if os.environ.get("ARCHC_DEBUG"):
            raise
        _err_console().print(
            f"archc {args.command}: internal error: {type(exc).__name__}: {bounded(literal(exc), MAX_MESSAGE)}\n"
            "this is a bug in archc; rerun with ARCHC_DEBUG=1 for the traceback and report it"
        )
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())

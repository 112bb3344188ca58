"""Text → syntax nodes. The Lark grammar lives in arch.lark; this module turns its tree into
`syntax` nodes and its failures into `ArchError`s that say what was expected and why."""

from __future__ import annotations

import ast as _pyast
import functools
from importlib import resources

from lark import Lark, Token, Transformer, UnexpectedCharacters, UnexpectedInput, v_args
from lark.exceptions import UnexpectedToken, VisitError

from . import syntax as S
from .errors import ArchError, Span

# Guard rails against hostile input: reject before the parser allocates much.
MAX_SOURCE_BYTES = 1_000_000
MAX_NESTING = 64

_SUFFIX = {"k": 1024, "K": 1024, "M": 1024**2, "G": 1024**3}

# Readable names for the terminals Lark reports in "expected ...".
_TERMINAL_TEXT = {
    "LBRACE": "`{`", "RBRACE": "`}`", "LPAR": "`(`", "RPAR": "`)`", "LSQB": "`[`", "RSQB": "`]`",
    "EQUAL": "`=`", "COMMA": "`,`", "DOT": "`.`", "NAME": "a name", "NUMBER": "a number",
    "STRING": "a string", "PLUS": "`+`", "MINUS": "`-`", "STAR": "`*`", "SLASH": "`/`",
    "MODEL": "`model`", "BLOCK": "`block`", "LET": "`let`", "IMPORT": "`import`",
    "EXTENDS": "`extends`", "TRUE": "`true`", "FALSE": "`false`", "NONE": "`none`",
    "$END": "end of file", "PERCENT": "`%`", "DOUBLESTAR": "`**`", "DOUBLESLASH": "`//`",
}


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    grammar = resources.files(__package__).joinpath("arch.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _span(file: str, item) -> Span:
    meta = getattr(item, "meta", item)
    return Span(file, meta.line, meta.column, getattr(meta, "end_line", None), getattr(meta, "end_column", None))


def parse_number(text: str) -> int | float:
    """`4_096` → 4096, `128k` → 131072, `1e-5` → 1e-05, `1.5k` → 1536."""
    mult = 1
    if text[-1] in _SUFFIX:
        mult, text = _SUFFIX[text[-1]], text[:-1]
    text = text.replace("_", "")
    if any(c in text for c in ".eE"):
        value = float(text) * mult
        return int(value) if mult != 1 and value.is_integer() else value
    return int(text) * mult


class _ToSyntax(Transformer):
    """One method per grammar rule, as in Lark's own examples."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _s(self, item) -> Span:
        return _span(self.file, item)

    # --- expressions ---
    def number(self, children):
        (tok,) = children
        return S.Num(parse_number(str(tok)), str(tok), self._s(tok))

    def string(self, children):
        (tok,) = children
        # The STRING terminal only admits a double-quoted literal, so this cannot evaluate code.
        return S.Str(_pyast.literal_eval(str(tok)), self._s(tok))

    @v_args(meta=True)
    def true(self, meta, _):
        return S.Bool(True, self._s(meta))

    @v_args(meta=True)
    def false(self, meta, _):
        return S.Bool(False, self._s(meta))

    @v_args(meta=True)
    def none(self, meta, _):
        return S.NoneLit(self._s(meta))

    def name(self, children):
        (tok,) = children
        return S.Name(str(tok), self._s(tok))

    @v_args(meta=True)
    def call(self, meta, children):
        func, *args = children
        return S.Call(str(func), tuple(a for a in args if a is not None), self._s(meta))

    @v_args(meta=True)
    def kwarg(self, meta, children):
        name, value = children
        return S.Arg(str(name), value, self._s(name))

    @v_args(meta=True)
    def posarg(self, meta, children):
        (value,) = children
        return S.Arg(None, value, self._s(meta))

    @v_args(meta=True)
    def list(self, meta, children):
        return S.ListExpr(tuple(c for c in children if c is not None), self._s(meta))

    def _binop(op):  # noqa: N805 - a small factory used in the class body
        @v_args(meta=True)
        def method(self, meta, children):
            left, right = children
            return S.BinOp(op, left, right, self._s(meta))

        return method

    add, sub, mul, div = _binop("+"), _binop("-"), _binop("*"), _binop("/")
    floordiv, mod, pow = _binop("//"), _binop("%"), _binop("**")

    @v_args(meta=True)
    def neg(self, meta, children):
        (operand,) = children
        return S.Neg(operand, self._s(meta))

    # --- statements ---
    def path(self, children):
        return children

    @v_args(meta=True)
    def assign(self, meta, children):
        path, value = children
        span = Span(self.file, path[0].line, path[0].column, path[-1].end_line, path[-1].end_column)
        return S.Assign(tuple(str(t) for t in path), value, span)

    @v_args(meta=True)
    def let(self, meta, children):
        name, value = children
        return S.Let(str(name), value, self._s(name))

    def extends(self, children):
        (tok,) = children
        return tok

    def _header(self, children):
        name, rest = children[0], children[1:]
        parent = rest[0] if rest and isinstance(rest[0], Token) else None
        body = rest[1:] if parent is not None else rest
        return name, parent, body

    def block(self, children):
        name, parent, body = self._header(children)
        return S.BlockDecl(
            str(name), str(parent) if parent else None, tuple(body), self._s(name),
            self._s(parent) if parent else None,
        )

    def model(self, children):
        name, parent, body = self._header(children)
        return S.ModelDecl(
            name=str(name),
            parent=str(parent) if parent else None,
            lets=tuple(b for b in body if isinstance(b, S.Let)),
            assigns=tuple(b for b in body if isinstance(b, S.Assign)),
            blocks=tuple(b for b in body if isinstance(b, S.BlockDecl)),
            span=self._s(name),
            parent_span=self._s(parent) if parent else None,
        )

    def import_stmt(self, children):
        (tok,) = children
        return S.Import(_pyast.literal_eval(str(tok)), self._s(tok))

    def start(self, children):
        return (
            tuple(c for c in children if isinstance(c, S.Import)),
            tuple(c for c in children if isinstance(c, S.ModelDecl)),
        )


def parse_source(text: str, file: str = "<string>") -> S.SourceFile:
    """Parse one file's text. Raises ArchError with the location of the first syntax error."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise ArchError(
            f"file is too large ({len(text):,} characters; the limit is {MAX_SOURCE_BYTES:,})",
            Span(file, 1, 1), kind="limit",
        )
    _check_nesting(text, file)
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, file) from None
    try:
        imports, models = _ToSyntax(file).transform(tree)
    except VisitError as exc:  # a malformed literal the lexer let through (e.g. huge exponent)
        raise ArchError(f"invalid literal: {exc.orig_exc}", Span(file, 1, 1), kind="syntax") from None
    return S.SourceFile(file, imports, models)


def _check_nesting(text: str, file: str) -> None:
    """Refuse absurdly deep brackets up front: the parser and evaluator are recursive."""
    depth, line, col = 0, 1, 0
    in_string = in_comment = False
    for ch in text:
        col += 1
        if ch == "\n":
            line, col, in_comment = line + 1, 0, False
            continue
        if in_comment:
            continue
        if ch == '"':
            in_string = not in_string
        elif not in_string:
            if ch == "#":
                in_comment = True
            elif ch in "([{":
                depth += 1
                if depth > MAX_NESTING:
                    raise ArchError(
                        f"brackets are nested more than {MAX_NESTING} deep",
                        Span(file, line, col), hint="flatten the expression with `let` constants",
                        kind="limit",
                    )
            elif ch in ")]}":
                depth = max(0, depth - 1)


# A catalogue of common mistakes (Lark's examples/advanced/error_reporting_lalr.py): each
# label maps to snippets that fail in the same parser state, and to the message we give.
SYNTAX_ERROR_EXAMPLES: dict[str, list[str]] = {
    "missing-equals": [
        "model m { vocab 32000 }",
        "model m { block b { norm rmsnorm() } }",
        "model m { let x 3 }",
    ],
    "missing-value": [
        "model m { vocab = }",
        "model m { block b { ffn = } }",
        "model m { let x = }",
        "model m { vocab = 1 + }",
        "model m { a = f(x = ) }",
    ],
    "missing-comma": [
        "model m { a = f(x = 1 y = 2) }",
        "model m { a = [x y] }",
    ],
    "unclosed-call": [
        "model m { a = f(x = 1 }",
        "model m { block b { a = f(x = 1 } }",
    ],
    "missing-name": [
        "model { }",
        "model m { block { } }",
        "model m extends { }",
        "model m { let = 1 }",
    ],
    "missing-brace": [
        "model m vocab = 1 }",
        "model m { block b vocab = 1 } }",
    ],
    "unclosed-brace": [
        "model m { vocab = 1",
        "model m { block b { a = 1 }",
    ],
    "statement-outside-model": [
        "vocab = 1",
        "block b { }",
        "let x = 1",
    ],
    "import-after-model": [
        'model m { } import "x.arch"',
    ],
    "block-in-block": [
        "model m { block b { block c { } } }",
        "model m { block b { let x = 1 } }",
    ],
}

_SYNTAX_MESSAGES: dict[str, tuple[str, str | None]] = {
    "missing-equals": ("expected `=` after the name", "settings are written `name = value`"),
    "missing-value": ("expected a value", "a value is a number, a string, a name, a call like `rmsnorm(eps = 1e-5)` or a list"),
    "missing-comma": ("expected `,` between arguments or items", "separate arguments with commas: `gqa(heads = 32, kv_heads = 8)`"),
    "unclosed-call": ("expected `)` to close the call", "every `(` needs a matching `)`"),
    "missing-name": ("expected a name", "names start with a letter or `_` and contain letters, digits and `_`"),
    "missing-brace": ("expected `{`", "a model or block body is written `model name { ... }`"),
    "unclosed-brace": ("unexpected end of file: a `{` is never closed", "add the missing `}`"),
    "statement-outside-model": ("expected `model` or `import` at the top level", "settings and blocks belong inside `model name { ... }`"),
    "import-after-model": ("`import` must come before the first model", "move the import to the top of the file"),
    "block-in-block": ("a block holds only settings (`name = value`)", "declare blocks and `let` constants directly inside the model"),
}


def _expected_text(names) -> str:
    shown = sorted({_TERMINAL_TEXT.get(n, n) for n in names if not n.startswith("__")})
    return ", ".join(shown[:8]) + (", ..." if len(shown) > 8 else "")


def classify_syntax_error(exc: UnexpectedInput) -> str | None:
    """The catalogue label for a parse failure, or None when no example matches."""
    parser = _lark()
    try:
        return exc.match_examples(parser.parse, SYNTAX_ERROR_EXAMPLES, use_accepts=True)
    except Exception:  # match_examples re-parses; never let the classifier itself fail
        return None


def _syntax_error(exc: UnexpectedInput, text: str, file: str) -> ArchError:
    if isinstance(exc, UnexpectedCharacters):
        ch = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else ""
        span = Span(file, exc.line, exc.column, exc.line, exc.column + 1)
        if ch == '"':
            return ArchError("unterminated string", span, hint='close the string with `"` on the same line', kind="syntax")
        if ch == "-" and text[exc.pos_in_stream : exc.pos_in_stream + 2] == "--":
            return ArchError("unexpected `-`", span, kind="syntax")
        hint = "comments start with `#`" if ch == "/" else None
        return ArchError(f"unexpected character {ch!r}", span, hint=hint, kind="syntax")

    label = classify_syntax_error(exc)
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        tok = exc.token
        span = Span(file, tok.line, tok.column, tok.end_line, tok.end_column)
        found = f"`{tok}`"
    else:
        lines = text.splitlines() or [""]
        span = Span(file, len(lines), len(lines[-1]) + 1)
        found = "end of file"
    expected = getattr(exc, "accepts", None) or getattr(exc, "expected", None) or set()
    if label:
        message, hint = _SYNTAX_MESSAGES[label]
        message = f"{message}, found {found}" if found != "end of file" or label != "unclosed-brace" else message
    else:
        message, hint = f"unexpected {found}", None
    notes = [f"expected one of: {_expected_text(expected)}"] if expected else []
    return ArchError(message, span, hint=hint, notes=notes, kind=f"syntax:{label or 'unexpected'}")

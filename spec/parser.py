"""Text → syntax nodes. The Lark grammar lives in arch.lark; this module turns its tree into
`syntax` nodes and its failures into `ArchError`s that say what was expected and why."""

from __future__ import annotations

import ast as _pyast
import functools
import math
from importlib import resources

from lark import Lark, Token, Transformer, Tree, UnexpectedCharacters, UnexpectedInput, v_args
from lark.exceptions import UnexpectedToken, VisitError

from . import syntax as S
from .errors import ArchError, ArchErrors, Span

# Guard rails against hostile input: reject before the parser allocates much.
MAX_SOURCE_BYTES = 1_000_000
MAX_NESTING = 64  # brackets inside one another
MAX_EXPR_DEPTH = 100  # operators inside one another (`- - - x`, `a + b + ... + z`, `2 ** 2 ** ...`)
MAX_NUMBER_DIGITS = 40  # a longer literal is certainly a mistake (and Python refuses 4,300 digits)
MAX_INT_BITS = 128
MAX_SYNTAX_ERRORS = 20  # errors reported from one file before giving up
BOM = "\ufeff"

_SUFFIX = {"k": 1024, "K": 1024, "M": 1024**2, "G": 1024**3}

# Readable names for the terminals Lark reports in "expected ...".
_TERMINAL_TEXT = {
    "LBRACE": "`{`", "RBRACE": "`}`", "LPAR": "`(`", "RPAR": "`)`", "LSQB": "`[`", "RSQB": "`]`",
    "EQUAL": "`=`", "COMMA": "`,`", "DOT": "`.`", "NAME": "a name", "NUMBER": "a number",
    "STRING": "a string", "PLUS": "`+`", "MINUS": "`-`", "STAR": "`*`", "SLASH": "`/`",
    "_MODEL": "`model`", "_BLOCK": "`block`", "_LET": "`let`", "_IMPORT": "`import`",
    "_EXTENDS": "`extends`", "_TRUE": "`true`", "_FALSE": "`false`", "_NONE": "`none`",
    "$END": "end of file", "PERCENT": "`%`", "DOUBLESTAR": "`**`", "DOUBLESLASH": "`//`",
    "STAGE_MARK": "`|`",
}


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    grammar = resources.files(__package__).joinpath("arch.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _span(file: str, item) -> Span:
    meta = getattr(item, "meta", item)
    return Span(file, meta.line, meta.column, getattr(meta, "end_line", None), getattr(meta, "end_column", None))


def parse_number(text: str) -> int | float:
    """`4_096` → 4096, `128k` → 131072, `1e-5` → 1e-05, `1.5k` → 1536.

    Raises ValueError for a literal outside the language's bounds."""
    digits = sum(c.isdigit() for c in text)
    if digits > MAX_NUMBER_DIGITS:
        raise ValueError(f"this number has {digits} digits; the limit is {MAX_NUMBER_DIGITS}")
    mult = 1
    if text[-1] in _SUFFIX:
        mult, text = _SUFFIX[text[-1]], text[:-1]
    text = text.replace("_", "")
    if any(c in text for c in ".eE"):
        value = float(text) * mult
        if not math.isfinite(value):
            raise ValueError("this number is too large to be a float")
        return int(value) if mult != 1 and value.is_integer() else value
    value = int(text) * mult
    if value.bit_length() > MAX_INT_BITS:
        raise ValueError(f"this integer does not fit in {MAX_INT_BITS} bits")
    return value


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
        try:
            value = parse_number(str(tok))
        except ValueError as exc:
            raise ArchError(f"invalid number: {exc}", self._s(tok), kind="limit") from None
        return S.Num(value, str(tok), self._s(tok))

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
    def stage_mark(self, meta, children):
        left, mark, right = children
        return S.BinOp("|", left, right, self._s(meta), self._s(mark))

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

    @v_args(meta=True)
    def block(self, meta, children):
        name, parent, body = self._header(children)
        return S.BlockDecl(
            str(name), str(parent) if parent else None, tuple(body), self._s(name),
            self._s(parent) if parent else None, end_line=meta.end_line, end_column=meta.end_column,
        )

    @v_args(meta=True)
    def model(self, meta, children):
        name, parent, body = self._header(children)
        return S.ModelDecl(
            name=str(name),
            parent=str(parent) if parent else None,
            lets=tuple(b for b in body if isinstance(b, S.Let)),
            assigns=tuple(b for b in body if isinstance(b, S.Assign)),
            blocks=tuple(b for b in body if isinstance(b, S.BlockDecl)),
            span=self._s(name),
            parent_span=self._s(parent) if parent else None,
            end_line=meta.end_line,
            end_column=meta.end_column,
        )

    def import_stmt(self, children):
        (tok,) = children
        path = _pyast.literal_eval(str(tok))
        if "\x00" in path:
            raise ArchError("an import path cannot contain a NUL character", self._s(tok), kind="import")
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise ArchError("an import path must be valid Unicode (it contains a lone surrogate)", self._s(tok),
                            kind="import") from None
        return S.Import(path, self._s(tok))

    def start(self, children):
        return (
            tuple(c for c in children if isinstance(c, S.Import)),
            tuple(c for c in children if isinstance(c, S.ModelDecl)),
        )


def parse_source(text: str, file: str = "<string>") -> S.SourceFile:
    """Parse one file's text. Raises ArchError at the first syntax error, or ArchErrors when
    recovery found several independent ones."""
    tree, errors, _ = parse_recovering(text, file)
    if errors:
        raise errors[0] if len(errors) == 1 else ArchErrors(errors)
    return tree


def parse_recovering(text: str, file: str = "<string>") -> tuple[S.SourceFile | None, list[ArchError], list[tuple[int, int]]]:
    """Parse, and after a syntax error keep going, so one run reports the errors of separate
    statements and declarations: the statement holding the error is blanked out (line and
    column positions stay) and the text parsed again.

    Returns the syntax of what remains (None when nothing could be recovered), the errors, and
    the damaged line ranges: the declarations whose semantic errors could be knock-ons."""
    text = strip_bom(text)
    errors: list[ArchError] = []
    damaged: list[tuple[int, int]] = []
    current = text
    while True:
        try:
            return _parse_once(current, file), errors, damaged
        except ArchError as exc:
            errors.append(exc)
            cut = _broken_statement(current, exc) if len(errors) < MAX_SYNTAX_ERRORS else None
            if cut is None:
                return None, errors, damaged
            begin, end = cut
            current = current[:begin] + "".join(c if c == "\n" else " " for c in current[begin:end]) + current[end:]
            first_line = text.count("\n", 0, begin) + 1
            last_line = first_line + text.count("\n", begin, end)
            damaged.append(_enclosing_declaration(text, first_line, last_line))


def _offset(text: str, line: int, column: int) -> int:
    lines = text.split("\n")
    return sum(len(l) + 1 for l in lines[: line - 1]) + column - 1


_STATEMENT_KEYWORDS = {"_LET", "_BLOCK", "_MODEL", "_IMPORT"}
# Mistakes inside one statement, which the parser can step over; the others break the
# structure of declarations (a missing name or brace, a statement outside a model).
_RECOVERABLE = {"syntax", "syntax:missing-equals", "syntax:missing-value", "syntax:missing-comma",
                "syntax:unclosed-call", "syntax:unexpected", "syntax:stage-mark-at-edge",
                "syntax:stage-marks-in-a-row"}


def _broken_statement(text: str, exc: ArchError) -> tuple[int, int] | None:
    """The character range to blank so the parser can step over a syntax error: from the start
    of the statement it is in, up to the token that stopped the parser when that token can begin
    the next statement (or is a `}`), else to the end of the statement. None when the error
    cannot be stepped over (end of file, a limit)."""
    if exc.span is None or exc.kind not in _RECOVERABLE:
        return None  # a broken declaration header or brace: what follows would be knock-ons
    at = _offset(text, exc.span.line, exc.span.column)
    if at >= len(text.rstrip()):
        return None  # the error is at the end of the file: nothing after it to recover
    line_end = text.find("\n", at) if "\n" in text[at:] else len(text)
    if exc.message.startswith("unterminated string"):
        # Blank the rest of the line, and the statement the string began in.
        text = text[:at] + " " * (line_end - at) + text[line_end:]
    elif exc.kind == "syntax":  # a character the lexer refused: lex around it
        text = text[:at] + " " + text[at + 1:]
    tokens = _tokens(text)

    def starts_statement(i: int) -> bool:
        tok = tokens[i]
        if tok.type in _STATEMENT_KEYWORDS:
            return True
        following = tokens[i + 1].type if i + 1 < len(tokens) else None
        return tok.type == "NAME" and following in ("EQUAL", "DOT") and (
            i == 0 or tokens[i - 1].type not in ("DOT", "EQUAL", "_LET", "_BLOCK", "_MODEL", "_EXTENDS"))

    start, start_type, depth, braces, error_index = 0, None, 0, 0, len(tokens)
    for i, tok in enumerate(tokens):
        if tok.start_pos >= at:
            error_index = i
            break
        if tok.type in ("LBRACE", "RBRACE"):
            depth, start, start_type = 0, tok.end_pos, None
            braces += 1 if tok.type == "LBRACE" else -1
        elif tok.type in ("LPAR", "LSQB"):
            depth += 1
        elif tok.type in ("RPAR", "RSQB"):
            depth = max(0, depth - 1)
        elif depth == 0 and starts_statement(i) and (i == 0 or tokens[i - 1].type not in ("EQUAL",)):
            start, start_type = tok.start_pos, tok.type
    if braces <= 0 or start_type in ("_BLOCK", "_MODEL") or error_index < len(tokens) and tokens[error_index].type == "LBRACE":
        return None  # outside a model, or in a declaration header
    if exc.message.startswith("unterminated string"):
        return start, line_end
    if exc.kind == "syntax":
        at = at + 1
        error_index = next((i for i in range(error_index, len(tokens)) if tokens[i].start_pos >= at), len(tokens))
    if error_index < len(tokens) and (tokens[error_index].type == "RBRACE" or depth == 0 and starts_statement(error_index)):
        return (start, at) if text[start:at].strip() else _through_statement(tokens, error_index, start, starts_statement)
    return _through_statement(tokens, error_index, start, starts_statement)


def _through_statement(tokens, error_index: int, start: int, starts_statement) -> tuple[int, int] | None:
    """From `start` through the rest of the statement holding token `error_index`: up to the
    next `{`, `}` or statement keyword, or the next `name =` outside brackets."""
    depth = 0
    for i in range(error_index, len(tokens)):
        tok = tokens[i]
        if i > error_index and (tok.type in ("LBRACE", "RBRACE") or tok.type in _STATEMENT_KEYWORDS
                                or depth == 0 and starts_statement(i)):
            return start, tok.start_pos
        if tok.type in ("LPAR", "LSQB"):
            depth += 1
        elif tok.type in ("RPAR", "RSQB"):
            depth = max(0, depth - 1)
    return None


def _tokens(text: str) -> list[Token]:
    """The tokens of `text` by the grammar's terminals, without parsing, up to the first
    character that cannot be lexed (a later error, recovered from in its turn)."""
    tokens: list[Token] = []
    try:
        for tok in _lexer().lex(text):
            tokens.append(tok)
    except UnexpectedInput:
        pass
    return tokens


@functools.lru_cache(maxsize=1)
def _lexer() -> Lark:
    grammar = resources.files(__package__).joinpath("arch.lark").read_text()
    return Lark(grammar, parser="lalr", lexer="basic", keep_all_tokens=True)


def strip_bom(text: str) -> str:
    """A UTF-8 byte order mark at the start of a file is not part of the spec."""
    return text[1:] if text.startswith(BOM) else text


def _parse_once(text: str, file: str) -> S.SourceFile:
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
    _check_depth(tree, file)
    try:
        imports, models = _ToSyntax(file).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, ArchError):
            raise exc.orig_exc from None
        raise ArchError(f"invalid literal: {exc.orig_exc}", Span(file, 1, 1), kind="syntax") from None
    return S.SourceFile(file, imports, models)


def _check_depth(tree: Tree, file: str) -> None:
    """Refuse operators nested beyond MAX_EXPR_DEPTH, walking the tree without recursion: every
    later stage (transformer, evaluator, formatter) recurses once per level."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_EXPR_DEPTH + 4:  # + start, model, block, statement
            raise ArchError(
                f"this expression is nested more than {MAX_EXPR_DEPTH} levels deep (the limit on expression depth)",
                _span(file, node), hint="split it into `let` constants", kind="limit",
            )
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, Tree))


def _enclosing_declaration(text: str, start: int, end: int) -> tuple[int, int]:
    """The lines of the innermost `{ ... }` holding lines start..end in the original text (a block
    or a model), so errors inside it can be recognised as knock-ons."""
    opens: list[int] = []
    regions: list[tuple[int, int, int]] = []  # (first line, last line, nesting depth)
    in_string = False
    for number, line in enumerate(text.split("\n"), 1):
        in_string = False
        for ch in line:
            if ch == '"':
                in_string = not in_string
            elif in_string:
                continue
            elif ch == "#":
                break
            elif ch == "{":
                opens.append(number)
            elif ch == "}" and opens:
                regions.append((opens.pop(), number, len(opens)))
    regions.extend((o, text.count("\n") + 1, depth) for depth, o in enumerate(opens))
    # A block (depth 1) is damaged as a whole; in a model's own body only the statement is.
    holding = [r for r in regions if r[0] <= start and end <= r[1] and r[2] >= 1]
    return min(holding, key=lambda r: r[1] - r[0])[:2] if holding else (start, end)


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
    # Listed after missing-value, which shares the state after `=`: only the token `|` lands here.
    "stage-mark-at-edge": [
        "model m { layers = | a }",
        "model m { let x = | a }",
        "model m { block b { ffn = | a } }",
        "model m { layers = a | }",
        "model m { layers = (| a) }",
        "model m { layers = (a |) }",
        "model m { layers = [| a] }",
        "model m { layers = [a |] }",
    ],
    "stage-marks-in-a-row": [
        "model m { layers = a | | b }",
        "model m { layers = (a | | b) }",
        "model m { layers = [a | | b] }",
        "model m { layers = f(a | | b) }",
        "model m { layers = f(x = a | | b) }",
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
    "stage-mark-at-edge": ("a stage mark `|` needs a stage on each side",
                           "`|` goes between two pipeline stages, never at the start or end: `layers = dense * 2 | moe * 4`"),
    "stage-marks-in-a-row": ("two stage marks in a row: the stage between them has no layers",
                             "write one `|` per stage boundary: `layers = dense * 2 | moe * 4`"),
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
    if label is None and isinstance(exc, UnexpectedToken) and exc.token.type == "STAGE_MARK":
        label = "stage-mark-at-edge"  # a `|` where no stage has begun: `[x, | a]`, `x + (| a)`
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

"""The canonical formatter behind `archc fmt`: four-space indentation, one statement per line,
`name = value` with single spaces, a blank line around blocks, comments kept in place.
Number literals keep the way they were written (`128k`, `4_096`). Formatting is idempotent and
never changes what a spec means: the output parses to the same syntax tree.

Every comment is attached to the construct it sits beside: after an item on its line (a
statement, an argument, a block's `}`), on its own line before the next item, or after the
opening `{` or `(` of a body or call. A call or list holding a comment is written one argument
per line, which is where such comments are then found again."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import syntax as S
from .errors import ArchError, ArchErrors
from .parser import _lexer, parse_source, strip_bom

INDENT = "    "
MAX_WIDTH = 100

# Binding strength, loosest first, as in the grammar: stage marks, sum, product, unary minus, power, atom.
_STAGES, _SUM, _PRODUCT, _UNARY, _POWER, _ATOM = 1, 2, 3, 4, 5, 6
_PRECEDENCE = {"|": _STAGES, "+": _SUM, "-": _SUM, "*": _PRODUCT, "/": _PRODUCT, "//": _PRODUCT, "%": _PRODUCT, "**": _POWER}

# Escapes for a string literal that the parser's reading (Python's string syntax) gives back.
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def string_text(value: str) -> str:
    """A double-quoted literal for `value`; control, bidi and surrogate characters escaped."""
    out = []
    for ch in value:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code < 0xE000 or code in (0x2028, 0x2029, 0xFEFF) or 0x202A <= code <= 0x202E \
                or 0x2066 <= code <= 0x2069:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def expr_text(e: S.Expr, parent: int = 0) -> str:
    """The text of an expression, parenthesised where its parent binds tighter (`parent`)."""
    if isinstance(e, S.Num):
        return e.text
    if isinstance(e, S.Str):
        return string_text(e.value)
    if isinstance(e, S.Bool):
        return "true" if e.value else "false"
    if isinstance(e, S.NoneLit):
        return "none"
    if isinstance(e, S.Name):
        return e.id
    if isinstance(e, S.Neg):
        text = "-" + expr_text(e.operand, _UNARY)
        return f"({text})" if parent > _UNARY else text
    if isinstance(e, S.BinOp):
        p = _PRECEDENCE[e.op]
        if e.op == "**":  # `atom ** unary`: right-associative, and `(-2) ** 2` keeps its brackets
            text = f"{expr_text(e.left, _ATOM)} ** {expr_text(e.right, _UNARY)}"
        else:  # left-associative: `a - (b - c)` keeps its brackets
            text = f"{expr_text(e.left, p)} {e.op} {expr_text(e.right, p + 1)}"
        return f"({text})" if p < parent else text
    if isinstance(e, S.ListExpr):
        return "[" + ", ".join(expr_text(i) for i in e.items) + "]"
    if isinstance(e, S.Call):
        return f"{e.func}(" + ", ".join(_arg(a) for a in e.args) + ")"
    raise AssertionError(e)


def _arg(a: S.Arg) -> str:
    return expr_text(a.value) if a.name is None else f"{a.name} = {expr_text(a.value)}"


def _wrapped(prefix: str, e: S.Expr, depth: int) -> list[str]:
    """`prefix value`, broken one argument per line when it would be too wide."""
    one = prefix + expr_text(e)
    if len(INDENT * depth + one) <= MAX_WIDTH or not isinstance(e, S.Call) or not e.args:
        return [one]
    lines = [f"{prefix}{e.func}("]
    for a in e.args:
        if isinstance(a.value, S.Call) and len(INDENT * (depth + 1) + _arg(a)) > MAX_WIDTH:
            inner = _wrapped(f"{a.name} = " if a.name else "", a.value, depth + 1)
            lines += [INDENT + inner[0]] + [INDENT + l for l in inner[1:-1]] + [INDENT + inner[-1] + ","]
        else:
            lines.append(INDENT + _arg(a) + ",")
    lines.append(")")
    return lines


# ----------------------------------------------------------------------------- positions

Pos = tuple[int, int]  # (line, column), 1-based


def _start(node) -> Pos:
    return (node.span.line, node.span.column)


def _end(node) -> Pos:
    """Just after the last character of a node."""
    if isinstance(node, (S.Assign, S.Let, S.Arg)):
        return _end(node.value)
    if isinstance(node, (S.BlockDecl, S.ModelDecl)):
        return (node.end_line, node.end_column)
    span = node.span
    return (span.end_line or span.line, span.end_column or span.column + 1)


@dataclass
class _Comments:
    """The comments of a file, each taken once by the construct it is attached to."""

    all: list[tuple[int, int, str]]
    taken: set[int] = field(default_factory=set)

    def inside(self, lo: Pos, hi: Pos) -> list[int]:
        return [i for i, (l, c, _) in enumerate(self.all) if i not in self.taken and lo <= (l, c) < hi]

    def take(self, indexes) -> list[str]:
        self.taken.update(indexes)
        return [self.all[i][2] for i in indexes]


@dataclass
class _Attached:
    """Comments of one container (a body, a call's arguments, a list), by where they go."""

    after_open: list[str]
    leading: list[list[str]]
    trailing: list[list[str]]
    before_close: list[str]
    leading_line: list[int | None]  # where each item's first leading comment is
    close_line: int | None = None  # where the first comment before the close is


def _attach(comments: _Comments, items: list, open_pos: Pos, close_pos: Pos) -> _Attached:
    """Sort the comments between a container's opening and closing into their places. Comments
    inside an item are left for the item."""
    result = _Attached([], [[] for _ in items], [[] for _ in items], [], [None for _ in items])
    ranges = [(_start(i), _end(i)) for i in items]
    for index in comments.inside(open_pos, close_pos):
        line, col, _ = comments.all[index]
        if any(lo <= (line, col) < hi for lo, hi in ranges):
            continue
        before = [k for k, (_, hi) in enumerate(ranges) if hi <= (line, col)]
        after = [k for k, (lo, _) in enumerate(ranges) if lo > (line, col)]
        if before and ranges[before[-1]][1][0] == line:
            result.trailing[before[-1]] += comments.take([index])
        elif not before and line == open_pos[0]:
            result.after_open += comments.take([index])
        elif after:
            if result.leading_line[after[0]] is None:
                result.leading_line[after[0]] = line
            result.leading[after[0]] += comments.take([index])
        else:
            result.close_line = result.close_line or line
            result.before_close += comments.take([index])
    return result


# ----------------------------------------------------------------------------- rendering


def _with_trailing(lines: list[str], trailing: list[str], suffix: str = "") -> list[str]:
    """Append `suffix` (a comma) and the trailing comments to the last line."""
    lines = list(lines)
    lines[-1] += suffix
    if trailing:
        lines[-1] += "  " + trailing[0]
        lines += [lines[-1][: len(lines[-1]) - len(lines[-1].lstrip())] + t for t in trailing[1:]]
    return lines


def _value(prefix: str, e: S.Expr, depth: int, comments: _Comments) -> list[str]:
    """`prefix value` as lines relative to `depth`; a call or list holding comments is exploded."""
    inner = comments.inside(_start(e), _end(e))
    if not inner:
        return _wrapped(prefix, e, depth)
    if isinstance(e, (S.Call, S.ListExpr)):
        items = list(e.args if isinstance(e, S.Call) else e.items)
        open_pos = (e.span.line, e.span.column)
        close_pos = (_end(e)[0], _end(e)[1] - 1)
        att = _attach(comments, items, open_pos, close_pos)
        head = prefix + (f"{e.func}(" if isinstance(e, S.Call) else "[")
        lines = _with_trailing([head], att.after_open)
        for k, item in enumerate(items):
            lines += [INDENT + c for c in att.leading[k]]
            if isinstance(item, S.Arg):
                body = comments.take(comments.inside(_start(item), _start(item.value)))
                body += _value(f"{item.name} = " if item.name else "", item.value, depth + 1, comments)
            else:
                body = _value("", item, depth + 1, comments)
            lines += [INDENT + l for l in _with_trailing(body, att.trailing[k], ",")]
        lines += [INDENT + c for c in att.before_close]
        lines.append(")" if isinstance(e, S.Call) else "]")
        return lines
    # A comment inside an operator expression has no place of its own: it goes before the statement.
    return comments.take(inner) + _wrapped(prefix, e, depth)


def _statement(item, depth: int, comments: _Comments) -> list[str]:
    if isinstance(item, (S.Let, S.Assign)):  # `x = # note` puts the note before the statement
        return comments.take(comments.inside(_start(item), _start(item.value))) + _plain_statement(item, depth, comments)
    return _plain_statement(item, depth, comments)


def _plain_statement(item, depth: int, comments: _Comments) -> list[str]:
    if isinstance(item, S.Let):
        return _value(f"let {item.name} = ", item.value, depth, comments)
    if isinstance(item, S.Assign):
        return _value(".".join(item.path) + " = ", item.value, depth, comments)
    if isinstance(item, S.Import):
        return [f"import {string_text(item.path)}"]
    if isinstance(item, S.BlockDecl):
        head = f"block {item.name}" + (f" extends {item.parent}" if item.parent else "") + " {"
        return _body(head, list(item.assigns), item, depth, comments, blocks_spaced=False)
    if isinstance(item, S.ModelDecl):
        head = f"model {item.name}" + (f" extends {item.parent}" if item.parent else "") + " {"
        members = sorted([*item.lets, *item.assigns, *item.blocks], key=_start)
        return _body(head, members, item, depth, comments, blocks_spaced=True)
    raise AssertionError(item)


def _body(head: str, items: list, decl, depth: int, comments: _Comments, blocks_spaced: bool) -> list[str]:
    """A `{ ... }` body: the head line, the items one level deeper, the closing `}`."""
    open_pos = (decl.span.line, decl.span.column)
    close_pos = (decl.end_line, decl.end_column - 1)
    att = _attach(comments, items, open_pos, close_pos)
    lines = _with_trailing([head], att.after_open)
    lines += [INDENT + l if l else l for l in _sequence(items, att, depth + 1, comments, blocks_spaced)]
    if att.before_close:
        lines += [INDENT + c for c in att.before_close]
    lines.append("}")
    return lines


def _sequence(items: list, att: _Attached, depth: int, comments: _Comments, blocks_spaced: bool) -> list[str]:
    """Items one per line with their comments; one blank line kept where the author left one,
    and (in a model) around every block."""
    lines: list[str] = []
    prev_end = None
    prev_block = False
    for k, item in enumerate(items):
        is_block = isinstance(item, (S.BlockDecl, S.ModelDecl))
        first = att.leading_line[k] or _start(item)[0]
        author_blank = prev_end is not None and first - prev_end > 1
        if lines and (author_blank or (blocks_spaced and (is_block or prev_block))):
            lines.append("")
        lines += att.leading[k]
        lines += _with_trailing(_statement(item, depth, comments), att.trailing[k])
        prev_end, prev_block = _end(item)[0], is_block
    return lines


def format_source(text: str, file: str = "<string>") -> str:
    """The canonical form of a spec. Raises ArchError (its first syntax error) if it does not parse."""
    text = strip_bom(text)
    try:
        tree = parse_source(text, file)
    except ArchErrors as exc:
        raise exc.errors[0] from None
    found = [(tok.line, tok.column, str(tok).rstrip()) for tok in _lexer().lex(text, dont_ignore=True)
             if tok.type == "COMMENT"]
    comments = _Comments(sorted(found))
    items = [*tree.imports, *tree.models]
    end = (text.count("\n") + 2, 1)
    att = _attach(comments, items, (0, 0), end)
    lines = _sequence(items, att, 0, comments, blocks_spaced=True)
    if att.before_close:
        if lines and att.close_line - _end(items[-1])[0] > 1:
            lines.append("")
        lines += att.before_close
    missing = [c for i, c in enumerate(comments.all) if i not in comments.taken]
    if missing:  # every comment has a place; losing one would be a formatter bug
        raise ArchError(f"internal: comment at {file}:{missing[0][0]}:{missing[0][1]} has no place", None)
    return "\n".join(lines) + "\n"

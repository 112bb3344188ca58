"""The canonical formatter behind `archc fmt`: four-space indentation, one statement per line,
`name = value` with single spaces, a blank line around blocks, comments kept in place.
Number literals keep the way they were written (`128k`, `4_096`). Formatting is idempotent and
never changes what a spec means: the output parses to the same syntax tree."""

from __future__ import annotations

from dataclasses import dataclass

from lark import Lark

from . import syntax as S
from .parser import _lark, parse_source

INDENT = "    "
MAX_WIDTH = 100
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "%": 2, "**": 4}


def expr_text(e: S.Expr, parent: int = 0, right: bool = False) -> str:
    if isinstance(e, S.Num):
        return e.text
    if isinstance(e, S.Str):
        return '"' + e.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    if isinstance(e, S.Bool):
        return "true" if e.value else "false"
    if isinstance(e, S.NoneLit):
        return "none"
    if isinstance(e, S.Name):
        return e.id
    if isinstance(e, S.Neg):
        return "-" + expr_text(e.operand, 3)
    if isinstance(e, S.BinOp):
        p = _PRECEDENCE[e.op]
        if e.op == "**":  # right-associative; its left side must bind tighter than unary minus
            text = f"{expr_text(e.left, 5)} ** {expr_text(e.right, 3)}"
        else:
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


@dataclass
class _Stmt:
    line: int
    end_line: int
    depth: int
    lines: list[str]
    blank_before: bool = False


def _end_line(e) -> int:
    return getattr(e.span, "end_line", None) or e.span.line


def format_source(text: str, file: str = "<string>") -> str:
    """The canonical form of a spec. Raises ArchError if it does not parse."""
    tree = parse_source(text, file)  # validates and gives syntax nodes
    comments: list[tuple[int, int, str]] = []
    Lark(_lark().source_grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False,
         lexer_callbacks={"COMMENT": lambda tok: comments.append((tok.line, tok.column, str(tok).rstrip())) or tok}).parse(text)
    stmts: list[_Stmt] = []
    for imp in tree.imports:
        stmts.append(_Stmt(imp.span.line, imp.span.line, 0, [f'import "{imp.path}"']))
    for mi, model in enumerate(tree.models):
        head = f"model {model.name}" + (f" extends {model.parent}" if model.parent else "") + " {"
        stmts.append(_Stmt(model.span.line, model.span.line, 0, [head], blank_before=bool(stmts)))
        members = sorted([*model.lets, *model.assigns, *model.blocks], key=lambda m: (m.span.line, m.span.column))
        prev_block = False
        for member in members:
            if isinstance(member, S.BlockDecl):
                bhead = f"block {member.name}" + (f" extends {member.parent}" if member.parent else "") + " {"
                stmts.append(_Stmt(member.span.line, member.span.line, 1, [bhead], blank_before=True))
                for a in member.assigns:
                    stmts.append(_Stmt(a.span.line, _end_line(a.value), 2, _wrapped(".".join(a.path) + " = ", a.value, 2)))
                last = max([member.span.line] + [_end_line(a.value) for a in member.assigns])
                stmts.append(_Stmt(last, last, 1, ["}"]))
                prev_block = True
            else:
                prefix = f"let {member.name} = " if isinstance(member, S.Let) else ".".join(member.path) + " = "
                stmts.append(_Stmt(member.span.line, _end_line(member.value), 1, _wrapped(prefix, member.value, 1),
                                   blank_before=prev_block))
                prev_block = False
        last = max(s.end_line for s in stmts)
        stmts.append(_Stmt(last, last, 0, ["}"]))
    return _render(stmts, comments)


def _render(stmts: list[_Stmt], comments: list[tuple[int, int, str]]) -> str:
    out: list[str] = []
    pending = sorted(comments)
    trailing = {}
    own_line = []
    code_lines = {s.line for s in stmts if s.lines[0] not in ("}",)}
    for line, col, text in pending:
        if line in code_lines and any(s.line == line and s.end_line == line for s in stmts):
            trailing[line] = text
        else:
            own_line.append((line, text))
    last_on_line = {s.line: s for s in stmts if s.lines[0] != "}" and s.end_line == s.line}
    ci = 0
    prev_end = None
    for s in stmts:
        between = sum(1 for line, _ in own_line if prev_end is not None and prev_end < line < s.line)
        had_blank = prev_end is not None and s.line - prev_end - 1 > between  # keep one blank line the author left
        if (s.blank_before or (had_blank and s.lines[0] != "}")) and out and out[-1] != "" and not out[-1].endswith("{"):
            out.append("")
        prev_end = s.end_line
        closing = s.lines[0] == "}"
        while ci < len(own_line) and (own_line[ci][0] < s.line or (closing and own_line[ci][0] <= s.end_line)):
            depth = s.depth + (1 if closing else 0)
            out.append(INDENT * depth + own_line[ci][1])
            ci += 1
        rendered = [INDENT * s.depth + l for l in s.lines]
        if not closing and s.line in trailing and len(rendered) == 1 and last_on_line[s.line] is s:
            rendered[0] += "  " + trailing.pop(s.line)
        out.extend(rendered)
    out.extend(text for _, text in own_line[ci:])
    while out and out[0] == "":
        out.pop(0)
    return "\n".join(out) + "\n"

"""Pictures drawn natively as SVG: no Graphviz, no system packages, the same bytes on every machine.

The picture is a column of boxes read top to bottom, as a model runs: inputs, embeddings and
positions, each layer stack in a frame with its repeated pattern drawn once ("× 4 (period of 8)"),
then the final norm, the head and the outputs. Blocks are coloured by their mixer (attention, SSM,
MoE) and list their parts and their position scheme. Data flow between neighbouring boxes is a
straight arrow; flow that skips boxes (an encoder's output read by the decoder's cross-attention,
a residual in the expanded picture) runs in a lane to the left of the column.

`expand` draws every op of the IR, one box each. Text is monospace, so its width is known without
measuring fonts: every glyph of DejaVu Sans Mono, Menlo and Consolas advances 0.6 em.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

import networkx as nx

from .ir import inputs_of, ordered_nodes
from .ops import REGISTRY
from .picture import COLORS, block_groups, group_of, runs

FONT = 12  # px
CHAR = 0.6 * FONT  # the advance of one monospace glyph
LINE = 16  # px between text baselines
PAD = 8  # inside a box
GAP = 22  # between boxes: room for an arrow
LANE = 10  # between the lanes of arrows that skip boxes
MIN_WIDTH = 200
FONTS = "DejaVu Sans Mono, Menlo, Consolas, monospace"
STROKE = "#6b7280"


@dataclass
class Box:
    """One box of the column: its text lines (the first in bold), fill, and a note to its right."""

    lines: list[str]
    fill: str
    note: str | None = None
    frame: str | None = None  # the stack frame it is drawn in
    dashed: bool = False
    y: float = 0.0
    height: float = 0.0


@dataclass
class Picture:
    title: str
    subtitle: str
    boxes: list[Box] = field(default_factory=list)
    edges: set[tuple[int, int]] = field(default_factory=set)  # (box index, box index), data flowing down
    dashed_edges: set[tuple[int, int]] = field(default_factory=set)
    frames: dict[str, str] = field(default_factory=dict)  # frame name → its label
    legend: list[str] = field(default_factory=list)  # picture groups, in the order they first appear


# ----------------------------------------------------------------------------- what to draw


def _describe(g: nx.MultiDiGraph, node: str) -> list[str]:
    """The text of a box for one op outside the stacks (collapsed picture)."""
    d = g.nodes[node]
    op, attrs = d["op"], d["attrs"]
    if op == "input":
        return [node]
    if op == "output":
        return [node, "output"]
    if op == "embedding":
        return [node, f"embedding {attrs['vocab']:,} × {attrs['dim']:,}"]
    if op == "lm_head":
        return [node, f"head → {attrs['vocab']:,}" + (" (tied to the embedding)" if attrs.get("tied") else "")]
    kind = attrs.get("kind") or attrs.get("table")
    return [node, f"{op} {kind}" if kind else op]


def _position(g: nx.MultiDiGraph, nodes: list[str]) -> str | None:
    """A block's position scheme, from the position ops of one of its layers."""
    for n in nodes:
        d = g.nodes[n]
        if d["op"] == "const" and d["attrs"].get("table") == "rope":
            a = d["attrs"]
            scaling = a.get("scaling")
            kind = scaling.get("kind") if isinstance(scaling, dict) else scaling
            theta = f"{a['theta']:,.0f}" if float(a["theta"]).is_integer() else f"{a['theta']:g}"
            return f"position: rope θ={theta}" + (f" ({kind})" if kind else "")
    for n in nodes:
        if group_of(g, n) == "position" and REGISTRY[g.nodes[n]["op"]].role == "compute":
            if g.nodes[n]["op"] != "rope":
                return f"position: {g.nodes[n]['op']}"
    if any(g.nodes[n]["op"] == "attention" and g.nodes[n]["attrs"].get("alibi") for n in nodes):
        return "position: alibi"
    return None


def collapsed(g: nx.MultiDiGraph) -> Picture:
    """The stack collapsed into runs of repeated blocks, with what surrounds it."""
    pic = Picture(f"{g.graph['name']} ({g.graph['family']})",
                  f"d_model {g.graph['d_model']:,} · vocab {g.graph['vocab']:,} · context {g.graph['context']:,}")
    item: dict[str, int] = {}  # IR node → the box it is drawn in
    groups = block_groups(g)
    layer_nodes: dict[tuple[str, int], list[str]] = {}
    for n in ordered_nodes(g):
        d = g.nodes[n]
        if d["stack"] is not None:
            layer_nodes.setdefault((d["stack"], d["layer"]), []).append(n)
    stacks_drawn: set[str] = set()
    for n in ordered_nodes(g):
        d = g.nodes[n]
        stack = d["stack"]
        if stack is None:
            if REGISTRY[d["op"]].role == "table" and group_of(g, n) != "position":
                continue  # tables other than positions are drawn with the op that reads them
            item[n] = len(pic.boxes)
            pic.boxes.append(Box(_describe(g, n), COLORS[group_of(g, n)]))
            _legend(pic, group_of(g, n))
            if d["op"] == "byte_latent":  # its stacks run inside the op: drawn as frames of their blocks
                for inner, blocks in g.graph["stacks"].items():
                    stacks_drawn.add(inner)
                    pic.frames[inner] = f"{inner}: {len(blocks)} layers"
                    for unit, reps in runs(blocks):
                        for j, block in enumerate(unit):
                            note = f"× {reps}" if j == len(unit) - 1 and reps > 1 else None
                            pic.boxes.append(Box([block, *g.graph["blocks"][block].split(" → ")],
                                                 COLORS["attention"], note=note, frame=inner))
            continue
        if stack in stacks_drawn:
            continue
        stacks_drawn.add(stack)
        blocks = g.graph["stacks"][stack]
        pic.frames[stack] = f"{stack}: {len(blocks)} layers"
        layer = 0
        for unit, reps in runs(blocks):
            first = len(pic.boxes)
            for j, block in enumerate(unit):
                nodes = layer_nodes.get((stack, layer + j), [])
                lines = [block, *g.graph["blocks"][block].split(" → ")]
                position = None if any(p.startswith("position") for p in lines) else _position(g, nodes)
                if position:
                    lines.append(position)
                note = None
                if j == len(unit) - 1 and reps > 1:
                    note = f"× {reps}" + (f" (period of {len(unit)})" if len(unit) > 1 else "")
                group = groups.get(block, "attention")
                pic.boxes.append(Box(lines, COLORS[group], note=note, frame=stack))
                _legend(pic, group)
            for r in range(reps):  # every layer of the run is drawn by its unit's boxes
                for j in range(len(unit)):
                    for m in layer_nodes.get((stack, layer + r * len(unit) + j), []):
                        item[m] = first + j
            layer += reps * len(unit)
    for u, v in g.edges():
        # flow from a run's last layer back into its first is the repetition, which the note says
        if u in item and v in item and item[u] < item[v]:
            pic.edges.add((item[u], item[v]))
    mtp = g.graph.get("mtp")
    if mtp is not None:  # read off the last layer in training only, so drawn dashed
        last = max((i for i, b in enumerate(pic.boxes) if b.frame is not None), default=len(pic.boxes) - 1)
        pic.boxes.append(Box(["multi-token prediction", f"{mtp['depth']} × {mtp['block']} (training)"],
                             COLORS["head"], dashed=True))
        pic.dashed_edges.add((last, len(pic.boxes) - 1))
    return pic


def expanded(g: nx.MultiDiGraph) -> Picture:
    """Every op of the IR, one box each, with every edge."""
    pic = Picture(f"{g.graph['name']} ({g.graph['family']})", "every op of the IR")
    index: dict[str, int] = {}
    for n in ordered_nodes(g):
        d = g.nodes[n]
        shape = "(" + ", ".join(str(s) for s in d["shape"]) + ")"
        index[n] = len(pic.boxes)
        pic.boxes.append(Box([n, f"{d['op']} {shape}"], COLORS[group_of(g, n)]))
        _legend(pic, group_of(g, n))
    for n in index:
        for ref in inputs_of(g, n):
            pic.edges.add((index[ref.node], index[n]))
    return pic


def _legend(pic: Picture, group: str) -> None:
    if group not in pic.legend:
        pic.legend.append(group)


# ----------------------------------------------------------------------------- drawing


def _text_width(text: str) -> float:
    return len(text) * CHAR


def _lanes(edges: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """A lane per edge that skips boxes, shortest first, so that no two overlapping spans share one."""
    taken: list[list[tuple[int, int]]] = []
    lane_of = {}
    for a, b in sorted(edges, key=lambda e: (e[1] - e[0], e)):
        for k, spans in enumerate(taken):
            if all(b <= s or a >= e for s, e in spans):
                spans.append((a, b))
                lane_of[(a, b)] = k
                break
        else:
            taken.append([(a, b)])
            lane_of[(a, b)] = len(taken) - 1
    return lane_of


def _num(x: float) -> str:
    """Coordinates with at most one decimal, written the same way everywhere."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def draw(pic: Picture) -> str:
    """The picture as a standalone SVG document."""
    skips = [e for e in sorted(pic.edges | pic.dashed_edges) if e[1] - e[0] > 1]
    lane_of = _lanes(skips)
    lanes = max(lane_of.values(), default=-1) + 1
    framed = bool(pic.frames)
    inset = 12 if framed else 0  # boxes sit inside their stack's frame
    left = 16 + lanes * LANE + (LANE if lanes else 0) + inset
    width = max([MIN_WIDTH] + [max(map(_text_width, b.lines)) + 2 * PAD for b in pic.boxes])
    notes = max([_text_width(b.note) + 12 for b in pic.boxes if b.note], default=0)

    out: list[str] = []
    y = 16 + LINE * 2 + 8  # below the title and subtitle
    previous_frame = None
    frame_spans: dict[str, list[float]] = {}
    for box in pic.boxes:
        if box.frame != previous_frame and box.frame is not None:
            y += LINE + 4  # room for the frame's label
        box.y, box.height = y, 2 * PAD + LINE * len(box.lines) - 4
        if box.frame is not None:
            span = frame_spans.setdefault(box.frame, [y, y])
            span[1] = y + box.height
        y += box.height + GAP
        if box.frame is not None and box.frame != previous_frame:
            frame_spans[box.frame][0] = box.y
        previous_frame = box.frame
    legend_y = y + 4
    legend_w = sum(32 + _text_width(group) for group in pic.legend) + 16
    total_w = max(left + width + inset + notes + 16, legend_w, 16 + _text_width(pic.subtitle) + 16,
                  16 + len(pic.title) * CHAR * (FONT + 4) / FONT + 16)
    total_h = legend_y + LINE + 16

    out.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{_num(total_w)}" height="{_num(total_h)}" '
               f'viewBox="0 0 {_num(total_w)} {_num(total_h)}" font-family={quoteattr(FONTS)} font-size="{FONT}">')
    out.append(f"<title>{escape(pic.title)}</title>")
    out.append('<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
               f'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="{STROKE}"/></marker></defs>')
    out.append('<rect width="100%" height="100%" fill="#ffffff"/>')
    out.append(f'<text x="16" y="{16 + FONT}" font-size="{FONT + 4}" font-weight="bold">{escape(pic.title)}</text>')
    out.append(f'<text x="16" y="{16 + FONT + LINE + 2}" fill="#4b5563">{escape(pic.subtitle)}</text>')
    for name, (top, bottom) in frame_spans.items():
        fx, fy = left - inset, top - LINE - 2
        out.append(f'<rect x="{_num(fx)}" y="{_num(fy)}" width="{_num(width + 2 * inset + notes)}" '
                   f'height="{_num(bottom - fy + inset)}" rx="8" fill="none" stroke="#9ca3af"/>')
        out.append(f'<text x="{_num(fx + 8)}" y="{_num(fy + FONT + 2)}" fill="#4b5563">'
                   f"{escape(pic.frames[name])}</text>")
    for box in pic.boxes:
        dash = ' stroke-dasharray="5 3"' if box.dashed else ""
        out.append(f'<rect x="{_num(left)}" y="{_num(box.y)}" width="{_num(width)}" height="{_num(box.height)}" '
                   f'rx="6" fill="{box.fill}" stroke="{STROKE}"{dash}/>')
        for i, line in enumerate(box.lines):
            weight = ' font-weight="bold"' if i == 0 else ""
            out.append(f'<text x="{_num(left + PAD)}" y="{_num(box.y + PAD + FONT - 2 + i * LINE)}"{weight}>'
                       f"{escape(line)}</text>")
        if box.note:
            out.append(f'<text x="{_num(left + width + 8)}" y="{_num(box.y + box.height / 2 + FONT / 2 - 2)}" '
                       f'font-weight="bold" fill="#374151">{escape(box.note)}</text>')
    for a, b in sorted(pic.edges | pic.dashed_edges):
        dash = ' stroke-dasharray="5 3"' if (a, b) in pic.dashed_edges else ""
        top, bottom = pic.boxes[a], pic.boxes[b]
        if b - a == 1:
            x = left + width / 2
            out.append(f'<path d="M {_num(x)} {_num(top.y + top.height)} V {_num(bottom.y)}" fill="none" '
                       f'stroke="{STROKE}" marker-end="url(#arrow)"{dash}/>')
        else:  # skips boxes: out of the source's left side, down its lane, into the target's left side
            lx = left - inset - LANE * (lane_of[(a, b)] + 1)
            y0, y1 = top.y + top.height / 2, bottom.y + bottom.height / 2
            out.append(f'<path d="M {_num(left)} {_num(y0)} H {_num(lx)} V {_num(y1)} H {_num(left)}" fill="none" '
                       f'stroke="{STROKE}" marker-end="url(#arrow)"{dash}/>')
    x = 16.0
    for group in pic.legend:
        out.append(f'<rect x="{_num(x)}" y="{_num(legend_y)}" width="12" height="12" rx="2" fill="{COLORS[group]}" '
                   f'stroke="{STROKE}"/>')
        out.append(f'<text x="{_num(x + 16)}" y="{_num(legend_y + 10)}" fill="#4b5563">{escape(group)}</text>')
        x += 16 + _text_width(group) + 16
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render(g: nx.MultiDiGraph, *, expand: bool = False) -> str:
    """The SVG document of the collapsed picture of the lowered IR, or of every op (`expand`)."""
    return draw(expanded(g) if expand else collapsed(g))

"""IR → Python source. Every layer of a block kind compiles to one class; each IR op becomes one
`__init__` line (its module) and one `forward` line (its call), with the shape it produces in
a comment. The Jinja template (templates/model.py.j2) lays out the file.

Nothing from the spec reaches the source except identifiers (validated against a strict
pattern in the AST) and numbers, booleans and enumeration words written with `repr`.
"""

from __future__ import annotations

import functools
import hashlib
import pprint
import re
import textwrap
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jinja2
import networkx as nx

from archlang.spec.names import class_name

from .fold import REPRESENTS
from .ir import NodeRef, inputs_of, ordered_nodes
from .ops import REGISTRY, Emit, RegistryError, op_def

_SAFE_TEXT = re.compile(r"[^A-Za-z0-9_ ().,=+\-→/:*`<>\[\]]")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CodegenError(Exception):
    """The IR cannot be expressed as code (an internal invariant broke)."""


def _ident(name: str) -> str:
    if not _IDENT.match(name):
        raise CodegenError(f"unsafe identifier {name!r}")
    return name


def _safe_text(text: str) -> str:
    """Text for comments and docstrings: a conservative character set, no quotes runs."""
    return _SAFE_TEXT.sub("?", text).replace('"""', "'''")


WIDTH = 110  # generated lines are wrapped to this width


def _split_top_level(args: str) -> list[str]:
    """Split a call's argument text at the commas that are not inside brackets or strings."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(args):
        if quote:
            if ch == quote and args[i - 1] != "\\":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(args[start:i].strip())
            start = i + 1
    parts.append(args[start:].strip())
    return [p for p in parts if p]


def wrap_call(line: str, indent: int) -> list[str]:
    """`target = f(a, b, ...)` over WIDTH becomes the call with its arguments packed on
    continuation lines, one level deeper; shorter lines are returned as they are."""
    if indent + len(line) <= WIDTH or not line.endswith(")") or "(" not in line:
        return [line]
    head, _, rest = line.partition("(")
    args = _split_top_level(rest[:-1])
    inner = " " * 4
    lines, current = [head + "("], inner
    for arg in args:
        piece = arg + ","
        if current.strip() and indent + len(current) + 1 + len(piece) > WIDTH:
            lines.append(current.rstrip())
            current = inner
        current += ("" if not current.strip() else " ") + piece
    lines.append(current.rstrip())
    lines.append(")")
    return lines


def _shape(shape: tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


@dataclass
class Line:
    code: str
    comment: str = ""


@dataclass
class Scope:
    """Variables live in one function: which (node, output) each name currently holds."""

    g: nx.MultiDiGraph
    nodes: set[str]
    external: dict[str, str] = field(default_factory=dict)  # node id → expression for reads from outside
    holds: dict[str, tuple[str, int]] = field(default_factory=dict)

    def read(self, ref: NodeRef) -> str:
        if ref.node in self.external:
            return self.external[ref.node]
        if ref.node not in self.nodes:
            raise CodegenError(f"{ref.node} is read but not in scope")
        var = self.g.nodes[ref.node]["outputs"][ref.out]
        if self.holds.get(var) != (ref.node, ref.out):
            raise CodegenError(f"variable {var!r} was overwritten before {ref.node}#{ref.out} was read")
        return var

    def write(self, node: str, used: set[int]) -> str:
        outs = self.g.nodes[node]["outputs"]
        names = []
        for i, var in enumerate(outs):
            if i in used:
                self.holds[var] = (node, i)
                names.append(var)
            else:
                names.append("_")
        return ", ".join(names)


class _Emitter:
    """Asks each node's op definition for its module and its call."""

    def __init__(self, g: nx.MultiDiGraph):
        self.g = g

    def _op(self, node: str):
        d = self.g.nodes[node]
        _ident(d["name"])  # every rule writes `self.<name>`: only identifiers get there
        try:
            return d, op_def(d["op"])
        except RegistryError as exc:
            raise CodegenError(str(exc)) from None

    def module(self, node: str, layer_expr: str, cache_key: str, block: str = "") -> str | None:
        d, op = self._op(node)
        return op.module(d, Emit(layer_expr, cache_key, block=block))

    def call(self, node: str, args: list[str]) -> str:
        d, op = self._op(node)
        producers = [self.g.nodes[r.node] for r in inputs_of(self.g, node)]
        return op.call(d, args, Emit("layer", "", producers))


def _used_outputs(g: nx.MultiDiGraph, node: str) -> set[int]:
    return {data["out"] for _, _, data in g.out_edges(node, data=True)}


def _layer_signature(g: nx.MultiDiGraph, nodes: list[str]) -> list:
    """What must agree between layers that share one class: ops, names, attributes, wiring."""
    sig = []
    index = {n: i for i, n in enumerate(nodes)}
    for n in nodes:
        d = g.nodes[n]
        # reads from outside the layer are the block's input, whichever output produced it
        wiring = [(index[r.node], r.out) if r.node in index else ("ext",) for r in inputs_of(g, n)]
        sig.append((d["op"], d["name"], d["outputs"], sorted(d["attrs"].items(), key=lambda kv: kv[0]).__repr__(),
                    tuple(sorted(d["params"].items())), wiring))
    return sig


@dataclass
class BlockClass:
    name: str
    block: str
    doc: str
    init: list[str]
    forward: list[Line]
    returns: str
    tp_plan: dict[str, str]
    # Mixture-of-Depths: forward() is this call, and the ops above run in routed()
    router_call: str | None = None


def _tp_plan(g, nodes: list[str]) -> dict[str, str]:
    """Tensor-parallel roles read off the IR: projections into an attention core or an FFN
    activation split their outputs ("colwise"), the projections after them split their inputs
    ("rowwise"). Only where every shard computes whole heads or whole hidden units: fused q/k/v
    and gate/up projections, MoE, MLA and position biases stay replicated."""
    plan: dict[str, str] = {}
    for n in nodes:
        d = g.nodes[n]
        if not REGISTRY[d["op"]].splits_heads(d):
            continue
        projs = [r.node for r in inputs_of(g, n) if REGISTRY[g.nodes[r.node]["op"]].role != "table"]
        outs = [dst for _, dst in g.out_edges(n)]
        if all(REGISTRY[g.nodes[p]["op"]].is_projection for p in projs) and len(outs) == 1 \
                and REGISTRY[g.nodes[outs[0]]["op"]].is_projection:
            plan.update({g.nodes[p]["name"]: "colwise" for p in projs})
            plan[g.nodes[outs[0]]["name"]] = "rowwise"
    return dict(sorted(plan.items()))


def generate(g: nx.MultiDiGraph, *, spec_name: str = "<spec>", spec_text: str = "", passes: list[str] | None = None,
             version: str = "") -> str:
    """The Python module for an IR: deterministic, byte for byte, for the same IR."""
    if g.graph["family"] == "byte_latent":  # one runtime module runs its stacks (compiler/ops/blt.py)
        from .ops.blt import generate_byte_latent

        header = (f"# Generated by archc {_safe_text(version)} from {_safe_text(spec_name)}. Do not edit: change the "
                  f"spec and recompile.\n# spec sha256: {hashlib.sha256(spec_text.encode()).hexdigest()}\n"
                  f"# passes: {', '.join(passes or []) or 'none'}")
        config = {k: g.graph[k] for k in ("name", "family", "vocab", "d_model", "context", "dtype")}
        config["stacks"] = {k: len(v) for k, v in g.graph["stacks"].items()}
        config["tie_embeddings"] = False  # the LM head is its own tensor (checkpoint loading asks)
        text = generate_byte_latent(g, header=header, model_class=class_name(g.graph["name"]), spec_name=spec_name,
                                    config=pprint.pformat(config, width=WIDTH, sort_dicts=False), wrap=wrap_call)
        _check_top_level_names(text)
        return text
    em = _Emitter(g)
    order = ordered_nodes(g)
    stacks: dict[str, list[str]] = g.graph["stacks"]
    layer_nodes: dict[tuple[str, int], list[str]] = {}
    for n in order:
        d = g.nodes[n]
        if d["stack"] is not None:
            layer_nodes.setdefault((d["stack"], d["layer"]), []).append(n)

    # One class per block kind, from its first layer; every other layer must match it.
    classes: dict[str, BlockClass] = {}
    signatures: dict[str, list] = {}
    # Class names come from the spec; each must differ from every other top-level name of the
    # module, or it would rebind it (a model named `f` compiles to class `F`, hiding
    # torch.nn.functional from every forward).
    taken = set(MODULE_NAMES) | {_layout_name(stack) for stack in stacks}
    kept = g.graph.get(REPRESENTS)
    for stack, blocks in stacks.items():
        for i, block in enumerate(blocks):
            if kept is not None and (stack, i) not in kept:
                continue  # a folded IR (compiler/fold.py): a kept layer of this block kind stands for it
            nodes = layer_nodes[(stack, i)]
            if block in classes:
                if _layer_signature(g, nodes) != signatures[block]:
                    raise CodegenError(f"layer {stack}.{i} differs from the other `{block}` layers")
                continue
            classes[block] = _block_class(g, em, block, nodes, stack)
            classes[block].name = _unique(classes[block].name, taken)  # `a_b` and `aB` both make `ABBlock`
            taken.add(classes[block].name)
            signatures[block] = _layer_signature(g, nodes)
    mtp = g.graph.get("mtp")
    if mtp is not None:  # each MTP module's layer is an instance of its block's class (a block of the stack)
        for i in range(mtp["depth"]):
            nodes = [n for n in layer_nodes[("mtp", i)] if g.nodes[n]["op"] not in ("mtp", "output")]
            if _layer_signature(g, nodes) != signatures[mtp["block"]]:
                raise CodegenError(f"mtp layer {i} differs from the other `{mtp['block']}` layers")
    model_class = class_name(g.graph["name"])
    if model_class in taken:
        model_class = _unique(model_class + "Model", taken)

    model = _model_code(g, em, order, stacks, classes)
    fusions: dict[str, tuple] = {}
    found: dict[int, dict[str, tuple]] = {}  # a folded layer's fusions, looked up once
    for nodes in _every_layer(g, order, layer_nodes, kept):  # a later layer's fusion of a name wins
        if id(nodes) not in found:
            found[id(nodes)] = {g.nodes[n]["name"]: tuple((p, w) for p, w in g.nodes[n]["attrs"]["parts"])
                                for n in nodes if g.nodes[n]["attrs"].get("parts")}
        fusions.update(found[id(nodes)])
    config = {k: g.graph[k] for k in ("name", "family", "vocab", "d_model", "context", "dtype", "tie_embeddings")}
    config["logit_softcap"] = g.graph.get("logit_softcap")
    config["stacks"] = {k: len(v) for k, v in stacks.items()}
    if g.graph.get("stage_marks"):
        config["stage_marks"] = list(g.graph["stage_marks"])
    if mtp is not None:
        config["mtp"] = dict(mtp)
    if g.graph.get("head"):
        config["head"] = dict(g.graph["head"])
    if g.graph.get("embedding_dim"):
        config["embedding_dim"] = g.graph["embedding_dim"]
    layouts = {_layout_name(stack): _layout(blocks, classes) for stack, blocks in stacks.items()}
    env = _template_env()
    code_lines = [l.code for c in classes.values() for l in c.forward] + [
        l.code for part in ("forward", "head", "encode") for l in (model.get(part) or [])]
    text = env.get_template("model.py.j2").render(
        uses_functional=any("F." in line for line in code_lines),
        version=_safe_text(version), spec_name=repr(spec_name), spec_comment=_safe_text(spec_name),
        spec_hash=hashlib.sha256(spec_text.encode()).hexdigest(), passes=", ".join(passes or []) or "none",
        classes=list(classes.values()), model_class=model_class, model=model,
        config=pprint.pformat(config, width=WIDTH, sort_dicts=False),
        fusions=pprint.pformat(fusions, width=WIDTH, sort_dicts=False), layouts=layouts, family=g.graph["family"],
        mtp=model.get("mtp"),
    )
    _check_top_level_names(text)  # never hand out source that does not parse or rebinds a name
    return text


@functools.lru_cache(maxsize=1)
def _template_env() -> jinja2.Environment:
    """One environment per process, so the template is compiled once, not on every generate."""
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: resources.files(__package__).joinpath("templates", name).read_text()),
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False, undefined=jinja2.StrictUndefined,
    )


def _every_layer(g, order: list[str], layer_nodes: dict[tuple[str, int], list[str]], kept) -> list[list[str]]:
    """The nodes in data-flow order, in groups (one node, or a layer), with each layer of a
    folded IR repeated (the same list) where every layer it represents stands in the whole
    model's IR."""
    if kept is None:
        return [[n] for n in order]
    stand_for = {(stack, i): (stack, k) for (stack, k), members in kept.items() for i in members}
    out: list[list[str]] = []
    done: set[str] = set()
    for n in order:
        stack = g.nodes[n]["stack"]
        if stack is None or stack not in g.graph["stacks"]:  # model-level, or the MTP modules (never folded)
            out.append([n])
        elif stack not in done:
            done.add(stack)
            out.extend(layer_nodes.get(stand_for[(stack, i)], []) for i in range(len(g.graph["stacks"][stack])))
    return out


# Names the template binds at the top level of every generated module, whatever the spec:
# its imports, constants and the build() function (the layer layouts are named per stack).
MODULE_NAMES = frozenset({"annotations", "torch", "F", "nn", "rt", "SPEC", "CONFIG", "FUSIONS", "build", "Config"})


def _layout_name(stack: str) -> str:
    return f"{stack.upper()}_LAYOUT"


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name2`, `name3`, ... : the first that no other top-level name uses."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}{n}"
    return candidate


def _check_top_level_names(text: str) -> None:
    """The generated module must parse and bind each top-level name once: a second binding
    would silently replace what the code reads under that name."""
    import ast

    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise CodegenError(f"generated code does not parse: {exc}") from None
    seen: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names = [a.asname or a.name.split(".")[0] for a in stmt.names]
        elif isinstance(stmt, (ast.ClassDef, ast.FunctionDef)):
            names = [stmt.name]
        elif isinstance(stmt, ast.Assign):
            names = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
        else:
            names = []
        for name in names:
            if name in seen:
                raise CodegenError(f"the generated module binds `{name}` twice")
            seen.add(name)


def _layout(blocks: list[str], classes: dict[str, BlockClass]) -> str:
    """`[LayerBlock] * 32` or `[A, B] * 4` or a run-length sum, whichever is exact and shortest."""
    names = [classes[b].name for b in blocks]
    n = len(names)
    for period in range(1, n + 1):
        if n % period == 0 and names == names[:period] * (n // period):
            unit = _list(names[:period])
            return unit if n == period else f"{unit} * {n // period}"
    return _list(names)


def _list(names: list[str]) -> str:
    """A list of class names, one per line when it would be too wide."""
    flat = "[" + ", ".join(names) + "]"
    if len(flat) + 20 <= WIDTH:
        return flat
    return "[\n" + "".join(f"    {name},\n" for name in names) + "]"


def _block_class(g, em: _Emitter, block: str, nodes: list[str], stack: str) -> BlockClass:
    node_set = set(nodes)
    scope = Scope(g, node_set)
    external_stream = None
    for n in nodes:
        for ref in inputs_of(g, n):
            if ref.node in node_set or ref.node in scope.external:
                continue
            src = g.nodes[ref.node]
            if REGISTRY[src["op"]].role == "table":  # computed once per forward by the model
                scope.external[ref.node] = f"ctx.tables[{src['name']!r}]"
            elif src["stack"] == "encoder" or (src["stack"] is None and g.graph["family"] == "encoder_decoder"
                                               and _feeds_from_encoder(g, ref.node)):
                scope.external[ref.node] = "ctx.memory"
            else:
                if external_stream is not None and external_stream != ref.node:
                    raise CodegenError(f"block `{block}` reads two outer streams: {external_stream}, {ref.node}")
                external_stream = ref.node
                scope.external[ref.node] = "x"
    init, forward = [], []
    tp_plan = _tp_plan(g, nodes)
    layer_expr, cache_key = "layer", f'f"{stack}.{{layer}}"'
    router = next((n for n in nodes if REGISTRY[g.nodes[n]["op"]].wraps_layer), None)
    router_call = None
    if router is not None:  # built first: it decides which tokens the layer's other ops see
        init.extend(wrap_call(f"self.{_ident(g.nodes[router]['name'])} = {em.module(router, layer_expr, cache_key)}",
                              indent=8))
        router_call = em.call(router, ["x", "_"])
    for n in nodes:
        if n == router:
            continue
        d = g.nodes[n]
        # a second mixer of the layer (parallel mixers) keeps its state under a key of its own
        suffix = d.get("cache_suffix")
        mod = em.module(n, layer_expr, cache_key if suffix is None else f'f"{stack}.{{layer}}.{suffix}"')
        if mod is not None:
            init.extend(wrap_call(f"self.{_ident(d['name'])} = {mod}", indent=8))
        args = [scope.read(r) for r in inputs_of(g, n)]
        expr = em.call(n, args)
        # routed() sees one sequence's chosen tokens: (1, k, ...) where the layer has (B, T, ...)
        shape = tuple({"B": 1, "T": "k"}.get(s, s) for s in d["shape"]) if router else d["shape"]
        forward.append(Line(f"{scope.write(n, _used_outputs(g, n))} = {expr}", _shape(shape)))
    # The block returns the value that the next layer (or the model) reads; a routed block's
    # body returns what the router mixes back in.
    out = _stream_out(g, nodes) if router is None else inputs_of(g, router)[1]
    returns = scope.read(out)
    title = class_name(block, "Block")
    doc = "\n    ".join(textwrap.wrap(_safe_text(f"Block `{block}`: {g.graph['blocks'][block]}."), WIDTH - 7))
    return BlockClass(title, block, doc, init, forward, returns, tp_plan, router_call)


def _stream_out(g, nodes: list[str]) -> NodeRef:
    inside = set(nodes)
    outs = {NodeRef(n, data["out"]) for n in nodes for _, dst, data in g.out_edges(n, data=True) if dst not in inside}
    if len(outs) != 1:
        raise CodegenError(f"a layer must hand exactly one value to the next, found {sorted(map(str, outs))}")
    return outs.pop()


def _feeds_from_encoder(g, node: str) -> bool:
    return any(g.nodes[a]["stack"] == "encoder" for a in nx.ancestors(g, node))


def _model_code(g, em: _Emitter, order: list[str], stacks, classes) -> dict[str, Any]:
    """__init__ lines and one or two forward bodies (encode/forward) for the model class."""
    outer = [n for n in order if g.nodes[n]["stack"] is None]
    enc_dec = g.graph["family"] == "encoder_decoder"
    init: list[str] = []
    placed: set[str] = set()
    mtp_modules: list[str] = []
    for n in order:
        d = g.nodes[n]
        if d["stack"] == "mtp":
            if d["op"] == "mtp":  # one module per depth, built around a layer of its block's class
                layer = f"{classes[d['attrs']['block']].name}({sum(len(v) for v in stacks.values()) + d['layer']})"
                mtp_modules.append(em.module(n, "None", '""', block=layer) + ",")
            continue
        if d["stack"] is not None:
            if d["stack"] not in placed:  # the layer stack, where its first op falls in the data flow
                placed.add(d["stack"])
                shared = _shared_classes(g, d["stack"], classes)
                if shared:  # each use of a shared block is the one module built at its first use
                    init.append(f"self.{d['stack']} = rt.layer_stack({_layout_name(d['stack'])}, shared={{{', '.join(shared)}}})")
                else:
                    init.append(f"self.{d['stack']} = nn.ModuleList(block(i) for i, block in enumerate({_layout_name(d['stack'])}))")
            continue
        mod = em.module(n, "None", '""')
        if mod is not None:
            init.extend(wrap_call(f"self.{_ident(d['name'])} = {mod}", indent=8))
    if mtp_modules:  # the MTP modules' layers sit after the stack's: layer indices (and cache keys) stay distinct
        init.append("self.mtp = nn.ModuleList([")
        init.extend(line for module in mtp_modules for line in wrap_call("    " + module, indent=8))
        init.append("])")

    def body(nodes: list[str], stack_names: list[str]) -> tuple[list[Line], dict[str, str]]:
        scope = Scope(g, set(nodes) | {n for s in stack_names for n in order if g.nodes[n]["stack"] == s})
        lines: list[Line] = []
        returns: dict[str, str] = {}
        done_stacks: set[str] = set()
        for n in order:
            d = g.nodes[n]
            if d["stack"] in stack_names and d["stack"] not in done_stacks:
                stack = d["stack"]
                done_stacks.add(stack)
                first = [m for m in order if g.nodes[m]["stack"] == stack and g.nodes[m]["layer"] == 0]
                ins = [r for m in first for r in inputs_of(g, m) if g.nodes[r.node]["stack"] != stack
                       and not _is_table(g, r.node) and g.nodes[r.node]["stack"] != "encoder"
                       and not (enc_dec and stack == "decoder" and _feeds_from_encoder(g, r.node))]
                var = scope.read(ins[0])
                for t in [m for m in order if g.nodes[m]["stack"] is None and _is_table(g, m)
                          and any(g.nodes[c]["stack"] == stack for c in g.successors(m))]:
                    lines.append(Line(f"ctx.tables[{g.nodes[t]['name']!r}] = {em.call(t, [])}"))
                if g.graph.get("carries_stack_input"):  # read by hybrid = zamba2() layers
                    lines.append(Line(f"ctx.carry['stack_input'] = {var}", "(B, T, C)"))
                if _shared_classes(g, stack, classes):  # one module, several uses: a cache entry per use
                    lines.append(Line(f"for i, layer in enumerate(self.{stack}):"))
                    lines.append(Line(f"    {var} = layer({var}, ctx.for_layer({stack!r}, i))", "(B, T, C)"))
                else:
                    lines.append(Line(f"for layer in self.{stack}:"))
                    lines.append(Line(f"    {var} = layer({var}, ctx)", "(B, T, C)"))
                last_layer = [m for m in order if g.nodes[m]["stack"] == stack
                              and g.nodes[m]["layer"] == len(stacks[stack]) - 1]
                out = _stream_out(g, last_layer)
                scope.holds[var] = (out.node, out.out)  # the stack's result, under the name it came in
                returns["stack_end"] = len(lines)
                returns["stack_var"] = var
                continue
            role = REGISTRY[d["op"]].role
            if n not in nodes or role == "table":
                continue
            if role == "input":
                scope.holds[d["outputs"][0]] = (n, 0)
                continue
            args = [scope.read(r) for r in inputs_of(g, n)]
            if role == "output":
                returns[d["attrs"]["role"]] = args[0]
                continue
            if REGISTRY[d["op"]].starts_head:
                returns["features"] = args[0]
                returns["head_from"] = len(lines)  # the lines from here on turn features into logits
            expr = em.call(n, args)
            if not enc_dec and _reads_tokens(g, n):
                # the token embeddings, unless the caller gives them (the language model of a multimodal model)
                returns["embed"] = expr
                expr = f"{expr} if inputs_embeds is None else inputs_embeds"
            lines.append(Line(f"{scope.write(n, _used_outputs(g, n))} = {expr}", _shape(d["shape"])))
        return lines, returns

    if enc_dec:
        enc_nodes = [n for n in outer if _is_encoder_side(g, n)]
        dec_nodes = [n for n in outer if n not in enc_nodes]
        enc_lines, _ = body(enc_nodes, ["encoder"])
        enc_last = [m for m in order if g.nodes[m]["stack"] == "encoder"][-1]
        enc_out = [m for m in enc_nodes if enc_last in nx.ancestors(g, m) or m == enc_last]
        enc_return = g.nodes[enc_out[-1]]["outputs"][-1] if enc_out else "x"
        dec_lines, returns = body(dec_nodes, ["decoder"])
        for key in ("head_from", "stack_end", "stack_var"):
            returns.pop(key, None)
        return {"init": init, "encode": enc_lines, "encode_return": enc_return, "forward": dec_lines,
                "returns": returns}
    lines, returns = body(outer, list(stacks))
    embed = returns.pop("embed")
    stack_end, stack_var = returns.pop("stack_end"), returns.pop("stack_var")
    if "head_from" in returns:  # features() is the model up to the LM head; forward() adds the head
        cut = returns.pop("head_from")
        code = {"init": init, "forward": lines[:cut], "head": lines[cut:], "returns": returns, "embed": embed}
        if mtp_modules:
            tables = [Line(f"ctx.tables[{g.nodes[t]['name']!r}] = {em.call(t, [])}") for t in order
                      if g.nodes[t]["stack"] is None and _is_table(g, t)
                      and any(g.nodes[c]["stack"] == "mtp" for c in g.successors(t))]
            given = f"{embed} if inputs_embeds is None else inputs_embeds"  # mtp_features reads token ids only
            trunk = [Line(l.code.replace(given, embed), l.comment) for l in lines[:stack_end]]
            code["mtp"] = {"trunk": trunk, "after_trunk": lines[stack_end:cut], "var": stack_var,
                           "tables": tables, "width": g.graph["d_model"]}
        return code
    return {"init": init, "forward": lines, "head": None, "returns": returns, "embed": embed}


def _is_encoder_side(g, n: str) -> bool:
    """Model-level nodes computed by encode(): everything feeding the encoder stack or its output."""
    d = g.nodes[n]
    role = REGISTRY[d["op"]].role
    if role == "input":
        return d["attrs"]["role"] == "encoder_tokens"
    if role == "output":
        return False
    succ_stacks = {g.nodes[s]["stack"] for s in nx.descendants(g, n)}
    anc_stacks = {g.nodes[a]["stack"] for a in nx.ancestors(g, n)}
    if "decoder" in anc_stacks or any(REGISTRY[g.nodes[a]["op"]].role == "input" and g.nodes[a]["attrs"]["role"] == "tokens"
                                      for a in nx.ancestors(g, n)):
        return False
    return "encoder" in succ_stacks or "encoder" in anc_stacks


def _shared_classes(g, stack: str, classes: dict[str, BlockClass]) -> list[str]:
    """The classes of the blocks of a stack whose uses share one module."""
    shared = set(g.graph.get("shared_blocks", ()))
    return sorted({classes[b].name for b in g.graph["stacks"][stack] if b in shared})


def _reads_tokens(g, node: str) -> bool:
    """Whether the node reads the token ids (the token embedding)."""
    return any(REGISTRY[g.nodes[r.node]["op"]].role == "input" and g.nodes[r.node]["attrs"]["role"] == "tokens"
               for r in inputs_of(g, node))


def _is_table(g, node: str) -> bool:
    return REGISTRY[g.nodes[node]["op"]].role == "table"

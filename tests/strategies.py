"""Hypothesis strategies for random *valid* specs, built from the language's constructs, and for
mutations of them. Shared by the test suite and `bench/fuzz.py` (the long run)."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def attention(draw, d_model: int) -> str:
    head_dim = draw(st.sampled_from([8, 16]))
    heads = draw(st.sampled_from([h for h in (1, 2, 4, 8) if h * head_dim <= 4 * d_model]))
    kind = draw(st.sampled_from(["mha", "mqa", "gqa", "mla", "differential", "linear"]))
    extra = []
    if draw(st.booleans()) and kind not in ("linear", "mla"):
        extra.append(f"window = {draw(st.integers(1, 32))}")
    if draw(st.booleans()) and kind not in ("linear",):
        extra.append(f"softcap = {draw(st.sampled_from(['20', '50.0']))}")
    if kind == "mla":
        return f"mla(heads = {heads}, kv_lora_rank = 16, rope_head_dim = 8, nope_head_dim = 8, v_head_dim = 8" + \
            (", q_lora_rank = 12" if draw(st.booleans()) else "") + "".join(", " + e for e in extra) + ")"
    args = [f"heads = {heads}", f"head_dim = {head_dim}"]
    if kind in ("gqa", "differential"):
        args.append(f"kv_heads = {draw(st.sampled_from([d for d in (1, 2, 4, 8) if heads % d == 0]))}")
    if kind != "linear" and draw(st.booleans()):
        args.append("bias = true")
    return f"{kind}({', '.join(args + extra)})"


@st.composite
def ffn(draw, allow_moe: bool = True) -> str:
    kind = draw(st.sampled_from(["mlp", "swiglu", "geglu", "moe"] if allow_moe else ["mlp", "swiglu", "geglu"]))
    hidden = draw(st.sampled_from([16, 32, 48]))
    if kind == "mlp":
        return f"mlp(hidden = {hidden}, act = {draw(st.sampled_from(['relu', 'gelu', 'gelu_tanh', 'silu']))})"
    if kind in ("swiglu", "geglu"):
        return f"{kind}(hidden = {hidden})"
    experts = draw(st.integers(2, 6))
    top_k = draw(st.integers(1, experts))
    clamped = draw(st.booleans()) and draw(st.booleans())
    expert = f"clamped_swiglu(hidden = {hidden}, limit = 7, bias = true)" if clamped else draw(ffn(allow_moe=False))
    extra = ""
    if draw(st.booleans()):
        extra += f", shared_experts = {draw(st.integers(1, 2))}" + (", shared = swiglu(hidden = 16)" if clamped else "")
    if draw(st.booleans()):
        extra += ", router = sigmoid"
    if draw(st.booleans()):
        extra += ", aux_loss = 0.01, z_loss = 0.001"
    extra += draw(routing(experts, top_k))
    return f"moe(experts = {experts}, top_k = {top_k}, expert = {expert}{extra})"


@st.composite
def routing(draw, experts: int, top_k: int) -> str:
    """The routing variants, in combinations the language accepts."""
    extra = ""
    if draw(st.booleans()):
        extra += ", router_bias = true"
    if draw(st.booleans()):
        extra += ", correction_bias = true, bias_update_speed = 0.01, seq_aux_loss = 0.001"
    if draw(st.booleans()):
        extra += ", scale_input = true"
    if experts % 2 == 0 and draw(st.booleans()):
        kept = draw(st.integers(1, 2))
        if top_k <= kept * experts // 2:
            scores = ["top2_sum", "max"] if experts >= 4 else ["max"]  # top2_sum needs 2 experts per group
            extra += f", groups = 2, topk_groups = {kept}, group_score = {draw(st.sampled_from(scores))}"
    return extra


@st.composite
def position(draw) -> str:
    kind = draw(st.sampled_from(["none", "rope", "rope_scaled", "alibi", "learned", "sinusoidal"]))
    if kind == "rope_scaled":
        scaling = draw(st.sampled_from(["linear(factor = 2)", "ntk(factor = 4)", "yarn(factor = 4, original_context = 16)",
                                        "llama3(factor = 8, original_context = 16)"]))
        return f"rope(theta = 10000, scaling = {scaling})"
    return {"none": "none", "rope": "rope(theta = 10000)", "alibi": "alibi()", "learned": "learned()",
            "sinusoidal": "sinusoidal()"}[kind]


def _accepted_by(position_text: str, blocks) -> bool:
    """Whether every mixer of the blocks takes this position (spec/compat.py's table)."""
    from archlang.spec import compat

    position = position_text.split("(", 1)[0]
    kinds = {mixer.split("= ", 1)[1].split("(", 1)[0] for _, mixer, _ in blocks}
    attention = any(m.startswith("attention") for _, m, _ in blocks)
    return all(compat.position_refusal(k, position) is None or (k not in compat.ATTENTION_KINDS and attention)
               for k in kinds)


@st.composite
def valid_spec(draw) -> str:
    d_model = draw(st.sampled_from([32, 64]))
    family = draw(st.sampled_from(["decoder", "decoder", "encoder"]))
    norm_kind = draw(st.sampled_from(["rmsnorm", "layernorm"]))
    placement = draw(st.sampled_from(["pre", "post", "sandwich"]))
    blocks = []
    for i in range(draw(st.integers(1, 3))):
        mixer = ""
        if family == "decoder" and draw(st.integers(0, 4)) == 0:
            mixer = f"ssm = mamba(d_state = {draw(st.sampled_from([4, 8]))}, expand = 2)"
            if draw(st.booleans()):
                mixer = f"ssm = mamba2(d_state = {draw(st.sampled_from([4, 8]))}, heads = 4, groups = 2, chunk = 4)"
        else:
            att = draw(attention(d_model))
            if family == "encoder" and att.startswith(("linear", "mla")):
                att = "mha(heads = 4)"
            mixer = f"attention = {att}"
        blocks.append((f"b{i}", mixer, draw(ffn())))
    names = [b[0] for b in blocks]
    first_only = draw(st.booleans())
    layers = f"{names[0]} * {draw(st.integers(1, 3))}" if first_only else draw(st.sampled_from([
        "[" + ", ".join(names) + f"] * {draw(st.integers(1, 2))}",
        " + ".join(names),
    ]))
    used = blocks[:1] if first_only else blocks  # the position must suit the blocks the stack uses
    lines = [
        "# generated",
        "model generated {",
        f"    family = {family}",
        f"    vocab = {draw(st.integers(8, 97))}",
        f"    d_model = {d_model}",
        "    context = 64",
        "    dtype = fp32",
        f"    position = {draw(position().filter(lambda p: _accepted_by(p, used)))}",
        f"    final_norm = {norm_kind}(eps = 1e-5)",
        f"    tie_embeddings = {draw(st.sampled_from(['true', 'false']))}",
    ]
    for name, mixer, f in blocks:
        lines += [f"    block {name} {{", f"        norm = {norm_kind}(placement = {placement})", f"        {mixer}",
                  f"        ffn = {f}", "    }"]
    lines += [f"    layers = {layers}", "}"]
    return "\n".join(lines) + "\n"


TOKENS = ["{", "}", "(", ")", "[", "]", "=", ",", "*", "+", "-", "/", "**", "model", "block", "let", "extends",
          "import", "none", "true", "1e999", "10 ** 300", "0", "-1", '"', "\n", "#", "x", "layers", "é", "\x00", "128k",
          "heads", "kv_heads", "window", "d_model", "moe(", "pattern(\"AB\")"]


@st.composite
def mutated(draw, sources: list[str]) -> str:
    text = draw(st.one_of(st.sampled_from(sources), valid_spec()))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "swap", "bytes", "number"]))
        if op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 12)):]
        elif op == "insert":
            text = text[:pos] + " " + draw(st.sampled_from(TOKENS)) + " " + text[pos:]
        elif op == "swap":
            other = draw(st.integers(0, len(text)))
            a, b = sorted((pos, other))
            text = text[:a] + text[b:b + 5] + text[a + 5:b] + text[a:a + 5] + text[b + 5:]
        elif op == "number":
            text = text[:pos] + str(draw(st.integers(-(10**30), 10**30))) + text[pos:]
        else:
            text = text[:pos] + draw(st.text(max_size=6)) + text[pos:]
    return text


# --- the formatter's inputs: expressions, string literals, comments anywhere


def expressions(max_leaves: int = 12):
    """Expression text with unary minus, `**`, mixed precedence and redundant brackets."""
    leaves = st.one_of(st.sampled_from(["1", "2", "0.5", "3k", "x", "d_model", "4_096"]))

    def extend(inner):
        return st.one_of(
            st.builds(lambda a: f"-{a}", inner),
            st.builds(lambda a: f"({a})", inner),
            st.builds(lambda a, op, b: f"{a} {op} {b}", inner, st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]),
                      inner),
        )

    return st.recursive(leaves, extend, max_leaves=max_leaves)


# Escapes the language reads as Python does, and characters that must be escaped to survive.
_STRING_PIECES = ["a", "é", " ", "\\\\", '\\"', "\\n", "\\r", "\\t", "\\x1b", "\\x00", "\\u202e", "\\ud800", "\\'",
                  "\\x41", "\\u00e9", "\\U0001F600", "\\a", "\\b", "\\f", "\\v", "\\0", "\\177", "#", "{", "}"]


def string_literals():
    """The text of a string literal (quotes included) built from any escape."""
    return st.lists(st.sampled_from(_STRING_PIECES), max_size=8).map(lambda parts: '"' + "".join(parts) + '"')


@st.composite
def commented(draw, text: str) -> str:
    """`text` with comments added at line ends, on lines of their own, and inside calls and lists
    (after an opening bracket or a comma), each comment unique so its survival can be checked."""
    out, n, in_string, in_comment = [], 0, False, False
    for ch in text:
        out.append(ch)
        if ch == '"' and not in_comment:
            in_string = not in_string
        elif ch == "#" and not in_string:
            in_comment = True
        if ch == "\n":
            in_string = in_comment = False
        if in_string or in_comment:
            continue
        if ch == "\n":
            if draw(st.integers(0, 3)) == 0:
                out.append(f"# own {n}\n")
                n += 1
        elif ch in "(,[{}" and draw(st.integers(0, 3)) == 0:
            out.append(f"  # in {n}\n")
            n += 1
    if out and out[-1].endswith("\n") and draw(st.booleans()):
        out[-1] = out[-1][:-1] + f"  # end {n}\n"
    return "".join(out)

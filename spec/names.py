"""Names the generated code derives from spec names. They live in the front end so that the
checker can refuse two spec names that would become the same Python name."""

from __future__ import annotations


def class_name(name: str, suffix: str = "") -> str:
    """`rope_block` → `RopeBlock`, `layer_2_3` → `Layer2_3`: CamelCase, with `_` kept between digits."""
    if not name.isidentifier():
        raise ValueError(f"unsafe identifier {name!r}")
    parts = [p for p in name.split("_") if p]
    out = ""
    for p in parts:
        if out and out[-1].isdigit() and p[0].isdigit():
            out += "_"
        out += p[0].upper() + p[1:]
    return (out or "X") + suffix

"""The native SVG pictures: well-formed for every example, deterministic, showing what the
model is made of, with escaped text; PNG through resvg."""

import re
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from archlang.api import compile_spec
from archlang.cli import main
from archlang.compiler import svg

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.arch"))
SVG = "{http://www.w3.org/2000/svg}"


def _texts(document: str) -> list[str]:
    return [t.text for t in ET.fromstring(document).iter(f"{SVG}text")]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_draws_a_well_formed_picture_of_its_blocks(path):
    compiled = compile_spec(path)
    document = svg.render(compiled.lowered)
    texts = _texts(document)  # parses: every name and number is escaped
    g = compiled.lowered
    for block in g.graph["blocks"]:
        assert block in texts
    for stack, blocks in g.graph["stacks"].items():
        assert f"{stack}: {len(blocks)} layers" in texts
    heads = [n for n, d in g.nodes(data=True) if d["op"] in ("lm_head", "output")]
    assert heads and all(n in texts for n in heads)
    assert svg.render(compiled.lowered) == document  # same spec, same bytes


def test_repeated_pattern_is_drawn_once_with_its_count():
    g = compile_spec(ROOT / "examples" / "jamba.arch").lowered
    document = svg.render(g)
    texts = _texts(document)
    assert "× 4 (period of 8)" in texts
    assert texts.count("mamba_moe") == 4  # one period: 8 boxes, 4 of them mamba_moe, for 32 layers
    assert "ssm" in texts and "moe" in texts and "attention" in texts  # the legend of mixer colours


def test_positions_and_final_norm_are_drawn():
    texts = _texts(svg.render(compile_spec(ROOT / "examples" / "llama3_8b.arch").lowered))
    assert "position: rope θ=500,000" in texts
    assert "final_norm" in texts and "norm rmsnorm" in texts


def test_encoder_output_reaches_the_decoder_through_a_lane():
    pic = svg.collapsed(compile_spec(ROOT / "examples" / "t5_small.arch").lowered)
    index = {box.lines[0]: i for i, box in enumerate(pic.boxes)}
    assert (index["encoder_final_norm"], index["decoder"]) in pic.edges  # cross-attention memory
    assert all(a < b for a, b in pic.edges)  # everything flows down the column


def test_expanded_picture_has_every_op_and_edge():
    g = compile_spec(ROOT / "tests" / "specs" / "tiny_llama.arch").graph
    pic = svg.expanded(g)
    assert [b.lines[0] for b in pic.boxes] == [n for n in __import__("archlang.compiler.ir", fromlist=["x"]).ordered_nodes(g)]
    assert len(pic.edges) == len({(u, v) for u, v in g.edges()})
    ET.fromstring(svg.draw(pic))


def test_lanes_never_share_overlapping_spans():
    edges = [(0, 5), (1, 3), (2, 9), (3, 6), (4, 8), (6, 9), (0, 2)]
    lane = svg._lanes(edges)
    for a in edges:
        for b in edges:
            if a != b and lane[a] == lane[b]:
                assert a[1] <= b[0] or b[1] <= a[0]


def test_text_from_the_spec_is_escaped():
    pic = svg.Picture('m <script>alert("x")</script> & co', "sub")
    pic.boxes.append(svg.Box(["<b>", "a & b"], "#fff", note="</text>"))
    document = svg.draw(pic)
    assert "<script>" not in document and "&lt;script&gt;" in document
    assert _texts(document)[:2] == ['m <script>alert("x")</script> & co', "sub"]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_png_through_resvg(tmp_path):
    pytest.importorskip("resvg_py")
    out = tmp_path / "jamba.png"
    assert main(["graph", str(ROOT / "examples" / "jamba.arch"), "-o", str(out)]) == 0
    document = svg.render(compile_spec(ROOT / "examples" / "jamba.arch").lowered)
    width, height = (float(x) for x in re.search(r'width="([\d.]+)" height="([\d.]+)"', document).groups())
    assert _png_size(out.read_bytes()) == (round(width), round(height))


def test_png_without_resvg_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "resvg_py", None)  # makes `import resvg_py` raise ImportError
    out = tmp_path / "m.png"
    assert main(["graph", str(ROOT / "tests" / "specs" / "tiny_llama.arch"), "-o", str(out)]) == 1
    assert "pip install 'archlang[png]'" in capsys.readouterr().err and not out.exists()

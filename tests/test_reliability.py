"""Reliability guards: the numerics check on a small stand-in, the build memory guard, and
resource limits on imports and extends."""

import pytest
import torch

from archlang.api import build, check_file, check_numerics, load_model
from archlang.compiler.tiny import shrink
from archlang.spec import ArchError, ArchErrors, load_models

from .conftest import EXAMPLES, SPECS

BOOM = (SPECS / "tiny_llama.arch").read_text().replace("dtype = fp32", "dtype = fp32\n    embedding_scale = 1e39")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.arch")), ids=lambda p: p.name)
def test_examples_pass_the_numerics_check(path):
    check_file(path, run=True)


def test_stand_in_keeps_the_structure():
    big = load_model(EXAMPLES / "jamba.arch")
    small = shrink(big)
    assert small.layers == big.layers
    assert {n: type(b.ffn).__name__ for n, b in small.blocks.items()} == {n: type(b.ffn).__name__ for n, b in big.blocks.items()}
    att = small.blocks["attn"].attention
    assert att.heads // att.kv_heads == 4 and small.d_model == 64


def test_numerics_check_points_at_the_cause(tmp_path):
    path = tmp_path / "boom.arch"
    path.write_text(BOOM)
    with pytest.raises(ArchError, match="non-finite values") as info:
        check_file(path, run=True)
    assert info.value.span.line == 6  # the embedding_scale line


def test_build_refuses_huge_models_before_allocating(monkeypatch):
    monkeypatch.setattr("archlang.api.available_memory", lambda device: 23 << 30)
    with pytest.raises(ArchError, match=r"needs 87.0 GiB .* in bfloat16, but only"):
        build(EXAMPLES / "mixtral_8x7b.arch")
    meta = build(EXAMPLES / "mixtral_8x7b.arch", device="meta")
    assert sum(p.numel() for p in meta.parameters()) == 46_702_792_704
    assert next(meta.parameters()).device == torch.device("meta")


def test_deep_extends_chain_is_refused():
    text = "model m0 { vocab = 1 }\n" + "".join(f"model m{i} extends m{i - 1} {{ }}\n" for i in range(1, 40))
    with pytest.raises((ArchError, ArchErrors), match="extends` chain is longer"):
        load_models(source=text)


def test_deep_import_chain_is_refused(tmp_path):
    for i in range(20):
        (tmp_path / f"f{i}.arch").write_text(f'import "f{i + 1}.arch"\nmodel m{i} {{ }}\n')
    (tmp_path / "f20.arch").write_text("model m20 { }\n")
    with pytest.raises(ArchError, match="imports are nested more than 16 deep"):
        load_models(tmp_path / "f0.arch")


def test_check_numerics_direct_call_on_valid_model():
    check_numerics(load_model(SPECS / "tiny_exotic.arch"))

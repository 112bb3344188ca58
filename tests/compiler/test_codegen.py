"""Generated code: deterministic to the byte (across processes and hash seeds), committed for
every example, and immune to injection through the spec."""

import os
import subprocess
import sys

import pytest

from archlang.api import compile_spec
from archlang.spec import ArchError, ArchErrors

from ..conftest import EXAMPLES, ROOT, SPECS

BASE = (SPECS / "tiny_llama.arch").read_text()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.arch")), ids=lambda p: p.name)
def test_committed_generated_module_is_up_to_date(path):
    committed = EXAMPLES / "generated" / f"{path.stem}.py"
    assert compile_spec(path).source == committed.read_text(), f"regenerate with: archc compile {path} -o {committed}"


def test_same_spec_same_bytes_across_processes():
    script = "import sys; from archlang.api import compile_spec; sys.stdout.write(compile_spec(sys.argv[1]).source)"
    outs = set()
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script, str(EXAMPLES / "jamba.arch")], env=env, check=True,
                             capture_output=True, text=True, cwd=ROOT).stdout
        outs.add(out)
    assert len(outs) == 1
    assert outs.pop() == compile_spec(EXAMPLES / "jamba.arch").source


def test_generated_code_reads_like_a_model_file():
    src = compile_spec(EXAMPLES / "llama3_8b.arch").source
    assert "class LayerBlock(nn.Module):" in src and "class Llama3_8b(rt.ArchModel):" in src
    assert "qkv = self.qkv_proj(h)  # (B, T, 6144)" in src
    assert "x, h = self.ffn_norm(a, residual=x)  # (B, T, 4096)" in src
    assert "LAYERS_LAYOUT = [LayerBlock] * 32" in src
    jamba = compile_spec(EXAMPLES / "jamba.arch").source
    period = ["MambaBlock", "MambaMoeBlock", "MambaBlock", "MambaMoeBlock", "AttnBlock", "MambaMoeBlock", "MambaBlock",
              "MambaMoeBlock"]
    assert "LAYERS_LAYOUT = [\n" + "".join(f"    {name},\n" for name in period) + "] * 4" in jamba
    assert max(len(line) for line in src.splitlines()) <= 110


INJECTIONS = [
    'family = "decoder\\"); import os; os.system(\\"echo pwned\\")#"',
    'dtype = "bf16\\nimport os"',
    "position = rope(theta = 10000, scaling = linear(factor = \"2); import os #\"))",
]


@pytest.mark.parametrize("line", INJECTIONS)
def test_strings_cannot_reach_generated_code(line):
    text = BASE.replace("dtype = fp32", line)
    with pytest.raises((ArchError, ArchErrors)):
        compile_spec(text)


@pytest.mark.parametrize("name", ["__import__", "class", "def", "None", "match", "__class__"])
def test_unsafe_identifiers_are_refused(name):
    text = BASE.replace("block layer", f"block {name}").replace("layer * 2", f"{name} * 2")
    with pytest.raises((ArchError, ArchErrors)):
        compile_spec(text)
    with pytest.raises((ArchError, ArchErrors)):
        compile_spec(BASE.replace("model tiny_llama", f"model {name}"))


def test_newlines_and_odd_names_cannot_be_written():
    with pytest.raises(ArchError):
        compile_spec(BASE.replace("block layer", "block lay\ner"))

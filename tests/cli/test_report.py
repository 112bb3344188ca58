"""`archc report`: one self-contained HTML page, deterministic and escaped, that a real browser
renders (headless Chromium from the OS packages when it is there)."""

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from archlang.cli import main

from ..conftest import EXAMPLES


def _report(tmp_path, *args) -> str:
    out = tmp_path / "report.html"
    assert main(["report", *map(str, args), "-o", str(out)]) == 0
    return out.read_text()


def test_report_holds_picture_facts_estimate_and_diff(tmp_path):
    page = _report(tmp_path, EXAMPLES / "qwen3_30b_a3b.arch", EXAMPLES / "mixtral_8x7b.arch")
    assert "<title>qwen3_30b_a3b: architecture report</title>" in page
    assert "<svg" in page and "× 48" in page  # the picture, inline
    assert "30,532,122,624" in page  # params_total
    assert "vocab <code>32000</code> → <code>151936</code>" in page  # the semantic diff
    assert "-16,170,670,080" in page  # params delta
    assert "memory capacity" in page and "decode tokens / s" in page  # the estimate
    assert "<code>ARC114</code>" in page  # its lint findings (no load balancing)
    # self-contained: nothing is fetched and nothing runs
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)
    assert page == _report(tmp_path, EXAMPLES / "qwen3_30b_a3b.arch", EXAMPLES / "mixtral_8x7b.arch")


def test_report_without_base_and_without_change(tmp_path):
    page = _report(tmp_path, EXAMPLES / "jamba.arch")
    assert "Changes from" not in page and "recurrent state / sequence" in page
    assert "No architectural change." in _report(tmp_path, EXAMPLES / "jamba.arch", EXAMPLES / "jamba.arch")


def test_names_from_the_command_line_are_escaped(tmp_path):
    spec = tmp_path / "<b>x<\\b>.arch"
    shutil.copy(EXAMPLES / "gpt2.arch", spec)
    page = _report(tmp_path, spec)
    assert "<b>x" not in page and "&lt;b&gt;x&lt;\\b&gt;.arch" in page


def test_bad_input_writes_nothing(tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(EXAMPLES / "gpt2.arch"), "-o", str(out), "--hardware", "tpu9"]) == 2
    assert main(["report", str(EXAMPLES / "gpt2.arch"), str(tmp_path / "missing.arch"), "-o", str(out)]) == 2
    assert not out.exists() and "unknown hardware" in capsys.readouterr().err


def _chromium() -> str:
    """A headless browser from the OS packages; CI installs one when it runs as root with apt."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI") and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
                       capture_output=True, timeout=600)
        if shutil.which("chromium"):
            return shutil.which("chromium")
    pytest.skip("no headless Chromium on this machine")


def test_a_real_browser_renders_the_report(tmp_path):
    browser = _chromium()
    _report(tmp_path, EXAMPLES / "jamba.arch", EXAMPLES / "llama3_8b.arch")
    url = (tmp_path / "report.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    for text in ("Changes from", "Facts", "Estimate", "Picture", "mamba_moe", "× 4 (period of 8)"):
        assert text in dom, text
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1000,1400", url],
                   capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (1000, 1400)
    assert len(data) > 20_000  # text, tables and the picture, not a blank page

"""Shell completion through argcomplete: the scripts, and the answers archc gives them."""

import os
import subprocess
import sys

import pytest

from archlang import cli


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_for_each_shell(shell):
    r = subprocess.run([sys.executable, "-m", "archlang", "completion", shell], capture_output=True, text=True)
    assert r.returncode == 0 and "archc" in r.stdout and "_ARGCOMPLETE" in r.stdout


def _complete(line: str) -> set[str]:
    """What archc answers a shell that asks to complete `line`: argcomplete writes the words to
    file descriptor 8, as the shell scripts arrange."""
    env = {**os.environ, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_IFS": "\n", "COMP_LINE": line,
           "COMP_POINT": str(len(line)), "_ARGCOMPLETE_SHELL": "bash"}
    r = subprocess.run(["sh", "-c", '"$0" -m archlang 8>&1 9>/dev/null 1>/dev/null 2>/dev/null', sys.executable],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    return {w.strip() for w in r.stdout.split("\n") if w.strip()}


def test_completes_commands_options_and_choices():
    assert _complete("archc st") == {"stats"}
    assert "--hardware" in _complete("archc estimate x.arch --ha")
    assert {"h100", "h200"} <= _complete("archc estimate x.arch --hardware h")


def test_completion_stays_out_of_normal_runs(capsys):
    assert "_ARGCOMPLETE" not in os.environ
    assert cli.main(["completion", "fish"]) == 0 and "complete --command archc" in capsys.readouterr().out

"""The design-review action: action.yml and the example workflow are well formed, and the script
they run reviews a pull request in a real git repository (check and lint annotations, the
markdown diff of each changed spec against the base, a failing job for an invalid spec)."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from .conftest import ROOT, SPECS

SCRIPT = ROOT / ".github" / "review.sh"


def test_action_and_workflow_are_well_formed():
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    run = " ".join(step.get("run", "") for step in action["runs"]["steps"])
    assert ".github/review.sh" in run and (ROOT / ".github" / "review.sh").is_file()
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "archc-review.yml").read_text())
    steps = workflow["jobs"]["review"]["steps"]
    assert any(s.get("uses") == "./" for s in steps)
    assert steps[0]["with"]["fetch-depth"] == 0  # the base must be there to diff against


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
                        "GIT_COMMITTER_EMAIL": "a@b"})


def _review(repo, base: str, summary):
    env = {**os.environ, "BASE": base, "ARCHC": f"{sys.executable} -m archlang", "GITHUB_STEP_SUMMARY": str(summary),
           "SPECS": "*.arch"}
    env.pop("GH_TOKEN", None)
    return subprocess.run(["bash", str(SCRIPT)], cwd=repo, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("git") is None or shutil.which("tar") is None, reason="needs git and tar")
def test_review_of_a_pull_request(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    spec = (SPECS / "tiny_llama.arch").read_text()
    (repo / "llama.arch").write_text(spec)
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "base")
    base = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (repo / "llama.arch").write_text(spec.replace("kv_heads = 2", "kv_heads = 4"))
    (repo / "new.arch").write_text(spec.replace("model tiny_llama", "model other"))
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "change")
    summary = tmp_path / "summary.md"
    r = _review(repo, base, summary)
    assert r.returncode == 0, r.stderr
    assert "::warning file=llama.arch" in r.stdout  # lint findings annotate, and do not fail the job
    text = summary.read_text()
    assert "## archlang design review" in text and "### `llama.arch`" in text and "### `new.arch`" in text
    assert "kv\\_heads=4" in text and "New spec." in text  # the diff, escaped for markdown

    (repo / "new.arch").write_text(spec.replace("kv_heads = 2", "kv_heads = 3"))
    _git(repo, "commit", "-qam", "broken")
    r = _review(repo, base, summary)
    assert r.returncode == 1 and "::error file=new.arch" in r.stdout

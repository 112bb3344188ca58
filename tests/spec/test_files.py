"""Reading spec files safely: the project-root rule for entry files as well as imports,
regular files only, bounded reads."""

import os
import time

import pytest

from archlang.spec import ArchError, ArchErrors, SourceMap, load_models
from archlang.spec import resolve as R

SPEC = """model m {
  vocab = 100
  d_model = 64
  context = 128
  block b { norm = rmsnorm() ffn = mlp(hidden = 16) }
  layers = b * 2
}
"""


def error_of(*args, **kw) -> ArchError:
    with pytest.raises((ArchError, ArchErrors)) as info:
        load_models(*args, **kw)
    errors = info.value.errors if isinstance(info.value, ArchErrors) else [info.value]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.fixture
def project(tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "outside").mkdir()
    return tmp_path / "project", tmp_path / "outside"


def test_symlinked_entry_outside_the_root_is_refused_unread(project):
    inside, outside = project
    secret = outside / "secret.arch"
    secret.write_text("TOKEN=hunter2 is not a spec\n")
    (inside / "m.arch").symlink_to(secret)
    sources = SourceMap()
    err = error_of(inside / "m.arch", sources=sources)
    assert "outside the project folder" in err.message
    assert "hunter2" not in err.render(sources)
    assert sources.line(R.Span(str(inside / "m.arch"), 1, 1)) is None  # nothing was read


def test_symlinked_entry_outside_the_root_is_read_when_allowed(project):
    inside, outside = project
    (outside / "real.arch").write_text(SPEC)
    (inside / "m.arch").symlink_to(outside / "real.arch")
    assert load_models(inside / "m.arch", allow_outside_root=True)[0].vocab == 100


def test_symlink_to_proc_is_refused(project):
    inside, _ = project
    (inside / "env.arch").symlink_to("/proc/self/environ")
    err = error_of(inside / "env.arch", allow_outside_root=True)
    assert "special system file" in err.message


def test_symlink_inside_the_root_is_fine(project):
    inside, _ = project
    (inside / "real.arch").write_text(SPEC)
    (inside / "link.arch").symlink_to(inside / "real.arch")
    assert load_models(inside / "link.arch")[0].vocab == 100


def test_fifo_entry_is_refused_quickly(project):
    inside, _ = project
    os.mkfifo(inside / "pipe.arch")
    start = time.monotonic()
    err = error_of(inside / "pipe.arch")
    assert "not a regular file" in err.message and time.monotonic() - start < 5


def test_fifo_import_is_refused_quickly(project):
    inside, _ = project
    os.mkfifo(inside / "pipe.arch")
    (inside / "m.arch").write_text('import "pipe.arch"\n' + SPEC)
    start = time.monotonic()
    err = error_of(inside / "m.arch")
    assert "not a regular file" in err.message and err.span.line == 1
    assert time.monotonic() - start < 5


def test_device_import_is_refused(project):
    inside, _ = project
    (inside / "m.arch").write_text('import "/dev/zero"\n' + SPEC)
    err = error_of(inside / "m.arch", allow_outside_root=True)
    assert "special system file" in err.message


def test_bytes_are_bounded_per_file_and_in_total(project, monkeypatch):
    inside, _ = project
    (inside / "big.arch").write_text("# " + "x" * (R.MAX_FILE_BYTES + 10) + "\n")
    (inside / "m.arch").write_text('import "big.arch"\n' + SPEC)
    assert "too large" in error_of(inside / "m.arch").message
    monkeypatch.setattr(R, "MAX_TOTAL_BYTES", 300)
    for i in range(3):
        (inside / f"part{i}.arch").write_text("# " + "y" * 100 + "\n")
    (inside / "n.arch").write_text("".join(f'import "part{i}.arch"\n' for i in range(3)) + SPEC)
    err = error_of(inside / "n.arch")
    assert "exceed 300 bytes" in err.message

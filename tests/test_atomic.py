"""Atomic writes keep who may read a file: the target's mode, or the umask's for a new file
(mkstemp alone would leave every output 0600)."""

import os
import stat

import pytest

from chimuffin import atomic
from chimuffin.labels import locked
from chimuffin.labels.rows import Decision, merge_decisions


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def test_a_new_file_gets_the_umasks_mode_and_an_existing_one_keeps_its_own(tmp_path, umask):
    for mask in (0o022, 0o077, 0o002):
        umask(mask)
        f = tmp_path / f"new-{mask:o}.txt"
        atomic.write_text(f, "x")
        assert mode(f) == 0o666 & ~mask
    umask(0o077)
    for kept in (0o644, 0o640, 0o664):
        f = tmp_path / f"kept-{kept:o}.json"
        f.write_text("{}")
        f.chmod(kept)
        atomic.write_json(f, {"a": 1})
        assert mode(f) == kept and f.read_text().startswith("{")


def test_a_new_folder_gets_the_umasks_mode_and_a_replaced_one_keeps_its_own(tmp_path, umask):
    umask(0o022)
    with atomic.atomic_dir(tmp_path / "out") as d:
        (d / "a").write_text("x")
    assert mode(tmp_path / "out") == 0o755
    (tmp_path / "out").chmod(0o750)
    with atomic.atomic_dir(tmp_path / "out") as d:
        (d / "b").write_text("y")
    assert mode(tmp_path / "out") == 0o750


def test_the_label_file_keeps_its_mode_through_every_write(tmp_path, umask):
    umask(0o022)
    f = tmp_path / "decisions.csv"
    f.write_text("path,label,source,note\n")
    assert mode(f) == 0o644
    new = [Decision("a.jpg", "muffin", "human", "")]
    locked.update(f, ["chihuahua", "muffin"], lambda cur: merge_decisions(cur, new)[0])
    assert mode(f) == 0o644 and "a.jpg" in f.read_text()

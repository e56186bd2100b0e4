"""The label file under concurrent writers: one inter-process lock, re-read under it, and
appends by writers that do not lock carried over instead of lost."""

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from chimuffin.errors import UserError
from chimuffin.labels import locked
from chimuffin.labels.rows import Decision, format_decisions, merge_decisions, read_decisions
from tests.helpers.repo import REPO

CLASSES = ["chihuahua", "muffin"]


def add(*paths: str, source: str = "human"):
    new = [Decision(p, "muffin", source, "t") for p in paths]
    return lambda cur: merge_decisions(cur, new, protect_sources=())[0]


def hand_append(path, line: str) -> None:
    with open(path, "a") as f:  # what `echo ... >> decisions.csv` does
        f.write(line + "\n")


def test_update_writes_sorted_and_leaves_an_unchanged_file_alone(tmp_path):
    f = tmp_path / "decisions.csv"
    w = locked.update(f, CLASSES, add("b.jpg", "a.jpg"))
    assert w.before.data is None and f.read_bytes() == w.after
    assert [d.path for d in read_decisions(f, CLASSES)] == ["a.jpg", "b.jpg"]
    # a hand-edited file (unsorted, CRLF) is not rewritten when nothing changes
    odd = b"path,label,source,note\r\nb.jpg,muffin,human,t\r\na.jpg,muffin,human,t\r\n"
    f.write_bytes(odd)
    assert locked.update(f, CLASSES, add("a.jpg")).after is None
    assert f.read_bytes() == odd


def test_an_append_between_read_and_rename_is_merged_not_lost(tmp_path):
    f = tmp_path / "decisions.csv"
    f.write_text(format_decisions([]))
    calls = []

    def change(cur):
        calls.append(len(cur))
        if len(calls) == 1:  # another writer appends while we merge
            hand_append(f, "h.jpg,chihuahua,human,by hand")
        return add("a.jpg")(cur)

    locked.update(f, CLASSES, change)
    assert calls == [0, 1]  # the change was redone on the new content
    got = {d.path: d.label for d in read_decisions(f, CLASSES)}
    assert got == {"a.jpg": "muffin", "h.jpg": "chihuahua"}


def test_an_append_to_the_old_file_after_the_last_check_is_carried_over(tmp_path, monkeypatch):
    f = tmp_path / "decisions.csv"
    f.write_text(format_decisions([]))
    check = locked._check_unchanged

    def check_then_append(path, seen):
        check(path, seen)
        hand_append(f, "h.jpg,chihuahua,human,by hand")  # lands in the file about to be replaced

    monkeypatch.setattr(locked, "_check_unchanged", check_then_append)
    locked.update(f, CLASSES, add("a.jpg"))
    got = {d.path: d.label for d in read_decisions(f, CLASSES)}
    assert got == {"a.jpg": "muffin", "h.jpg": "chihuahua"}


WRITER = textwrap.dedent("""
    import sys
    from chimuffin.labels import locked
    from chimuffin.labels.rows import Decision, merge_decisions
    path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(n):
        new = [Decision(f"{who}/{i:03d}.jpg", "muffin", "human", who)]
        locked.update(path, ["chihuahua", "muffin"],
                         lambda cur: merge_decisions(cur, new, protect_sources=())[0])
""")


def test_processes_writing_at_once_lose_no_row(tmp_path):
    f = tmp_path / "decisions.csv"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(f), f"w{k}", "15"],
                              cwd=REPO) for k in range(4)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    got = {d.path for d in read_decisions(f, CLASSES)}
    assert got == {f"w{k}/{i:03d}.jpg" for k in range(4) for i in range(15)}


def test_a_writer_waits_for_the_lock_and_names_it_when_it_is_held_too_long(tmp_path):
    f = tmp_path / "decisions.csv"
    held = threading.Event()
    release = threading.Event()

    def hold():
        with locked.holding_lock(f):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    with pytest.raises(UserError, match=r"another writer has held .*\.decisions\.csv\.lock"):
        with locked.holding_lock(f, timeout_s=0.2):
            pass
    threading.Timer(0.2, release.set).start()
    start = time.monotonic()
    locked.update(f, CLASSES, add("a.jpg"))  # waits until the holder lets go
    assert time.monotonic() - start > 0.1
    t.join()
    assert [d.path for d in read_decisions(f, CLASSES)] == ["a.jpg"]


def test_every_writer_goes_through_the_lock():
    """No module but labels/locked.py replaces the label file: the tools call locked.update."""
    src = REPO / "src/chimuffin"
    writers = {p.relative_to(src).as_posix() for p in src.rglob("*.py")
               if "locked.update(" in p.read_text()}
    assert writers >= {"commands/pull_3lc.py", "simulate/sitting.py", "review/writes.py"}
    assert not [p for p in src.rglob("*.py") if "def write_decisions" in p.read_text()]


def test_no_writer_may_put_a_decision_on_a_test_image(tmp_path):
    f = tmp_path / "decisions.csv"
    locked.update(f, CLASSES, add("train128/undefined/a.jpg"))
    before = f.read_bytes()
    for label in ("muffin", "remove"):
        new = [Decision("test128/muffin/t.jpg", label, "auto", "")]
        with pytest.raises(UserError, match=r"decisions.csv: test128/muffin/t.jpg is a test "
                           r"image: .*nothing written"):
            locked.update(f, CLASSES, lambda cur, new=new: [*cur, *new])
    assert f.read_bytes() == before


def test_no_writer_may_change_or_remove_a_validation_label(tmp_path):
    """validation.csv beside the label file holds labels no decision may change: every writer
    (pull-3lc, the loop, the page) is refused at write time, not by `clean` later."""
    f = tmp_path / "decisions.csv"
    (tmp_path / "validation.csv").write_text("path,label\ntrain128/undefined/v.jpg,muffin\n")
    locked.update(f, CLASSES, add("train128/undefined/a.jpg"))
    before = f.read_bytes()
    for label in ("chihuahua", "remove", "undefined"):
        new = [Decision("train128/undefined/v.jpg", label, "auto", "")]
        with pytest.raises(UserError, match=r"decisions.csv: train128/undefined/v.jpg is a "
                           r"validation image .*nothing written"):
            locked.update(f, CLASSES, lambda cur, new=new: [*cur, *new])
    assert f.read_bytes() == before
    # the same label as validation's changes nothing it holds: allowed
    locked.update(f, CLASSES, add("train128/undefined/v.jpg"))
    assert "train128/undefined/v.jpg" in f.read_text()


"""Writing the label file: one inter-process lock, and read, change, write under it.

Every tool that writes data/labels/decisions.csv (the review page, `pull-3lc`, `loop`) goes
through update(): it takes an exclusive flock on the sibling lock file
(`.decisions.csv.lock`, git-ignored), reads the file, applies its change to what it read and
renames the new file in. So no tool's rows are lost to another tool, whatever runs at once.

A writer that does not take the lock (a hand `echo ... >> decisions.csv`) is guarded as far as
a rename allows: right before the rename the file must still be the one that was read (inode,
size, modification time), else the change is redone on the new content; after the rename, bytes
appended to the old file (by a process that opened it before the rename) are appended to the
new one. What is left: an append whose write lands after that last check (it had opened the
old file before the rename and then stalled) goes to the replaced file and is lost. Take the
lock (`flock data/labels/.decisions.csv.lock -c '...'`) to be sure.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from chimuffin import atomic, paths
from chimuffin.errors import UserError
from chimuffin.labels.rows import (
    Decision,
    check_decisions_writable,
    decode_text,
    format_decisions,
    parse_decisions,
    read_validation,
)

LOCK_TIMEOUT_S = 60.0  # a writer holds the lock for one read + write (the loop: + a git commit)
RETRIES = 50  # times a change is redone because an unlocked writer changed the file meanwhile
SETTLE_S = 0.02  # second look for appends that opened the old file just before the rename


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def holding_lock(path: str | Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the label file's inter-process lock (an flock on its sibling lock file)."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"{path}: another writer has held {lock} for more than "
                                    f"{timeout_s:.0f} s; try again when it is done") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing releases the flock (also when the process is killed)


@dataclass(frozen=True)
class Snapshot:
    """The label file as one read saw it: bytes (None: no file) and parsed decisions."""
    data: bytes | None
    decisions: list[Decision]


@dataclass(frozen=True)
class Written:
    before: Snapshot         # what the change was applied to
    new: list[Decision]      # the decisions after the change
    after: bytes | None      # the bytes written; None when the change changed nothing


def decode(path: Path, data: bytes, classes: list[str]) -> list[Decision]:
    return parse_decisions(decode_text(data, path), classes, name=str(path))


def read(path: str | Path, classes: list[str]) -> Snapshot:
    """The label file without the lock (readers: a rename never shows them half a file)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Snapshot(None, [])
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from e
    return Snapshot(data, decode(path, data, classes))


def _identity(st: os.stat_result | None) -> tuple | None:
    return None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns)


class _Changed(Exception):
    """The file changed between our read and our rename (an unlocked writer)."""


def update(path: str | Path, classes: list[str],
           change: Callable[[list[Decision]], list[Decision]],
           before_write: Callable[[Snapshot, list[Decision], bytes], None] | None = None
           ) -> Written:
    """Under the lock: read the file, new = change(decisions), write it (sorted) if it differs.
    `before_write(before, new, after)` runs before the rename (the review page records its
    undo there, so a crash never leaves a written change without its undo record)."""
    path = Path(path)
    with holding_lock(path):
        for _ in range(RETRIES):
            try:
                return _update_once(path, classes, change, before_write)
            except _Changed:
                continue
    raise UserError(f"{path}: kept changing while being written (something appends to it "
                    "without the lock); nothing written")


def validation_beside(path: Path, classes: list[str]) -> dict[str, str]:
    """The validation labels in validation.csv beside the label file (data/labels/), if any:
    no writer may change or remove them (the clean stage would refuse the file later)."""
    return read_validation(path.parent / Path(paths.VALIDATION).name, classes)


def _update_once(path: Path, classes: list[str], change, before_write) -> Written:
    try:
        old_file = open(path, "rb")  # kept open: appends to it after our rename are caught
    except FileNotFoundError:
        old_file = None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from e
    with old_file or contextlib.nullcontext():
        data = old_file.read() if old_file else None
        seen = _identity(os.fstat(old_file.fileno())) if old_file else None
        if old_file and seen[1] != len(data):
            raise _Changed  # appended to while we read
        before = Snapshot(data, [] if data is None else decode(path, data, classes))
        new = change(before.decisions)
        check_decisions_writable(new, str(path), validation_beside(path, classes))
        after = format_decisions(new).encode()
        if after == data or _same(before.decisions, new):
            return Written(before, new, None)  # nothing changed: the file is left as it is
        if before_write is not None:
            before_write(before, new, after)
        atomic.write_bytes(path, after, before_replace=lambda: _check_unchanged(path, seen))
        if old_file:
            _carry_over_appends(path, old_file, len(data))
    return Written(before, new, after)


def _same(old: list[Decision], new: list[Decision]) -> bool:
    return {d.path: d for d in old} == {d.path: d for d in new}


def restore(path: str | Path, expected: bytes | None, data: bytes | None) -> bool:
    """With the lock held (undo): put `data` back as the file (None: delete it), but only
    while the file still holds `expected` (looked at again right before the rename). False:
    it does not, nothing was changed."""
    path = Path(path)
    try:
        old_file = open(path, "rb")
    except FileNotFoundError:
        return expected is None and data is None
    with old_file:
        now, seen = old_file.read(), _identity(os.fstat(old_file.fileno()))
        if now != expected:
            return False
        if data is None:
            path.unlink()
            return True
        try:
            atomic.write_bytes(path, data, before_replace=lambda: _check_unchanged(path, seen))
        except _Changed:
            return False
        _carry_over_appends(path, old_file, len(now))
    return True


def _check_unchanged(path: Path, seen: tuple | None) -> None:
    try:
        now = _identity(os.stat(path))
    except FileNotFoundError:
        now = None
    if now != seen:
        raise _Changed


def _carry_over_appends(path: Path, old_file, read_size: int) -> None:
    """Bytes appended to the replaced file after our last look: append them to the new one,
    as if they had been written a moment later."""
    offset = read_size
    for wait in (0.0, SETTLE_S):
        time.sleep(wait)
        size = os.fstat(old_file.fileno()).st_size
        if size > offset:
            old_file.seek(offset)
            tail = old_file.read(size - offset)
            with open(path, "ab") as f:
                f.write(tail)
                os.fsync(f.fileno())
            offset = size

"""Atomic output writes: write to a temporary file beside the target, then rename.

A reader (or a `dvc repro` after Ctrl-C or SIGKILL) sees either the old file or the new one,
never a partial one.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def check_target(target: str | Path) -> None:
    """Refuse up front an output path that can never be written (an existing folder, a parent
    that is a file), before any work is done for it: a UserError naming the path."""
    from chimuffin.errors import UserError

    target = Path(target)
    if target.is_dir():
        raise UserError(f"{target}: is a folder; give the output file's name")
    parent = next((p for p in [target.parent, *target.parent.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{target}: cannot write: {parent} is a file, not a folder")


@contextlib.contextmanager
def cannot_write_as_user_error(target: str | Path) -> Iterator[None]:
    """An OSError while writing target (a read-only or immutable file or folder, a full disk)
    becomes one line naming it, not a traceback."""
    from chimuffin.errors import UserError

    try:
        yield
    except OSError as e:
        raise UserError(f"{target}: cannot write ({e.strerror or e})") from e


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete the temporaries an earlier run left beside target: SIGKILL (or a power cut)
    skips the cleanup below, and nothing else would ever remove them."""
    # Exactly the names mkstemp/mkdtemp give below (8 random characters), so that a user's
    # own `.decisions.csv.swp` or similar is never touched.
    own = re.compile(rf"\.{re.escape(target.name)}\.(old\.)?[a-z0-9_]{{8}}(\.[A-Za-z0-9]+)?")
    stale = sorted(p for p in target.parent.glob(f".{glob.escape(target.name)}.*")
                   if own.fullmatch(p.name))
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


_umask_lock = threading.Lock()


def current_umask() -> int:
    # os.umask can only be read by setting it; the lock keeps our own threads from racing
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def target_mode(target: Path) -> int:
    """The mode the written file gets: the target's own when it exists (a rename must not
    change who may read the file), else what a plain open() would give under the umask."""
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "",
                before_replace: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto target on success.
    `before_replace` runs right before the rename (after the data is on disk): raising there
    leaves the target untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp",
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), target_mode(target))  # mkstemp made it 0600
        if before_replace is not None:
            before_replace()
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(target: str | Path, data: bytes,
                before_replace: Callable[[], None] | None = None) -> None:
    with atomic_path(target, before_replace=before_replace) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_parquet(target: str | Path, df) -> None:
    # Fixed options so reruns give byte-identical files (DVC hashes must not change).
    with atomic_path(target, suffix=".parquet") as tmp:
        df.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")


def write_torch(target: str | Path, obj: Any) -> None:
    import io

    import torch

    # Save through a buffer: torch names the zip's root folder after the file, and a random
    # temporary name would make identical weights hash differently.
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(target, buf.getvalue())


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside target; on success it replaces target whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        # mkdtemp made it 0700; the folder keeps the mode it had, or the umask's
        os.chmod(tmp, target_mode(target) if target.exists() else 0o777 & ~current_umask())
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

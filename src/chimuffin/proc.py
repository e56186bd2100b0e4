"""Git and signals for the automated loop: git run in its own session (a terminal's Ctrl-C
cannot kill it halfway through a commit), the repository root, a block that holds Ctrl-C/SIGTERM
until it ends, SIGTERM handled as Ctrl-C, and a child command that is let stop cleanly."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from chimuffin.errors import UserError


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM until the block ends, then raise KeyboardInterrupt.

    Python runs signal handlers in the main thread, so recording the signal here works even
    when library threads exist (a signal mask would not: the kernel hands a process-wide
    signal to any thread that does not block it)."""
    caught: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
           for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def git(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    # its own session: a Ctrl-C in the terminal must not kill git halfway through a commit
    p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                       start_new_session=True)
    if check and p.returncode != 0:
        raise UserError(f"`git {' '.join(args)}` failed: {p.stderr.strip() or p.stdout.strip()}")
    return p


def repo_root(start: Path) -> Path:
    p = git(["rev-parse", "--show-toplevel"], start, check=False)
    if p.returncode != 0:
        raise UserError(f"{start}: not inside a git repository (the loop commits each round)")
    return Path(p.stdout.strip())


def run_child(cmd: list[str], cwd: Path) -> int:
    """Run a command in the foreground; on Ctrl-C/SIGTERM let it stop cleanly first (dvc
    releases its locks on SIGINT, not on SIGKILL)."""
    child = subprocess.Popen(cmd, cwd=cwd)
    try:
        return child.wait()
    except KeyboardInterrupt:
        # a terminal Ctrl-C reached the child too; a SIGTERM sent to us alone did not
        for step, wait_s in ((None, 5), (signal.SIGINT, 60), (signal.SIGKILL, None)):
            if child.poll() is not None:
                break
            if step is not None:
                child.send_signal(step)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=wait_s)
        raise

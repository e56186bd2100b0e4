"""Child processes and signals: the one place chimuffin starts another program (git, dvc,
nice) and SIGTERM handled as Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from chimuffin.errors import UserError

# after a Ctrl-C: let the child end on its own, then SIGINT (dvc releases its locks on it),
# then SIGKILL
STOP_STEPS = ((None, 5.0), (signal.SIGINT, 60.0), (signal.SIGKILL, None))


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str  # "" unless captured
    stderr: str  # "" unless captured without a log


def run(cmd: list[str], cwd: Path, *, capture: bool = True, log: TextIO | None = None,
        nice: int = 0, own_session: bool = True, env: dict | None = None,
        started: Callable[[subprocess.Popen], None] | None = None) -> Done:
    """Run `cmd` in `cwd` to its end.

    capture: its stdout is returned (and its stderr too, without a log); else both go to
    `log`, or without one to this terminal. log: an open file that gets the command line,
    stderr and stdout (as it comes, when not captured). nice: a lower CPU priority.
    own_session: a Ctrl-C in the terminal reaches only this process (git must not die halfway
    through a commit; a background run is stopped by its owner). started: told the child
    once it runs (to signal it from another thread). On Ctrl-C the child is let stop cleanly
    (STOP_STEPS) before the KeyboardInterrupt goes on."""
    if log is not None:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
    pipe = subprocess.PIPE
    child = subprocess.Popen((["nice", "-n", str(nice)] if nice else []) + cmd, cwd=cwd,
                             stdout=pipe if capture else log,
                             stderr=log if log is not None else pipe if capture else None,
                             text=True, env=env, start_new_session=own_session)
    if started is not None:
        started(child)
    try:
        stdout, stderr = child.communicate()
    except KeyboardInterrupt:
        stop_gently(child)
        raise
    if log is not None and stdout:
        log.write(stdout)
        log.flush()
    return Done(child.returncode, stdout or "", stderr or "")


def stop_gently(child: subprocess.Popen) -> None:
    for sig, wait_s in STOP_STEPS:
        if child.poll() is not None:
            return
        if sig is not None:
            child.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.communicate(timeout=wait_s)


def git(args: list[str], cwd: Path, check: bool = True) -> Done:
    p = run(["git", *args], cwd)
    if check and p.returncode != 0:
        raise UserError(f"`git {' '.join(args)}` failed: {p.stderr.strip() or p.stdout.strip()}")
    return p


def repo_root(start: Path) -> Path:
    p = git(["rev-parse", "--show-toplevel"], start, check=False)
    if p.returncode != 0:
        raise UserError(f"{start}: not inside a git repository (background retrains run as "
                        "DVC experiments)")
    return Path(p.stdout.strip())


def foreground(cmd: list[str], cwd: Path) -> int:
    """Run a command on this terminal (a Ctrl-C there reaches it too); its exit status."""
    return run(cmd, cwd, capture=False, own_session=False).returncode

"""The automated data-centric loop: reproduce, accept suggestions, ask the oracle, commit.

One round = `dvc repro`, then the label file gains the oracle's answers to the top review
requests (source `oracle`, simulating a person) and the suggestions above a score (source
`auto`), then ONE git commit holds the label file and dvc.lock, with the round's metrics in its
message.

Interrupting (Ctrl-C, SIGTERM) is safe: before the commit step nothing is written (an
interrupted `dvc repro` leaves only its own atomic outputs); during the write + commit step the
signal is held and takes effect right after the commit (git runs in its own session, so the
terminal's Ctrl-C cannot kill it halfway). The label file is written atomically, and if the
commit fails it is put back as it was. So every round is either committed whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from chimuffin import atomic
from chimuffin.data.prepare import parse_validation_labels
from chimuffin.errors import UserError
from chimuffin.labels import Decision, format_decisions

# Images a person (or the oracle standing in for one) has already answered are not asked again.
ANSWERED_SOURCES = ("human", "3lc", "oracle")


def parse_oracle(text: str, classes: list[str], name: str) -> dict[str, str]:
    """`relative_path,label` rows (reviewed_labels.csv, the sample's pool_labels.csv), checked
    like data/labels/validation.csv, whose `path,label` header is accepted too."""
    first, newline, rest = text.removeprefix("\ufeff").partition("\n")
    if [h.strip() for h in first.split(",")] == ["relative_path", "label"]:
        first = "path,label"
    return parse_validation_labels(first + newline + rest, classes, name)


def read_oracle(path: str | Path, classes: list[str]) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: oracle file not found")
    return parse_oracle(path.read_text(encoding="utf-8"), classes, str(path))


def oracle_answers(queue: pd.DataFrame, oracle: dict[str, str], decisions: list[Decision],
                   budget: int) -> tuple[list[Decision], int]:
    """The oracle's answers to the first `budget` review requests it can answer, in queue
    order. Requests the oracle does not know are passed over (a simulation can only answer
    what it knows); images a person or the oracle already answered are never asked again
    (an `auto` label can be: that is how a wrong accepted label gets fixed).
    Returns (answers, requests passed over)."""
    person = {d.path for d in decisions if d.source in ANSWERED_SOURCES}
    answers, passed = [], 0
    for row in queue.sort_values("rank").itertuples():
        if len(answers) >= budget:
            break
        if row.path in person:
            continue
        if row.path not in oracle:
            passed += 1
            continue
        answers.append(Decision(row.path, oracle[row.path], "oracle",
                                f"review request {row.rank} ({row.kind})"))
    return answers, passed


def round_message(r: int, rounds: int, metrics: dict, clean_summary: dict,
                  accepted: pd.DataFrame, answers: list[Decision], classes: list[str]) -> str:
    val = metrics.get("val")
    acc = f"val acc {val['accuracy']:.4f} (n={val['n']})" if val else "no validation metrics"
    by_split = clean_summary.get("by_split_label", {})
    n_train = sum(by_split.get(f"train/{c}", 0) for c in classes)
    auto = ", ".join(f"{c} {(accepted['label'] == c).sum()}" for c in classes)
    head = (f"loop round {r}/{rounds}: {acc}; +{len(accepted)} auto ({auto}), "
            f"+{len(answers)} oracle")
    body = [f"Trained on {n_train} labeled train images; metrics/eval/metrics.json:",
            json.dumps(metrics, sort_keys=True)]
    return head + "\n\n" + "\n".join(body) + "\n"


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


def check_clean(root: Path, path: Path) -> None:
    """Refuse to start over uncommitted edits of the label file: a round's commit would
    silently include them."""
    out = git(["status", "--porcelain", "--", str(path)], root).stdout.strip()
    if out:
        raise UserError(f"{path}: has uncommitted changes; commit or stash them before "
                        "`chimuffin loop`")


def commit_round(root: Path, decisions_path: Path, decisions: list[Decision], message: str,
                 on_commit: Callable[[str], None]) -> None:
    """Write the label file and commit it (with dvc.lock) as one step that signals cannot
    split. `on_commit(hash)` runs inside that step, so a deferred Ctrl-C (raised when the step
    ends) never hides a round that was committed."""
    old = decisions_path.read_bytes() if decisions_path.exists() else None
    paths = [str(decisions_path)]
    lock = root / "dvc.lock"
    if lock.exists() and git(["check-ignore", "-q", str(lock)], root, check=False).returncode:
        paths.append(str(lock))
    with deferred_signals():
        atomic.write_text(decisions_path, format_decisions(decisions))
        try:
            git(["add", "--", *paths], root)
            git(["commit", "-q", "--allow-empty", "-m", message, "--", *paths], root)
        except BaseException:
            # keep the repository as of the last commit: no uncommitted half round
            if old is None:
                decisions_path.unlink(missing_ok=True)
            else:
                atomic.write_bytes(decisions_path, old)
            git(["reset", "-q", "--", *paths], root, check=False)
            raise
        on_commit(git(["rev-parse", "HEAD"], root).stdout.strip())


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


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: {what} not found after `dvc repro`")
    return json.loads(path.read_text(encoding="utf-8"))

"""The automated data-centric loop: reproduce, review (a simulated person), accept, commit.

One round = `dvc repro`; then the label file gains
- a simulated person's review (chimuffin.simulate.reviewer) of this repro's review pages for a
  budget of simulated minutes (`--reviewer`), source `oracle`; and/or
- the suggestions above a score (`--min-score`), source `auto`;
then ONE git commit holds the label file and dvc.lock, with the round's metrics and the review
session in its message (and the session's numbers as `Review-*` trailers, which the next round
reads to keep the cumulative simulated minutes).

Interrupting (Ctrl-C, SIGTERM) is safe: before the commit step nothing is written (an
interrupted `dvc repro` leaves only its own atomic outputs); during the write + commit step the
signal is held and takes effect right after the commit (git runs in its own session, so the
terminal's Ctrl-C cannot kill it halfway). The label file is written atomically, and if the
commit fails it is put back as it was. So every round is either committed whole or not at all.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from chimuffin.curate.accept import accept, as_decisions
from chimuffin.curate.pages import read_pages
from chimuffin.curate.scoring import read_suggestions
from chimuffin.data.manifest import read_json_output
from chimuffin.errors import UserError
from chimuffin.labels import locked
from chimuffin.labels.rows import (
    SOURCES,
    Decision,
    merge_decisions,
    per_class,
    read_decisions,
    read_path_labels,
)
from chimuffin.paths import METRICS_FILE, PAGES_FILE, SUGGESTIONS_FILE, SUMMARY_FILE
from chimuffin.proc import deferred_signals, foreground, git, sigterm_as_interrupt
from chimuffin.progress import plural
from chimuffin.simulate.reviewer import ReviewCost, ReviewResult, review_pages

# --- what a round does ------------------------------------------------------------------------

@dataclass(frozen=True)
class Reviewer:
    """A simulated person who verifies review pages."""
    truth_file: Path            # path,label file of true labels (read after each repro: the
                                # sample stage writes one)
    budget_s: float             # simulated seconds per round
    cost: ReviewCost = ReviewCost()

    def truth(self, classes: list[str]) -> dict[str, str]:
        return read_path_labels(self.truth_file, classes, "reviewer's file of true labels")


@dataclass(frozen=True)
class AutoAccept:
    min_score: float
    require_agreement: bool = False
    per_class_cap: int | None = None


@dataclass(frozen=True)
class LoopConfig:
    rounds: int
    classes: list
    decisions: Path
    suggest_dir: Path
    eval_dir: Path
    clean_dir: Path
    reviewer: Reviewer | None = None
    auto: AutoAccept | None = None


@dataclass(frozen=True)
class RoundLabels:
    reviewed: list              # the simulated person's new decisions
    review: ReviewResult | None
    accepted: pd.DataFrame | None  # suggestion rows accepted as `auto` (None: not asked)

    @property
    def added(self) -> int:
        return len(self.reviewed) + (0 if self.accepted is None else len(self.accepted))


def round_labels(cfg: LoopConfig, decisions: list[Decision]) -> RoundLabels:
    """The label file after this round's review and acceptance (reads this repro's outputs)."""
    reviewed, review = [], None
    if cfg.reviewer:
        rv = cfg.reviewer
        pages = read_pages(cfg.suggest_dir / PAGES_FILE)
        reviewed, review = review_pages(pages, rv.truth(cfg.classes), decisions, rv.budget_s,
                                        rv.cost)
        decisions, _ = merge_decisions(decisions, reviewed)
    accepted = None
    if cfg.auto:
        a = cfg.auto
        suggestions = read_suggestions(cfg.suggest_dir / SUGGESTIONS_FILE)
        decisions, accepted = accept(decisions, suggestions, a.min_score, a.require_agreement,
                                     a.per_class_cap)
    return RoundLabels(reviewed, review, accepted)


def labels_of(review: ReviewResult) -> list[str]:
    return [c for c, n in review.by_class.items() for _ in range(n)]


def nothing_added_reason(labels: RoundLabels) -> str:
    parts = []
    if labels.review:
        parts.append(f"the reviewer verified nothing: {labels.review.reason}")
    if labels.accepted is not None:
        parts.append("no undecided suggestion passed --min-score")
    return "; ".join(parts)


# --- the commit message -----------------------------------------------------------------------

TOTAL_TRAILER = "Review-Seconds-Total"


def review_trailers(review: ReviewResult, total_s: float) -> list[str]:
    return [f"Review-Pages: {review.pages}",
            f"Review-Verified: {review.verified}", f"Review-Exceptions: {review.exceptions}",
            f"Review-Passed-Over: {review.passed_over}", f"Review-Seconds: {review.seconds:.1f}",
            f"{TOTAL_TRAILER}: {total_s:.1f}"]


def parse_trailers(message: str) -> dict[str, str]:
    """`Key: value` lines of a commit message's last paragraph."""
    last = message.strip().split("\n\n")[-1]
    return dict(m.groups() for m in re.finditer(r"^([A-Za-z-]+): (.*)$", last, re.MULTILINE))


def budget_text(budget_s: float) -> str:
    return "an unlimited budget" if math.isinf(budget_s) else f"a {budget_s:.0f} s budget"


def review_lines(review: ReviewResult, reviewer: Reviewer, total_s: float,
                 classes: list[str]) -> list[str]:
    what = f"{plural(review.pages, 'page')}, {review.verified} images verified"
    return [f"Review session (simulated person answering from {reviewer.truth_file.name}; "
            f"{reviewer.cost.describe()}):",
            f"  {what} ({per_class(labels_of(review), classes)}), "
            f"{plural(review.exceptions, 'exception')}, {review.passed_over} passed over, "
            f"{review.skipped} already decided by a person",
            f"  {review.seconds:.1f} s of {budget_text(review.budget_s)} "
            f"({review.minutes:.2f} simulated min); cumulative {total_s / 60:.2f} min",
            f"  stopped: {review.reason}"]


def round_message(r: int, rounds: int, metrics: dict, clean_summary: dict,
                  labels: RoundLabels, reviewer: Reviewer | None, total_s: float,
                  classes: list[str]) -> str:
    val = metrics.get("val")
    acc = f"val acc {val['accuracy']:.4f} (n={val['n']})" if val else "no validation metrics"
    by_split = clean_summary.get("by_split_label", {})
    n_train = sum(by_split.get(f"train/{c}", 0) for c in classes)
    added, body, trailers = [], [], []
    review = labels.review
    if review:
        added.append(f"+{review.verified} verified ({plural(review.pages, 'page')}, "
                     f"{plural(review.exceptions, 'exception')})")
        added.append(f"{review.minutes:.2f} simulated min (total {total_s / 60:.2f})")
        body += review_lines(review, reviewer, total_s, classes)
        trailers = review_trailers(review, total_s)
    if labels.accepted is not None:
        added.append(f"+{len(labels.accepted)} auto "
                     f"({per_class(labels.accepted['label'], classes)})")
    head = f"loop round {r}/{rounds}: {acc}; " + ", ".join(added)
    body += [f"Trained on {n_train} labeled train images; metrics/eval/metrics.json:",
             json.dumps(metrics, sort_keys=True)]
    message = head + "\n\n" + "\n".join(body) + "\n"
    return message + ("\n" + "\n".join(trailers) + "\n" if trailers else "")


# What a round's dvc.lock is made from besides the label file: edits to these that are not
# committed would be recorded in the round's dvc.lock but not in its commit.
ROUND_INPUTS = ("params.yaml", "dvc.yaml", "recipes", "src", "data/labels", "models/warm_start")


def check_clean(root: Path, path: Path) -> None:
    """Refuse to start over uncommitted edits (or new untracked files) of the label file or of
    the code, params and recipes a round runs: its commit would not reproduce."""
    where = [str(path), *(str(root / p) for p in ROUND_INPUTS if (root / p).exists())]
    out = git(["status", "--porcelain", "--", *where], root).stdout
    dirty = [line[3:] for line in out.splitlines() if line.strip()]
    if dirty:
        shown = ", ".join(dirty[:10]) + (f" and {len(dirty) - 10} more" if len(dirty) > 10
                                         else "")
        raise UserError(f"uncommitted changes to {shown}: a round's commit would record a "
                        "dvc.lock made with them but not the files themselves; commit or stash "
                        "them before `chimuffin loop`")


def commit_round(root: Path, decisions_path: Path, change: Callable[[list], list],
                 classes: list[str], message: str, on_commit: Callable[[str], None]) -> None:
    """Write the label file and commit it (with dvc.lock) as one step that signals cannot
    split, under the label file's lock: `change` is applied to the file as it is now (another
    tool may have written it during the repro). `on_commit(hash)` runs inside that step, so a
    deferred Ctrl-C (raised when the step ends) never hides a round that was committed."""
    paths = [str(decisions_path)]
    lock = root / "dvc.lock"
    if lock.exists() and git(["check-ignore", "-q", str(lock)], root, check=False).returncode:
        paths.append(str(lock))

    def commit(written: locked.Written) -> None:
        try:
            git(["add", "--", *paths], root)
            git(["commit", "-q", "--allow-empty", "-m", message, "--", *paths], root)
        except BaseException:
            # keep the repository as of the last commit: no uncommitted half round
            locked.take_back(decisions_path, classes, written)
            git(["reset", "-q", "--", *paths], root, check=False)
            raise
        on_commit(git(["rev-parse", "HEAD"], root).stdout.strip())

    with deferred_signals():
        locked.update(decisions_path, classes, change, after_write=commit)


def round_change(labels: RoundLabels) -> Callable[[list], list]:
    """The round's new labels merged into the label file as it is at commit time: the
    reviewer's over anything but a person's, accepted suggestions over nothing."""
    def change(current: list[Decision]) -> list[Decision]:
        merged, _ = merge_decisions(current, labels.reviewed)
        if labels.accepted is not None:
            merged, _ = merge_decisions(merged, as_decisions(labels.accepted),
                                        protect_sources=SOURCES)
        return merged
    return change


# --- the rounds -------------------------------------------------------------------------------

def previous_review_seconds(root: Path) -> float:
    """The cumulative simulated review time recorded by the last loop round in this branch's
    history (0 when there is none)."""
    p = git(["log", "-1", "-E", f"--grep=^{TOTAL_TRAILER}: ", "--format=%B"], root, check=False)
    value = parse_trailers(p.stdout).get(TOTAL_TRAILER) if p.returncode == 0 else None
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0


def one_round(r: int, cfg: LoopConfig, root: Path, progress: dict) -> RoundLabels:
    """dvc repro, review + accept, commit. progress["committed"] = r once committed;
    progress["review_s"] holds the cumulative simulated review seconds."""
    print(f"loop: round {r}/{cfg.rounds}: dvc repro", flush=True)
    rc = foreground(["dvc", "repro"], root)
    if rc != 0:
        raise UserError(f"round {r}: `dvc repro` failed (exit {rc}); the label file is "
                        "unchanged since the last round's commit")
    labels = round_labels(cfg, read_decisions(cfg.decisions, cfg.classes))
    total_s = progress["review_s"] + (labels.review.seconds if labels.review else 0.0)
    if labels.review:
        rv = labels.review
        what = (f"verified {rv.verified} images on {plural(rv.pages, 'page')} "
                f"({plural(rv.exceptions, 'exception')}, {rv.passed_over} passed over)")
        print(f"loop: the simulated reviewer {what} in {rv.minutes:.2f} simulated min "
              f"({per_class(labels_of(rv), cfg.classes)}); stopped: "
              f"{rv.reason}", flush=True)
    if labels.accepted is not None:
        print(f"loop: accepted {len(labels.accepted)} suggestions "
              f"({per_class(labels.accepted['label'], cfg.classes)})", flush=True)
    metrics = read_json_output(cfg.eval_dir / METRICS_FILE, "evaluation metrics", "dvc repro")
    summary = read_json_output(cfg.clean_dir / SUMMARY_FILE, "clean summary", "dvc repro")
    message = round_message(r, cfg.rounds, metrics, summary, labels, cfg.reviewer, total_s,
                            cfg.classes)

    def on_commit(commit: str) -> None:
        progress["committed"] = r
        progress["review_s"] = total_s
        print(f"loop: committed {commit[:10]}: {message.splitlines()[0]}", flush=True)

    commit_round(root, cfg.decisions.resolve(), round_change(labels), cfg.classes, message,
                 on_commit)
    return labels


def run_loop(cfg: LoopConfig, root: Path) -> int:
    """Up to cfg.rounds rounds; a round that adds no label is the last (the next one would
    train on the same data). Returns the number of rounds committed."""
    check_clean(root, cfg.decisions.resolve())
    progress = {"committed": 0, "review_s": previous_review_seconds(root)}
    with sigterm_as_interrupt():
        try:
            for r in range(1, cfg.rounds + 1):
                labels = one_round(r, cfg, root, progress)
                if labels.added == 0:
                    print(f"loop: round {r} added no labels ({nothing_added_reason(labels)}); "
                          "stopping: the next round would train on the same data")
                    break
        except KeyboardInterrupt:
            print(f"loop: interrupted; {progress['committed']} complete round(s) committed; "
                  "the label file is as of the last commit", file=sys.stderr)
            raise
    print(f"loop: {progress['committed']} round(s) committed")
    return progress["committed"]

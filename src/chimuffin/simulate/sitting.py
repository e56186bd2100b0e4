"""`chimuffin loop`: one sitting of a simulated person, in wall-clock time, while
the model retrains behind it (chimuffin.retrain, as behind the review page).

The person verifies review pages in page order at the cost model's pace (it sleeps for what
each page costs: ReviewCost), answering from a file of true labels, and writes each page to the
label file at once under its lock (source `oracle`). Background runs start every
`review.retrain_every` new decisions (the round recipe, on a throwaway copy, as named DVC
experiments); when one finishes, its pages replace the current ones for the images not
verified yet, between two pages (retrain/swap.py, as on the page). The person never waits for
a model: idle time is 0 by construction. The sitting ends when the budget cannot pay for the
next page or every page is verified; a run still going then is stopped. Nothing is committed:
the label file is left changed, as after a session on the review page.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from chimuffin import paths as default
from chimuffin.labels import locked
from chimuffin.labels.rows import merge_decisions, person_decided
from chimuffin.labels.validation import read_validation, validation_file
from chimuffin.retrain.outputs import RunOutputs
from chimuffin.retrain.retrainer import STOPPED, Retrainer, Run
from chimuffin.retrain.swap import Model, Proposals
from chimuffin.simulate.reviewer import EPS, ReviewCost, page_answers
from chimuffin.simulate.validation import ValidationDone, ValidationStep, build_validation_set
from chimuffin.simulate.validation import summary as validation_summary


@dataclass(frozen=True)
class SittingConfig:
    """Where a sitting reads and writes, and how it retrains (params.yaml `review`)."""
    root: Path                  # the repository (background runs copy it)
    params_file: Path
    decisions: Path             # the label file the person writes
    suggest_dir: Path           # the first model's pages
    classes: list[str]
    every: int                  # review.retrain_every
    recipe: str                 # review.round_recipe
    warm_recipe: str = ""       # review.warm_recipe
    eval_dir: Path | None = None  # the first model's metrics (None: root's metrics/eval)
    cost: ReviewCost = ReviewCost()
    # the validation set the person builds before the first page (None: none)
    validation: ValidationStep | None = None


@dataclass
class PageDone:
    """One page the person accepted: when, how much of it, and whose proposal it was. A page
    holds fewer images than its model put on it when some of them were verified before it was
    shown (on an earlier model's pages, or before the sitting)."""
    at_s: float                 # wall-clock seconds since the first page, when it was written
    verified_before: int        # images the person had verified before it
    images: int                 # images verified on it
    built: int                  # images its model put on it
    wrong: int                  # wrong proposals (exceptions marked)
    model: str                  # the model proposing it


@dataclass
class Sitting:
    """What one sitting did."""
    seconds: float = 0.0        # wall-clock seconds the person spent on pages
    wall_s: float = 0.0         # the sitting, first page to last (plus stopping a run)
    idle_s: float = 0.0         # seconds the person waited for a model (0 by construction)
    pages: int = 0
    verified: int = 0
    exceptions: int = 0
    models_started: int = 0
    models_finished: int = 0
    models_failed: int = 0
    reason: str = ""
    log: list[PageDone] = field(default_factory=list)  # every page, in order
    validation: ValidationDone | None = None  # the validation set built first, if asked


def next_page(pages: pd.DataFrame, done: set[str]) -> tuple[int, pd.DataFrame] | None:
    """The first page (in page order) with an image not verified yet, and those images."""
    todo = pages[~pages["path"].isin(done)]
    if todo.empty:
        return None
    first = todo["page"].iloc[0]
    return int(first), todo[todo["page"] == first]


def run_sitting(cfg: SittingConfig, truth: dict[str, str], budget_s: float,
                sleep: Callable[[float], None] = time.sleep,
                report: Callable[[str], None] = print, live: dict | None = None,
                stop: threading.Event | None = None) -> Sitting:
    """The sitting; `live` (when given) holds, while it runs, "sitting" (the Sitting so far)
    and "proposals" (retrain/swap.py: the model proposing now is its proposer()), for a
    watcher that samples them (benchmarks/review_session.py). `stop`: set by a watcher in
    another thread to end the sitting before its next page is written (pass
    `sleep=stop.wait` so that a page's wait ends at once too)."""
    return SittingRun(cfg, truth, budget_s, sleep, report, stop).run({} if live is None
                                                                    else live)


class SittingRun:
    """One sitting while it runs: the person's loop over pages, and the swaps that the
    background runs' thread makes between two of them."""

    def __init__(self, cfg: SittingConfig, truth: dict[str, str], budget_s: float,
                 sleep: Callable[[float], None], report: Callable[[str], None],
                 stop: threading.Event | None):
        self.cfg, self.truth, self.budget_s = cfg, truth, budget_s
        self.sleep, self.report, self.stop = sleep, report, stop or threading.Event()
        self.out = Sitting()
        first = RunOutputs.read(cfg.suggest_dir, cfg.eval_dir or cfg.root / default.EVAL,
                                evidence=False)
        labels = len(person_decided(self.decisions()))
        self.proposals = Proposals(first.pages, Model("pipeline outputs", labels, None,
                                                      first.val_accuracy, first.val_n))
        self.retrainer = Retrainer(cfg.root, cfg.params_file, cfg.decisions, cfg.classes,
                                   cfg.every, cfg.recipe, labels, on_done=self.swap_in,
                                   warm_recipe=cfg.warm_recipe)

    def decisions(self) -> list:
        return locked.read(self.cfg.decisions, self.cfg.classes).decisions

    def run(self, live: dict) -> Sitting:
        live.update(sitting=self.out, proposals=self.proposals)
        started = time.monotonic()
        try:
            if self.cfg.validation is not None:
                self.out.validation = build_validation_set(
                    self.cfg.validation, self.cfg.classes, self.truth, self.cfg.cost,
                    self.sleep, self.stop)
                self.report(f"loop: {validation_summary(self.out.validation)}")
            while not self.out.reason:
                self.out.reason = self.one_page(started)
        finally:
            self.retrainer.stop()
        runs = self.retrainer.runs
        self.out.models_failed = sum(1 for r in runs if r.ok is False and r.error != STOPPED)
        for r in runs:
            if r.ok is False and r.log:
                self.report(f"loop: background run {r.name} failed: {r.error} (log: {r.log})")
        self.out.wall_s = time.monotonic() - started
        return self.out

    def one_page(self, started: float) -> str:
        """The next page looked at, answered and written; why the sitting ends, or ""."""
        if self.stop.is_set():
            return "stopped"
        with self.proposals.lock:  # a swap replaces the pages table (never changes it)
            pages, proposer = self.proposals.pages, self.proposals.models[-1].name
        validated = read_validation(validation_file(self.cfg.decisions), self.cfg.classes)
        found = next_page(pages, person_decided(self.decisions()) | set(validated))
        if found is None:
            return "every page is verified"
        page, rows = found
        label = rows["label"].iloc[0]
        new, wrong, unknown = page_answers(rows, self.truth, f"sitting page {page} ({label})",
                                           f"sitting page {page} exception")
        seconds = self.cfg.cost.page(len(rows), wrong + unknown)
        if self.out.seconds + seconds > self.budget_s + EPS:
            return (f"the next page ({len(rows)} images) needs {seconds:.1f} s; "
                    f"{self.budget_s - self.out.seconds:.1f} s of the budget were left")
        self.sleep(seconds)  # the person looks, marks, accepts: the model never holds it up
        if self.stop.is_set():  # mid-page: the page is not written
            return "stopped"
        self.out.seconds += seconds
        written = locked.update(self.cfg.decisions, self.cfg.classes,
                                lambda old: merge_decisions(old, new)[0])
        self.out.log.append(PageDone(round(time.monotonic() - started, 1), self.out.verified,
                                     len(new), int(rows["built"].iloc[0]), wrong, proposer))
        self.out.pages += 1
        self.out.verified += len(new)
        self.out.exceptions += wrong
        if self.retrainer.note(len(person_decided(written.new))):
            self.out.models_started += 1
            self.report(f"loop: {self.out.verified} verified; a background retrain started")
        return ""

    def swap_in(self, run: Run) -> None:
        """A background model finished (its run's thread): its pages from the next page on."""
        o = run.outputs
        self.proposals.swap(o.pages, Model(run.name, run.labels, run.finished, o.val_accuracy,
                                           o.val_n), person_decided(self.decisions()))
        self.out.models_finished += 1
        acc = "-" if o.val_accuracy is None else f"{o.val_accuracy:.4f}"
        self.report(f"loop: model {run.name} finished (val acc {acc}); its pages from the next "
                    "page on")


def summary(s: Sitting) -> str:
    return (f"loop: sitting done ({s.reason}): {s.verified} images verified on {s.pages} "
            f"pages, {s.exceptions} exceptions, {s.seconds:.1f} s of reviewing, idle "
            f"{s.idle_s:.1f} s; background models: {s.models_started} started, "
            f"{s.models_finished} finished, {s.models_failed} failed")

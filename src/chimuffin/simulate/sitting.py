"""`chimuffin loop --background`: one sitting of a simulated person, in wall-clock time, while
the model retrains behind it (the review page's background runs, review/background.py).

The person verifies review pages in page order at the cost model's pace (it sleeps for what
each page costs: ReviewCost), answering from a file of true labels, and writes each page to the
label file at once under its lock (source `oracle`). Background runs start every
`review.retrain_every` new decisions (the round recipe, on a throwaway copy, as named DVC
experiments); when one finishes, its pages replace the current ones for the images not
verified yet, between two pages. The person never waits for a model: idle time is 0 by
construction. The sitting ends when the budget cannot pay for the next page or every page is
verified; a run still going then is stopped. Nothing is committed: the label file is left
changed, as after a session on the review page.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from chimuffin.curate.pages import read_pages
from chimuffin.curate.simulated_review import EPS, ReviewCost, page_answers, person_decided
from chimuffin.labels import locked
from chimuffin.labels.rows import merge_decisions
from chimuffin.paths import METRICS_FILE, PAGES_FILE
from chimuffin.review.background import STOPPED, Retrainer, person_decisions, val_metrics


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


def next_page(pages: pd.DataFrame, done: set[str]) -> tuple[int, pd.DataFrame] | None:
    """The first page (in page order) with an image not verified yet, and those images."""
    todo = pages[~pages["path"].isin(done)]
    if todo.empty:
        return None
    first = todo["page"].iloc[0]
    return int(first), todo[todo["page"] == first]


def run_sitting(root: Path, params_file: Path, decisions: Path, suggest_dir: Path,
                classes: list[str], truth: dict[str, str], budget_s: float, every: int,
                recipe: str, cost: ReviewCost,
                sleep: Callable[[float], None] = time.sleep,
                report: Callable[[str], None] = print, live: dict | None = None,
                eval_dir: Path | None = None,
                stop: threading.Event | None = None, warm_recipe: str = "") -> Sitting:
    """The sitting; `live` (when given) holds, while it runs, "sitting" (the Sitting so far)
    and "model" (the proposing model: name, labels, val_accuracy, val_n), for a watcher that
    samples them (benchmarks/review_session.py).
    warm_recipe: review.warm_recipe (retrains after the first start from the last model).
    `stop`: set by a watcher in another thread to end the sitting before its next page is
    written (pass `sleep=stop.wait` so that a page's wait ends at once too)."""
    state = {"pages": read_pages(suggest_dir / PAGES_FILE)}
    out = Sitting()
    guard = threading.Lock()
    live = {} if live is None else live
    acc, n = val_metrics(eval_dir / METRICS_FILE) if eval_dir else (None, None)
    live.update(sitting=out, model={"name": "pipeline outputs", "val_accuracy": acc,
                                    "val_n": n})

    def swap(run) -> None:  # a background model finished: its pages from the next page on
        acc = "-" if run.val_accuracy is None else f"{run.val_accuracy:.4f}"
        with guard:
            out.models_finished += 1
            state["pages"] = run.pages  # (next_page skips what is verified)
            live["model"] = {"name": run.name, "labels": run.labels,
                             "val_accuracy": run.val_accuracy, "val_n": run.val_n}
        report(f"loop: model {run.name} finished (val acc {acc}); its pages from the next "
               "page on")

    start_labels = person_decisions(locked.read(decisions, classes).decisions)
    retrainer = Retrainer(root, params_file, decisions, classes, every, recipe, start_labels,
                          on_done=swap, warm_recipe=warm_recipe)
    started = time.monotonic()
    try:
        while True:
            if stop is not None and stop.is_set():
                out.reason = "stopped"
                break
            snap = locked.read(decisions, classes)
            with guard:  # a swap replaces the pages table (never changes it in place)
                pages, proposer = state["pages"], live["model"]["name"]
                found = next_page(pages, person_decided(snap.decisions))
            if found is None:
                out.reason = "every page is verified"
                break
            page, rows = found
            built = int((pages["page"] == page).sum())  # what its model put on it
            label = rows["label"].iloc[0]
            new, wrong, unknown = page_answers(rows, truth, f"sitting page {page} ({label})",
                                               f"sitting page {page} exception")
            seconds = cost.page(len(rows), wrong + unknown)
            if out.seconds + seconds > budget_s + EPS:
                out.reason = (f"the next page ({len(rows)} images) needs {seconds:.1f} s; "
                              f"{budget_s - out.seconds:.1f} s of the budget were left")
                break
            sleep(seconds)  # the person looks, marks, accepts: the model never holds it up
            if stop is not None and stop.is_set():  # mid-page: the page is not written
                out.reason = "stopped"
                break
            out.seconds += seconds
            written = locked.update(decisions, classes,
                                    lambda old, new=new: merge_decisions(old, new)[0])
            out.log.append(PageDone(round(time.monotonic() - started, 1), out.verified,
                                    len(new), built, wrong, proposer))
            out.pages += 1
            out.verified += len(new)
            out.exceptions += wrong
            if retrainer.note(person_decisions(written.new)):
                out.models_started += 1
                report(f"loop: {out.verified} verified; a background retrain started")
    finally:
        retrainer.stop()
    out.models_failed = sum(1 for r in retrainer.runs if r.ok is False
                            and r.error != STOPPED)
    failed = [r for r in retrainer.runs if r.ok is False and r.log]
    for r in failed:
        report(f"loop: background run {r.name} failed: {r.error} (log: {r.log})")
    out.wall_s = time.monotonic() - started
    return out


def summary(s: Sitting) -> str:
    return (f"loop: sitting done ({s.reason}): {s.verified} images verified on {s.pages} "
            f"pages, {s.exceptions} exceptions, {s.seconds:.1f} s of reviewing, idle "
            f"{s.idle_s:.1f} s; background models: {s.models_started} started, "
            f"{s.models_finished} finished, {s.models_failed} failed")

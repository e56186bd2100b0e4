"""A simulated person builds the validation set first: the seeded sample of the pool
(curate/validation_pages.py), page by page with the model's proposals, answered from a file of
true labels and written to validation.csv (never the label file), at the review pages' cost
model (ReviewCost: 1 s a page, 0.4 s a thumbnail, 2 s an exception or an image the truth file
lacks, which gets no answer)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from chimuffin.curate.validation_pages import (
    folder_pool,
    sample,
    seeded_order,
    target_size,
    validation_pages,
)
from chimuffin.data.manifest import read_manifest
from chimuffin.infer.prediction_table import read_predictions
from chimuffin.labels import locked
from chimuffin.labels.validation import add_answers, read_validation
from chimuffin.simulate.reviewer import ReviewCost


@dataclass(frozen=True)
class ValidationPage:
    page: int
    answers: dict[str, str]     # path -> true label (the images the truth file knows)
    seconds: float
    wrong: int                  # proposals the person corrected
    unknown: int                # images the truth file lacks (no answer)


@dataclass
class ValidationDone:
    """What the person did for the validation set."""
    target: int = 0             # validation images the sample holds
    before: int = 0             # of them in validation.csv before the person started
    seconds: float = 0.0        # simulated seconds on validation pages
    pages: int = 0
    answered: int = 0
    exceptions: int = 0
    passed_over: int = 0
    by_class: dict = field(default_factory=dict)

    @property
    def minutes(self) -> float:
        return self.seconds / 60.0


def answer_pages(pages: pd.DataFrame, truth: dict[str, str],
                 cost: ReviewCost) -> list[ValidationPage]:
    """Each validation page as the person answers it: the true labels, and its cost."""
    out = []
    for page, rows in pages.groupby("page", sort=True):
        label = rows["label"].iloc[0]
        known = [p for p in rows["path"] if p in truth]
        answers = {p: truth[p] for p in known}
        wrong = sum(t != label for t in answers.values())
        unknown = len(rows) - len(known)
        out.append(ValidationPage(int(page), answers, cost.page(len(rows), wrong + unknown),
                                  wrong, unknown))
    return out


@dataclass(frozen=True)
class ValidationStep:
    """Where the sample comes from and goes: review.validation_size (`size`), base.seed,
    suggest.page_size, and the files."""
    size: int
    seed: int
    page_size: int
    manifest: Path              # the prepare stage's manifest
    predictions: Path           # the evaluate stage's predictions (the proposals)
    validation: Path            # data/labels/validation.csv
    decisions: Path             # the label file (read only)


def pages_to_answer(step: ValidationStep, classes: list[str]) -> tuple[pd.DataFrame, int, int]:
    """The sample's pages left to answer, its target size and how many it already holds."""
    order = seeded_order(folder_pool(read_manifest(step.manifest)), step.seed)
    decided = {d.path for d in locked.read(step.decisions, classes).decisions}
    s = sample(order, target_size(step.size, len(order)),
               set(read_validation(step.validation, classes)), decided)
    proposals = read_predictions(step.predictions)
    return validation_pages(s.todo, proposals, classes, step.page_size), s.target, \
        len(s.answered)


def build_validation_set(step: ValidationStep, classes: list[str], truth: dict[str, str],
                         cost: ReviewCost, sleep: Callable[[float], None] = time.sleep,
                         stop: threading.Event | None = None) -> ValidationDone:
    """The person answers the validation pages in order, each after its cost in (wall-clock)
    seconds (`sleep`), each written to validation.csv at once; `stop` ends it between pages."""
    pages, target, before = pages_to_answer(step, classes)
    done = ValidationDone(target, before)
    labels: Counter = Counter()
    for vp in answer_pages(pages, truth, cost):
        sleep(vp.seconds)
        if stop is not None and stop.is_set():
            break
        if vp.answers:
            add_answers(step.validation, step.decisions, classes, vp.answers)
        done.seconds += vp.seconds
        done.pages += 1
        done.answered += len(vp.answers)
        done.exceptions += vp.wrong
        done.passed_over += vp.unknown
        labels.update(vp.answers.values())
    done.by_class = dict(labels)
    return done


def summary(v: ValidationDone) -> str:
    return (f"validation set: {v.answered} images answered on {v.pages} pages "
            f"({v.exceptions} proposals corrected, {v.passed_over} not in the truth file) in "
            f"{v.minutes:.2f} simulated min; {v.before + v.answered} of {v.target} in "
            "validation.csv")

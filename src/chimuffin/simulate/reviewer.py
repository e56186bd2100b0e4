"""A simulated person: verifies review pages from a file of true labels, and is charged a fixed
number of seconds for each thing it does.

The cost model (ReviewCost; the defaults are what benchmarks and `chimuffin loop` use):

- a page: 1 s to take it in, 0.4 s per thumbnail shown on it, 2 s per exception marked (an image
  whose true label is not the page's label; it gets its true label). An image the truth file
  lacks gets no label: it is passed over, and charged as an exception (the person looked twice).

A budget of math.inf seconds means "until every page is done".

Images a person-like source (human, 3lc, oracle) already decided are skipped: not shown, not
charged. A page is all or nothing: the session stops before the first page that does not fit in
what is left of the budget. Every label given has source `oracle` (a simulated person).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from chimuffin.labels.rows import Decision, person_decided

EPS = 1e-9  # float slack when comparing sums of seconds with the budget


@dataclass(frozen=True)
class ReviewCost:
    page_s: float = 1.0       # taking in one page
    thumb_s: float = 0.4      # per thumbnail shown on it
    exception_s: float = 2.0  # per exception marked (or image passed over) on a page

    def page(self, shown: int, marked: int) -> float:
        return self.page_s + self.thumb_s * shown + self.exception_s * marked

    def describe(self) -> str:
        return (f"{self.page_s:g} s per page + {self.thumb_s:g} s per thumbnail + "
                f"{self.exception_s:g} s per exception")


@dataclass(frozen=True)
class ReviewResult:
    budget_s: float
    seconds: float            # simulated seconds used
    pages: int                # pages shown
    verified: int             # images given a label
    exceptions: int           # labels that differ from the proposed one
    passed_over: int          # images the truth file lacks
    skipped: int              # images already decided by a person
    by_class: dict = field(default_factory=dict)  # labels given, per class
    reason: str = ""          # why the session stopped: the budget, or nothing left to do

    @property
    def minutes(self) -> float:
        return self.seconds / 60.0


def page_answers(todo: pd.DataFrame, truth: dict[str, str], note: str, exception_note: str,
                 ) -> tuple[list[Decision], int, int]:
    """The person's answers to a page's undecided images (`todo`, one page label): a decision
    (source `oracle`) for each image it knows the truth of, noted `exception_note` where the
    page's label is wrong, else `note`; then the number of exceptions and of images passed over
    (no truth)."""
    label = todo["label"].iloc[0]
    out, wrong, unknown = [], 0, 0
    for path in todo["path"]:
        t = truth.get(path)
        if t is None:
            unknown += 1
            continue
        wrong += t != label
        out.append(Decision(path, t, "oracle", exception_note if t != label else note))
    return out, wrong, unknown


def review_pages(pages: pd.DataFrame, truth: dict[str, str], decisions: list[Decision],
                 budget_seconds: float, cost: ReviewCost = ReviewCost()
                 ) -> tuple[list[Decision], ReviewResult]:
    """Go through the pages in order (the pages table of the suggest stage) until the budget
    cannot pay for the next page. Returns (new decisions, what the session did)."""
    done = person_decided(decisions)
    pages = pages.sort_values(["page", "position"], kind="stable")
    new: list[Decision] = []
    used, shown_pages, exceptions, passed, skipped = 0.0, 0, 0, 0, 0
    reason = ""  # set when the budget stops the session
    for page, rows in pages.groupby("page", sort=False):
        label = rows["label"].iloc[0]
        todo = rows[~rows["path"].isin(done)]
        skipped += len(rows) - len(todo)
        if todo.empty:
            continue
        note = f"page {page} ({label}, page score {rows['page_score'].iloc[0]:.2f})"
        answers, wrong, unknown = page_answers(todo, truth, note, f"page {page} exception")
        seconds = cost.page(len(todo), wrong + unknown)
        if used + seconds > budget_seconds + EPS:
            reason = (f"the next page (page {page}, {len(todo)} images) needs {seconds:.1f} s and "
                      f"{budget_seconds - used:.1f} s of the {budget_seconds:.0f} s budget were "
                      "left")
            break
        used += seconds
        shown_pages += 1
        exceptions += wrong
        passed += unknown
        new += answers
    if not reason:
        n = pages["page"].nunique()
        if not n:
            reason = "there are no review pages (no undecided pool images)"
        elif not shown_pages:
            reason = f"every image on the {n} pages is already decided by a person"
        else:
            reason = f"all {n} pages were reviewed" + (
                "" if math.isinf(budget_seconds) else
                f" ({budget_seconds - used:.1f} s of the {budget_seconds:.0f} s budget left)")
    result = ReviewResult(budget_seconds, round(used, 6), shown_pages, len(new),
                          exceptions, passed, skipped, dict(Counter(d.label for d in new)),
                          reason)
    return new, result


"""A simulated person: answers review pages from a file of true labels, and is charged a fixed
number of seconds for each thing it does.

The cost model (ReviewCost; the defaults are what benchmarks and `chimuffin loop` use): a page
costs 1 s to take in, 0.4 s per thumbnail shown on it, 2 s per exception marked (an image whose
true label is not the page's label; it gets its true label). An image the truth file lacks gets
no label: it is passed over, and charged as an exception (the person looked twice). Every label
given has source `oracle` (a simulated person).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from chimuffin.labels.rows import Decision

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

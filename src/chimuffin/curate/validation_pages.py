"""Which pool images validate, and the pages a person answers them on.

The validation set is a seeded, uniform random sample of the pool: every folder-pool image
(train128/undefined/, including the ones validation.csv already labels) gets the key
sha256("<seed>:<path>"), and the sample is the first `target` of them in key order, passing
over images that have a decision in the label file (a person's answer or an accepted
suggestion makes an image a training image; a removal takes it out). An image's key depends on
nothing else, so adding data, labels or answers never reshuffles the order: answering an image
takes it off the list and leaves the others where they were.

An image verified on a review page before the set is built is passed over, so the sample is
uniform over what is left, not over the pool: build the validation set first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from chimuffin.errors import UserError
from chimuffin.labels.rows import UNDEFINED

MAX_SHARE = 4  # the validation set takes at most a quarter of the pool: the rest trains
PAGE_COLUMNS = ["page", "position", "path", "label", "score"]


def folder_pool(manifest: pd.DataFrame) -> list[str]:
    """The pool as the dataset's folders give it: train128/undefined/ images, whether still
    unlabeled or already labeled in validation.csv (prepare moved those to the val split)."""
    pool = (manifest["split"] != "test") & ((manifest["label"] == UNDEFINED)
                                            | (manifest["label_source"] == "validation"))
    return sorted(manifest.loc[pool, "path"])


def seeded_order(paths: list[str], seed: int) -> list[str]:
    """`paths` in the order of their seeded keys (a uniform random order, stable per image)."""
    return sorted(paths, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())


def target_size(size: int, pool: int) -> int:
    """How many validation images the sample holds: review.validation_size, at most a quarter
    of the pool."""
    return min(size, pool // MAX_SHARE)


@dataclass(frozen=True)
class Sample:
    target: int            # validation images the sample holds
    answered: list[str]    # sample images already in validation.csv
    todo: list[str]        # sample images to answer, in the seeded order
    passed_over: int       # images before the sample's end that have a decision


def sample(order: list[str], target: int, validation: set[str], decided: set[str]) -> Sample:
    """The first `target` images of `order` that have no decision; those in `validation` are
    answered, the rest to answer."""
    answered, todo, passed = [], [], 0
    for p in order:
        if len(answered) + len(todo) >= target:
            break
        if p in validation:
            answered.append(p)
        elif p in decided:
            passed += 1
        else:
            todo.append(p)
    return Sample(target, answered, todo, passed)


def validation_pages(todo: list[str], proposals: pd.DataFrame, classes: list[str],
                     page_size: int) -> pd.DataFrame:
    """The images to answer as pages that each propose one class (the model's proposal): in
    windows of page_size x classes images of the seeded order, each window split by the
    proposed class, so a person who stops early leaves the answered images a uniform sample
    (up to one window). `proposals`: path, prediction, confidence (the evaluate stage's)."""
    prop = proposals.set_index("path")
    missing = [p for p in todo if p not in prop.index]
    if missing:
        raise UserError(f"no prediction for {len(missing)} validation image(s) (e.g. "
                        f"{missing[0]}): the predictions are stale; run `dvc repro`")
    rows, page, window = [], 0, page_size * len(classes)
    for start in range(0, len(todo), window):
        part = todo[start:start + window]
        for c in classes:
            on = [p for p in part if prop.at[p, "prediction"] == c]
            rows += [(page, i, p, c, float(prop.at[p, "confidence"])) for i, p in enumerate(on)]
            page += bool(on)
    return pd.DataFrame(rows, columns=PAGE_COLUMNS)

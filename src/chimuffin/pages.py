"""Review pages: the undecided pool cut into pages a person verifies with one key each.

A page holds up to `page_size` pool images that share one proposed label and sit close together
in embedding space. The person accepts the page's label for all of them at once and marks only
the exceptions, so a clean page costs one key press and a glance per thumbnail.

How pages are built (deterministic; ties go to the path):

- Every pool image gets a priority. `confident`: its suggestion score, highest first (clean,
  confident pages cover the pool fastest). `uncertain`: the review queue's value, 1 - margin plus
  0.5 when the model and the neighbours disagree, highest first (more information per image, and
  more exceptions to mark). `mixed`: both ends at once, leaving the middle for last: an image's
  place is its better one of `rank_confident * s` and `rank_uncertain * (1 - s)`, so about a
  share s of the pages start from the uncertain end (s = `uncertain_share`). The bulk goes fast
  and the hard images, which carry the last points of accuracy, are not all left to the end.
- Within each proposed label, the highest-priority image not yet on a page seeds a new page and
  takes the `page_size - 1` unassigned images of the same label most similar to it (embedding
  cosine; ties by priority). Positions on a page follow that order: the seed first, then by
  similarity to it.
- Pages are numbered by their seed's priority across labels, so the classes interleave and
  within one label the pages keep the order they were made in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api import types

from chimuffin.data.manifest import read_parquet_output
from chimuffin.errors import UserError
from chimuffin.suggest import review_value, unit_rows

ORDERS = ("confident", "uncertain", "mixed")
PAGES_FILE = "pages.parquet"  # in the suggest stage's output folder

# The table the review page and the simulated reviewer read, in this column order.
PAGE_SCHEMA = {"page": "int64", "position": "int64", "path": "object", "label": "object",
               "score": "float64", "page_score": "float64", "model_label": "object",
               "knn_label": "object", "agree": "bool"}
# how a column read back from parquet is checked against its schema type
COLUMN_CHECKS = {"int64": types.is_integer_dtype, "float64": types.is_float_dtype,
                 "object": types.is_string_dtype, "bool": types.is_bool_dtype}


def priority(suggestions: pd.DataFrame, order: str, uncertain_share: float | None = None
             ) -> np.ndarray:
    """Higher = reviewed earlier. uncertain_share: for `mixed` only, in (0, 1)."""
    if order == "confident":
        return suggestions["score"].to_numpy(dtype=np.float64)
    if order == "uncertain":
        return review_value(suggestions)
    if order == "mixed":
        if uncertain_share is None or not 0.0 < uncertain_share < 1.0:
            raise ValueError(f"page order mixed needs uncertain_share in (0, 1), got "
                             f"{uncertain_share!r}")
        confident = priority_rank(suggestions, "confident") * uncertain_share
        uncertain = priority_rank(suggestions, "uncertain") * (1.0 - uncertain_share)
        return -np.minimum(confident, uncertain).astype(np.float64)
    raise ValueError(f"unknown page order {order!r}; expected one of {', '.join(ORDERS)}")


def priority_rank(suggestions: pd.DataFrame, order: str, uncertain_share: float | None = None
                  ) -> np.ndarray:
    """0 = the image to review first; ties by path."""
    keys = np.lexsort((suggestions["path"].to_numpy(dtype=str),
                       -priority(suggestions, order, uncertain_share)))
    rank = np.empty(len(keys), dtype=np.int64)
    rank[keys] = np.arange(len(keys))
    return rank


def greedy_pages(unit: np.ndarray, page_size: int) -> list[np.ndarray]:
    """Pages of rows given in priority order: the first free row seeds a page and takes the
    page_size - 1 free rows most similar to it (ties: earlier rows first)."""
    free = np.ones(len(unit), dtype=bool)
    pages = []
    while free.any():
        seed = int(np.argmax(free))
        cand = np.nonzero(free)[0]
        if page_size == 1:
            take = np.array([seed])
        else:
            sim = unit[cand] @ unit[seed]
            sim[cand == seed] = np.inf  # the seed always opens its own page
            take = cand[np.argsort(-sim, kind="stable")[:page_size]]
        free[take] = False
        pages.append(take)
    return pages


def build_pages(suggestions: pd.DataFrame, embeddings: np.ndarray, page_size: int,
                order: str, uncertain_share: float | None = None) -> pd.DataFrame:
    """One row per suggestion (pool image), sorted by (page, position); see the module text.

    suggestions: the suggest stage's table; embeddings: (N, D), row-aligned with it;
    uncertain_share: the `mixed` order's share of pages from the uncertain end."""
    if len(suggestions) != len(embeddings):
        raise ValueError(f"{len(suggestions)} suggestions but {len(embeddings)} embeddings")
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    s = suggestions.reset_index(drop=True)
    rank = priority_rank(s, order, uncertain_share)
    unit = unit_rows(embeddings)
    made = []  # (seed's rank, member rows in position order)
    for label in sorted(s["label"].unique()):
        rows = np.nonzero((s["label"] == label).to_numpy())[0]
        rows = rows[np.argsort(rank[rows], kind="stable")]
        made += [(rank[rows[p[0]]], rows[p]) for p in greedy_pages(unit[rows], page_size)]
    made.sort(key=lambda m: m[0])
    members = [m[1] for m in made]
    row = np.concatenate(members) if members else np.zeros(0, dtype=np.int64)
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    page = np.repeat(np.arange(len(members), dtype=np.int64), sizes)
    position = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes]) if len(sizes) \
        else np.zeros(0, dtype=np.int64)
    score = s["score"].to_numpy(dtype=np.float64)[row]
    page_score = (np.bincount(page, weights=score, minlength=len(sizes)) / np.maximum(sizes, 1)
                  )[page] if len(sizes) else np.zeros(0)
    out = pd.DataFrame({
        "page": page, "position": position,
        "path": s["path"].to_numpy(dtype=object)[row],
        "label": s["label"].to_numpy(dtype=object)[row],
        "score": score, "page_score": page_score,
        "model_label": s["model_label"].to_numpy(dtype=object)[row],
        "knn_label": s["knn_label"].to_numpy(dtype=object)[row],
        "agree": s["agree"].to_numpy(dtype=bool)[row]})
    return out.astype(PAGE_SCHEMA)


def summarize_pages(pages: pd.DataFrame, classes: list[str], page_size: int, order: str,
                    uncertain_share: float | None = None) -> dict:
    per_page = pages.groupby("page")["label"].first()
    return {"pages": int(pages["page"].nunique()), "page_size": page_size, "page_order": order,
            **({"uncertain_share": uncertain_share} if order == "mixed" else {}),
            "pages_by_label": {c: int((per_page == c).sum()) for c in classes},
            "images_on_pages": len(pages)}


def read_pages(path: str | Path) -> pd.DataFrame:
    """The pages file, sorted by (page, position) and checked: every column of PAGE_SCHEMA with a
    matching type, one proposed label per page, each image on one page. A UserError names the
    file and what is wrong (a stale or damaged file: `dvc repro suggest` rewrites it)."""
    path = Path(path)
    df = read_parquet_output(path, "review pages", "dvc repro suggest")
    for col, dtype in PAGE_SCHEMA.items():
        if col not in df.columns:
            raise UserError(f"{path}: column {col!r} missing; run `dvc repro suggest`")
        if not COLUMN_CHECKS[dtype](df[col]):
            raise UserError(f"{path}: column {col!r} has type {df[col].dtype}, not {dtype}")
    mixed = df.groupby("page")["label"].nunique()
    if (mixed > 1).any():
        raise UserError(f"{path}: page {mixed[mixed > 1].index[0]} proposes more than one class")
    dup = df["path"].duplicated()
    if dup.any():
        raise UserError(f"{path}: {df['path'][dup].iat[0]} is on two pages; the file is stale "
                        "or damaged: run `dvc repro suggest`")
    return df.sort_values(["page", "position"], kind="stable").reset_index(drop=True)

"""Review pages: the undecided pool cut into pages a person verifies with one key each.

A page holds up to `page_size` pool images that share one proposed label and sit close together
in embedding space. The person accepts the page's label for all of them at once and marks only
the exceptions, so a clean page costs one key press and a glance per thumbnail.

How pages are built (deterministic; ties go to the path):

- Every pool image has a rank at each end of the pool. Confident end: its suggestion score,
  highest first (clean, confident pages cover the pool fastest). Uncertain end: the review
  queue's value, 1 - margin plus 0.5 when the model and the neighbours disagree, highest first
  (more information per image, and more exceptions to mark).
- Pages are made one after another. Each starts from one end: always the confident one for the
  order `confident`, always the uncertain one for `uncertain`; for `mixed`, page i starts from
  the uncertain end when floor((i + 1) * s) > floor(i * s) (s = `uncertain_share`: at 0.2,
  pages 4, 9, 14, ...), from the confident end otherwise. The bulk goes fast, the hard images
  (the last points of accuracy) are not all left for the end, and the middle comes last.
- A page's seed is the best-ranked image, at its end, not yet on a page; it takes the
  `page_size - 1` free images of the same proposed label most similar to it (embedding cosine;
  ties by that rank). Positions on a page follow that order: the seed first, then by similarity.
  The classes interleave, since each seed is the best free image of either class.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api import types

from chimuffin.curate.scoring import review_value
from chimuffin.data.manifest import read_parquet_output
from chimuffin.errors import UserError
from chimuffin.infer.embeddings import unit_rows

ENDS = ("confident", "uncertain")  # where a page's seed comes from
ORDERS = (*ENDS, "mixed")
EPS = 1e-9  # float slack in the mixed order's page arithmetic

# The table the review page and the simulated reviewer read, in this column order.
PAGE_SCHEMA = {"page": "int64", "position": "int64", "path": "object", "label": "object",
               "score": "float64", "page_score": "float64", "model_label": "object",
               "knn_label": "object", "agree": "bool"}
# how a column read back from parquet is checked against its schema type
COLUMN_CHECKS = {"int64": types.is_integer_dtype, "float64": types.is_float_dtype,
                 "object": types.is_string_dtype, "bool": types.is_bool_dtype}


def priority(suggestions: pd.DataFrame, end: str) -> np.ndarray:
    """Higher = reviewed earlier from that end."""
    if end == "confident":
        return suggestions["score"].to_numpy(dtype=np.float64)
    if end == "uncertain":
        return review_value(suggestions)
    raise ValueError(f"unknown end {end!r}; expected one of {', '.join(ENDS)}")


def priority_rank(suggestions: pd.DataFrame, end: str) -> np.ndarray:
    """0 = the image to review first from that end; ties by path."""
    keys = np.lexsort((suggestions["path"].to_numpy(dtype=str), -priority(suggestions, end)))
    rank = np.empty(len(keys), dtype=np.int64)
    rank[keys] = np.arange(len(keys))
    return rank


def check_order(order: str, uncertain_share: float | None) -> None:
    if order not in ORDERS:
        raise ValueError(f"unknown page order {order!r}; expected one of {', '.join(ORDERS)}")
    if order == "mixed" and (uncertain_share is None or not 0.0 < uncertain_share < 1.0):
        raise ValueError(f"page order mixed needs uncertain_share in (0, 1), got "
                         f"{uncertain_share!r}")


def page_end(index: int, order: str, uncertain_share: float | None = None) -> str:
    """The end page `index` (0 = the first) starts from (see the module text); the order and
    share are valid (check_order)."""
    if order in ENDS:
        return order
    pages_due = math.floor((index + 1) * uncertain_share + EPS)
    return "uncertain" if pages_due > math.floor(index * uncertain_share + EPS) else "confident"


def greedy_pages(labels: np.ndarray, unit: np.ndarray, ranks: dict[str, np.ndarray],
                 page_size: int, order: str, uncertain_share: float | None) -> list[np.ndarray]:
    """Member rows of each page, in page and position order (see the module text)."""
    free = np.ones(len(labels), dtype=bool)
    pages = []
    while free.any():
        rank = ranks[page_end(len(pages), order, uncertain_share)]
        cand = np.nonzero(free)[0]
        seed = cand[np.argmin(rank[cand])]
        cand = cand[labels[cand] == labels[seed]]
        cand = cand[np.argsort(rank[cand])]  # similarity ties go to the better rank
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
    check_order(order, uncertain_share)
    s = suggestions.reset_index(drop=True)
    ranks = {end: priority_rank(s, end) for end in ENDS if order in (end, "mixed")}
    members = greedy_pages(s["label"].to_numpy(dtype=str), unit_rows(embeddings), ranks,
                           page_size, order, uncertain_share)
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


def pages_left(suggestions: pd.DataFrame, unit: np.ndarray, done: set[str], page_size: int,
               order: str, uncertain_share: float | None = None) -> pd.DataFrame:
    """A model's pages built again on the images not verified yet (`done` left out): every page
    full and seeded from the best image left, where dropping the verified images from the pages
    it built on its snapshot would leave the remnants of its best clusters first.
    unit: the suggestions' unit embeddings, row-aligned."""
    keep = ~suggestions["path"].isin(done).to_numpy()
    return build_pages(suggestions[keep], unit[keep], page_size, order, uncertain_share)


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

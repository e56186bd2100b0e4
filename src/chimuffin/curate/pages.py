"""Review pages: the undecided pool cut into pages a person verifies with one key each.

A page holds up to `page_size` pool images that share one proposed label and sit close together
in embedding space. The person accepts the page's label for all of them at once and marks only
the exceptions, so a clean page costs one key press and a glance per thumbnail.

How pages are built (deterministic; ties go to the path): pages are made one after another, the
most confident first (highest suggestion score: clean, confident pages cover the pool fastest).
A page's seed is the highest-scoring image not yet on a page; it takes the `page_size - 1` free
images of the same proposed label most similar to it (embedding cosine; ties by score).
Positions on a page follow that order: the seed first, then by similarity. The classes
interleave, since each seed is the best free image of either class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api import types

from chimuffin.data.manifest import read_parquet_output
from chimuffin.errors import UserError
from chimuffin.infer.embeddings import unit_rows

# The table the review page and the simulated reviewer read, in this column order.
PAGE_SCHEMA = {"page": "int64", "position": "int64", "path": "object", "label": "object",
               "score": "float64", "page_score": "float64", "model_label": "object",
               "knn_label": "object", "agree": "bool"}
# how a column read back from parquet is checked against its schema type
COLUMN_CHECKS = {"int64": types.is_integer_dtype, "float64": types.is_float_dtype,
                 "object": types.is_string_dtype, "bool": types.is_bool_dtype}


def confidence_rank(suggestions: pd.DataFrame) -> np.ndarray:
    """0 = the image to review first (the highest score); ties by path."""
    keys = np.lexsort((suggestions["path"].to_numpy(dtype=str),
                       -suggestions["score"].to_numpy(dtype=np.float64)))
    rank = np.empty(len(keys), dtype=np.int64)
    rank[keys] = np.arange(len(keys))
    return rank


def greedy_pages(labels: np.ndarray, unit: np.ndarray, rank: np.ndarray,
                 page_size: int) -> list[np.ndarray]:
    """Member rows of each page, in page and position order (see the module text)."""
    free = np.ones(len(labels), dtype=bool)
    pages = []
    while free.any():
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


def build_pages(suggestions: pd.DataFrame, embeddings: np.ndarray, page_size: int
                ) -> pd.DataFrame:
    """One row per suggestion (pool image), sorted by (page, position); see the module text.

    suggestions: the suggest stage's table; embeddings: (N, D), row-aligned with it."""
    if len(suggestions) != len(embeddings):
        raise ValueError(f"{len(suggestions)} suggestions but {len(embeddings)} embeddings")
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    s = suggestions.reset_index(drop=True)
    members = greedy_pages(s["label"].to_numpy(dtype=str), unit_rows(embeddings),
                           confidence_rank(s), page_size)
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


def summarize_pages(pages: pd.DataFrame, classes: list[str], page_size: int) -> dict:
    per_page = pages.groupby("page")["label"].first()
    return {"pages": int(pages["page"].nunique()), "page_size": page_size,
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

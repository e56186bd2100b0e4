"""The verify view's input (data/suggest/pages.parquet) and the progress numbers.

pages.parquet has one row per undecided pool image, sorted by (page, position): `page`
(0 = the first page to review), `position`, `path`, `label` (the page's proposed class, the same
on every row of a page), `score` (this image's score for that label), `page_score` (the page's
mean), `model_label`, `knn_label`, `agree`. The page shows pages in page order (page 0
first), the order the simulated reviewer goes through them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from chimuffin.curate import pages
from chimuffin.curate.scoring import EVIDENCE_COLUMNS, read_neighbours, read_suggestions
from chimuffin.errors import UserError
from chimuffin.labels.rows import Decision, person_decided
from chimuffin.review.history import images_per_minute


def pages_to_verify(path: Path, pool: set[str], classes: list[str]) -> pd.DataFrame | None:
    """The pages file checked (chimuffin.curate.pages.read_pages) against the images the page may
    label, or None when there is none (older pipeline outputs)."""
    if not path.is_file():
        return None
    return check_pages(pages.read_pages(path), path, pool, classes)


def check_pages(df: pd.DataFrame, path: Path, pool: set[str], classes: list[str]) -> pd.DataFrame:
    """Pages (as read_pages checked them) that propose classes and hold pool images only."""
    fix = "the file is stale or damaged: run `dvc repro suggest`"
    bad = df[~df["label"].isin(classes)]
    if len(bad):
        raise UserError(f"{path}: page {bad['page'].iat[0]} proposes {bad['label'].iat[0]!r}, "
                        f"not a class ({', '.join(classes)})")
    unknown = df[~df["path"].isin(pool)]
    if len(unknown):
        raise UserError(f"{path}: {unknown['path'].iat[0]} is not a pool image of the prepared "
                        f"dataset; {fix}")
    return df


def page_list(df: pd.DataFrame) -> list[dict]:
    """Pages in page order (as pages_to_verify sorts them), each with its images by position."""
    out: dict[int, dict] = {}
    for r in df.itertuples(index=False):
        page = out.setdefault(int(r.page), {
            "page": int(r.page), "label": r.label, "page_score": round(float(r.page_score), 4),
            "images": []})
        page["images"].append({"path": r.path, "score": round(float(r.score), 4),
                               "model_label": r.model_label, "knn_label": r.knn_label,
                               "agree": bool(r.agree)})
    return list(out.values())


EVIDENCE = {  # column -> how the page gets it (EVIDENCE_COLUMNS but the path)
    "model_label": str, "model_conf": float, "knn_label": str, "knn_conf": float,
    "knn_sim": float, "nearest_labeled": str, "dup_of": str, "dup_sim": float,
    "near_duplicate": bool}


def read_evidence(path: Path, neighbours_path: Path,
                  paths: set[str]) -> tuple[dict[str, dict], str | None]:
    """What stands behind each proposal, for the images in `paths`: the model's label and
    confidence, the labeled neighbours' vote (label, share, mean similarity), the nearest
    labeled image, the most similar image (and whether it is a near-duplicate), all from the
    suggest stage's suggestions.parquet; and the k labeled neighbours that voted, each with
    its similarity, from neighbours.parquet. ({}, why) when suggestions.parquet is absent or
    lacks a column; the evidence without `neighbours`, and why, when only neighbours.parquet
    is (the enlarged view then says so, the rest works)."""
    try:
        df = read_suggestions(path, EVIDENCE_COLUMNS)
    except UserError as e:
        return {}, str(e)
    try:
        nb = read_neighbours(neighbours_path)
    except UserError as e:
        return evidence_of(df, paths), str(e)
    return evidence_of(df, paths, nb), None


def evidence_of(df: pd.DataFrame, paths: set[str],
                neighbours: pd.DataFrame | None = None) -> dict[str, dict]:
    """The evidence columns of suggestions.parquet rows, for the images in `paths`; with
    neighbours.parquet's rows, each image's `neighbours`: [[path, similarity], ...], the
    nearest first."""
    rows = df[df["path"].isin(paths)]
    out = {r["path"]: {c: _value(r[c], kind) for c, kind in EVIDENCE.items()}
           for r in rows.to_dict("records")}
    if neighbours is not None:  # [] for an image no labeled image voted on
        for ev in out.values():
            ev["neighbours"] = []
        nb = neighbours[neighbours["path"].isin(list(out))].sort_values(
            ["path", "rank"], kind="stable")
        for r in nb.itertuples(index=False):
            out[r.path]["neighbours"].append(
                [str(r.neighbour), _value(r.similarity, float)])
    return out


def _value(x, kind):
    """JSON-safe: a float rounded (NaN, which JSON cannot carry, as None), a missing string
    as ""."""
    if kind is float:
        return None if pd.isna(x) else round(float(x), 4)
    if kind is str:
        return "" if x is None or (isinstance(x, float) and np.isnan(x)) else str(x)
    return bool(x)


def progress(pool: list[str], decisions: dict[str, Decision], pages: pd.DataFrame | None,
             labels: list[str], classes: list[str], pace: dict) -> dict:
    """How far the person is: pool images verified (by the label they got), images left on
    the pages (by proposed class), pages left, pace and the minutes left at that pace."""
    done = person_decided(decisions.values())
    verified = Counter(decisions[p].label for p in pool if p in done)
    if pages is None:
        left, pages_total, pages_left, on_pages = [], 0, 0, set()
    else:
        # a boolean array: an empty list would select columns once no page is left
        todo = pages[~pages["path"].isin(done).to_numpy(dtype=bool)]
        left, pages_total = list(todo["label"]), int(pages["page"].nunique())
        pages_left, on_pages = int(todo["page"].nunique()), set(pages["path"])
    left_by_class = Counter(left)
    rate = images_per_minute(pace)
    return {
        "pool": len(pool),
        "verified": sum(verified.values()),
        "verified_by_label": {lbl: verified[lbl] for lbl in labels},
        "left": len(left),
        "left_by_class": {c: left_by_class[c] for c in classes},
        "pages": pages_total, "pages_left": pages_left,
        # unverified pool images on no page (decided by a tool since suggest ran, or new)
        "off_pages": sum(1 for p in pool if p not in on_pages and p not in done),
        "per_minute": None if rate is None else round(rate, 1),
        "minutes_left": None if rate is None else round(len(left) / rate, 1),
    }

"""Label suggestions, label-issue scores and the review queue.

Everything here is a pure function of the clean manifest, the evaluate stage's predictions and
embeddings (one pass makes both) and tiny pixel signatures. Two signals are combined:

- the model's class probabilities, and
- the labels of an image's nearest LABELED neighbours in embedding space (cosine kNN).

A model must never grade the labels it was trained on: for a labeled image the kNN vote leaves
the image itself out, and the model's own probability is used only for validation images (the
model never trained on them). The embedding itself was still learned from the training labels,
so a memorised wrong label pulls its image towards the wrong class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chimuffin.data.manifest import read_parquet_output, read_rows
from chimuffin.data.views import label_index
from chimuffin.errors import UserError
from chimuffin.infer.embeddings import unit_rows
from chimuffin.labels.rows import SOURCES, UNDEFINED

# One pseudo-vote spread over the classes: ten unanimous neighbours give ~0.95, not 1.0, and
# an image with no labeled neighbours at all gets a uniform vote.
KNN_PRIOR = 1.0
SIGNATURE_GRID = 16  # pixel signature: 3 x 16 x 16 block means
QUEUE_SIZE = 200  # the review queue: the images most worth an answer
CLUSTER_SIZE = 24  # at most this many images in one queue cluster (answered at once)


# --- neighbours ---------------------------------------------------------------------------

def cosine_knn(query: np.ndarray, ref: np.ndarray, k: int, exclude: np.ndarray | None = None,
               chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar rows of `ref` for every row of `query` (both unit rows).

    `exclude[i]` is a row of ref that query row i must not get (itself), or -1. Returns
    (indices, similarities), each (n, k'), most similar first; ties go to the lower index so
    the result is deterministic. k' = min(k, rows available)."""
    n, m = len(query), len(ref)
    k = max(0, min(k, m - (1 if exclude is not None else 0)))
    idx = np.zeros((n, k), dtype=np.int64)
    sim = np.zeros((n, k), dtype=np.float32)
    if k == 0:
        return idx, sim
    for lo in range(0, n, chunk):
        s = query[lo:lo + chunk] @ ref.T
        if exclude is not None:
            ex = exclude[lo:lo + chunk]
            rows = np.nonzero(ex >= 0)[0]
            s[rows, ex[rows]] = -np.inf
        part = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < m else \
            np.tile(np.arange(m), (len(s), 1))
        part_sim = np.take_along_axis(s, part, axis=1)
        order = np.lexsort((part, -part_sim), axis=1)
        idx[lo:lo + chunk] = np.take_along_axis(part, order, axis=1)
        sim[lo:lo + chunk] = np.take_along_axis(part_sim, order, axis=1)
    return idx, sim


def knn_vote(nbr_sim: np.ndarray, nbr_y: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities from neighbours' labels, weighted by (non-negative) similarity."""
    w = np.clip(nbr_sim, 0.0, None).astype(np.float64)
    votes = np.zeros((len(nbr_sim), n_classes))
    for c in range(n_classes):
        votes[:, c] = (w * (nbr_y == c)).sum(axis=1)
    return (votes + KNN_PRIOR / n_classes) / (votes.sum(axis=1, keepdims=True) + KNN_PRIOR)


def combine(p_model: np.ndarray, p_knn: np.ndarray, model_weight: float) -> np.ndarray:
    return model_weight * p_model + (1.0 - model_weight) * p_knn


def margin(p: np.ndarray) -> np.ndarray:
    """Top probability minus the runner-up: 0 = a coin flip, 1 = certain."""
    top2 = np.sort(p, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


# --- near duplicates ----------------------------------------------------------------------

def pixel_signatures(images: np.ndarray, rows: np.ndarray, grid: int = SIGNATURE_GRID,
                     chunk: int = 512) -> np.ndarray:
    """A model-independent fingerprint per image: 3 x grid x grid block means of the pixels,
    centred and scaled to unit length, so re-encoding, resizing or a brightness/contrast change
    barely moves it. `images` is the (N,3,S,S) uint8 cache (memory-mapped is fine)."""
    size = images.shape[-1]
    if size < grid:
        raise UserError(f"suggest: images of {size}px are smaller than the {grid}px signature")
    edges = np.linspace(0, size, grid + 1).astype(int)[:-1]
    out = np.zeros((len(rows), 3 * grid * grid), dtype=np.float32)
    for lo in range(0, len(rows), chunk):
        x = read_rows(images, rows[lo:lo + chunk]).astype(np.float32)
        counts = np.diff(np.append(edges, size)).astype(np.float32)
        x = np.add.reduceat(np.add.reduceat(x, edges, axis=2), edges, axis=3)
        x = x / counts[:, None] / counts[None, :]
        x = x.reshape(len(x), -1)
        out[lo:lo + chunk] = x - x.mean(axis=1, keepdims=True)
    return unit_rows(out)


def near_duplicates(signatures: np.ndarray, content_hash: np.ndarray,
                    threshold: float) -> pd.DataFrame:
    """For every image: its most similar other image (row), that similarity (1.0 for identical
    pixels), and whether it is a near duplicate (similarity >= threshold)."""
    idx, sim = cosine_knn(signatures, signatures, 1, exclude=np.arange(len(signatures)))
    if idx.shape[1] == 0:
        n = len(signatures)
        return pd.DataFrame({"dup_row": np.full(n, -1), "dup_sim": np.zeros(n, np.float32),
                             "near_duplicate": np.zeros(n, bool)})
    dup_row, dup_sim = idx[:, 0].copy(), sim[:, 0].copy()
    # identical pixels are duplicates whatever the signature says
    first: dict[str, int] = {}
    twin = np.full(len(content_hash), -1)
    for i, h in enumerate(content_hash):
        if h in first:
            twin[i], twin[first[h]] = first[h], i
        else:
            first[h] = i
    has_twin = twin >= 0
    dup_row[has_twin], dup_sim[has_twin] = twin[has_twin], 1.0
    return pd.DataFrame({"dup_row": dup_row, "dup_sim": dup_sim,
                         "near_duplicate": dup_sim >= threshold})


# --- the tables ---------------------------------------------------------------------------

def pool_mask(df: pd.DataFrame) -> np.ndarray:
    """Unlabeled training images that nobody has decided about yet."""
    return ((df["split"] == "train") & (df["label"] == UNDEFINED)
            & ~df["label_source"].isin(SOURCES)).to_numpy()


def reference_mask(df: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """Labeled train and validation images: the neighbours whose labels vote (never test)."""
    return (df["split"].isin(["train", "val"]) & df["label"].isin(classes)).to_numpy()


def build_tables(df: pd.DataFrame, p_model: np.ndarray, emb: np.ndarray, signatures: np.ndarray,
                 classes: list[str], cfg) -> dict[str, pd.DataFrame]:
    """suggestions (pool), neighbours (the pool's voting neighbours), label_issues (labeled),
    review_queue.

    df: the clean manifest; p_model: (N, C) model probabilities, emb: (N, D) embeddings and
    signatures: (N, F) pixel signatures, all row-aligned with df; cfg: the `suggest` params."""
    df = df.reset_index(drop=True)
    unit = unit_rows(emb)
    dups = near_duplicates(signatures, df["content_hash"].to_numpy(), cfg.dup_similarity)
    paths = df["path"].to_numpy()
    dups["dup_of"] = np.where(dups["dup_row"] >= 0, paths[dups["dup_row"].clip(lower=0)], "")
    knn = pool_knn(df, unit, classes, cfg.k)
    suggestions = pool_suggestions(df, p_model, knn, dups, classes, cfg)
    issues = label_issues(df, p_model, unit, dups, classes, cfg)
    queue = review_queue(suggestions, issues, unit, pd.Index(paths), cfg)
    return {"suggestions": suggestions, "neighbours": neighbour_table(paths, *knn),
            "label_issues": issues, "review_queue": queue}


def dup_columns(dups: pd.DataFrame, rows: np.ndarray) -> dict:
    return {c: dups[c].to_numpy()[rows] for c in ("dup_of", "dup_sim", "near_duplicate")}


def pool_knn(df, unit, classes, k) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pool rows, reference rows, neighbours, similarities): every undecided pool image's k
    most similar labeled images (positions in the reference rows), the ones whose labels vote."""
    ref = np.nonzero(reference_mask(df, classes))[0]
    pool = np.nonzero(pool_mask(df))[0]
    nbr, sim = cosine_knn(unit[pool], unit[ref], k)
    return pool, ref, nbr, sim


def neighbour_table(paths: np.ndarray, pool: np.ndarray, ref: np.ndarray, nbr: np.ndarray,
                    sim: np.ndarray) -> pd.DataFrame:
    """One row per pool image and voting neighbour, most similar first: `path` (the pool
    image), `rank` (1 = the nearest), `neighbour` (a labeled image), `similarity` (cosine)."""
    n, k = nbr.shape
    return pd.DataFrame({
        "path": np.repeat(paths[pool], k), "rank": np.tile(np.arange(1, k + 1), n),
        "neighbour": paths[ref][nbr.reshape(-1)], "similarity": sim.reshape(-1)})


def pool_suggestions(df, p_model, knn, dups, classes, cfg) -> pd.DataFrame:
    """Every undecided pool image: the model's probabilities and its labeled neighbours' vote
    (pool_knn), combined into one proposal (`label`, `score`, `margin`), and its nearest
    duplicate."""
    cls = np.array(classes, dtype=object)
    pool, ref, nbr, sim = knn
    paths = df["path"].to_numpy()
    p_knn = knn_vote(sim, label_index(df["label"], classes)[ref][nbr], len(classes))
    p = combine(p_model[pool], p_knn, cfg.model_weight)
    model_y, knn_y = p_model[pool].argmax(1), p_knn.argmax(1)
    return pd.DataFrame({
        "path": paths[pool], "split": df["split"].to_numpy()[pool],
        "model_label": cls[model_y], "model_conf": p_model[pool].max(1),
        "knn_label": cls[knn_y], "knn_conf": p_knn.max(1),
        "knn_sim": sim.mean(1) if sim.shape[1] else np.zeros(len(pool)),
        "nearest_labeled": paths[ref][nbr[:, 0]] if nbr.shape[1] else "",
        "agree": model_y == knn_y, "label": cls[p.argmax(1)], "score": p.max(1),
        "margin": margin(p), **dup_columns(dups, pool)})


def label_issues(df, p_model, unit, dups, classes, cfg) -> pd.DataFrame:
    """Every labeled train/val image, worst first: leave-one-out kNN of the other labeled
    images, plus the model's probability only where it is out of sample (validation)."""
    cls = np.array(classes, dtype=object)
    ref = np.nonzero(reference_mask(df, classes))[0]
    y = label_index(df["label"], classes)
    nbr, sim = cosine_knn(unit[ref], unit[ref], cfg.k, exclude=np.arange(len(ref)))
    p_knn = knn_vote(sim, y[ref][nbr], len(classes))
    oos = df["split"].to_numpy()[ref] == "val"
    p = np.where(oos[:, None], combine(p_model[ref], p_knn, cfg.model_weight), p_knn)
    labels = df["label"].to_numpy()
    dup_rows = dups["dup_row"].to_numpy()[ref]
    dup_label = np.where(dup_rows >= 0, labels[dup_rows.clip(0)], UNDEFINED)
    issues = pd.DataFrame({
        "path": df["path"].to_numpy()[ref], "split": df["split"].to_numpy()[ref],
        "label": labels[ref], "label_source": df["label_source"].to_numpy()[ref],
        "issue_score": 1.0 - p[np.arange(len(ref)), y[ref]], "suggested_label": cls[p.argmax(1)],
        "model_out_of_sample": oos, "knn_label": cls[p_knn.argmax(1)], "knn_conf": p_knn.max(1),
        "model_label": cls[p_model[ref].argmax(1)], "model_conf": p_model[ref].max(1),
        **dup_columns(dups, ref)})
    issues["dup_conflict"] = (issues["near_duplicate"] & np.isin(dup_label, classes)
                              & (dup_label != labels[ref]))
    return issues.sort_values(["issue_score", "path"], ascending=[False, True],
                              kind="stable").reset_index(drop=True)


def review_value(suggestions: pd.DataFrame) -> np.ndarray:
    """What a person's answer is worth: uncertain first, model/neighbour disagreement on top."""
    return (1.0 - suggestions["margin"].to_numpy()) + 0.5 * ~suggestions["agree"].to_numpy()


def reason(row) -> str:
    if row.kind == "label_issue":
        return f"labeled {row.current}, evidence says {row.proposed}"
    if row.model_label != row.knn_label:
        return f"model says {row.model_label}, neighbours say {row.knn_label}"
    return "uncertain"


def review_queue(suggestions: pd.DataFrame, issues: pd.DataFrame, unit: np.ndarray,
                 path_index: pd.Index, cfg) -> pd.DataFrame:
    """The images most worth a human answer, in clusters of similar images.

    Pool images by review_value; labeled images whose issue_score >= cfg.issue_threshold by
    1 + issue_score (a likely wrong label poisons training, so it comes first). The top
    QUEUE_SIZE are grouped greedily: the most valuable unassigned image opens a cluster
    and takes the unassigned images with embedding cosine >= cfg.cluster_similarity to it (at
    most CLUSTER_SIZE), so a person can answer a whole cluster at once."""
    pool = pd.DataFrame({
        "path": suggestions["path"], "kind": "pool", "value": review_value(suggestions),
        "current": UNDEFINED, "proposed": suggestions["label"], "score": suggestions["score"],
        "model_label": suggestions["model_label"], "knn_label": suggestions["knn_label"]})
    bad = issues[issues["issue_score"] >= cfg.issue_threshold]
    flagged = pd.DataFrame({
        "path": bad["path"], "kind": "label_issue", "value": 1.0 + bad["issue_score"],
        "current": bad["label"], "proposed": bad["suggested_label"],
        "score": bad["issue_score"], "model_label": bad["model_label"],
        "knn_label": bad["knn_label"]})
    q = pd.concat([flagged, pool], ignore_index=True)
    q = q.sort_values(["value", "path"], ascending=[False, True], kind="stable")
    q = q.head(QUEUE_SIZE).reset_index(drop=True)
    vecs = unit[path_index.get_indexer(q["path"])]
    q["cluster"] = greedy_clusters(vecs, cfg.cluster_similarity, CLUSTER_SIZE)
    q["cluster_size"] = q.groupby("cluster")["path"].transform("size").astype(np.int64)
    q["reason"] = [reason(r) for r in q.itertuples()]
    # clusters in the order their best image was ranked; within one, by value
    q = q.sort_values(["cluster", "value", "path"], ascending=[True, False, True],
                      kind="stable").reset_index(drop=True)
    q.insert(0, "rank", np.arange(1, len(q) + 1))
    return q


def greedy_clusters(unit: np.ndarray, threshold: float, max_size: int) -> np.ndarray:
    """Cluster ids for rows given in priority order (0 = the cluster of row 0)."""
    cluster = np.full(len(unit), -1, dtype=np.int64)
    next_id = 0
    for i in range(len(unit)):
        if cluster[i] >= 0:
            continue
        free = np.nonzero(cluster < 0)[0]
        s = unit[free] @ unit[i]
        s[free == i] = np.inf  # the seed always joins its own cluster
        members = free[s >= threshold]
        members = members[np.argsort(-s[s >= threshold], kind="stable")][:max_size]
        cluster[members] = next_id
        next_id += 1
    return cluster


def summarize(tables: dict[str, pd.DataFrame], classes: list[str], cfg) -> dict:
    s, issues, q = tables["suggestions"], tables["label_issues"], tables["review_queue"]
    by_threshold = {}
    for t in (0.6, 0.7, 0.8, 0.9, 0.95, 0.99):
        ok = s["score"] >= t
        by_threshold[str(t)] = {c: int((ok & (s["label"] == c)).sum()) for c in classes}
    return {
        "pool": len(s), "agree": int(s["agree"].sum()),
        "proposed_by_min_score": by_threshold,
        "labeled": len(issues),
        "label_issues_over_threshold": int((issues["issue_score"] >= cfg.issue_threshold).sum()),
        "near_duplicates": int(s["near_duplicate"].sum() + issues["near_duplicate"].sum()),
        "duplicate_label_conflicts": int(issues["dup_conflict"].sum()),
        "review_queue": len(q), "review_clusters": int(q["cluster"].nunique()),
    }


SUGGESTION_COLUMNS = ["path", "label", "score", "agree", "model_label", "model_conf",
                      "knn_label", "knn_conf"]
# what stands behind a proposal (the review page's enlarged view shows it)
EVIDENCE_COLUMNS = ["path", "model_label", "model_conf", "knn_label", "knn_conf", "knn_sim",
                    "nearest_labeled", "dup_of", "dup_sim", "near_duplicate"]
QUEUE_COLUMNS = ["rank", "path", "kind", "cluster", "proposed", "reason"]
LABEL_ISSUE_COLUMNS = ["path", "split", "label", "issue_score", "suggested_label"]
NEIGHBOUR_COLUMNS = ["path", "rank", "neighbour", "similarity"]


def read_suggestions(path: str | Path, columns: list[str] = SUGGESTION_COLUMNS) -> pd.DataFrame:
    """The suggest stage's suggestions (one row per pool image) with at least `columns`; a
    missing, damaged or stale file stops with its path and `dvc repro suggest`."""
    return read_parquet_output(path, "suggestions", "dvc repro suggest", columns)


def read_queue(path: str | Path) -> pd.DataFrame:
    """The suggest stage's review queue, in rank order (QUEUE_COLUMNS), checked the same way."""
    return read_parquet_output(path, "review queue", "dvc repro suggest", QUEUE_COLUMNS)


def read_label_issues(path: str | Path) -> pd.DataFrame:
    """The suggest stage's label issues (one row per labeled image, the likeliest wrong label
    first; LABEL_ISSUE_COLUMNS), checked the same way."""
    return read_parquet_output(path, "label issues", "dvc repro suggest", LABEL_ISSUE_COLUMNS)


def read_neighbours(path: str | Path) -> pd.DataFrame:
    """The suggest stage's voting neighbours (one row per pool image and neighbour, rank 1 the
    nearest; NEIGHBOUR_COLUMNS), checked the same way."""
    return read_parquet_output(path, "voting neighbours", "dvc repro suggest", NEIGHBOUR_COLUMNS)

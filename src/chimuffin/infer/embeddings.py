"""Penultimate embeddings: their table, unit-length rows for cosine similarity, and their seeded
PaCMAP reductions."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from chimuffin.data.manifest import read_parquet_output
from chimuffin.errors import UserError


def embeddings_frame(paths: pd.Series, emb: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"path": paths.to_numpy(), "embedding": list(emb.astype(np.float32))})


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def read_embeddings(path: str | Path) -> tuple[pd.Series, np.ndarray]:
    """The embeddings the evaluate stage wrote: (paths, N x 512 float32 rows)."""
    df = read_parquet_output(path, "embeddings", "dvc repro evaluate", ["path", "embedding"])
    return df["path"], np.stack(df["embedding"].to_numpy()).astype(np.float32)


PACMAP_COLUMNS = ["path", "split", "x", "y"]


def read_pacmap(path: str | Path) -> pd.DataFrame:
    """The embed stage's 2-D PaCMAP coordinates, one row per image (PACMAP_COLUMNS)."""
    return read_parquet_output(path, "PaCMAP coordinates", "dvc repro embed", PACMAP_COLUMNS)


# PaCMAP logs these on every seeded or 3-D fit: chimuffin seeds every reduction on purpose (so
# reruns are byte-identical) and draws the 3-D one for the review page, so they ask nothing of
# the user. Its other warnings (sample size against neighbour pairs) still print.
EXPECTED_PACMAP_NOTES = ("random state is set to", "n_components != 2")


class _DropExpectedNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(note in record.getMessage() for note in EXPECTED_PACMAP_NOTES)


@contextmanager
def expected_pacmap_notes_silenced() -> Iterator[None]:
    """Drop PaCMAP's notes about a set random state and 3-D output while the block runs."""
    logger = logging.getLogger("pacmap.pacmap")  # the module's own logger (a filter applies
    drop = _DropExpectedNotes()                  # where a record is logged, not up the tree)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


# PaCMAP's own default neighbour count, for the embed stage's maps and the 3LC run's.
PACMAP_NEIGHBORS = 10


def pacmap_reduce(x: np.ndarray, dims: int, n_neighbors: int, seed: int) -> np.ndarray:
    """Seeded PaCMAP; small sets get fewer neighbours (PaCMAP needs n_neighbors < n)."""
    import pacmap

    n = len(x)
    if n < 5:
        raise UserError(f"embed: PaCMAP needs at least 5 images, got {n}")
    k = max(2, min(n_neighbors, n - 3))
    with expected_pacmap_notes_silenced():
        reducer = pacmap.PaCMAP(n_components=dims, n_neighbors=k, random_state=seed,
                                MN_ratio=0.5, FP_ratio=2.0, verbose=False)
        out = reducer.fit_transform(x.astype(np.float64), init="pca")
    if out is None or not np.isfinite(out).all():
        raise UserError("embed: PaCMAP returned no or non-finite coordinates")
    return out.astype(np.float32)


def scatter_png(coords: np.ndarray, labels: pd.Series, out_path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    palette = {"undefined": "#bbbbbb"}
    colors = ["#d95f02", "#1b9e77", "#7570b3", "#e7298a"]
    for i, lbl in enumerate(sorted(set(labels), key=lambda s: (s == "undefined", s))):
        m = (labels == lbl).to_numpy()
        ax.scatter(coords[m, 0], coords[m, 1], s=6 if lbl == "undefined" else 10,
                   c=palette.get(lbl, colors[i % len(colors)]), label=f"{lbl} ({m.sum()})",
                   alpha=0.7, linewidths=0)
    ax.set_title(title)
    ax.legend(loc="best", markerscale=2)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out_path, format="png", metadata={"Software": None})
    plt.close(fig)

"""The manifest: one row per usable image, pointing into the uint8 tensor cache.

Columns (data/prepared/manifest.parquet and data/clean/manifest.parquet):
  path (relative to the dataset root), split (train|val|test), label (a class or undefined),
  label_source (folder|validation in the prepared manifest; a decision's source after clean),
  idx (row in images.npy), content_hash (SHA-1 of the decoded pixels), width, height (original).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chimuffin.errors import UserError

COLUMNS = ["path", "split", "label", "label_source", "idx", "content_hash", "width", "height"]
SPLITS = ("train", "val", "test")


def read_manifest(path: str | Path, columns: list[str] = COLUMNS) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found (run `dvc repro` for the earlier stages)")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow's ArrowInvalid, OSError... on a damaged file
        raise UserError(f"{path}: not a readable manifest ({type(e).__name__}); rerun "
                        "`dvc repro` to rebuild it") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    return df


def open_cache(path: str | Path) -> np.ndarray:
    """Memory-map the image cache (N,3,S,S uint8): pages load on demand, memory stays bounded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image cache not found (run `dvc repro prepare`)")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable image cache ({e}); rerun "
                        "`dvc repro prepare` to rebuild it") from e


def stratified_val(labels: pd.Series, fraction: float, seed: int) -> pd.Series:
    """Boolean mask choosing round(n*fraction) of each class (at least 1, at most n-1)."""
    mask = pd.Series(False, index=labels.index)
    if fraction <= 0:
        return mask
    rng = np.random.default_rng(seed)
    for cls in sorted(labels.unique()):
        idx = labels.index[labels == cls].to_numpy()
        if len(idx) < 2:
            raise UserError(
                f"params: prepare.val_fraction={fraction} leaves class '{cls}' with "
                f"{len(idx)} labeled image(s): need at least 2 to have one for training and "
                "one for validation")
        k = min(max(1, round(len(idx) * fraction)), len(idx) - 1)
        mask[rng.permutation(idx)[:k]] = True
    return mask

"""Row selections of the clean manifest that the stages share."""

from __future__ import annotations

import numpy as np
import pandas as pd

from chimuffin.labels.rows import UNDEFINED


def label_index(labels: pd.Series, classes: list[str]) -> np.ndarray:
    """Class index per row; -1 for `undefined`."""
    lookup = {c: i for i, c in enumerate(classes)}
    return labels.map(lambda s: lookup.get(s, -1)).to_numpy(dtype=np.int64)


def labeled(df: pd.DataFrame, split: str) -> pd.DataFrame:
    return df[(df["split"] == split) & (df["label"] != UNDEFINED)]


def rows_and_labels(df: pd.DataFrame, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return df["idx"].to_numpy(dtype=np.int64), label_index(df["label"], classes)

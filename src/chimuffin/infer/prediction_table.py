"""The evaluate stage's predictions table (metrics/eval/predictions.parquet, made by
manifest_predictions.predict_manifest) and its one checked reader. Kept apart from the model
code so that the suggest stage and the review page read it without importing torch."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from chimuffin.data.manifest import read_parquet_output

# What its readers need of each row (one per manifest image; the file holds more, see
# predict_manifest), besides p_<class> for the classes the suggest stage scores with.
COLUMNS = ["path", "prediction", "confidence"]


def read_predictions(path: str | Path, classes: Iterable[str] = ()) -> pd.DataFrame:
    """The predictions with COLUMNS and p_<class> for each of `classes`; a missing, damaged or
    stale file stops with its path and `dvc repro evaluate`."""
    return read_parquet_output(path, "predictions", "dvc repro evaluate",
                               [*COLUMNS, *(f"p_{c}" for c in classes)])

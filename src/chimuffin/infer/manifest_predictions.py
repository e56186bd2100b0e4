"""Per-sample predictions of a model over the whole manifest, and metrics from them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from chimuffin.data.views import label_index
from chimuffin.infer.batches import per_sample_loss, predict, softmax
from chimuffin.report.metrics import classification_report, precision_recall_curve, roc_curve

# Batches per progress report: chunks are whole batches, so every batch holds the same images
# as in one call over all rows.
BATCHES_PER_REPORT = 8


def predict_rows(model, images: np.ndarray, rows: np.ndarray, batch_size: int, device,
                 tta_flip: bool = False, with_embeddings: bool = False,
                 progress: Callable[[int], None] | None = None):
    """engine.predict over rows, calling progress(n_images) every few batches."""
    if progress is None or not len(rows):
        return predict(model, images, rows, batch_size, device, tta_flip,
                       with_embeddings=with_embeddings)
    step = batch_size * BATCHES_PER_REPORT
    parts = []
    for start in range(0, len(rows), step):
        chunk = rows[start:start + step]
        parts.append(predict(model, images, chunk, batch_size, device, tta_flip,
                             with_embeddings=with_embeddings))
        progress(len(chunk))
    emb = np.concatenate([p[1] for p in parts]) if with_embeddings else None
    return np.concatenate([p[0] for p in parts]), emb


def predict_manifest(model, images: np.ndarray, df: pd.DataFrame, classes: list[str],
                     batch_size: int, device, tta_flip: bool = False,
                     with_embeddings: bool = False,
                     progress: Callable[[int], None] | None = None,
                     ) -> tuple[pd.DataFrame, np.ndarray | None]:
    """One row per image: path, split, label, prediction, confidence, p_<class>, loss
    (loss is NaN for undefined images)."""
    rows = df["idx"].to_numpy(dtype=np.int64)
    logits, emb = predict_rows(model, images, rows, batch_size, device, tta_flip,
                               with_embeddings, progress)
    probs = softmax(logits.astype(np.float64))
    y = label_index(df["label"], classes)
    out = df[["path", "split", "label", "label_source"]].reset_index(drop=True).copy()
    out["prediction"] = [classes[i] for i in probs.argmax(1)]
    out["confidence"] = probs.max(1)
    for i, c in enumerate(classes):
        out[f"p_{c}"] = probs[:, i]
    out["loss"] = per_sample_loss(logits, y)
    out["correct"] = np.where(y >= 0, probs.argmax(1) == y, np.nan)
    return out, emb


def split_metrics(pred: pd.DataFrame, split: str, classes: list[str]) -> dict | None:
    part = pred[(pred["split"] == split) & (pred["label"].isin(classes))]
    if part.empty:
        return None
    y = label_index(part["label"], classes)
    probs = part[[f"p_{c}" for c in classes]].to_numpy()
    return classification_report(y, probs, classes, part["loss"].to_numpy())


def curve_tables(pred: pd.DataFrame, split: str, classes: list[str]) -> dict[str, pd.DataFrame]:
    """Tables for `dvc plots`: confusion pairs, ROC and precision-recall (positive = classes[1])."""
    part = pred[(pred["split"] == split) & (pred["label"].isin(classes))]
    y = (part["label"] == classes[1]).to_numpy().astype(int)
    score = part[f"p_{classes[1]}"].to_numpy()
    fpr, tpr = roc_curve(y, score)
    precision, recall = precision_recall_curve(y, score)
    return {
        "confusion": pd.DataFrame({"actual": part["label"], "predicted": part["prediction"]}),
        "roc": pd.DataFrame({"fpr": fpr, "tpr": tpr}),
        "pr": pd.DataFrame({"recall": recall, "precision": precision}),
    }

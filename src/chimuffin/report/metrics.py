"""Classification metrics as pure numpy functions (no sklearn dependency)."""

from __future__ import annotations

import math

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """rows = true class, columns = predicted class."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (sane at 0%, 100% and small n)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) for binary labels (1 = positive), from the highest threshold down."""
    order = np.argsort(-score, kind="stable")
    s, y = score[order], y_true[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    pos, neg = max(y.sum(), 1), max(len(y) - y.sum(), 1)
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos]


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    if len(np.unique(y_true)) < 2:
        return float("nan")
    fpr, tpr = roc_curve(y_true, score)
    return float(np.trapz(tpr, fpr))


def precision_recall_curve(y_true: np.ndarray, score: np.ndarray):
    """(precision, recall) at each distinct threshold, highest first."""
    order = np.argsort(-score, kind="stable")
    s, y = score[order], y_true[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    precision = tps / (distinct + 1)
    recall = tps / max(y.sum(), 1)
    return precision, recall


def classification_report(y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                          losses: np.ndarray) -> dict:
    """Accuracy with its 95% interval, per-class P/R/F1, mean loss, ROC AUC, confusion."""
    n = len(y_true)
    y_pred = probs.argmax(1) if n else np.zeros(0, dtype=int)
    cm = confusion(y_true, y_pred, len(classes))
    correct = int(np.trace(cm))
    lo, hi = wilson_interval(correct, n)
    per_class = {}
    for i, c in enumerate(classes):
        tp, fp, fn = cm[i, i], cm[:, i].sum() - cm[i, i], cm[i, :].sum() - cm[i, i]
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        per_class[c] = {"precision": float(p), "recall": float(r),
                        "f1": float(2 * p * r / (p + r)) if p + r else 0.0,
                        "support": int(cm[i, :].sum())}
    # ROC AUC with the second class as positive (score = its probability)
    auc = roc_auc((y_true == 1).astype(int), probs[:, 1]) if n else float("nan")
    return {
        "n": n,
        "accuracy": correct / n if n else float("nan"),
        "accuracy_ci95": [lo, hi],
        "loss": float(np.mean(losses)) if n else float("nan"),
        "roc_auc": auc,
        "per_class": per_class,
        "confusion": cm.tolist(),
    }


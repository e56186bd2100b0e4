"""Classification metrics as pure numpy functions (no sklearn dependency)."""

from __future__ import annotations

import math
import statistics

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


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[int, int, float]:
    """Paired comparison of two classifiers on the same images: (right only by a, right only by
    b, two-sided exact McNemar p-value). Only the images they disagree on carry information, so
    this separates two models far sooner than their overlapping Wilson intervals do."""
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs the same images: {a.shape} vs {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n
    return only_a, only_b, min(1.0, 2 * tail)


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


def tango_score(only_a: int, only_b: int, n: int, delta: float) -> float:
    """Tango's score statistic for H0: acc_a - acc_b = delta on n paired images, from the
    discordant counts (right only by a, right only by b). It falls as delta grows. The
    nuisance parameter (the share of images only b gets right) is its maximum-likelihood value
    under H0, the root of a quadratic (Tango 1998, Statistics in Medicine 17:891-908)."""
    qa, qb = 2 * n, -only_a - only_b + (2 * n - only_a + only_b) * delta
    qc = -only_b * delta * (1 - delta)
    p_b = (math.sqrt(max(qb * qb - 4 * qa * qc, 0.0)) - qb) / (2 * qa)
    var = n * (2 * p_b + delta * (1 - delta))
    diff = only_a - only_b - n * delta
    if var <= 0:  # only at delta = +-1 with no discordant image on the other side
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / math.sqrt(var)


def paired_difference_upper_bound(only_a: int, only_b: int, n: int, alpha: float = 0.05
                                  ) -> float:
    """One-sided upper (1 - alpha) confidence bound of acc_a - acc_b, two classifiers scored on
    the same n images, from their discordant counts: Tango's score interval.

    Why this one: the two accuracies are correlated proportions, so an unpaired interval is far
    too wide and only the discordant images carry the difference. Tango's score interval keeps
    its coverage near nominal for the few tens of discordant images two good classifiers leave
    on 1,000 images, and stays finite and inside [-1, 1] when a count is 0, where the Wald
    interval collapses to a point; it is the interval usually recommended for paired
    non-inferiority. (The exact conditional McNemar test conditions on the number of discordant
    images and so bounds a ratio of them, not the difference in accuracy that a margin
    states.) The bound is where the statistic reaches -z, found by bisection."""
    if not (0 <= only_a and 0 <= only_b and only_a + only_b <= n and n > 0):
        raise ValueError(f"discordant counts {only_a}, {only_b} do not fit {n} images")
    z = statistics.NormalDist().inv_cdf(1 - alpha)
    lo, hi = (only_a - only_b) / n, 1.0  # the statistic is 0 at the observed difference
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tango_score(only_a, only_b, n, mid) > -z else (lo, mid)
    return hi

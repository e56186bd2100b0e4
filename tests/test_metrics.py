import numpy as np
import pytest

from chimuffin.infer.batches import per_sample_loss, softmax
from chimuffin.report.metrics import (
    classification_report,
    confusion,
    roc_auc,
    wilson_interval,
)


def test_confusion_and_report():
    y = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    cm = confusion(y, probs.argmax(1), 2)
    assert cm.tolist() == [[1, 1], [1, 2]]
    r = classification_report(y, probs, ["a", "b"], np.zeros(5))
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert r["per_class"]["b"]["recall"] == pytest.approx(2 / 3)
    lo, hi = r["accuracy_ci95"]
    assert lo < 0.6 < hi


def test_roc_auc_matches_rank_statistic():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = rng.normal(size=300) + y
    pos, neg = s[y == 1], s[y == 0]
    mann_whitney = (pos[:, None] > neg[None, :]).mean()
    assert roc_auc(y, s) == pytest.approx(mann_whitney, abs=1e-9)
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0


def test_wilson_interval_known_value():
    lo, hi = wilson_interval(95, 100)
    assert lo == pytest.approx(0.8882, abs=1e-3) and hi == pytest.approx(0.9785, abs=1e-3)


def test_per_sample_loss_nan_for_unknown():
    logits = np.log(np.array([[0.25, 0.75], [0.5, 0.5]]))
    loss = per_sample_loss(logits, np.array([1, -1]))
    assert loss[0] == pytest.approx(-np.log(0.75)) and np.isnan(loss[1])
    assert softmax(logits)[0, 1] == pytest.approx(0.75)

import numpy as np
import pytest

from chimuffin.infer.batches import per_sample_loss, softmax
from chimuffin.report.metrics import (
    classification_report,
    confusion,
    mcnemar_exact,
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


def test_mcnemar_exact_counts_only_disagreements():
    a = np.array([1, 1, 1, 1, 1, 1, 0, 1, 1, 0], bool)
    b = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 0], bool)
    # 6 images right only by a, none only by b: p = 2 * 0.5**6
    assert mcnemar_exact(a, b) == (6, 0, pytest.approx(0.03125))
    assert mcnemar_exact(b, a) == (0, 6, pytest.approx(0.03125))
    # equal discordant counts, or none at all, are no evidence of a difference
    assert mcnemar_exact(np.array([1, 0], bool), np.array([0, 1], bool))[2] == 1.0
    assert mcnemar_exact(a, a) == (0, 0, 1.0)
    # 10 vs 2 discordant: 2 * (C(12,0)+C(12,1)+C(12,2)) / 2**12 = 158/4096
    x = np.r_[np.ones(10, bool), np.zeros(2, bool)]
    assert mcnemar_exact(x, ~x)[2] == pytest.approx(158 / 4096)
    with pytest.raises(ValueError, match="same images"):
        mcnemar_exact(a, a[:5])


def test_per_sample_loss_nan_for_unknown():
    logits = np.log(np.array([[0.25, 0.75], [0.5, 0.5]]))
    loss = per_sample_loss(logits, np.array([1, -1]))
    assert loss[0] == pytest.approx(-np.log(0.75)) and np.isnan(loss[1])
    assert softmax(logits)[0, 1] == pytest.approx(0.75)

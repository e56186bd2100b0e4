import numpy as np
import pytest

from chimuffin.infer.batches import per_sample_loss, softmax
from chimuffin.report.metrics import (
    classification_report,
    confusion,
    mcnemar_exact,
    paired_difference_upper_bound,
    roc_auc,
    tango_score,
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


def test_tango_score_by_hand():
    # 10 images, a alone right on 2, b alone right on 1. At delta 0 the nuisance root is
    # (3 + 3) / 40 = 0.15, so the score is 1 / sqrt(10 * 0.3); at delta 0.1 (the observed
    # difference) B = -3 + 19 * 0.1 = -1.1, C = -0.09, sqrt(1.21 + 7.2) = 2.9, root 0.1: score 0.
    assert tango_score(2, 1, 10, 0.0) == pytest.approx(1 / np.sqrt(3))
    assert tango_score(2, 1, 10, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert tango_score(2, 1, 10, 0.3) < 0 < tango_score(2, 1, 10, -0.2)


@pytest.mark.parametrize("alpha,z", [(0.05, 1.6448536269514722), (0.025, 1.959963984540054)])
def test_paired_upper_bound_with_no_disagreement_is_closed_form(alpha, z):
    # no discordant image: the score is -sqrt(n d / (1 - d)), which reaches -z at z^2 / (n + z^2)
    assert paired_difference_upper_bound(0, 0, 1000, alpha) == pytest.approx(
        z * z / (1000 + z * z), abs=1e-12)


def test_paired_upper_bound_sits_where_the_score_reaches_minus_z():
    z = 1.6448536269514722
    for only_a, only_b in [(25, 22), (29, 17), (5, 5), (0, 12), (12, 0)]:
        upper = paired_difference_upper_bound(only_a, only_b, 1000)
        assert upper > (only_a - only_b) / 1000
        assert tango_score(only_a, only_b, 1000, upper) == pytest.approx(-z, abs=1e-6)
    # more discordant images at the same difference: a wider bound
    assert paired_difference_upper_bound(17, 17, 1000) < 0.01 < paired_difference_upper_bound(
        18, 18, 1000)
    assert paired_difference_upper_bound(10, 0, 10) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="do not fit"):
        paired_difference_upper_bound(8, 5, 10)

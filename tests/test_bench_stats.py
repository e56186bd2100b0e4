"""benchmarks/stats.py: the paired statistics and the CPU line only the benchmarks report."""

import numpy as np
import pytest
from benchmarks.stats import cpu_summary, mcnemar_exact, paired_difference_upper_bound, tango_score


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



def test_cpu_summary_names_the_model_and_native_bf16(tmp_path):
    """Benchmarks print the CPU beside their numbers: its model and whether bf16 is native."""
    with_bf16 = tmp_path / "cpuinfo"
    with_bf16.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 "
                         "avx512f avx512_bf16\n\nprocessor\t: 1\nmodel name\t: other\n")
    summary = cpu_summary(str(with_bf16))
    assert summary.startswith("AMD EPYC 9R14, ") and summary.endswith(", native bf16")
    without = tmp_path / "plain"
    without.write_text("model name\t: Old CPU\nflags\t\t: fpu avx2\n")
    assert cpu_summary(str(without)).endswith(", no native bf16")
    assert cpu_summary(str(tmp_path / "absent")).startswith("unknown CPU, ")

"""What only the benchmarks report: paired comparisons of two classifiers scored on the same
images, and the machine the numbers came from."""

from __future__ import annotations

import math
import statistics

import numpy as np
import torch

from chimuffin import runtime


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


def cpu_summary(cpuinfo_file: str = "/proc/cpuinfo") -> str:
    """e.g. 'AMD EPYC, 2 cores, AVX512, native bf16': benchmark numbers depend on the
    instruction set, so benchmarks print this beside their results."""
    model, flags = runtime.read_cpu(cpuinfo_file)
    bf16 = "native bf16" if flags & runtime.NATIVE_BF16_FLAGS else "no native bf16"
    isa = torch.backends.cpu.get_cpu_capability()
    return f"{model}, {runtime.available_cores()} cores, {isa}, {bf16}"

"""Smoke runs of the scale and GPU benchmarks at toy sizes, so that they keep working."""

import re
import sys

import pytest
import torch

from tests.helpers.repo import REPO, run

pytestmark = pytest.mark.slow


def test_scale_benchmark_prints_times_memory_and_ratios(tmp_path):
    out = run([sys.executable, "benchmarks/scale.py", "--sizes", "40", "80", "--image-size", "32",
               "--work", str(tmp_path)], REPO, timeout=600).stdout
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+(40|80) (prepare|epoch)",
                                                                  line)]
    assert [(r[0], r[1]) for r in rows] == [("40", "prepare"), ("40", "epoch"),
                                            ("80", "prepare"), ("80", "epoch")], out
    assert all(int(r[6]) > 0 for r in rows)  # peak RSS in MB
    assert "prepare 80/40 (2x images): CPU time x" in out and "peak RSS x" in out
    # the 40-image set is a hard-linked subset of the 80-image one
    a = next((tmp_path / "raw-40/train128/undefined").iterdir())
    assert a.stat().st_nlink == 2


def test_gpu_check_reports_the_cpu_and_cuda_when_present():
    out = run([sys.executable, "benchmarks/gpu_check.py", "--cpu-images", "4", "--cuda-images",
               "64", "--batch-size", "2", "--eval-batch-size", "4", "--image-size", "32"], REPO,
              timeout=600).stdout
    assert re.search(r"^cpu\s+\d+\.\d\s+\d+\.\d\s+-$", out, re.M), out
    if torch.cuda.is_available():
        assert re.search(r"^cuda(\s+\d+\.\d){3}$", out, re.M) and "cuda/cpu: training x" in out
    else:
        assert "CUDA: not available here" in out

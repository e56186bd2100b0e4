"""Device, threads and determinism: one place decides how torch runs."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def available_cores() -> int:
    """Cores this process may use (cgroup/affinity aware), not the machine's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def pick_device(choice: str = "auto") -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from chimuffin.errors import UserError

            raise UserError("params: train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def setup(seed: int, threads: int = 0) -> None:
    """Seed everything and use the free cores (threads=0: all available)."""
    # cuBLAS is deterministic only with a fixed workspace; it must be set before CUDA starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads or available_cores())
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # CPU results must be bit-for-bit repeatable (DVC hashes); warn_only keeps CUDA usable.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False

"""Device, threads and determinism: one place decides how torch runs."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def cgroup_cpu_limit(cpu_max: str) -> int | None:
    """Whole CPUs allowed by a cgroup v2 `cpu.max` line ("QUOTA PERIOD" or "max PERIOD"),
    rounded up; None when unlimited or unreadable."""
    quota, _, period = cpu_max.strip().partition(" ")
    try:
        quota_us, period_us = int(quota), int(period or 100000)
    except ValueError:  # "max": no quota
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return max(1, -(-quota_us // period_us))


def available_cores(cpu_max_file: str = "/sys/fs/cgroup/cpu.max") -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's --cpus), not the machine's total. Fixed for the process: the thread count
    changes float results, so it must not follow the momentary load."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    try:
        with open(cpu_max_file) as f:
            limit = cgroup_cpu_limit(f.read())
    except OSError:
        limit = None
    return max(1, min(cores, limit) if limit else cores)


def cpu_model_and_flags(cpuinfo: str) -> tuple[str, set[str]]:
    """Model name and feature flags of the first processor in /proc/cpuinfo text."""
    model, flags = "unknown CPU", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def read_cpu(cpuinfo_file: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """cpu_model_and_flags of the file; an unreadable one is an unknown CPU without flags."""
    try:
        with open(cpuinfo_file) as f:
            return cpu_model_and_flags(f.read())
    except OSError:
        return "unknown CPU", set()


def has_native_bf16(cpuinfo_file: str = "/proc/cpuinfo") -> bool:
    """bf16 instructions (AVX512_BF16 or AMX): without them CPU bf16 is emulated and slower."""
    return bool(read_cpu(cpuinfo_file)[1] & NATIVE_BF16_FLAGS)


def pick_device(choice: str = "auto") -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from chimuffin.errors import UserError

            raise UserError("params: runtime.device is 'cuda' but no CUDA device is available")
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

"""Shared fixtures. Plain helpers (tiny params, temporary repos, subprocesses) live in
tests/helpers/."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.helpers import models, net
from tests.helpers.repo import REAL_DATA, TINY, deep_update, default_params_dict, make_repo

# Interrupt tests send SIGINT to child processes. A shell that starts pytest in the background
# (`cmd &`, nohup) sets SIGINT to ignored, and children inherit that; a Python handler here is
# reset to the default in every child instead.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config):
    """Under pytest-xdist (`make test`: one worker per core), worker N keeps core N alone: the
    processes it starts inherit that, so their torch threads (runtime.threads 0 = every core
    this process may use) never fight another worker's for a core."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if worker.startswith("gw") and len(cores) > 1:
        os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})


@pytest.fixture
def tiny_params_dict() -> dict:
    return deep_update(default_params_dict(), TINY)


@pytest.fixture
def tiny_repo(tmp_path, tiny_params_dict) -> Path:
    return make_repo(tmp_path / "repo", tiny_params_dict)


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "train128").is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (set CHIMUFFIN_REAL_DATA)")
    return REAL_DATA


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained 32 px checkpoint (tests/helpers/models.py), written once per session;
    tests copy it rather than change it."""
    return models.write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pth")


@pytest.fixture
def free_port() -> int:
    return net.free_port()


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny tensors gain nothing from a second thread, and
    the test machine's cores are shared (a second thread crawls when another process holds a
    core)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

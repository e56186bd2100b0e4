"""Ctrl-C and SIGKILL in the middle of training: no partial model, metrics or manifest, and the
next `dvc repro` completes.

Train keeps the best weights in memory and lets DVCLive write into a temporary folder beside
metrics/train; both appear only when training completes. DVC deletes a stage's outputs before
running it, so after an interrupted `dvc repro` there is no old model either: nothing at all
rather than something half-written or stale.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from chimuffin.model import load_checkpoint
from tests.helpers.badinput import tree_hashes
from tests.helpers.repo import BIN, TINY, deep_update, default_params_dict, make_repo, run

pytestmark = pytest.mark.slow

EPOCHS = 6
INPUTS = ["data/raw", "data/prepared", "data/clean", "data/labels", "params.yaml",
          "data/3lc/chimuffin/datasets"]
OUT_PARENTS = ["models", "metrics", "data", "data/raw", "data/3lc/chimuffin/runs"]


def train_cmd(repo: Path) -> list[str]:
    """The train stage exactly as dvc.yaml runs it, with this interpreter."""
    cmd = shlex.split(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["train"]["cmd"])
    assert cmd[0] == "python"
    return [sys.executable, *cmd[1:]]


def temporaries(repo: Path) -> list[str]:
    """Our atomic writers' temporaries (`.<name>.<random>`, beside each output)."""
    return sorted(str(p.relative_to(repo)) for d in OUT_PARENTS
                  if (repo / d).exists() for p in (repo / d).glob(".*"))


def snapshot(repo: Path) -> dict:
    return {d: tree_hashes(repo / d) if (repo / d).is_dir() else (repo / d).read_bytes()
            for d in INPUTS}


def start(cmd: list[str], repo: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    # Its own process group, like a terminal's foreground job: the signal reaches dvc and the
    # stage it runs.
    return subprocess.Popen(cmd, cwd=repo, env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_until_training(p: subprocess.Popen, repo: Path, stale: set[Path],
                        timeout: float = 300) -> None:
    """Until this run has logged an epoch (DVCLive's summary appears in its temporary dir;
    `stale` are the ones an earlier killed run left)."""
    deadline = time.monotonic() + timeout
    while not set((repo / "metrics").glob(".train.*/metrics.json")) - stale:
        assert p.poll() is None, f"ended before training started: {p.communicate()}"
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)


def assert_outputs_whole(repo: Path) -> None:
    """Every output file present parses or loads."""
    if (repo / "models/best.pth").exists():
        load_checkpoint(repo / "models/best.pth")
    live = repo / "metrics/train"
    if live.exists():
        summary = json.loads((live / "metrics.json").read_text())
        assert summary["step"] == EPOCHS - 1 and "best/val_acc" in summary
        for tsv in live.rglob("*.tsv"):
            rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
            assert len(rows) == EPOCHS and all(None not in r.values() for r in rows)


def test_sigint_and_sigkill_mid_training_then_repro(tmp_path):
    params = deep_update(default_params_dict(), TINY)
    params = deep_update(params, {"base": {"image_size": 32},
                                  "sample": {"pool": 0, "test_per_class": 0},
                                  "train": {"epochs": EPOCHS, "val_every": 1},  # a row each epoch
                                  "runtime": {"threads": 1}})
    repo = make_repo(tmp_path / "repo", params)
    run(["dvc", "repro", "tables"], repo)  # everything train reads (3LC off: placeholders)
    inputs = snapshot(repo)
    train = train_cmd(repo)

    rng = random.Random(6)
    # Ctrl-C goes to the stage as a user runs it (its message is checked); SIGKILL goes to a
    # whole `dvc repro` (dvc's own lock and bookkeeping must survive it too). The Ctrl-C run
    # after the SIGKILL also shows that a run removes what a killed one left behind.
    for sig in (signal.SIGINT, signal.SIGKILL, signal.SIGINT):
        stale = set((repo / "metrics").glob(".train.*/metrics.json"))
        p = start(train if sig == signal.SIGINT else ["dvc", "repro", "train"], repo)
        wait_until_training(p, repo, stale)
        time.sleep(rng.uniform(0.0, 1.0))  # a random moment within the next epochs
        os.killpg(p.pid, sig)
        out, err = p.communicate(timeout=120)

        if sig == signal.SIGINT:
            assert p.returncode == 130, (out, err)
            assert err.strip() == ("chimuffin train: interrupted; no partial outputs were "
                                   "written"), err
            assert temporaries(repo) == []  # Ctrl-C cleans up on the way out
        else:
            assert p.returncode == -signal.SIGKILL
            # SIGKILL runs no cleanup: at most DVCLive's temporary folder is left, and the next
            # run of the stage removes it (checked below).
            assert all(t.startswith("metrics/.train.") for t in temporaries(repo))
        assert not (repo / "models/best.pth").exists()
        assert not (repo / "metrics/train").exists()
        assert_outputs_whole(repo)
        assert snapshot(repo) == inputs

    run(["dvc", "repro", "train"], repo)
    assert_outputs_whole(repo)
    assert (repo / "models/best.pth").exists() and (repo / "metrics/train").exists()
    assert temporaries(repo) == []
    status = run(["dvc", "status", "train"], repo).stdout
    assert "up to date" in status or "changed" not in status, status

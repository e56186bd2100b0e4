"""End to end: the real dvc.yaml and stages in a temporary git + DVC repo on tiny data."""

import json
import time

import pandas as pd
import pytest
import yaml

from chimuffin.curate.pages import PAGE_SCHEMA
from tests.helpers.repo import guarded_env, run

pytestmark = pytest.mark.slow

# Outputs that must be bit-for-bit identical across `dvc repro -f` on CPU. (The DVCLive folder
# is left out: its .tsv files carry wall-clock timestamps by design.)
DETERMINISTIC = ["data/raw/sample", "data/prepared", "data/clean", "models/best.pth",
                 "metrics/eval", "data/embed/embeddings.parquet", "data/embed/pacmap.parquet",
                 "metrics/embedding.png", "data/suggest"]


def out_hashes(repo) -> dict:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])
            if o["path"] in DETERMINISTIC}


def test_repro_status_determinism_experiments_and_diffs(tiny_repo, tmp_path):
    repo = tiny_repo
    # TINY turns 3LC off: no process of the pipeline may import tlc, none may use the network
    env, network = guarded_env(tmp_path, CHIMUFFIN_FORBID_TLC=str(tmp_path / "tlc.log"))
    p = run(["dvc", "repro"], repo, env=env)
    assert not (tmp_path / "tlc.log").exists() and not network.exists()
    # nothing a user cannot act on: DVC's notes on empty deps, PaCMAP's on seeded 3-D fits
    assert "warning" not in (p.stdout + p.stderr).lower(), p.stdout + p.stderr
    tables = repo / "data/3lc/chimuffin/datasets/chimuffin/tables"
    for placeholder in [tables / "train", tables / "test", repo / "data/3lc/chimuffin/runs/train"]:
        assert [p.name for p in placeholder.iterdir()] == ["README.txt"]
    assert "up to date" in run(["dvc", "status"], repo).stdout

    metrics = json.loads((repo / "metrics/eval/metrics.json").read_text())
    assert set(metrics) == {"val", "test"}
    assert 0.0 <= metrics["val"]["accuracy"] <= 1.0
    pred = pd.read_parquet(repo / "metrics/eval/predictions.parquet")
    clean = pd.read_parquet(repo / "data/clean/manifest.parquet")
    assert len(pred) == len(clean) and (pred["label"] == "undefined").sum() == 10
    emb = pd.read_parquet(repo / "data/embed/pacmap.parquet")
    assert len(emb) == len(clean) and {"x", "y", "x3", "y3", "z3"} <= set(emb.columns)
    pages = pd.read_parquet(repo / "data/suggest/pages.parquet")  # what the review page reads
    suggestions = pd.read_parquet(repo / "data/suggest/suggestions.parquet")
    assert pages.dtypes.astype(str).to_dict() == PAGE_SCHEMA
    assert sorted(pages["path"]) == sorted(suggestions["path"]) and len(pages) == 10
    report = json.loads((repo / "data/prepared/report.json").read_text())
    assert len(report["excluded"]) == 3  # the sample's broken, empty and hidden files

    first = out_hashes(repo)
    assert len(first) == len(DETERMINISTIC)
    run(["dvc", "repro", "-f"], repo)
    assert out_hashes(repo) == first

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    run(["dvc", "exp", "run", "-S", "train.lr=0.001", "-n", "lr-1e-3"], repo)
    shown = run(["dvc", "exp", "show", "--csv"], repo).stdout
    assert "lr-1e-3" in shown
    assert "0.001" in run(["dvc", "params", "diff"], repo).stdout
    diff = run(["dvc", "metrics", "diff", "--json"], repo).stdout
    changed = json.loads(diff)
    assert any(k.startswith("metrics/") for k in changed)


def queue_finished(repo) -> str:
    """Wait for the experiment queue's task to end (dvc queue status); return its status."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        done = [s for s in ("Success", "Failed") if s in status]
        if done:
            return done[0]
        time.sleep(2)
    raise AssertionError(f"the queued experiment did not finish:\n{status}")


def test_a_queued_experiment_runs_the_code_it_queued(tiny_repo):
    """`dvc exp run --queue` runs the experiment in a temporary copy of the repository; its
    stages must import that copy's code (what DVC hashed), not the checkout the environment's
    install points at. The changed code exists only in the queued experiment: the workspace is
    restored before the queue runs."""
    repo = tiny_repo
    stage = repo / "src/chimuffin/stages/sample.py"
    original = stage.read_text()
    opened = "    with atomic.atomic_dir(args.out) as tmp:\n"
    assert opened in original
    stage.write_text(original.replace(
        opened, opened + '        (tmp / "MARKER").write_text("the queued code ran\\n")\n'))
    run(["dvc", "exp", "run", "--queue", "-n", "marked", "sample"], repo)
    stage.write_text(original)
    assert run(["git", "status", "--porcelain"], repo).stdout == ""
    try:
        run(["dvc", "queue", "start"], repo)
        status = queue_finished(repo)
        assert status == "Success", run(["dvc", "queue", "logs", "marked"], repo,
                                         check=False).stdout
    finally:
        run(["dvc", "queue", "stop"], repo, check=False)
    # Only `sample` ran, so applying the experiment cannot check out the other stages' outputs
    # (it says so and fails): check out sample's output alone.
    run(["dvc", "exp", "apply", "marked"], repo, check=False)
    run(["dvc", "checkout", "data/raw/sample"], repo)
    assert (repo / "data/raw/sample/MARKER").read_text() == "the queued code ran\n"

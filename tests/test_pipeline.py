"""End to end: the real dvc.yaml and stages in a temporary git + DVC repo on tiny data."""

import json

import pandas as pd
import pytest
import yaml

from chimuffin.pages import PAGE_SCHEMA
from tests.conftest import guarded_env, run

pytestmark = pytest.mark.slow

# Outputs that must be bit-for-bit identical across `dvc repro -f` on CPU. (The DVCLive folder
# is left out: its .tsv files carry wall-clock timestamps by design.)
DETERMINISTIC = ["data/raw/sample", "data/prepared", "data/clean", "models/best.pth",
                 "metrics/eval", "data/embed", "metrics/embedding.png", "data/suggest"]


def out_hashes(repo) -> dict:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])
            if o["path"] in DETERMINISTIC}


def test_repro_status_determinism_experiments_and_diffs(tiny_repo, tmp_path):
    repo = tiny_repo
    # TINY turns 3LC off: no process of the pipeline may import tlc, none may use the network
    env, network = guarded_env(tmp_path, CHIMUFFIN_FORBID_TLC=str(tmp_path / "tlc.log"))
    run(["dvc", "repro"], repo, env=env)
    assert not (tmp_path / "tlc.log").exists() and not network.exists()
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
    second = out_hashes(repo)
    run(["dvc", "repro", "-f"], repo)
    assert out_hashes(repo) == second == first

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    run(["dvc", "exp", "run", "-S", "train.lr=0.001", "-n", "lr-1e-3"], repo)
    shown = run(["dvc", "exp", "show", "--csv"], repo).stdout
    assert "lr-1e-3" in shown
    assert "0.001" in run(["dvc", "params", "diff"], repo).stdout
    diff = run(["dvc", "metrics", "diff", "--json"], repo).stdout
    changed = json.loads(diff)
    assert any(k.startswith("metrics/") for k in changed)

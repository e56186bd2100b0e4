"""The real hackathon data (../shared/data/chihuahua-muffin): counts and a one-epoch training."""

import json
import sys

import pandas as pd
import pytest
import yaml

from tests.helpers.repo import deep_update, default_params_dict, run

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_prepare_clean_counts_and_one_epoch(real_data, tmp_path):
    params = deep_update(default_params_dict(), {
        "prepare": {"data_dir": str(real_data), "val_fraction": 0.2},
        "train": {"epochs": 1}, "tlc": {"enabled": False}})
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    (tmp_path / "decisions.csv").write_text("path,label,source,note\n")
    py = [sys.executable, "-m"]
    common = ["--params", str(pfile)]
    run([*py, "chimuffin.stages.prepare", *common, "--validation", str(tmp_path / "none.csv"),
         "--out", str(tmp_path / "prepared")], tmp_path)
    report = json.loads((tmp_path / "prepared/report.json").read_text())
    assert report["excluded"] == []
    c = report["counts"]
    assert c["train/chihuahua"] + c["val/chihuahua"] == 100
    assert c["train/muffin"] + c["val/muffin"] == 100
    assert c["val/chihuahua"] == 20 and c["val/muffin"] == 20
    assert c["train/undefined"] == 4533
    assert not report["has_test"]

    run([*py, "chimuffin.stages.clean", *common, "--prepared", str(tmp_path / "prepared"),
         "--decisions", str(tmp_path / "decisions.csv"), "--out", str(tmp_path / "clean")],
        tmp_path)
    summary = json.loads((tmp_path / "clean/summary.json").read_text())
    assert summary["by_split_label"]["train/chihuahua"] == 80
    # identical pool images are kept once, so the pool shrinks by exactly the dropped count
    assert summary["by_split_label"]["train/undefined"] == 4533 - summary["duplicates_dropped"]

    run([*py, "chimuffin.stages.train", *common, "--clean", str(tmp_path / "clean"),
         "--prepared", str(tmp_path / "prepared"), "--model", str(tmp_path / "best.pth"),
         "--live", str(tmp_path / "live"), "--run", str(tmp_path / "run"),
         "--tables", str(tmp_path / "tables")], tmp_path)
    live = json.loads((tmp_path / "live/metrics.json").read_text())
    assert live["best/epoch"] == 1 and live["train_images"] == 160
    assert 0.0 <= live["last_epoch"]["val_acc"] <= 1.0
    manifest = pd.read_parquet(tmp_path / "clean/manifest.parquet")
    assert (manifest["split"] == "val").sum() == 40

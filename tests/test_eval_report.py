"""The evaluate stage's report.md and mistakes grid; the reference recipe; `dvc plots show`."""

import json
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from chimuffin.config import load_params
from chimuffin.errors import UserError
from chimuffin.report.eval_report import build_report, confident_mistakes, mistakes_png
from chimuffin.report.recipe_diff import load_reference, recipe_diff
from tests.helpers.repo import REPO, run

CLASSES = ["chihuahua", "muffin"]


def test_reference_recipe_is_complete_and_diff_lists_recipe_changes():
    ref = load_reference(REPO / "recipes/reference.yaml")  # strict: every train key, valid values
    train = load_params(REPO / "params.yaml").train
    assert [k for k, _, _ in recipe_diff(train, ref)] == [  # the default's promoted keys
        "train.epochs", "train.keep", "train.val_every", "train.val_tta_flip"]
    changed = replace(ref, lr=0.001, epochs=20, augment=replace(ref.augment, flip_p=0.0))
    diff = recipe_diff(changed, ref)
    keys = [k for k, _, _ in diff]
    assert keys == ["train.augment.flip_p", "train.epochs", "train.lr"]
    assert ("train.lr", 0.001, ref.lr) in diff
    assert recipe_diff(ref, ref) == []


def test_reference_recipe_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "ref.yaml"
    raw = yaml.safe_load((REPO / "recipes/reference.yaml").read_text())
    raw["train"]["lr_typo"] = 1
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"ref.yaml: .*unknown key train.lr_typo"):
        load_reference(bad)
    with pytest.raises(UserError, match="cannot read"):
        load_reference(tmp_path / "missing.yaml")


def fake_predictions() -> pd.DataFrame:
    rows = [  # path, split, label, prediction, confidence
        ("a", "train", "chihuahua", "muffin", 0.70),
        ("b", "train", "muffin", "muffin", 0.99),
        ("c", "val", "muffin", "chihuahua", 0.95),
        ("d", "test", "muffin", "chihuahua", 0.99),  # test: never shown
        ("e", "train", "undefined", "muffin", 0.99),  # pool: no label, no mistake
        ("f", "val", "chihuahua", "muffin", 0.70),
    ]
    df = pd.DataFrame(rows, columns=["path", "split", "label", "prediction", "confidence"])
    df["label_source"] = "folder"
    return df


def test_confident_mistakes_skip_test_and_pool_and_sort_by_confidence():
    m = confident_mistakes(fake_predictions(), CLASSES)
    assert list(m["path"]) == ["c", "a", "f"]  # 0.95, then the 0.70 tie by path


def test_mistakes_grid_png(tmp_path):
    pred = fake_predictions()
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 16, 16), dtype=np.uint8)
    m = confident_mistakes(pred, CLASSES)
    mistakes_png(m, np.arange(6), images, tmp_path / "m.png")
    mistakes_png(m.head(0), np.arange(6), images, tmp_path / "none.png")
    for name in ("m.png", "none.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.size[0] > 100
    first = (tmp_path / "m.png").read_bytes()
    mistakes_png(m, np.arange(6), images, tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes() == first  # deterministic (DVC hashes it)


def test_build_report_sections():
    summary = {"images": 6, "decisions": 2, "duplicates_dropped": 1, "label_conflicts": [],
               "by_split_label": {"train/chihuahua": 1, "train/muffin": 1, "train/undefined": 1,
                                  "val/chihuahua": 1, "val/muffin": 1, "test/muffin": 1},
               "by_label_source": {"folder": 4, "human": 2}}
    report = {"n": 2, "accuracy": 0.5, "accuracy_ci95": [0.0941, 0.9059], "loss": 0.7,
              "roc_auc": 0.5, "per_class": {c: {"f1": 0.5} for c in CLASSES},
              "confusion": [[1, 0], [1, 0]]}
    text = build_report(meta={"epoch": 3, "val_accuracy": 0.5, "image_size": 64},
                        summary=summary, fingerprint="abc123", classes=CLASSES,
                        diff=[("train.lr", 0.001, 0.0005)], reference_name="ref.yaml",
                        reports={"val": report}, mistakes=confident_mistakes(
                            fake_predictions(), CLASSES), png_name="mistakes.png")
    assert "| train | 1 | 1 | 1 | 3 |" in text and "| test | 0 | 1 | 0 | 1 |" in text
    assert "Label sources: folder 4, human 2." in text and "2 label decisions" in text
    assert "| `train.lr` | 0.001 | 0.0005 |" in text
    assert "| val | 2 | 0.5000 | 0.094 - 0.906 |" in text
    assert "| muffin | 1 | 0 |" in text  # confusion row: actual muffin predicted chihuahua
    assert "![most confident mistakes](mistakes.png)" in text
    assert re.search(r"\| 1 \| `c` \| val \| muffin \| folder \| chihuahua \| 0.950 \|", text)
    assert "`d`" not in text
    assert "Model: best epoch 3 (validation accuracy 0.5000)" in text
    assert "The best epoch was chosen on validation" in text
    last = build_report(meta={"epoch": 30, "val_accuracy": 0.5, "image_size": 64},
                        summary=summary, fingerprint="abc123", classes=CLASSES, diff=[],
                        reference_name="ref.yaml", reports={"val": report},
                        mistakes=confident_mistakes(fake_predictions(), CLASSES),
                        png_name="mistakes.png", kept="last")
    assert "Model: the last epoch's weights, epoch 30 (validation" in last
    assert "best epoch" not in last
    assert "nothing was chosen on validation" in last


@pytest.mark.slow
def test_pipeline_writes_report_and_dvc_plots_show_renders(tiny_repo, tmp_path):
    repo = tiny_repo
    run(["dvc", "repro"], repo)
    text = (repo / "metrics/eval/report.md").read_text()
    summary = json.loads((repo / "data/clean/summary.json").read_text())
    metrics = json.loads((repo / "metrics/eval/metrics.json").read_text())
    train_rows = [n for k, n in summary["by_split_label"].items() if k.startswith("train/")]
    assert re.search(rf"\| train \| .* \| {sum(train_rows)} \|", text)
    assert f"`data/clean`: {summary['images']} images" in text
    # tiny params differ from the reference recipe in epochs and batch size
    assert "| `train.epochs` | 1 | 100 |" in text and "| `train.batch_size` | 4 | 16 |" in text
    for split in ("val", "test"):
        m = metrics[split]
        assert (f"| {split} | {m['n']} | {m['accuracy']:.4f} | {m['accuracy_ci95_low']:.3f} - "
                f"{m['accuracy_ci95_high']:.3f} |") in text
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):  # every figure it shows exists
        assert (repo / "metrics/eval" / name).is_file(), name
    assert "(mistakes.png)" in text and "(mistakes_heatmaps.png)" in text

    shown = json.loads(run(["dvc", "plots", "show", "--json"], repo).stdout)
    kinds = {name: [p["type"] for p in plots] for name, plots in shown["data"].items()}
    curves = [f"{kind} ({split}, saved model)" for kind in ("Confusion matrix", "ROC",
                                                            "Precision-recall")
              for split in ("validation", "test")]
    assert kinds == {"Loss per epoch (train, validation)": ["vega"],
                     "Accuracy per epoch (train, validation)": ["vega"],
                     "Learning rate per epoch": ["vega"], **{c: ["vega"] for c in curves},
                     "metrics/embedding.png": ["image"], "metrics/eval/mistakes.png": ["image"],
                     "metrics/eval/mistakes_heatmaps.png": ["image"]}
    for name, plots in shown["data"].items():
        if plots[0]["type"] == "vega":
            assert plots[0]["content"]["data"]["values"], f"{name}: no data points"
    html = tmp_path / "plots"
    run(["dvc", "plots", "show", "-o", str(html)], repo)
    page = (html / "index.html").read_text()
    assert page.count("<img") == 3 and (html / "static").is_dir()
    assert len(list((html / "static").glob("*.png"))) == 3


def test_an_old_recipe_with_runtime_keys_says_where_they_moved(tmp_path):
    old = tmp_path / "old.yaml"
    raw = yaml.safe_load((REPO / "recipes/reference.yaml").read_text())
    raw["train"]["device"] = "auto"
    old.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"old.yaml: params: train.device moved to runtime.device"):
        load_reference(old)

"""Progress of long work: ETA arithmetic, lines in a log (not a terminal), one line per epoch."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pandas as pd

from chimuffin.progress import Progress, duration, eta, logging_lines, status
from chimuffin.stages.evaluate import plot_tables
from chimuffin.stages.train import epoch_line, epoch_metrics


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_duration_and_eta():
    assert [duration(s) for s in (0, 42.4, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]
    assert eta(0, 10, 5.0) is None
    assert eta(2, 10, 30.0) == 120.0  # 15 s per unit, 8 left
    assert status("embed", 2, 10, "img", 30.0) == "embed: 2/10 img, 30s elapsed, about 2m00s left"
    assert status("embed", 10, 10, "img", 30.0) == "embed: 10/10 img, 30s elapsed"


def test_logging_lines_follows_whether_stdout_is_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert logging_lines(io.StringIO()) and not logging_lines(Tty())


def test_progress_in_a_log_prints_throttled_lines_and_a_last_one():
    clock, out = Clock(), io.StringIO()
    with Progress("evaluate", 100, log=True, every_s=30, clock=clock, out=out) as p:
        for _ in range(10):
            clock.now += 10  # 10 images every 10 s
            p.update(10)
    lines = out.getvalue().splitlines()
    assert lines == ["evaluate: 30/100 img, 30s elapsed, about 1m10s left",
                     "evaluate: 60/100 img, 1m00s elapsed, about 40s left",
                     "evaluate: 90/100 img, 1m30s elapsed, about 10s left",
                     "evaluate: 100 img in 1m40s"]


def test_progress_without_log_prints_nothing_to_stdout():
    out = io.StringIO()
    with Progress("evaluate", 5, log=False, out=out) as p:
        p.update(5)
    assert out.getvalue() == ""


def test_epoch_line_and_names_say_last_epoch():
    r = SimpleNamespace(epoch=3, train=SimpleNamespace(loss=0.51234, acc=0.75), val_loss=0.44,
                        val_acc=0.8125, lr=0.0005)
    assert epoch_line(r, 10, 90.0) == ("train: epoch 3/10: loss 0.5123 acc 0.7500, val loss "
                                       "0.4400 acc 0.8125, lr 0.0005; 1m30s elapsed, about "
                                       "3m30s left")
    assert epoch_line(SimpleNamespace(**{**vars(r), "epoch": 10}), 10, 300.0).endswith(
        "5m00s elapsed")
    assert set(epoch_metrics(r)) == {"last_epoch/train_loss", "last_epoch/train_acc",
                                     "last_epoch/val_loss", "last_epoch/val_acc",
                                     "last_epoch/lr"}


def test_plot_tables_cover_every_declared_split_even_without_test_images():
    classes = ["chihuahua", "muffin"]
    pred = pd.DataFrame({"split": ["val"] * 4, "label": ["chihuahua", "muffin"] * 2,
                         "prediction": ["chihuahua", "chihuahua", "muffin", "muffin"],
                         "p_chihuahua": [0.9, 0.6, 0.4, 0.2], "p_muffin": [0.1, 0.4, 0.6, 0.8]})
    tables = plot_tables(pred, classes, reports={"val": {}})
    assert sorted(tables) == ["confusion_test.csv", "confusion_val.csv", "pr_test.csv",
                              "pr_val.csv", "roc_test.csv", "roc_val.csv"]
    assert len(tables["confusion_val.csv"]) == 4 and len(tables["roc_val.csv"]) > 1
    for name in ("confusion_test.csv", "roc_test.csv", "pr_test.csv"):
        assert tables[name].empty
    assert list(tables["roc_test.csv"].columns) == list(tables["roc_val.csv"].columns)
    assert list(tables["confusion_test.csv"].columns) == ["actual", "predicted"]


def test_predictions_with_progress_are_the_same_batches_and_count_every_image():
    import numpy as np
    import torch

    from chimuffin.infer.manifest_predictions import predict_rows
    from chimuffin.model import build_model

    torch.manual_seed(0)
    model = build_model(2, [8], 0.1).eval()
    images = np.random.default_rng(0).integers(0, 255, (40, 3, 32, 32), dtype=np.uint8)
    rows = np.arange(37)[::-1].copy()
    seen = []
    plain, _ = predict_rows(model, images, rows, 2, torch.device("cpu"))
    counted, emb = predict_rows(model, images, rows, 2, torch.device("cpu"),
                                with_embeddings=True, progress=seen.append)
    assert np.array_equal(plain, counted) and emb.shape == (37, 512)
    assert seen == [16, 16, 5]

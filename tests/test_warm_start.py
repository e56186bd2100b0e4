"""Warm starts: the train stage starts from models/warm_start/weights.pth when it is there (only
a background retrain's throwaway copy puts one there), and the review page's background
retrains start from the last background model when `review.warm_recipe` is set."""

import json
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from chimuffin import paths
from chimuffin.config import parse_params, read_recipe
from chimuffin.errors import UserError
from chimuffin.model import build_model, save_checkpoint
from chimuffin.retrain.params import experiment_name
from chimuffin.retrain.retrainer import Retrainer
from chimuffin.stages.train import checkpoint_meta, warm_start
from tests.helpers.repo import REPO, default_params_dict, run
from tests.test_retrain import fingerprint, retrain_leftovers, tiny_round_repo
from tests.test_review import CLASSES


def params_with(**train):
    raw = default_params_dict()
    raw["train"].update(train)
    return parse_params(raw)


def saved_model(path: Path, params, seed: int = 1):
    torch.manual_seed(seed)
    t = params.train
    model = build_model(len(params.base.classes), t.head, t.dropout)
    save_checkpoint(path, model, checkpoint_meta(params, 3, 0.75))
    return model


def test_no_file_means_from_scratch(tmp_path):
    params = params_with()
    model = build_model(2, params.train.head, params.train.dropout)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert warm_start(tmp_path / paths.WARM_START_FILE, model, params) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_weights_in_the_folder_are_loaded_and_said(tmp_path):
    params = params_with()
    earlier = saved_model(tmp_path / paths.WARM_START_FILE, params)
    torch.manual_seed(2)
    model = build_model(2, params.train.head, params.train.dropout)
    said = warm_start(tmp_path / paths.WARM_START_FILE, model, params)
    assert "warm start from" in said and "epoch 3" in said and "0.7500" in said
    want = earlier.state_dict()
    assert all(torch.equal(want[k], v) for k, v in model.state_dict().items())


def test_weights_of_another_head_or_size_are_refused_by_name(tmp_path):
    saved_model(tmp_path / paths.WARM_START_FILE, params_with(head=[64]))
    params = params_with()
    model = build_model(2, params.train.head, params.train.dropout)
    with pytest.raises(UserError, match=r"weights do not fit|train.head \[64\]"):
        warm_start(tmp_path / paths.WARM_START_FILE, model, params)
    raw = default_params_dict()
    raw["base"]["image_size"] = 96
    saved_model(tmp_path / paths.WARM_START_FILE, parse_params(raw))
    with pytest.raises(UserError, match="trained with base.image_size 96, the params say 128"):
        warm_start(tmp_path / paths.WARM_START_FILE, model, params)


def test_the_repository_trains_from_scratch():
    """The folder the train stage reads holds no weights here: only a copy gets some."""
    folder = REPO / paths.WARM_START
    assert sorted(p.name for p in folder.iterdir()) == ["README.md"]
    # background retrains warm-start by default (measured: benchmarks/README.md)
    assert default_params_dict()["review"]["warm_recipe"] == "recipes/round_warm.yaml"


def test_warm_recipe_is_the_round_recipe_shortened():
    rnd = read_recipe(REPO / "recipes/round.yaml")
    warm = read_recipe(REPO / "recipes/round_warm.yaml")
    changed = {k for k in rnd if rnd[k] != warm[k]}
    assert changed == {"epochs", "min_steps", "lr", "res_min", "ema_decay", "val_every"}
    assert warm["min_steps"] == 0  # a warm start already has its steps behind it
    assert warm["epochs"] < rnd["epochs"] and warm["lr"] < rnd["lr"]
    assert experiment_name(5, 0.0, warm=True).endswith("-5-labels-warm")


def lock_md5(ref: str, root: Path, stage: str, path: str, key: str = "outs") -> str:
    lock = yaml.safe_load(run(["git", "show", f"{ref}:dvc.lock"], root).stdout)
    return next(e["md5"] for e in lock["stages"][stage][key] if e["path"] == path)


@pytest.mark.slow
def test_the_second_background_run_starts_from_the_first_and_records_it(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = tiny_round_repo(tmp_path)
    before = fingerprint(root)
    r = Retrainer(root, root / "params.yaml", root / "data/labels/decisions.csv", CLASSES,
                  every=0, recipe="recipes/tiny_round.yaml", labels_of_model=0, cpus=2,
                  warm_recipe="recipes/tiny_round.yaml")
    for _ in range(2):
        r.request()
        r.thread.join(180)
    first, second = r.runs
    assert first.ok and second.ok, (first.error, second.error, second.log_tail)
    assert (first.warm, second.warm) == (False, True) and second.name.endswith("-warm")
    refs = {ref.rsplit("/", 1)[-1]: ref for ref in run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"], root).stdout.split()}
    # the second experiment holds the first model as a DVC-tracked file its train stage read
    tracked = yaml.safe_load(run(["git", "show", f"{refs[second.name]}:"
                                  "models/warm_start/weights.pth.dvc"], root).stdout)
    assert tracked["outs"][0]["md5"] == lock_md5(refs[first.name], root, "train",
                                                 paths.MODEL)
    assert lock_md5(refs[second.name], root, "train", paths.WARM_START, "deps") != \
        lock_md5(refs[first.name], root, "train", paths.WARM_START, "deps")
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    metrics = {e["name"]: e["revs"][0]["data"]["metrics"]["metrics/train/metrics.json"]
               ["data"]["warm_start"]
               for rev in shown for e in (rev.get("experiments") or [])}
    assert metrics == {first.name: 0, second.name: 1}
    r.stop()
    assert fingerprint(root) == before and retrain_leftovers() == []
    assert not list(tmp_path.glob("chimuffin-warm-start-*"))  # the kept weights are removed
    # the workspace's own train stage still starts from scratch
    assert not (root / paths.WARM_START / paths.WARM_START_FILE).exists()

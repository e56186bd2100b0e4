"""A validation image never reaches a training run: the prepare stage puts validation.csv's
images in the validation split, and a background retrain (the review page's and the sitting's)
trains on a copy that carries validation.csv as the page left it, answers not yet committed
included. Checked on the manifest the background run trained on: the clean stage's
manifest.parquet of its experiment, read from the DVC cache through the experiment's
dvc.lock."""

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from chimuffin.labels.validation import add_answers
from tests.helpers.repo import run
from tests.test_retrain import tiny_round_repo
from tests.test_review import CLASSES


def cached_file(root: Path, md5: str) -> Path:
    cache = Path(run(["dvc", "cache", "dir"], root).stdout.strip())
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def experiment_manifest(root: Path, name: str) -> pd.DataFrame:
    """data/clean/manifest.parquet as the experiment `name` made it (its dvc.lock's out)."""
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], root).stdout.split()
    ref = next(r for r in refs if r.endswith(f"/{name}"))
    lock = yaml.safe_load(run(["git", "show", f"{ref}:dvc.lock"], root).stdout)
    out = next(o for o in lock["stages"]["clean"]["outs"] if o["path"] == "data/clean")
    listing = json.loads(cached_file(root, out["md5"].removesuffix(".dir")
                                     + ".dir").read_text())
    entry = next(e for e in listing if e["relpath"] == "manifest.parquet")
    return pd.read_parquet(cached_file(root, entry["md5"]))


@pytest.mark.slow
def test_a_background_retrain_never_trains_on_a_validation_image(tmp_path, monkeypatch):
    import tempfile

    from chimuffin.retrain.retrainer import Retrainer

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = tiny_round_repo(tmp_path)
    decisions = root / "data/labels/decisions.csv"
    pool = pd.read_parquet(root / "data/suggest/pages.parquet")["path"].tolist()
    # two pool images answered on the validation view, not committed (as a session leaves it)
    answered = {pool[1]: "chihuahua", pool[2]: "muffin"}
    add_answers(root / "data/labels/validation.csv", decisions, CLASSES, answered)
    r = Retrainer(root, root / "params.yaml", decisions, CLASSES, every=0,
                  recipe="recipes/tiny_round.yaml", labels_of_model=0, cpus=2)
    r.request()
    deadline = time.monotonic() + 300
    while not r.runs and time.monotonic() < deadline:
        time.sleep(0.5)
    assert r.runs and r.runs[0].ok, (r.runs[0].error, r.runs[0].log_tail) if r.runs else "slow"
    manifest = experiment_manifest(root, r.runs[0].name)
    rows = manifest.set_index("path").loc[list(answered)]
    assert (rows["split"] == "val").all() and (rows["label_source"] == "validation").all()
    assert rows["label"].to_dict() == answered
    train = manifest[manifest["split"] == "train"]
    assert not set(answered) & set(train["path"])
    # and its validation accuracy counts them: the run's val n holds the seeds' and these
    assert r.runs[0].val_n == int((manifest["split"] == "val").sum())

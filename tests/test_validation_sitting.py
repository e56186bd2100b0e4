"""The simulated person builds the validation set first (simulate/validation.py): the seeded
sample's pages answered from the truth file at the review pages' cost model, written to
validation.csv only; then `chimuffin loop --validation N` verifies the pool
without those images."""

import math

import numpy as np
import pandas as pd
import pytest

from chimuffin import atomic
from chimuffin.labels.rows import Decision, format_decisions, read_decisions
from chimuffin.labels.validation import read_validation
from chimuffin.simulate.reviewer import ReviewCost
from chimuffin.simulate.validation import (
    ValidationStep,
    answer_pages,
    build_validation_set,
    pages_to_answer,
    summary,
)
from tests.helpers.repo import REPO, TINY, deep_update, default_params_dict, make_repo, run
from tests.test_review import CLASSES

POOL = [f"train128/undefined/{i:03d}.jpg" for i in range(40)]


def test_a_page_costs_what_a_review_page_costs_and_unknown_images_get_no_answer():
    pages = pd.DataFrame({"page": [0, 0, 0, 1], "position": [0, 1, 2, 0],
                          "path": ["a", "b", "c", "d"],
                          "label": ["muffin", "muffin", "muffin", "chihuahua"], "score": 0.9})
    truth = {"a": "muffin", "b": "chihuahua", "d": "chihuahua"}
    first, second = answer_pages(pages, truth, ReviewCost())
    assert first.answers == {"a": "muffin", "b": "chihuahua"}
    assert (first.wrong, first.unknown) == (1, 1)
    assert first.seconds == pytest.approx(1 + 3 * 0.4 + 2 * 2)
    assert (second.answers, second.wrong, second.seconds) == ({"d": "chihuahua"}, 0, 1.4)


def step_files(tmp_path, size=8, page_size=2):
    """A prepared manifest of 40 pool images and 4 seeds, predictions for all of them, a label
    file with one decision on a pool image."""
    seeds = [f"train128/{c}/{i}.jpg" for c in CLASSES for i in range(2)]
    manifest = pd.DataFrame({"path": seeds + POOL, "split": "train",
                             "label": [p.split("/")[1] for p in seeds] + ["undefined"] * 40,
                             "label_source": "folder", "idx": np.arange(44),
                             "content_hash": [f"h{i}" for i in range(44)], "width": 64,
                             "height": 64})
    atomic.write_parquet(tmp_path / "manifest.parquet", manifest)
    atomic.write_parquet(tmp_path / "predictions.parquet", manifest[["path"]].assign(
        prediction=["chihuahua", "muffin"] * 22, confidence=0.8))
    decisions = tmp_path / "labels/decisions.csv"
    decisions.parent.mkdir()
    decisions.write_text(format_decisions([Decision(POOL[0], "muffin", "human")]))
    return ValidationStep(size, 3, page_size, tmp_path / "manifest.parquet",
                          tmp_path / "predictions.parquet", tmp_path / "labels/validation.csv",
                          decisions)


def test_the_person_answers_the_sample_into_validation_csv_only(tmp_path):
    step = step_files(tmp_path)
    before = step.decisions.read_bytes()
    pages, target, answered = pages_to_answer(step, CLASSES)
    assert (target, answered, len(pages)) == (8, 0, 8) and POOL[0] not in set(pages["path"])
    truth = {p: "chihuahua" if i % 3 else "muffin" for i, p in enumerate(POOL)}
    slept = []
    done = build_validation_set(step, CLASSES, truth, ReviewCost(), sleep=slept.append)
    assert read_validation(step.validation, CLASSES) == {p: truth[p] for p in pages["path"]}
    assert step.decisions.read_bytes() == before
    assert (done.target, done.answered, done.pages) == (8, 8, pages["page"].nunique())
    assert done.seconds == pytest.approx(sum(slept))
    wrong = sum(truth[p] != lbl for p, lbl in zip(pages["path"], pages["label"], strict=True))
    assert done.exceptions == wrong
    assert done.seconds == pytest.approx(done.pages * 1 + 8 * 0.4 + 2 * wrong)
    assert f"{done.minutes:.2f} simulated min" in summary(done)
    # done: a second run has nothing left to answer
    again = build_validation_set(step, CLASSES, truth, ReviewCost(), sleep=slept.append)
    assert (again.answered, again.before, again.seconds) == (0, 8, 0)


def test_the_sitting_builds_the_validation_set_first_then_skips_it_on_pages(tmp_path):
    from chimuffin.simulate.sitting import SittingConfig, run_sitting
    from tests.test_review import write_pages

    step = step_files(tmp_path, size=4)
    pages, _, _ = pages_to_answer(step, CLASSES)
    sample = list(pages["path"])
    suggest = tmp_path / "suggest"
    write_pages(suggest / "pages.parquet", [("muffin", [(p, 0.9) for p in POOL[:20]]),
                                            ("chihuahua", [(p, 0.8) for p in POOL[20:]])])
    truth = dict.fromkeys(POOL, "muffin")
    cfg = SittingConfig(tmp_path, tmp_path / "params.yaml", step.decisions, suggest, CLASSES,
                        every=0, recipe="", eval_dir=tmp_path / "eval", validation=step)
    s = run_sitting(cfg, truth, math.inf, sleep=lambda _: None, report=lambda _: None)
    assert s.validation.answered == 4 and s.validation.seconds > 0
    assert set(read_validation(step.validation, CLASSES)) == set(sample)
    decided = {d.path for d in read_decisions(step.decisions, CLASSES)}
    assert decided == set(POOL) - set(sample) and s.verified == 40 - 1 - 4


@pytest.mark.slow
def test_loop_background_builds_the_validation_set_then_verifies_the_pool(tmp_path):
    params = deep_update(default_params_dict(), TINY)
    params["sample"]["pool"] = 16
    params["suggest"]["page_size"] = 3
    params["review"].update(retrain_every=0, round_recipe="", warm_recipe="")
    root = make_repo(tmp_path / "repo", params)
    run(["dvc", "repro", "-q"], root, env={"PYTHONPATH": ""})
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "repro"], root)
    p = run(["chimuffin", "loop", "--reviewer",
             "data/raw/sample/pool_labels.csv", "--minutes", "inf", "--validation", "4",
             "--no-final"], root,
            env={"PYTHONPATH": str(REPO / "src"), "TMPDIR": str(tmp_path)}, timeout=240)
    assert "validation set: 4 images answered" in p.stdout, p.stdout
    validation = read_validation(root / "data/labels/validation.csv", CLASSES)
    decided = {d.path for d in read_decisions(root / "data/labels/decisions.csv", CLASSES)}
    assert len(validation) == 4 and not set(validation) & decided
    changed = sorted(c for c in run(["git", "status", "--porcelain"], root).stdout.split("\n")
                     if c)
    assert changed == [" M data/labels/decisions.csv", " M data/labels/validation.csv"]

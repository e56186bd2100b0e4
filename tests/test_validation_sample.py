"""The validation sample (curate/validation_pages.py) and validation.csv's writer
(labels/validation.py): a seeded, uniform, stable sample of the pool that passes over decided
images; pages that propose one class each; answers added all or none, never over a decision."""

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from chimuffin.curate.validation_pages import (
    folder_pool,
    sample,
    seeded_order,
    target_size,
    validation_pages,
)
from chimuffin.errors import UserError
from chimuffin.labels.rows import Decision, format_decisions
from chimuffin.labels.validation import add_answers, format_validation, read_validation

CLASSES = ["chihuahua", "muffin"]
POOL = [f"train128/undefined/{i:04d}.jpg" for i in range(1000)]


def test_the_order_is_seeded_and_each_images_place_is_its_own():
    a, b = seeded_order(POOL, 42), seeded_order(POOL, 7)
    assert sorted(a) == POOL and a != b and a == seeded_order(list(reversed(POOL)), 42)
    # a new image slots in without moving the others relative to each other
    more = seeded_order([*POOL, "train128/undefined/new.jpg"], 42)
    assert [p for p in more if p != "train128/undefined/new.jpg"] == a


def test_every_pool_image_is_about_equally_likely_to_validate():
    pool, target, seeds = POOL[:100], 20, range(300)
    hits = Counter(p for s in seeds for p in sample(seeded_order(pool, s), target, set(),
                                                    set()).todo)
    # each image: Binomial(300, 0.2), mean 60, sd 6.9; none outside +-4.5 sd
    counts = np.array([hits[p] for p in pool])
    assert counts.sum() == target * len(seeds)
    assert counts.min() > 29 and counts.max() < 91, (counts.min(), counts.max())
    # and the sample is not tied to where an image sits in the folder listing
    first_half = sum(hits[p] for p in pool[:50]) / counts.sum()
    assert 0.47 < first_half < 0.53


def test_the_sample_passes_over_decided_images_and_counts_answered_ones():
    order = seeded_order(POOL, 42)
    s = sample(order, 10, validation={order[2]}, decided={order[0], order[5]})
    assert s.answered == [order[2]] and s.passed_over == 2
    assert s.todo == [p for p in order[:12] if p not in {order[0], order[2], order[5]}]
    assert len(s.answered) + len(s.todo) == 10


def test_answering_takes_an_image_off_the_list_and_leaves_the_rest():
    order = seeded_order(POOL, 3)
    before = sample(order, 50, set(), set())
    answered = set(before.todo[10:13])
    after = sample(order, 50, answered, set())
    assert after.todo == [p for p in before.todo if p not in answered]
    # a decision on an image outside the sample changes nothing
    assert sample(order, 50, answered, {order[-1]}).todo == after.todo


def test_target_size_is_the_param_at_most_a_quarter_of_the_pool():
    assert target_size(500, 4733) == 500
    assert target_size(500, 150) == 37
    assert target_size(0, 4733) == 0


def test_folder_pool_keeps_pool_images_validation_csv_already_labels():
    manifest = pd.DataFrame({
        "path": ["train128/undefined/a.jpg", "train128/undefined/b.jpg",
                 "train128/muffin/c.jpg", "test128/muffin/d.jpg", "val128/muffin/e.jpg"],
        "split": ["train", "val", "train", "test", "val"],
        "label": ["undefined", "muffin", "muffin", "muffin", "muffin"],
        "label_source": ["folder", "validation", "folder", "folder", "folder"]})
    assert folder_pool(manifest) == ["train128/undefined/a.jpg", "train128/undefined/b.jpg"]


def test_pages_propose_one_class_each_in_windows_of_the_seeded_order():
    todo = [f"p{i}" for i in range(10)]
    prop = pd.DataFrame({"path": todo, "prediction": ["chihuahua", "muffin"] * 5,
                         "confidence": 0.8})
    pages = validation_pages(todo, prop, CLASSES, page_size=3)
    # windows of 6: p0-p5 then p6-p9, each split by the proposal
    assert pages.groupby("page")["path"].apply(list).tolist() == [
        ["p0", "p2", "p4"], ["p1", "p3", "p5"], ["p6", "p8"], ["p7", "p9"]]
    assert pages.groupby("page")["label"].nunique().eq(1).all()
    with pytest.raises(UserError, match="stale"):
        validation_pages(["nope"], prop, CLASSES, 3)


def test_answers_go_to_validation_csv_all_or_none_never_over_a_decision(tmp_path):
    decisions, val = tmp_path / "decisions.csv", tmp_path / "validation.csv"
    decisions.write_text(format_decisions([Decision("a.jpg", "muffin", "human")]))
    before = decisions.read_bytes()
    assert add_answers(val, decisions, CLASSES, {"c.jpg": "muffin", "b.jpg": "chihuahua"}) == \
        {"b.jpg": "chihuahua", "c.jpg": "muffin"}
    assert val.read_text() == "path,label\nb.jpg,chihuahua\nc.jpg,muffin\n"
    for bad, says in [({"a.jpg": "muffin", "d.jpg": "muffin"}, "a.jpg has a decision"),
                      ({"b.jpg": "muffin"}, "b.jpg is already a validation image"),
                      ({"d.jpg": "undefined"}, "a validation label is a class")]:
        with pytest.raises(UserError, match=says):
            add_answers(val, decisions, CLASSES, bad)
    assert read_validation(val, CLASSES) == {"b.jpg": "chihuahua", "c.jpg": "muffin"}
    assert decisions.read_bytes() == before
    assert format_validation({}) == "path,label\n"


def test_validation_size_is_a_checked_param():
    from chimuffin.config import parse_params
    from tests.helpers.repo import default_params_dict

    params = default_params_dict()
    assert parse_params(params).review.validation_size == 500
    for bad in (-1, 100_001, "500", 2.5):
        params["review"]["validation_size"] = bad
        with pytest.raises(UserError, match="review.validation_size"):
            parse_params(params)


def test_the_page_counts_what_validates_and_review_pages_lose_answered_images():
    from chimuffin.review.validation import validation_counts, without_validated

    manifest = pd.DataFrame({
        "path": ["train128/muffin/s.jpg", "val128/muffin/v.jpg", "val128/chihuahua/w.jpg",
                 "train128/undefined/a.jpg", "train128/muffin/t.jpg"],
        "split": ["val", "val", "val", "val", "train"],
        "label": ["muffin", "muffin", "chihuahua", "chihuahua", "muffin"],
        "label_source": ["folder", "folder", "folder", "validation", "folder"]})
    # validation.csv holds 3 rows now (one of them already in the prepared manifest)
    assert validation_counts(manifest, 3) == {"seeds": 1, "val128": 2, "file": 3, "total": 6}
    pages = [{"page": 0, "label": "muffin", "images": [{"path": "a"}, {"path": "b"}]},
             {"page": 1, "label": "chihuahua", "images": [{"path": "c"}]}]
    assert without_validated(pages, {"b", "c"}) == [
        {"page": 0, "label": "muffin", "images": [{"path": "a"}]}]
    assert without_validated(pages, set()) is pages

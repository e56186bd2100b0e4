"""The review page's validation view in headless Chromium: the page opens there when nothing
validates beyond the seeds' own, shows the random sample's pages with the model's proposals,
and its answers go to validation.csv and nowhere else (the label files on disk are the oracle:
decisions.csv's bytes never change); an answered image leaves the review pages."""

import json

import pandas as pd
import pytest

from chimuffin import atomic
from chimuffin.labels.rows import Decision, format_decisions, read_decisions
from chimuffin.labels.validation import read_validation, validation_file
from chimuffin.report.metrics import wilson_interval
from chimuffin.review.data import ReviewData
from chimuffin.review.validation import Validation
from tests.test_review import CLASSES, browser_page, serving
from tests.test_review import request as http_request
from tests.test_review_page import build_long_pages

SIZE, PAGE_SIZE = 12, 4


@pytest.fixture
def validation_review(tmp_path):
    """The long pages' dataset (100 pool images on three review pages), the model proposing
    chihuahua and muffin in turn, a validation accuracy of 36 of 40 for the pipeline's model."""
    paths, data, names = build_long_pages(tmp_path)
    pred = pd.read_parquet(paths.eval / "predictions.parquet")
    atomic.write_parquet(paths.eval / "predictions.parquet", pred.assign(
        prediction=[CLASSES[i % 2] for i in range(len(pred))], confidence=0.8))
    atomic.write_json(paths.eval / "metrics.json", {"val": {"accuracy": 0.9, "n": 40}})
    atomic.write_text(paths.decisions, format_decisions(
        [Decision(names["pool"][99], "chihuahua", "auto", "accepted")]))
    validation = Validation(paths.root, paths.decisions, CLASSES, 42, SIZE, PAGE_SIZE)
    with serving(ReviewData(paths, CLASSES, data), validation=validation) as server:
        yield server, paths, names


def api(server, method, url, body=None):
    status, _, data = http_request(server, method, url, body)
    return status, json.loads(data)


@pytest.mark.slow
def test_validation_pages_write_validation_csv_and_nothing_else(validation_review):
    server, paths, names = validation_review
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    decisions_before = paths.decisions.read_bytes()
    val_file = validation_file(paths.decisions)
    _, first = api(server, "GET", "/api/validation")
    assert first["ask_first"] and first["target"] == SIZE and first["left"] == SIZE
    page = first["pages"][0]
    shown = [im["path"] for im in page["images"]]
    other = next(c for c in CLASSES if c != page["label"])
    with browser_page(url) as (bp, expect, _):
        # nothing validates beyond the seeds: the page opens on the validation view and says why
        expect(bp.locator("#validation-view")).to_be_visible()
        expect(bp.locator("#validation-banner")).to_be_visible()
        lo, hi = wilson_interval(36, 40)
        expect(bp.locator("#validation-models")).to_contain_text(
            f"pipeline outputs: 90.0% (95% interval {100 * lo:.1f}–{100 * hi:.1f}, 40 images)")
        expect(bp.locator("#validation-head")).to_have_attribute("data-first", shown[0])
        assert bp.eval_on_selector_all("#validation-grid .thumb",
                                       "els => els.map(e => e.dataset.path)") == shown
        bp.keyboard.press("l")      # the cursor to the second image
        bp.keyboard.press("o")      # marked: the other class
        bp.keyboard.press("Enter")  # the page answered
        expect(bp.locator("#validation-head")).not_to_have_attribute("data-first", shown[0])
        expect(bp.locator("#status")).to_contain_text(f"{len(shown)} validation image(s) saved")
        expect(bp.locator("#validation-counts")).to_contain_text(
            f"{len(shown)} in {val_file}")
        expect(bp.locator("#views [data-view='validation']")).to_have_text(
            f"Validation (w): {len(shown)} images")
        # the answered images are on no review page any more
        bp.keyboard.press("v")
        expect(bp.locator("#verify-view")).to_be_visible()
        on_pages = bp.eval_on_selector_all("#page-grid .thumb",
                                           "els => els.map(e => e.dataset.path)")
        assert on_pages and not set(on_pages) & set(shown)
    expected = {p: (other if i == 1 else page["label"]) for i, p in enumerate(shown)}
    assert read_validation(val_file, CLASSES) == expected
    assert paths.decisions.read_bytes() == decisions_before
    assert not paths.state.exists()  # nothing to undo: the label file's history is untouched
    _, state = api(server, "GET", "/api/state")
    listed = {im["path"] for pg in state["pages"]["list"] for im in pg["images"]}
    assert listed and not listed & set(shown)
    _, now = api(server, "GET", "/api/validation")
    assert (now["answered"], now["left"], now["ask_first"]) == (len(shown),
                                                               SIZE - len(shown), False)


def test_validate_refuses_images_outside_the_sample_and_labels_that_are_not_classes(
        validation_review):
    server, paths, names = validation_review
    decisions_before = paths.decisions.read_bytes()
    _, st = api(server, "GET", "/api/validation")
    todo = [im["path"] for pg in st["pages"] for im in pg["images"]]
    outside = next(p for p in names["pool"] if p not in todo)
    for body, status, says in [
            ({"labels": {outside: "muffin"}}, 409, "not an image of the validation sample"),
            ({"labels": {todo[0]: "undefined"}}, 400, "a validation label is a class"),
            ({"labels": {names["pool"][99]: "muffin"}}, 409, "not an image of the validation"),
            ({"paths": [todo[0]]}, 400, "expected a JSON object")]:
        got, answer = api(server, "POST", "/api/validate", body)
        assert (got, answer["ok"]) == (status, False) and says in answer["error"], answer
    assert not validation_file(paths.decisions).exists()
    assert paths.decisions.read_bytes() == decisions_before
    # a review page that held an image answered since writes no decision for it
    _, state = api(server, "GET", "/api/state")
    page = next(pg["page"] for pg in state["pages"]["list"]
                if todo[0] in {im["path"] for im in pg["images"]})
    got, answer = api(server, "POST", "/api/validate", {"labels": {todo[0]: "muffin"}})
    assert got == 200 and answer["added"] == [todo[0]]
    _, state = api(server, "GET", "/api/state")
    assert todo[0] not in {im["path"] for pg in state["pages"]["list"] for im in pg["images"]}
    got, answer = api(server, "POST", "/api/verify", {"page": page, "exceptions": {}})
    assert got == 200 and answer["changed"] > 0 and todo[0] not in answer["changes"]
    assert todo[0] not in {d.path for d in read_decisions(paths.decisions, CLASSES)}
    assert read_validation(validation_file(paths.decisions), CLASSES) == {todo[0]: "muffin"}


def test_the_validation_pages_follow_the_model_swapped_in(validation_review):
    from types import SimpleNamespace

    server, paths, names = validation_review
    view = server.RequestHandlerClass.validation
    _, before = api(server, "GET", "/api/validation")
    proposed = {im["path"]: pg["label"] for pg in before["pages"] for im in pg["images"]}
    first = next(iter(proposed))
    other = next(c for c in CLASSES if c != proposed[first])
    suggestions = pd.DataFrame({"path": [first], "model_label": [other], "model_conf": [0.99]})
    swapped = []
    view.after_swap(swapped.append)(SimpleNamespace(
        name="review-1-labels", outputs=SimpleNamespace(suggestions=suggestions)))
    assert [r.name for r in swapped] == ["review-1-labels"]  # the page's swap ran first
    _, after = api(server, "GET", "/api/validation")
    now = {im["path"]: (pg["label"], im["score"]) for pg in after["pages"] for im in pg["images"]}
    assert after["proposer"] == "review-1-labels" and now[first] == (other, 0.99)
    assert set(now) == set(proposed)  # the same sample: only its proposals changed
    assert all(now[p][0] == lbl for p, lbl in proposed.items() if p != first)

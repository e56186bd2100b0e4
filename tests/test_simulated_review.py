"""The simulated person: exact cost accounting on hand-made pages."""

import pandas as pd
import pytest

from chimuffin.labels.rows import Decision
from chimuffin.simulate.reviewer import ReviewCost, review_pages


def page_rows(page, label, paths, page_score=0.9):
    return [{"page": page, "position": i, "path": p, "label": label, "score": page_score,
             "page_score": page_score, "model_label": label, "knn_label": label,
             "agree": True} for i, p in enumerate(paths)]


PAGES = pd.DataFrame(page_rows(0, "chihuahua", ["a", "b", "c"], 0.97)
                     + page_rows(1, "muffin", ["d", "e"])
                     + page_rows(2, "muffin", ["f", "g", "h", "i"])
                     + page_rows(3, "chihuahua", ["j"]))
# c: not in the truth file (passed over); b: an exception on page 0
TRUTH = {"a": "chihuahua", "b": "muffin", "d": "muffin", "e": "chihuahua", "f": "muffin",
         "g": "muffin", "h": "muffin", "i": "muffin", "j": "chihuahua"}
DECIDED = [Decision("e", "muffin", "human"), Decision("j", "chihuahua", "3lc"),
           Decision("g", "chihuahua", "auto")]
# page 0: 1 + 3 x 0.4 + 2 x (1 exception + 1 passed over) = 6.2 s; page 1 (e decided by a
# person): 1 + 0.4 = 1.4 s; page 2 (the auto label on g is shown again): 1 + 4 x 0.4 = 2.6 s;
# page 3: only j, decided by a person: not shown, not charged.


def test_pages_cost_exactly_what_the_model_says_and_stop_before_a_page_that_does_not_fit():
    new, r = review_pages(PAGES, TRUTH, DECIDED, budget_seconds=8.0)
    assert [(d.path, d.label, d.source, d.note) for d in new] == [
        ("a", "chihuahua", "oracle", "page 0 (chihuahua, page score 0.97)"),
        ("b", "muffin", "oracle", "page 0 exception"),
        ("d", "muffin", "oracle", "page 1 (muffin, page score 0.90)")]
    assert r.seconds == pytest.approx(7.6)
    assert (r.pages, r.verified, r.exceptions, r.passed_over, r.skipped) == (2, 3, 1, 1, 1)
    assert r.by_class == {"chihuahua": 1, "muffin": 2}
    assert r.reason == ("the next page (page 2, 4 images) needs 2.6 s and 0.4 s of the 8 s "
                        "budget were left")


def test_a_budget_that_covers_every_page_reviews_the_whole_pool():
    new, r = review_pages(PAGES, TRUTH, DECIDED, budget_seconds=6.2 + 1.4 + 2.6)
    assert r.pages == 3 and r.skipped == 2
    assert r.reason == "all 4 pages were reviewed (0.0 s of the 10 s budget left)"
    assert r.seconds == pytest.approx(10.2)
    assert {d.path for d in new} == set("abdfghi")
    assert {d.path: d.label for d in new}["g"] == "muffin"  # the wrong auto label is fixed
    assert r.reason.startswith("all 4 pages were reviewed")
    assert review_pages(PAGES, TRUTH, DECIDED, 0.0)[1].reason.startswith("the next page (page 0")
    _, r = review_pages(PAGES, TRUTH, DECIDED, budget_seconds=float("inf"))
    assert r.pages == 3 and r.reason == "all 4 pages were reviewed"
    none, r = review_pages(PAGES.iloc[:0], TRUTH, [], 60.0)
    assert none == [] and r.seconds == 0 and "no review pages" in r.reason


def test_the_cost_model_is_a_parameter():
    cost = ReviewCost(page_s=0.0, thumb_s=1.0, exception_s=10.0)
    _, r = review_pages(PAGES[PAGES["page"] == 0], TRUTH, [], 100.0, cost)
    assert r.seconds == pytest.approx(3 * 1.0 + 2 * 10.0)
    assert ReviewCost().describe() == "1 s per page + 0.4 s per thumbnail + 2 s per exception"


def test_pages_whose_images_a_person_decided_cost_nothing():
    everyone = [Decision(p, "muffin", "human") for p in PAGES["path"]]
    new, r = review_pages(PAGES, TRUTH, everyone, 60.0)
    assert new == [] and r.seconds == 0 and r.pages == 0 and r.skipped == len(PAGES)
    assert r.reason == "every image on the 4 pages is already decided by a person"

"""Review pages: one proposed label per page, every pool image once, the most confident first."""

import numpy as np
import pandas as pd
import pytest

from chimuffin.curate.pages import PAGE_SCHEMA, build_pages, confidence_rank, summarize_pages
from chimuffin.infer.embeddings import unit_rows

CLASSES = ["chihuahua", "muffin"]


def pool(n=130, seed=0):
    """Suggestions for n pool images in a few embedding clusters; scores, margins and
    agreement vary independently."""
    rng = np.random.default_rng(seed)
    label = np.where(rng.random(n) < 0.55, "chihuahua", "muffin")
    score = rng.uniform(0.5, 1.0, n).round(3)  # rounded: some ties, broken by path
    s = pd.DataFrame({
        "path": [f"train128/undefined/u_{i:04d}.jpg" for i in rng.permutation(n)],
        "label": label, "score": score, "margin": 2 * score - 1,
        "agree": rng.random(n) < 0.7,
        "model_label": label, "knn_label": np.where(rng.random(n) < 0.8, label, "other")})
    centres = rng.normal(size=(5, 32)) * 4
    emb = centres[rng.integers(0, 5, n)] + rng.normal(size=(n, 32))
    return s, emb.astype(np.float32)


@pytest.mark.parametrize("page_size", [1, 7, 48, 1000])
def test_pages_hold_one_label_respect_the_size_and_cover_the_pool_once(page_size):
    s, emb = pool()
    pages = build_pages(s, emb, page_size)
    assert list(pages.columns) == list(PAGE_SCHEMA)
    assert pages.dtypes.astype(str).to_dict() == PAGE_SCHEMA
    assert sorted(pages["path"]) == sorted(s["path"])  # every pool image exactly once
    assert pages.groupby("page")["label"].nunique().eq(1).all()
    sizes = pages.groupby("page").size()
    assert sizes.max() <= page_size
    # within a label every page is full but the last one made
    for _, per_label in pages.groupby("label"):
        n = per_label.groupby("page").size()
        assert (n.iloc[:-1] == page_size).all()
    assert pages["page"].unique().tolist() == list(range(len(sizes)))  # 0.. in order
    assert (pages.groupby("page")["position"].apply(list)
            == pages.groupby("page").size().apply(lambda k: list(range(k)))).all()
    assert pages.equals(pages.sort_values(["page", "position"]).reset_index(drop=True))
    # the table carries each image's own suggestion, and the page's mean score
    row = s.set_index("path").loc[pages["path"]]
    assert (pages["label"].to_numpy() == row["label"].to_numpy()).all()
    assert np.array_equal(pages["score"].to_numpy(), row["score"].to_numpy())
    assert (pages["agree"].to_numpy() == row["agree"].to_numpy()).all()
    mean = pages.groupby("page")["score"].transform("mean")
    np.testing.assert_allclose(pages["page_score"], mean)


def seeds(pages):
    return pages[pages["position"] == 0].set_index("page")


def test_pages_start_from_the_highest_scores():
    s, emb = pool()
    conf = build_pages(s, emb, 10)
    top = s.sort_values(["score", "path"], ascending=[False, True]).iloc[0]
    assert conf.loc[0, "path"] == top["path"]
    # pages follow their seed's score across both labels (which interleave)
    assert seeds(conf)["score"].is_monotonic_decreasing
    assert seeds(conf)["label"].nunique() == 2 and seeds(conf)["label"].iloc[:4].nunique() == 2


def test_each_page_seeds_from_the_best_image_not_yet_on_a_page():
    s, emb = pool(n=600, seed=5)
    pages = build_pages(s, emb, 10)
    rank = pd.Series(confidence_rank(s), index=s["path"])
    earlier: list[str] = []
    for _, rows in pages.groupby("page"):
        assert rows["path"].iloc[0] == rank.drop(earlier).idxmin()
        earlier += rows["path"].tolist()


def test_a_page_takes_the_images_most_similar_to_its_seed():
    s = pd.DataFrame({"path": list("abcdef"), "label": ["muffin"] * 6,
                      "score": [0.99, 0.9, 0.8, 0.7, 0.6, 0.5], "margin": 0.5, "agree": True,
                      "model_label": "muffin", "knn_label": "muffin"})
    emb = np.array([[1, 0], [0, 1], [0.9, 0.1], [0.1, 0.9], [1, 0.05], [0.05, 1]])
    pages = build_pages(s, emb, 3)
    assert pages.groupby("page")["path"].apply("".join).tolist() == ["aec", "bfd"]
    assert pages.loc[0, "page_score"] == pytest.approx((0.99 + 0.6 + 0.8) / 3)


def test_pages_are_deterministic_whatever_the_row_order():
    s, emb = pool(seed=3)
    a = build_pages(s, emb, 16)
    shuffle = np.random.default_rng(1).permutation(len(s))
    b = build_pages(s.iloc[shuffle], emb[shuffle], 16)
    pd.testing.assert_frame_equal(a, b)
    # identical embeddings and scores: ties go to the path
    twins = pd.DataFrame({"path": ["b", "a", "c"], "label": "muffin", "score": 0.9,
                          "margin": 0.8, "agree": True, "model_label": "muffin",
                          "knn_label": "muffin"})
    same = np.ones((3, 4))
    assert build_pages(twins, same, 2)["path"].tolist() == ["a", "b", "c"]


def test_no_pool_gives_an_empty_table_with_the_schema_and_a_summary():
    s, emb = pool()
    empty = build_pages(s.iloc[:0], emb[:0], 48)
    assert empty.empty and empty.dtypes.astype(str).to_dict() == PAGE_SCHEMA
    assert summarize_pages(empty, CLASSES, 48)["pages"] == 0
    pages = build_pages(s, unit_rows(emb), 48)
    summary = summarize_pages(pages, CLASSES, 48)
    assert summary["images_on_pages"] == len(s)
    assert sum(summary["pages_by_label"].values()) == summary["pages"] == pages["page"].nunique()
    with pytest.raises(ValueError, match="page_size must be >= 1"):
        build_pages(s, emb, 0)

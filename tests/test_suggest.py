"""Suggestions, label issues, near duplicates and the review queue on synthetic embeddings."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from chimuffin.curate.scoring import (
    build_tables,
    cosine_knn,
    greedy_clusters,
    knn_vote,
    near_duplicates,
    pixel_signatures,
)
from chimuffin.infer.embeddings import unit_rows

CLASSES = ["chihuahua", "muffin"]
CFG = SimpleNamespace(k=5, model_weight=0.5, dup_similarity=0.97, issue_threshold=0.6,
                      cluster_similarity=0.9)


def test_cosine_knn_matches_brute_force_excludes_self_and_breaks_ties_by_index():
    rng = np.random.default_rng(0)
    x = unit_rows(rng.normal(size=(40, 8)))
    idx, sim = cosine_knn(x, x, 3, exclude=np.arange(40), chunk=7)
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    assert (idx[:, 0] != np.arange(40)).all()
    np.testing.assert_allclose(sim, -np.sort(-full, axis=1)[:, :3], rtol=1e-5)
    # identical references tie: the lower index comes first
    ref = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    idx, _ = cosine_knn(ref[:1], ref, 2)
    assert idx.tolist() == [[0, 1]]
    # k larger than what is available, and nothing available
    assert cosine_knn(x[:2], x[:3], 10)[0].shape == (2, 3)
    assert cosine_knn(x[:2], x[:0], 10)[0].shape == (2, 0)


def test_knn_vote_weights_by_similarity_with_one_prior_vote():
    p = knn_vote(np.array([[0.9, 0.9, 0.1], [0.5, 0.5, 0.5]]), np.array([[0, 0, 1], [1, 1, 1]]),
                 2)
    np.testing.assert_allclose(p[0], [(1.8 + 0.5) / 2.9, (0.1 + 0.5) / 2.9])
    np.testing.assert_allclose(p[1], [0.5 / 2.5, 2.0 / 2.5])
    np.testing.assert_allclose(knn_vote(np.zeros((1, 0)), np.zeros((1, 0), int), 2), [[.5, .5]])


def world(n_per=12, seed=0):
    """Two tight clusters (chihuahua near e0, muffin near e1) of labeled train/val images and
    pool images; the model probabilities agree with the clusters unless a test changes them."""
    rng = np.random.default_rng(seed)
    rows, emb = [], []
    for c, cls in enumerate(CLASSES):
        centre = np.eye(16)[c] * 5
        for i in range(n_per):
            split, label = ("val", cls) if i < 3 else ("train", cls) if i < 8 else \
                ("train", "undefined")
            rows.append((f"train128/{cls[0]}/{i:02d}.jpg", split, label, "folder", f"h{c}{i}"))
            emb.append(centre + rng.normal(scale=0.3, size=16))
    df = pd.DataFrame(rows, columns=["path", "split", "label", "label_source", "content_hash"])
    truth = np.repeat([0, 1], n_per)
    p_model = np.where(truth[:, None] == np.arange(2), 0.9, 0.1)
    sig = unit_rows(rng.normal(size=(len(df), 32)))  # all distinct
    return df, p_model, np.array(emb, dtype=np.float32), sig


def test_neighbours_are_the_k_most_similar_labeled_images_with_their_similarities():
    df, p_model, emb, sig = world()
    df.loc[0, "split"] = "test"  # a labeled test image never votes
    t = build_tables(df, p_model, emb, sig, CLASSES, CFG)
    nb = t["neighbours"]
    unit = unit_rows(emb)
    labeled = ((df["split"] != "test") & (df["label"] != "undefined")).to_numpy()
    pool = df["path"][df["label"] == "undefined"].tolist()
    assert list(nb.columns) == ["path", "rank", "neighbour", "similarity"]
    assert sorted(set(nb["path"])) == sorted(pool)
    for path in pool:
        mine = nb[nb["path"] == path]
        sim = unit[np.flatnonzero(labeled)] @ unit[df.index[df["path"] == path][0]]
        best = np.argsort(-sim, kind="stable")[:CFG.k]
        assert mine["rank"].tolist() == list(range(1, CFG.k + 1))
        assert mine["neighbour"].tolist() == df["path"].to_numpy()[labeled][best].tolist()
        np.testing.assert_allclose(mine["similarity"], sim[best], rtol=1e-5)
    # the vote's mean similarity and nearest labeled image are these neighbours'
    s = t["suggestions"].set_index("path")
    first = nb[nb["rank"] == 1].set_index("path")["neighbour"]
    assert (s.loc[first.index, "nearest_labeled"] == first).all()
    mean = nb.groupby("path")["similarity"].mean()
    np.testing.assert_allclose(s.loc[mean.index, "knn_sim"], mean, rtol=1e-5)


def test_pool_suggestions_agree_with_clusters_and_disagreement_is_queued_first():
    df, p_model, emb, sig = world()
    odd = df.index[df["path"] == "train128/m/10.jpg"][0]  # a muffin-cluster pool image
    p_model[odd] = [0.95, 0.05]  # the model says chihuahua; its neighbours say muffin
    t = build_tables(df, p_model, emb, sig, CLASSES, CFG)
    s = t["suggestions"].set_index("path")
    assert len(s) == 8 and set(s.index) == set(df.loc[df["label"] == "undefined", "path"])
    others = s.drop("train128/m/10.jpg")
    assert (others["label"] == others.index.str[9].map({"c": "chihuahua", "m": "muffin"})).all()
    assert others["agree"].all() and (others["score"] > 0.85).all()
    assert not s.loc["train128/m/10.jpg", "agree"]
    assert s.loc["train128/m/10.jpg", "score"] < others["score"].min()
    q = t["review_queue"]
    assert q.loc[0, "path"] == "train128/m/10.jpg" and q.loc[0, "kind"] == "pool"
    assert "model says chihuahua, neighbours say muffin" in q.loc[0, "reason"]
    assert q["rank"].tolist() == list(range(1, len(q) + 1))


def test_label_issues_never_use_the_models_view_of_its_own_training_labels():
    df, p_model, emb, sig = world()
    df.loc[df["path"] == "train128/c/05.jpg", "label"] = "muffin"  # flipped, in train
    df.loc[df["path"] == "train128/c/01.jpg", "label"] = "muffin"  # flipped, in val
    t = build_tables(df, p_model, emb, sig, CLASSES, CFG)
    issues = t["label_issues"].set_index("path")
    assert set(issues.index[:2]) == {"train128/c/05.jpg", "train128/c/01.jpg"}
    assert (issues["issue_score"].iloc[:2] > 0.6).all()
    assert (issues["issue_score"].iloc[2:] < 0.5).all()  # 2 of 8 neighbours are flipped
    assert issues.loc["train128/c/01.jpg", "model_out_of_sample"]
    assert not issues.loc["train128/c/05.jpg", "model_out_of_sample"]
    # a model that memorised the wrong training label changes nothing for the train image...
    memorised = p_model.copy()
    memorised[df["path"] == "train128/c/05.jpg"] = [0.01, 0.99]
    memorised[df["path"] == "train128/c/01.jpg"] = [0.01, 0.99]
    again = build_tables(df, memorised, emb, sig, CLASSES, CFG)["label_issues"].set_index("path")
    assert again.loc["train128/c/05.jpg", "issue_score"] == issues.loc["train128/c/05.jpg",
                                                                       "issue_score"]
    # ...while the validation image's score uses the (out-of-sample) model
    assert again.loc["train128/c/01.jpg", "issue_score"] < issues.loc["train128/c/01.jpg",
                                                                      "issue_score"]
    # likely wrong labels lead the review queue
    q = t["review_queue"]
    assert set(q.loc[q["kind"] == "label_issue", "path"]) == {"train128/c/05.jpg",
                                                              "train128/c/01.jpg"}
    assert q.sort_values("value", ascending=False)["kind"].iloc[0] == "label_issue"


def test_decided_pool_images_and_test_images_are_neither_suggested_nor_neighbours():
    df, p_model, emb, sig = world()
    df.loc[df["path"] == "train128/c/09.jpg", "label_source"] = "human"  # a person: undefined
    df.loc[df["path"] == "train128/c/00.jpg", "split"] = "test"
    t = build_tables(df, p_model, emb, sig, CLASSES, CFG)
    assert "train128/c/09.jpg" not in set(t["suggestions"]["path"])
    assert "train128/c/00.jpg" not in set(t["label_issues"]["path"])
    assert "train128/c/00.jpg" not in set(t["suggestions"]["nearest_labeled"])


def test_pixel_signatures_ignore_brightness_and_contrast_but_not_content():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 200, size=(3, 40, 40)).astype(np.uint8)
    brighter = np.clip(a.astype(int) * 1.2 + 20, 0, 255).astype(np.uint8)
    other = rng.integers(0, 200, size=(3, 40, 40)).astype(np.uint8)
    images = np.stack([a, brighter, other, a])
    sig = pixel_signatures(images, np.array([0, 1, 2, 3]), chunk=3)
    assert sig @ sig[0] == pytest.approx([1.0, 1.0, sig[2] @ sig[0], 1.0], abs=0.01)
    assert sig[2] @ sig[0] < 0.5
    d = near_duplicates(sig[:3], np.array(["h0", "h1", "h2"]), 0.97)
    assert d["near_duplicate"].tolist() == [True, True, False]
    assert d["dup_row"].tolist()[:2] == [1, 0]
    # identical pixels (same content hash) count as duplicates whatever the signature
    d = near_duplicates(sig[[0, 2, 2]], np.array(["x", "y", "y"]), 0.999)
    assert d["dup_row"].tolist()[1:] == [2, 1] and d["dup_sim"].tolist()[1:] == [1.0, 1.0]


def test_duplicate_with_a_different_label_is_a_conflict():
    df, p_model, emb, sig = world()
    a = df.index[df["path"] == "train128/c/04.jpg"][0]
    b = df.index[df["path"] == "train128/m/04.jpg"][0]
    sig[b] = sig[a]
    issues = build_tables(df, p_model, emb, sig, CLASSES, CFG)["label_issues"].set_index("path")
    assert issues.loc["train128/c/04.jpg", "dup_of"] == "train128/m/04.jpg"
    assert issues.loc["train128/c/04.jpg", "dup_conflict"]
    assert issues["dup_conflict"].sum() == 2


def test_greedy_clusters_group_similar_rows_and_respect_the_size_cap():
    x = unit_rows(np.array([[1, 0], [0.99, 0.05], [0, 1], [0.98, 0.1], [0.05, 1]]))
    assert greedy_clusters(x, 0.9, 10).tolist() == [0, 0, 1, 0, 1]
    assert greedy_clusters(x, 0.9, 2).tolist() == [0, 0, 1, 2, 1]
    assert greedy_clusters(x, 1.01, 10).tolist() == [0, 1, 2, 3, 4]  # seeds always join


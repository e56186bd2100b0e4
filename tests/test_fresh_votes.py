"""Fresh votes (curate/fresh_votes.py): a model's pages rebuilt with the labels given since it
was trained, in the sitting and on the review page."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from chimuffin import atomic
from chimuffin.curate.fresh_votes import ModelOutputs, fresh_pages, read_model_outputs, relabel
from chimuffin.curate.pages import build_pages
from chimuffin.curate.scoring import build_tables
from chimuffin.errors import UserError
from chimuffin.infer.embeddings import unit_rows
from chimuffin.labels.rows import Decision, format_decisions
from chimuffin.review.data import ReviewData
from tests.test_review import build_repo
from tests.test_suggest import CFG, CLASSES, world

PAGE_CFG = SimpleNamespace(**vars(CFG), page_size=3, page_order="confident",
                           uncertain_share=0.2)


def outputs_of(df, p_model, emb, sig) -> ModelOutputs:
    """What read_model_outputs would give for the suggest stage's tables of this world."""
    t = build_tables(df, p_model, emb, sig, CLASSES, CFG)
    dup_cols = ["path", "dup_of", "dup_sim", "near_duplicate"]
    dups = pd.concat([t["suggestions"][dup_cols], t["label_issues"][dup_cols]])
    return ModelOutputs(df[["path", "split", "label", "label_source"]], p_model,
                        unit_rows(emb), dups.set_index("path"))


def test_with_no_new_answer_the_pages_are_the_suggest_stages():
    df, p_model, emb, sig = world()
    t = build_tables(df, p_model, emb, sig, CLASSES, CFG)
    s = t["suggestions"]
    at = pd.Index(df["path"]).get_indexer(s["path"])
    stage = build_pages(s, emb[at], 3, "confident")
    fresh = fresh_pages(outputs_of(df, p_model, emb, sig), [], CLASSES, PAGE_CFG)
    pd.testing.assert_frame_equal(fresh.pages, stage)
    pd.testing.assert_frame_equal(fresh.suggestions[s.columns], s)
    pd.testing.assert_frame_equal(fresh.neighbours, t["neighbours"])


def unlabeled_muffins_the_model_gets_wrong():
    """The muffin cluster has no labeled image at all and the model calls it chihuahua (0.8)."""
    df, p_model, emb, sig = world()
    muffins = df["path"].str.startswith("train128/m/").to_numpy()
    df.loc[muffins, ["split", "label"]] = ["train", "undefined"]
    p_model[muffins] = [0.8, 0.2]
    return df, p_model, emb, sig, df["path"][muffins].tolist()


def test_answers_given_since_the_model_vote_on_the_next_pages():
    df, p_model, emb, sig, muffins = unlabeled_muffins_the_model_gets_wrong()
    model = outputs_of(df, p_model, emb, sig)
    before = fresh_pages(model, [], CLASSES, PAGE_CFG).pages
    assert set(before.loc[before["path"].isin(muffins), "label"]) == {"chihuahua"}
    # the person corrects four of them (an exception-heavy page)
    answers = [Decision(p, "muffin", "oracle", "sitting") for p in muffins[:4]]
    after = fresh_pages(model, answers, CLASSES, PAGE_CFG)
    rest = after.pages[after.pages["path"].isin(muffins)]
    assert len(rest) == len(muffins) - 4  # answered images are on no page
    assert set(rest["label"]) == {"muffin"} and set(rest["knn_label"]) == {"muffin"}
    assert set(rest["model_label"]) == {"chihuahua"}  # the model itself did not change
    voted = after.neighbours[after.neighbours["path"] == rest["path"].iloc[0]]
    assert set(voted["neighbour"].head(4)) == set(muffins[:4])
    ev = after.suggestions.set_index("path").loc[rest["path"].iloc[0]]
    assert ev["dup_of"] != "" and not ev["near_duplicate"]  # the model's run's duplicate columns


def test_relabel_keeps_rows_aligned_and_ignores_images_the_run_dropped():
    df, *_ = world()
    first, second = df["path"].iloc[0], df["path"].iloc[-1]
    out = relabel(df, [Decision(first, "remove", "human"), Decision(second, "chihuahua", "human"),
                       Decision("train128/m/a-dropped-duplicate.jpg", "muffin", "human")])
    assert len(out) == len(df) and (out["path"] == df["path"]).all()
    assert out["label"].iloc[0] == "remove" and out["label"].iloc[-1] == "chihuahua"
    assert out["label_source"].iloc[-1] == "human" and df["label"].iloc[-1] == "undefined"


def test_a_removed_image_leaves_the_pages_and_the_vote():
    df, p_model, emb, sig, muffins = unlabeled_muffins_the_model_gets_wrong()
    model = outputs_of(df, p_model, emb, sig)
    fresh = fresh_pages(model, [Decision(muffins[0], "remove", "human")], CLASSES, PAGE_CFG)
    assert muffins[0] not in set(fresh.pages["path"]) | set(fresh.neighbours["neighbour"])


# --- reading a run's outputs, and the review page -------------------------------------------

def write_model_outputs(paths, lone_muffins: list[str]) -> None:
    """build_repo's dataset with the outputs fresh votes read: the embeddings put the labeled
    chihuahuas with the pool, `lone_muffins` (pool images) in a cluster of their own and the
    labeled muffins far from both; the model says chihuahua (0.6) for every pool image."""
    manifest = pd.read_parquet(paths.prepared / "manifest.parquet")
    # the clean manifest as prepare would have it: the link out of the dataset is no image
    atomic.write_parquet(paths.root / "data/clean/manifest.parquet",
                         manifest[~manifest["path"].str.endswith("escape.jpg")])
    cluster = np.where(manifest["path"].isin(lone_muffins), 1,
                       np.where(manifest["path"].str.contains("/muffin/"), 2, 0))
    rng = np.random.default_rng(0)
    emb = np.eye(8)[cluster] * 5 + rng.normal(scale=0.05, size=(len(manifest), 8))
    pool = (manifest["label"] == "undefined").to_numpy()
    p_chi = np.where(pool, 0.6, np.where(cluster == 2, 0.1, 0.9))
    atomic.write_parquet(paths.eval / "predictions.parquet", manifest[["path"]].assign(
        prediction=np.where(p_chi > 0.5, "chihuahua", "muffin"), confidence=np.maximum(
            p_chi, 1 - p_chi), p_chihuahua=p_chi, p_muffin=1 - p_chi))
    atomic.write_parquet(paths.embed / "embeddings.parquet", pd.DataFrame(
        {"path": manifest["path"], "embedding": list(emb.astype(np.float32))}))
    dup = {"dup_of": "", "dup_sim": 0.1, "near_duplicate": False}
    atomic.write_parquet(paths.suggest / "suggestions.parquet",
                         manifest.loc[pool, ["path"]].assign(**dup))
    atomic.write_parquet(paths.suggest / "label_issues.parquet",
                         manifest.loc[~pool, ["path"]].assign(**dup))


def fresh_repo(tmp_path):
    """build_repo's dataset and pages with write_model_outputs' outputs (pool 3-5 the lone
    muffins) and an empty label file: (paths, dataset folder, pool images)."""
    paths, data_dir, info = build_repo(tmp_path)
    write_model_outputs(paths, info["pool"][3:])
    paths.decisions.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(paths.decisions, format_decisions([]))
    return paths, data_dir, info["pool"]


def test_read_model_outputs_names_a_stale_file(tmp_path):
    paths, _, info = build_repo(tmp_path)
    write_model_outputs(paths, info["pool"][3:])
    model = read_model_outputs(paths.root, CLASSES)
    assert len(model.manifest) == len(model.p_model) == len(model.unit)
    emb = pd.read_parquet(paths.embed / "embeddings.parquet")
    atomic.write_parquet(paths.embed / "embeddings.parquet", emb.iloc[1:])
    with pytest.raises(UserError, match="embeddings.parquet has no row for 1 image"):
        read_model_outputs(paths.root, CLASSES)


def test_the_page_proposes_again_after_each_accepted_page(tmp_path):
    paths, data_dir, pool = fresh_repo(tmp_path)
    before = fresh_pages(read_model_outputs(paths.root, CLASSES), [], CLASSES, PAGE_CFG).pages
    assert before.set_index("path").loc[pool[5], "label"] == "chihuahua"  # no muffin near
    data = ReviewData(paths, CLASSES, data_dir, fresh_votes=PAGE_CFG)
    assert data.models_state() | {"list": None} == {
        "version": 0, "current": 0, "fresh_votes": True, "fresh_error": None, "list": None}
    # page 1 of the pipeline's pages holds pool 3-4 (proposed muffin): both are muffins
    data.verify({"page": 1, "exceptions": {}})
    state = data.state()
    assert state["models"]["version"] == 1 and state["models"]["current"] == 0
    listed = state["pages"]["list"]
    shown = {im["path"]: pg["label"] for pg in listed for im in pg["images"]}
    assert pool[3] not in shown and pool[4] not in shown
    # pool 5 (the model: chihuahua, 0.6) sits with the muffins just verified: their votes win
    assert shown[pool[5]] == "muffin"
    assert shown[pool[0]] == "chihuahua"
    assert min(pg["page"] for pg in listed) == 2  # numbers the session used are not reused
    assert all(pg["model"] == 0 for pg in listed)
    assert state["evidence"]["images"][pool[5]]["knn_label"] == "muffin"
    # the verified page counted for the pipeline's model, as before
    assert data.models_state()["list"][0]["verified"] == 2


def test_outputs_it_cannot_read_turn_fresh_votes_off_and_say_why(tmp_path):
    paths, data_dir, _ = build_repo(tmp_path)  # pages, but no clean manifest nor embeddings
    data = ReviewData(paths, CLASSES, data_dir, fresh_votes=PAGE_CFG)
    models = data.models_state()
    assert models["fresh_votes"] is False
    assert models["fresh_error"].startswith("fresh votes off: ") and \
        "data/clean/manifest.parquet" in models["fresh_error"]
    data.verify({"page": 0, "exceptions": {}})  # the page still works, with its own pages
    assert data.models_state()["version"] == 0


@pytest.mark.slow
def test_in_the_browser_the_next_pages_follow_the_last_answers(tmp_path):
    """Keyboard only, at 1280x720: accepting a page re-proposes the pages after it (no
    new-model message, the same model named), and the label file holds each answer."""
    import time

    from tests.test_review import on_disk, serving
    from tests.test_review_page import browser_at

    paths, data_dir, pool = fresh_repo(tmp_path)
    data = ReviewData(paths, CLASSES, data_dir, fresh_votes=PAGE_CFG)
    with serving(data) as server, \
            browser_at(f"http://127.0.0.1:{server.server_address[1]}/", 1280, 720) \
            as (page, expect, _):
        head = page.locator("#page-head")
        expect(head).to_have_attribute("data-page", "0")
        expect(page.locator("#retrain-info")).to_contain_text("fresh votes")
        page.keyboard.press("n")  # to page 1: pool 3-4, proposed muffin
        expect(head).to_have_attribute("data-page", "1")
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_contain_text("page 1 verified")
        assert on_disk(paths) == {p: ("muffin", "human", "review page: page 1")
                                  for p in pool[3:5]}
        # the pages after it were rebuilt: pool 5, beside the two muffins, is proposed muffin
        page.wait_for_function("() => R.version >= 1", timeout=10_000)
        page.keyboard.press("p")
        expect(head).to_have_attribute("data-page", "0")
        page.keyboard.press("Enter")  # page 0 (pool 0-2, chihuahua) from the first list
        expect(page.locator("#status")).to_contain_text("page 0 verified")
        page.wait_for_function("() => R.version >= 2", timeout=10_000)
        time.sleep(0.5)  # the swap's status line would come now: it must not
        expect(page.locator("#status")).not_to_contain_text("new proposals")
        shown = page.locator(f'#page-grid .thumb[data-path="{pool[5]}"]')
        expect(shown).to_have_count(1)
        expect(head).to_contain_text("muffin")
        expect(head).to_contain_text("proposed by pipeline outputs")
        page.keyboard.press("Enter")
        page.wait_for_selector("#progress[data-verified='6']")
    rows = on_disk(paths)
    assert rows[pool[5]][:2] == ("muffin", "human") and len(rows) == 6


def test_progress_of_an_empty_page_list_after_the_last_page():
    from chimuffin.review.verify import progress

    pages = pd.DataFrame({"page": pd.Series([], dtype="int64"), "path": pd.Series([], dtype=str),
                          "label": pd.Series([], dtype=str)})
    out = progress(["a"], {"a": Decision("a", "muffin", "human")}, pages,
                   [*CLASSES, "undefined", "remove"], CLASSES, {})
    assert (out["verified"], out["left"], out["pages"], out["pages_left"]) == (1, 0, 0, 0)


def test_a_finished_model_proposes_with_the_labels_given_since_its_snapshot(tmp_path):
    import time

    from chimuffin.review.background import Run

    paths, data_dir, pool = fresh_repo(tmp_path)
    data = ReviewData(paths, CLASSES, data_dir, fresh_votes=PAGE_CFG)
    data.verify({"page": 1, "exceptions": {}})  # pool 3-4: muffin, after the run's snapshot
    outputs = read_model_outputs(paths.root, CLASSES)
    data.swap_in(Run("review-x-0-labels", 0, "on demand", time.time(), finished=time.time(),
                     ok=True, outputs=outputs))  # its own pages are not even read
    models = data.models_state()
    assert (models["version"], models["current"]) == (2, 1)
    assert [m["name"] for m in models["list"]] == ["pipeline outputs", "review-x-0-labels"]
    listed = data.state()["pages"]["list"]
    shown = {im["path"]: pg["label"] for pg in listed for im in pg["images"]}
    assert pool[3] not in shown and shown[pool[5]] == "muffin"
    assert all(pg["model"] == 1 for pg in listed)

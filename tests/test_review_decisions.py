"""The review page writes only what the person decided, and says truthfully what the model is
doing: one Playwright test per defect found by trying the page as a new user (marks a view
change dropped, bulk actions over a person's answers and validation images, counts that were
not what they said, a top bar that forgot or misnamed its model, a dead server not shown,
similarities without their kind, stale messages, a silent retrain). The label files on disk
(decisions.csv, validation.csv, the dataset's val128/ folder) are the oracle throughout."""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest

from chimuffin import atomic
from chimuffin.data.sample import draw_image, jpeg_bytes
from chimuffin.errors import UserError
from chimuffin.labels.rows import Decision, apply_decisions, format_decisions, read_decisions
from chimuffin.report.metrics import wilson_interval
from chimuffin.retrain.outputs import RunOutputs
from chimuffin.retrain.retrainer import Retrainer, Run
from chimuffin.review.data import Paths, ReviewData
from chimuffin.review.kept_model import KEPT
from tests.test_review import CLASSES, on_disk, serving, write_pages
from tests.test_review_page import PAGE, browser_at, build_long_pages, fully_visible

VAL128 = ["val128/chihuahua/img_00001.jpg", "val128/muffin/img_00001.jpg"]


# --- the dataset: the long pages, a val128/ folder, a validation.csv image, a queue ----------

def add_validation_images(paths: Paths, data: Path, names: dict) -> None:
    """The dataset's own val128/ folder (one image per class, plotted beside the pool) and
    pool 99 labeled muffin in validation.csv (on no page)."""
    manifest = pd.read_parquet(paths.prepared / "manifest.parquet")
    for i, rel in enumerate(VAL128):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(jpeg_bytes(draw_image(rel.split("/")[1], 100 + i)))
    new = pd.DataFrame({"path": VAL128, "split": "val", "label": ["chihuahua", "muffin"],
                        "label_source": "folder", "idx": len(manifest) + pd.RangeIndex(2),
                        "content_hash": ["hv0", "hv1"], "width": 64, "height": 64})
    manifest = pd.concat([manifest, new], ignore_index=True)
    v = names["pool"][99]
    manifest.loc[manifest["path"] == v, ["split", "label", "label_source"]] = [
        "val", "muffin", "validation"]
    atomic.write_parquet(paths.prepared / "manifest.parquet", manifest)
    atomic.write_text(paths.root / "data/labels/validation.csv", f"path,label\n{v},muffin\n")
    pacmap = pd.read_parquet(paths.embed / "pacmap.parquet")
    extra = new[["path", "split", "label"]].assign(x=[10.0, 10.0], y=[2.0, 5.0],
                                                   x3=10.0, y3=[2.0, 5.0], z3=0)
    atomic.write_parquet(paths.embed / "pacmap.parquet", pd.concat([pacmap, extra],
                                                                   ignore_index=True))
    pred = pd.read_parquet(paths.eval / "predictions.parquet")
    atomic.write_parquet(paths.eval / "predictions.parquet", pd.concat(
        [pred, pd.DataFrame({"path": VAL128, "prediction": "muffin", "confidence": 0.7})],
        ignore_index=True))


def write_queue(paths: Paths, names: dict) -> None:
    """Cluster 0: page 2's images and the val128/ chihuahua, all proposed muffin, and two pool
    images of page 1. Cluster 1: a pool image, the validation.csv image, the val128/ muffin."""
    p = names["pool"]
    rows = [(p[96], 0, "muffin"), (p[97], 0, "muffin"), (p[98], 0, "muffin"),
            (VAL128[0], 0, "muffin"), (p[60], 0, "chihuahua"), (p[61], 0, "muffin"),
            (p[62], 1, "muffin"), (p[99], 1, "chihuahua"), (VAL128[1], 1, "chihuahua")]
    atomic.write_parquet(paths.suggest / "review_queue.parquet", pd.DataFrame({
        "rank": range(1, len(rows) + 1), "path": [r[0] for r in rows],
        "kind": ["label_issue" if r[0].startswith("val128") else "pool" for r in rows],
        "cluster": [r[1] for r in rows], "proposed": [r[2] for r in rows],
        "reason": "uncertain"}))


def build_decisions_repo(root: Path) -> tuple[Paths, Path, dict]:
    paths, data, names = build_long_pages(root)
    add_validation_images(paths, data, names)
    write_queue(paths, names)
    # the training manifest the pipeline's model saw: the prepared one, no decision in it
    clean = root / "data/clean"
    clean.mkdir(parents=True, exist_ok=True)
    atomic.write_parquet(clean / "manifest.parquet",
                         pd.read_parquet(paths.prepared / "manifest.parquet"))
    return paths, data, names


@pytest.fixture(scope="module")
def decisions_built(tmp_path_factory):
    return build_decisions_repo(tmp_path_factory.mktemp("review-decisions"))


def start_files(paths: Paths, decisions: list[Decision] = ()) -> None:
    atomic.write_text(paths.decisions, format_decisions(list(decisions)))
    paths.state.unlink(missing_ok=True)
    shutil.rmtree(paths.root / KEPT, ignore_errors=True)  # no model kept from another test


@pytest.fixture
def decision_review(decisions_built):
    paths, data, names = decisions_built
    start_files(paths)
    with serving(ReviewData(paths, CLASSES, data)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/", paths, names


# --- helpers: what is on disk, what the person does -----------------------------------------

def label_now(rows: dict, path: str, base: str = "undefined") -> str:
    return rows[path][0] if path in rows else base


def validation_files(paths: Paths, data: Path) -> tuple[bytes, list[bytes]]:
    """validation.csv and the val128/ images, byte for byte."""
    return ((paths.root / "data/labels/validation.csv").read_bytes(),
            [(data / v).read_bytes() for v in VAL128])


def quiet_conflicts(seen: dict) -> None:
    """The browser logs the 409 that asks the page to confirm an overwrite: expected."""
    seen["errors"][:] = [e for e in seen["errors"] if "status of 409 (Conflict)" not in e]


def thumb_of(path: str) -> str:
    return f'#page-grid .thumb[data-path="{path}"]'


def see_whole_page(page) -> None:
    """Enter until every image of the page was on screen, without the press that accepts."""
    page.keyboard.press("Enter")
    for _ in range(10):
        if "still below" not in (page.text_content("#status") or ""):
            return
        page.keyboard.press("Enter")
        page.wait_for_timeout(50)
    raise AssertionError("the page never finished showing its images")


def accept_by_enter(page, paths: Paths, presses: int = 10) -> int:
    """Enter until the label file changes; how many presses it took."""
    before = paths.decisions.read_bytes()
    for n in range(1, presses + 1):
        page.keyboard.press("Enter")
        for _ in range(40):
            page.wait_for_timeout(25)
            if paths.decisions.read_bytes() != before:
                return n
    raise AssertionError(f"{presses} presses of Enter accepted nothing")


def plot_coords(paths: Paths) -> dict[str, tuple[float, float]]:
    df = pd.read_parquet(paths.embed / "pacmap.parquet")
    return {p: (float(x), float(y)) for p, x, y in zip(df["path"], df["x"], df["y"],
                                                       strict=True)}


def lasso(page, points: list[tuple[float, float]], pad: float = 0.4) -> None:
    """Draw plotly's lasso (the plot's drag mode) with the mouse round the data rectangle
    that holds `points`."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    corners = page.evaluate("""([x0, x1, y0, y1]) => {
        const gd = document.getElementById('plot'), L = gd._fullLayout;
        const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
        const clamp = (v, lo, hi) => Math.min(Math.max(v, lo + 2), hi - 2);
        const px = (x, y) => [clamp(r.left + L.xaxis.l2p(x), r.left, r.right),
                              clamp(r.top + L.yaxis.l2p(y), r.top, r.bottom)];
        return [px(x0, y0), px(x1, y0), px(x1, y1), px(x0, y1)];
    }""", [min(xs) - pad, max(xs) + pad, min(ys) - pad, max(ys) + pad])
    page.mouse.move(*corners[0])
    page.mouse.down()
    for x, y in [*corners[1:], corners[0]]:
        page.mouse.move(x, y, steps=4)
    page.mouse.up()


def inside(coords: dict, points: list[tuple[float, float]], pad: float = 0.4) -> set[str]:
    """The plotted (non-test) paths the rectangle of `lasso(points)` takes in."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return {p for p, (x, y) in coords.items() if not p.startswith("test128")
            and min(xs) - pad <= x <= max(xs) + pad and min(ys) - pad <= y <= max(ys) + pad}


def dim_points(page) -> int:
    """Plot points drawn dimmed (plotly's `unselected` opacity), as the browser renders them."""
    return page.eval_on_selector_all(
        "#plot .scatterlayer .point",
        "els => els.filter(e => Number(getComputedStyle(e).opacity) < 0.5).length")


# --- 1. marks a view change cannot keep -------------------------------------------------------

@pytest.mark.slow
def test_marks_a_lasso_cannot_keep_are_listed_and_the_page_must_be_seen_again(decision_review):
    url, paths, names = decision_review
    p, coords = names["pool"], plot_coords(paths)
    marked = p[4:21]  # 17 images of page 0 (chihuahua) marked muffin
    lassoed = p[4:11] + p[14:21]  # 14 of them: a rectangle of the plot; p11-p13 lie outside
    with browser_at(url, 1280, 720) as (page, expect, seen):
        page.on("dialog", lambda d: d.accept())
        expect(page.locator("#page-head")).to_have_attribute("data-page", "0")
        for x in marked:
            page.click(thumb_of(x))  # a click marks the other class
        expect(page.locator("#page-grid .thumb.marked")).to_have_count(len(marked))
        see_whole_page(page)
        start = paths.decisions.read_bytes()
        page.keyboard.press("g")
        page.wait_for_selector("body[data-plot='1']")
        assert inside(coords, [coords[x] for x in lassoed]) == set(lassoed)
        lasso(page, [coords[x] for x in lassoed])
        expect(page.locator("#selection-info")).to_have_text(re.compile(f"^{len(lassoed)} sel"))
        page.keyboard.press("2")
        expect(page.locator("#status")).to_have_text(re.compile("^saved"))
        # one of them relabeled on its own: its mark (muffin) can no longer hold
        lasso(page, [coords[p[20]]])
        expect(page.locator("#selection-info")).to_have_text(re.compile("^1 selected"))
        page.keyboard.press("u")
        page.wait_for_function("() => document.getElementById('status').textContent"
                               ".startsWith('saved')")
        assert paths.decisions.read_bytes() != start
        page.keyboard.press("v")
        expect(page.locator("#page-head")).to_have_attribute("data-page", "0")
        banner = page.locator("#notice")
        told = banner.text_content() if banner.count() and banner.is_visible() else ""
        presses = accept_by_enter(page, paths)
        quiet_conflicts(seen)
    rows = on_disk(paths)
    want = {x: "chihuahua" for x in p[:PAGE]} | {x: "muffin" for x in p[4:20]} | \
        {p[20]: "undefined"}
    wrong = {x: label_now(rows, x) for x in p[:PAGE] if label_now(rows, x) != want[x]}
    assert wrong == {}, f"written otherwise than the person decided: {wrong}"
    assert presses >= 2, "Enter accepted a page whose marks changed without showing it again"
    assert p[20] in told, f"the mark not kept is not listed: {told!r}"


# --- 2. bulk actions skip a person's answers and validation images ----------------------------

@pytest.mark.slow
def test_a_queue_cluster_skips_answers_and_validation_images_and_counts_labels(
        decision_review, decisions_built):
    url, paths, names = decision_review
    p, data = names["pool"], decisions_built[1]
    validation = validation_files(paths, data)
    with browser_at(url, 1440, 900) as (page, expect, seen):
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
        page.keyboard.press("n")
        page.keyboard.press("n")
        expect(page.locator("#page-head")).to_have_attribute("data-page", "2")
        page.keyboard.press("Enter")  # the person answers page 2: chihuahua, all three
        expect(page.locator("#status")).to_have_text(re.compile("^page 2 verified"))
        before = on_disk(paths)
        page.keyboard.press("q")
        cluster = page.locator('.cluster[data-cluster="0"]')
        # a tile shows the image's label now and where it came from
        expect(cluster.locator(f'.thumb[data-path="{p[96]}"]')).to_contain_text(
            "now chihuahua (human)")
        expect(cluster.locator(f'.thumb[data-path="{VAL128[0]}"]')).to_contain_text(
            "now chihuahua (validation)")
        cluster.locator("button", has_text="accept proposals").click()
        expect(page.locator("#status")).to_contain_text("queue cluster 0")
        told = page.text_content("#status")
        after = on_disk(paths)
        quiet_conflicts(seen)
    assert {x: label_now(after, x) for x in p[96:99]} == dict.fromkeys(p[96:99], "chihuahua")
    assert VAL128[0] not in after or after[VAL128[0]][0] == "chihuahua"
    assert (after[p[60]][:2], after[p[61]][:2]) == (("chihuahua", "human"), ("muffin", "human"))
    assert validation_files(paths, data) == validation
    changed = [x for x in set(before) | set(after)
               if label_now(before, x) != label_now(after, x)]
    assert f"{len(changed)} label(s) changed" in told and "4 skipped" in told, told


@pytest.mark.slow
def test_a_queue_tile_is_answered_alone_and_a_validation_image_only_by_a_correction(
        decision_review, decisions_built):
    url, paths, names = decision_review
    p, data = names["pool"], decisions_built[1]
    validation = validation_files(paths, data)
    with browser_at(url, 1440, 900) as (page, expect, seen):
        dialogs = []
        answer = {"accept": False}
        page.on("dialog", lambda d: (dialogs.append(d.message),
                                     d.accept() if answer["accept"] else d.dismiss()))
        page.keyboard.press("q")
        cluster = page.locator('.cluster[data-cluster="1"]')
        expect(cluster.locator(f'.thumb[data-path="{p[62]}"]')).to_contain_text("now undefined")
        # one tile, one answer: pool 62 is a chihuahua (the proposal says muffin)
        cluster.locator(f'.thumb[data-path="{p[62]}"]').click()
        expect(page.locator("#selection-info")).to_have_text(re.compile("^1 selected"))
        page.keyboard.press("1")
        expect(page.locator("#status")).to_have_text(re.compile("^saved"))
        assert on_disk(paths) == {p[62]: ("chihuahua", "human", "review page")}
        # the val128/ muffin, corrected to chihuahua: asked what it does; declined, nothing
        cluster.locator(f'.thumb[data-path="{VAL128[1]}"]').click()
        page.keyboard.press("1")
        expect(page.locator("#status")).to_have_text("nothing changed")
        assert len(dialogs) == 1 and "validation image" in dialogs[0], dialogs
        assert set(on_disk(paths)) == {p[62]}
        answer["accept"] = True
        page.keyboard.press("1")
        page.wait_for_timeout(500)  # (the dialog is answered while Playwright waits)
        expect(page.locator("#status")).to_contain_text("corrected the validation image")
        row = on_disk(paths)[VAL128[1]]
        assert row[:2] == ("chihuahua", "human") and "validation correction" in row[2]
        # a validation.csv image: only validation.csv changes it; refused, said why
        cluster.locator(f'.thumb[data-path="{p[99]}"]').click()
        page.keyboard.press("1")  # validation.csv says muffin
        expect(page.locator("#status")).to_contain_text("validation.csv")
        assert p[99] not in on_disk(paths)
        seen["errors"][:] = [e for e in seen["errors"] if "status of 403" not in e]
        quiet_conflicts(seen)
    assert validation_files(paths, data) == validation


def test_the_clean_stage_holds_val128_to_the_validation_rule(decisions_built, tmp_path):
    paths, _, names = decisions_built
    manifest = pd.read_parquet(paths.prepared / "manifest.parquet")
    name = str(tmp_path / "decisions.csv")

    def relabel(note: str) -> list[Decision]:
        atomic.write_text(Path(name), format_decisions([
            Decision(names["pool"][0], "muffin", "human", "review page"),
            Decision(VAL128[0], "muffin", "human", note)]))
        return read_decisions(name, CLASSES)

    # a bulk answer on a val128/ image: refused, naming the file, row and image
    with pytest.raises(UserError, match=rf"decisions.csv: row 3: {VAL128[0]} .*validation"):
        apply_decisions(manifest, relabel("review page: queue cluster 0"), name=name)
    # the same label as its folder changes nothing: allowed
    atomic.write_text(Path(name), format_decisions([
        Decision(VAL128[0], "chihuahua", "human", "review page")]))
    apply_decisions(manifest, read_decisions(name, CLASSES), name=name)
    # a deliberate single-image correction: applied
    df = apply_decisions(manifest, relabel("review page: validation correction"), name=name)
    assert df.set_index("path").loc[VAL128[0], ["split", "label"]].tolist() == ["val", "muffin"]


# --- 3. "wrong of": each image once ----------------------------------------------------------

@pytest.mark.slow
def test_proposals_wrong_count_each_image_once(decision_review):
    url, paths, names = decision_review
    p = names["pool"]
    with browser_at(url, 1440, 900) as (page, expect, seen):
        page.on("dialog", lambda d: d.accept())  # a correction of the person's own answer
        head = page.locator("#page-head")
        for marks in ([], [p[97]]):  # accepted, then corrected and accepted again
            while head.get_attribute("data-page") != "2":
                page.keyboard.press("n")
            for x in marks:
                page.click(thumb_of(x))
            accept_by_enter(page, paths, presses=1)
            expect(page.locator("#status")).to_have_text(re.compile("^page 2 verified"))
        quiet_conflicts(seen)
        rows = on_disk(paths)
        wrong = sum(label_now(rows, x) != "chihuahua" for x in p[96:99])
        expect(page.locator("#retrain-info")).to_contain_text(
            f"pipeline outputs: {wrong} wrong of 3", timeout=5000)


# --- 4. after a restart: what the pipeline's model saw; the last background model back -------

def fake_run(pages: pd.DataFrame, labels: int, accuracy: float, n: int, hold=None):
    """A background run's work, stood in for: what a finished `dvc exp run` leaves (pages,
    validation accuracy); `hold` (an Event) keeps it running until set."""
    def run(run_: Run, copy: Path, sh) -> None:
        run_.labels, run_.name = labels, f"review-test-{labels}-labels"
        if hold is not None:
            hold.wait(60)
        run_.outputs = RunOutputs(pages, val_accuracy=accuracy, val_n=n)
        run_.val_accuracy, run_.val_n = accuracy, n
    return run


@contextlib.contextmanager
def serving_on(port: int, data: ReviewData, retrainer):
    """A server on a given port (a restart keeps the page's address and its kept marks); its
    retrainer stopped after it."""
    try:
        with serving(data, port=port, retrainer=retrainer) as server:
            yield server
    finally:
        if retrainer is not None:
            retrainer.stop()


def retrainer_for(paths: Paths, data: ReviewData, run) -> Retrainer:
    r = Retrainer(paths.root, paths.root / "params.yaml", paths.decisions, CLASSES, every=0,
                  recipe="", labels_of_model=0, on_done=data.swap_in)
    r._retrain = run
    return r


@pytest.mark.slow
def test_after_a_restart_the_models_are_told_as_they_are(decisions_built, tmp_path):
    paths, data_dir, names = decisions_built
    p = names["pool"]
    # 48 answers in the file; the pipeline's model was trained on none of them
    start_files(paths, [Decision(x, "chihuahua", "human", "review page: page 0")
                        for x in p[:PAGE]])
    write_pages(tmp_path / "new.parquet", [("muffin", [(x, 0.9) for x in p[PAGE:2 * PAGE]])])
    new_pages = pd.read_parquet(tmp_path / "new.parquet")
    clean = pd.read_parquet(paths.root / "data/clean/manifest.parquet")
    saw = int(clean["label_source"].isin(["human", "3lc", "oracle"]).sum())
    assert saw == 0
    data = ReviewData(paths, CLASSES, data_dir)
    retrainer = retrainer_for(paths, data, fake_run(new_pages, PAGE, 1.0, 30))
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serving(data, retrainer=retrainer))
        port = server.server_address[1]
        page, expect, _ = stack.enter_context(browser_at(f"http://127.0.0.1:{port}/", 1440,
                                                         900))
        info = page.locator("#retrain-info")
        expect(info).to_contain_text(f"pipeline outputs ({saw} labels")
        page.keyboard.press("Shift+R")
        expect(info).to_contain_text("review-test-48-labels", timeout=30_000)
        retrainer.stop()
        server.shutdown()
        server.server_close()
        # the server starts again on the same files
        again = ReviewData(paths, CLASSES, data_dir)
        stack.enter_context(serving_on(port, again, retrainer_for(paths, again, None)))
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        expect(info).to_contain_text(f"pipeline outputs ({saw} labels")
        expect(info).to_contain_text("review-test-48-labels (48 labels")
        expect(info).to_contain_text("validation 1.000")
        expect(page.locator("#page-head")).to_contain_text("proposed by review-test-48-labels")


# --- 5. a server that is gone is shown at once -----------------------------------------------

@pytest.mark.slow
def test_a_stopped_server_is_shown_without_any_action(decisions_built):
    paths, data_dir, _ = decisions_built
    start_files(paths)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serving(ReviewData(paths, CLASSES, data_dir)))
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        page, expect, seen = stack.enter_context(browser_at(url, 1280, 720))
        expect(page.locator("#page-head")).to_have_attribute("data-page", "0")
        server.shutdown()
        server.server_close()
        # no key pressed: the page's own polling finds it gone
        expect(page.locator("body")).to_contain_text("server stopped", timeout=8000)
        expect(page.locator("#retrain-info")).not_to_contain_text("retraining on")
        seen["errors"][:] = [e for e in seen["errors"]
                             if not e.startswith("Failed to load resource: net::ERR_")]


# --- 6. which similarity is which ------------------------------------------------------------

@pytest.mark.slow
def test_the_enlarged_view_names_each_similarity(decision_review):
    url, paths, names = decision_review
    with browser_at(url, 1280, 720) as (page, expect, _):
        page.keyboard.press("n")
        page.keyboard.press("n")
        expect(page.locator("#page-head")).to_have_attribute("data-page", "2")
        page.keyboard.press("e")
        box = page.locator("#zoom-evidence")
        expect(box.locator(".neighbours")).to_have_count(1)
        neighbours = box.locator("p", has_text="labeled neighbours that voted")
        expect(neighbours).to_contain_text("embedding cosine")
        expect(box.locator("figure")).to_contain_text("pixel-signature cosine 0.97")


# --- 7. no stale messages or dimmed points ----------------------------------------------------

@pytest.mark.slow
def test_a_message_about_unseen_images_follows_the_scroll(decision_review):
    url, paths, _ = decision_review
    start = paths.decisions.read_bytes()
    with browser_at(url, 1280, 720) as (page, expect, _):
        expect(page.locator("#page-head")).to_have_attribute("data-page", "0")
        page.keyboard.press("Enter")
        status = page.locator("#status")
        expect(status).to_contain_text("still below")
        # the person scrolls to the bottom with the mouse wheel
        page.mouse.move(640, 500)
        for _ in range(20):
            page.mouse.wheel(0, 400)
            page.wait_for_timeout(30)
        expect(status).not_to_contain_text("still below")
        assert paths.decisions.read_bytes() == start


@pytest.mark.slow
def test_labeling_a_lasso_selection_leaves_no_point_dimmed(decision_review):
    url, paths, names = decision_review
    p, coords = names["pool"], plot_coords(paths)
    with browser_at(url + "#plot", 1440, 900) as (page, expect, _):
        page.wait_for_selector("body[data-plot='1']")
        assert dim_points(page) == 0
        lasso(page, [coords[x] for x in p[4:11]])
        expect(page.locator("#selection-info")).to_have_text(re.compile("^7 selected"))
        assert dim_points(page) > 0  # the rest of the plot dimmed while there is a selection
        page.keyboard.press("2")
        expect(page.locator("#status")).to_have_text(re.compile("^saved: 7 image"))
        expect(page.locator("#selection-info")).to_have_text("nothing selected")
        page.wait_for_timeout(300)
        assert dim_points(page) == 0
    assert {x: on_disk(paths)[x][0] for x in p[4:11]} == dict.fromkeys(p[4:11], "muffin")


# --- 8. a retrain that can be followed; accuracies; the pool done ----------------------------

def epoch_lines(epochs: int, upto: int, per_epoch_s: float) -> str:
    """What the train stage prints, one line per epoch, when its stdout is a log."""
    from types import SimpleNamespace

    from chimuffin.stages.train import epoch_line
    out = []
    for k in range(1, upto + 1):
        r = SimpleNamespace(epoch=k, val_acc=0.7, val_loss=0.6, lr=0.01,
                            train=SimpleNamespace(loss=0.5, acc=0.8))
        out.append(epoch_line(r, epochs, k * per_epoch_s))
    return "\n".join(out) + "\n"


@pytest.mark.slow
def test_a_running_retrain_shows_its_stage_epoch_and_time_left(decisions_built, tmp_path):
    paths, data_dir, names = decisions_built
    start_files(paths)
    (paths.eval / "metrics.json").write_text('{"val": {"accuracy": 0.9, "n": 30}}')
    hold = threading.Event()
    write_pages(tmp_path / "new.parquet", [("muffin", [(names["pool"][50], 0.9)])])
    pages = pd.read_parquet(tmp_path / "new.parquet")
    log = ("Running stage 'prepare':\nRunning stage 'clean':\nRunning stage 'train':\n" +
           epoch_lines(12, 3, 20.0))

    def running(run_: Run, copy: Path, sh) -> None:  # a run in its train stage, epoch 3/12
        run_.labels, run_.name = 0, "review-test-0-labels"
        out = sh.keywords["out"]  # the run's log, as `dvc exp run` writes into it
        out.write(log)
        out.flush()
        hold.wait(60)
        run_.outputs = RunOutputs(pages, val_accuracy=0.95, val_n=30)
        run_.val_accuracy, run_.val_n = 0.95, 30

    data = ReviewData(paths, CLASSES, data_dir)
    retrainer = retrainer_for(paths, data, running)
    try:
        with serving(data, retrainer=retrainer) as server, \
                browser_at(f"http://127.0.0.1:{server.server_address[1]}/", 1440, 900) \
                as (page, expect, _):
            info = page.locator("#retrain-info")
            lo, hi = wilson_interval(27, 30)
            expect(info).to_contain_text(f"validation 0.900 (95% CI {lo:.3f}-{hi:.3f}, n 30)")
            page.keyboard.press("Shift+R")
            expect(info).to_contain_text("stage train", timeout=10_000)
            expect(info).to_contain_text("epoch 3/12")
            expect(info).to_contain_text("3m00s left")
            hold.set()
            expect(info).to_contain_text("review-test-0-labels", timeout=30_000)
            expect(info).to_contain_text("validation 0.950")
    finally:
        hold.set()
        retrainer.stop()
        (paths.eval / "metrics.json").unlink()


@pytest.mark.slow
def test_a_verified_pool_is_said_with_the_next_steps(decisions_built):
    paths, data_dir, names = decisions_built
    start_files(paths, [Decision(x, "chihuahua", "human", "review page") for x in
                        names["pool"][:99]])
    with serving(ReviewData(paths, CLASSES, data_dir)) as server, \
            browser_at(f"http://127.0.0.1:{server.server_address[1]}/", 1440, 900) \
            as (page, expect, _):
        head = page.locator("#verify-view")
        expect(head).to_contain_text("every pool image is verified")
        expect(head).to_contain_text("dvc repro")
        expect(head).to_contain_text("git commit")


# --- one page, one screen ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_48_image_page_fits_1440x900_with_the_keys_folded_and_smaller_thumbnails(
        decision_review):
    url, paths, names = decision_review
    thumbs = "#page-grid .thumb"
    with browser_at(url, 1440, 900) as (page, expect, _):
        expect(page.locator("#page-head")).to_have_attribute("data-page", "0")
        assert len(fully_visible(page, thumbs)) < PAGE  # 128 px and the key panel: it scrolls
        page.keyboard.press("Shift+K")
        expect(page.locator("#verify-keys")).to_be_hidden()
        page.select_option("#thumb-size", "96")
        page.keyboard.press("Escape")  # the keys back to the page
        assert sorted(fully_visible(page, thumbs)) == sorted(names["pool"][:PAGE])
        assert accept_by_enter(page, paths) == 1  # seen whole: one Enter accepts it
        expect(page.locator("#page-head")).to_have_attribute("data-page", "1")
        # kept over a reload; the panel folds back
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        expect(page.locator("#thumb-size")).to_have_value("96")
        expect(page.locator("#verify-keys")).to_be_hidden()
        page.click("#fold-keys")
        expect(page.locator("#verify-keys")).to_be_visible()
    rows = on_disk(paths)
    assert {x: rows[x][0] for x in names["pool"][:PAGE]} == \
        dict.fromkeys(names["pool"][:PAGE], "chihuahua")


@pytest.mark.slow
def test_find_by_file_name_and_show_pages_by_verified(decision_review):
    url, paths, names = decision_review
    p, head = names["pool"], "#page-head"
    with browser_at(url, 1280, 720) as (page, expect, _):
        expect(page.locator(head)).to_have_attribute("data-page", "0")
        page.select_option("#filter-verified", "done")  # nothing verified yet
        expect(page.locator(head)).to_have_text("no page matches the filter")
        name = p[60].rsplit("/", 1)[1][:8]
        page.fill("#find", name)
        page.press("#find", "Enter")
        page.keyboard.press("Escape")
        expect(page.locator(head)).to_have_attribute("data-page", "1")  # filters reset
        expect(page.locator("#page-grid .thumb.cursor")).to_have_attribute("data-path", p[60])
        expect(page.locator("#status")).to_contain_text(f"found {p[60]} on page 1")
        page.select_option("#filter-verified", "open")
        page.keyboard.press("Escape")
        page.keyboard.press("n")
        page.keyboard.press("n")
        expect(page.locator(head)).to_have_attribute("data-page", "2")
        page.keyboard.press("Enter")  # page 2 verified: the "not verified" filter hides it
        expect(page.locator("#status")).to_have_text(re.compile("^page 2 verified"))
        page.select_option("#filter-verified", "done")
        expect(page.locator(head)).to_have_attribute("data-page", "2")
        expect(page.locator(head)).to_contain_text("1 of 1 pages shown")
    assert {x: on_disk(paths)[x][0] for x in p[96:99]} == dict.fromkeys(p[96:99], "chihuahua")


def filter_oracle(rows: dict, pages: dict, key: int, value: str) -> dict[int, list[str]]:
    """What a label filter must show, from the label file: page -> its matching images
    (key 0: the label now, 1: its source; "none" without a decision)."""
    of = {pg: sorted(x for x in xs if (rows[x][key] if x in rows else "none") == value)
          for pg, xs in pages.items()}
    return {pg: xs for pg, xs in of.items() if xs}


def tiles(page) -> list[str]:
    return sorted(page.eval_on_selector_all("#page-grid .thumb", "els => els.map(e => "
                                            "e.dataset.path)"))


def focus_by_tab(page, element_id: str) -> None:
    for _ in range(40):
        if page.evaluate("() => document.activeElement.id") == element_id:
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"#{element_id} not reached with Tab")


@pytest.mark.slow
def test_the_label_filters_show_what_the_file_says_and_enter_waits_for_hidden_images(
        decisions_built):
    paths, data_dir, names = decisions_built
    p = names["pool"]
    start_files(paths, [*(Decision(x, "muffin", "human", "review page") for x in p[:4]),
                        *(Decision(x, "undefined", "human", "review page") for x in p[4:6]),
                        *(Decision(x, "chihuahua", "auto", "model") for x in p[6:9]),
                        Decision(p[50], "muffin", "oracle", "sitting")])
    before, rows = paths.decisions.read_bytes(), on_disk(paths)
    pages = {0: p[:PAGE], 1: p[PAGE:2 * PAGE], 2: p[2 * PAGE:99]}
    head = "#page-head"
    with serving(ReviewData(paths, CLASSES, data_dir)) as server, \
            browser_at(f"http://127.0.0.1:{server.server_address[1]}/", 1440, 900) \
            as (page, expect, _):
        expect(page.locator(head)).to_have_attribute("data-page", "0")
        focus_by_tab(page, "filter-label")  # keyboard: all -> chihuahua
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Escape")
        expect(page.locator("#filter-label")).to_have_value("chihuahua")
        for select, key, value in [("#filter-label", 0, "chihuahua"),
                                   ("#filter-label", 0, "muffin"),
                                   ("#filter-label", 0, "undefined"),
                                   ("#filter-label", 0, "none"),
                                   ("#filter-label", 0, "all"),
                                   ("#filter-source", 1, "auto"), ("#filter-source", 1, "human"),
                                   ("#filter-source", 1, "oracle")]:
            page.select_option(select, value)
            page.keyboard.press("Escape")
            if value == "all":
                continue
            want = filter_oracle(rows, pages, key, value)
            expect(page.locator(head)).to_contain_text(f"of {len(want)} pages shown")
            shown = int(page.locator(head).get_attribute("data-page"))
            assert tiles(page) == want[shown], (value, shown)
        # oracle: page 1 shows p[50] alone; Enter refuses, says why, writes nothing
        expect(page.locator(head)).to_contain_text("47 image(s) hidden by the label filters")
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_contain_text(
            "not accepted: the label filters hide 47 image(s) of this page")
        page.wait_for_timeout(300)
        page.reload()  # the filters are kept in the address
        page.wait_for_selector("body[data-ready='1']")
        expect(page.locator("#filter-source")).to_have_value("oracle")
        assert tiles(page) == [p[50]]
        page.select_option("#filter-source", "all")
        page.keyboard.press("Escape")
        expect(page.locator(head)).not_to_contain_text("hidden by the label filters")
    assert paths.decisions.read_bytes() == before


# --- the scripted session: 500 actions of every kind against a known truth -------------------

class Script:
    """What a seeded person did and therefore what the label file must say: `decided` holds
    the label of every row the person's actions wrote (a bulk action skips a person's answers
    and validation images; a single image is answered as asked; a validation correction is
    declined), `marks` the marks made on each page and not accepted yet, `undo` what each
    write replaced (an undo puts it back byte for byte)."""

    def __init__(self, paths: Paths, data: Path, names: dict, seed: int):
        import random

        self.rng, self.paths, self.names = random.Random(seed), paths, names
        truth = pd.read_csv(data / "pool_labels.csv")
        self.truth = dict(zip(truth["relative_path"], truth["label"], strict=True))
        self.base = dict(pd.read_parquet(paths.prepared / "manifest.parquet")
                         .set_index("path")["label"])
        self.truth.update({p: lbl for p, lbl in self.base.items() if lbl in CLASSES})
        pages = pd.read_parquet(paths.suggest / "pages.parquet")
        self.page_label = dict(zip(pages["page"], pages["label"], strict=False))
        self.protected = {names["pool"][99], *VAL128}  # validation.csv and val128/
        self.queue = pd.read_parquet(paths.suggest / "review_queue.parquet")
        self.coords = plot_coords(paths)
        self.decided: dict[str, str] = {}
        self.marks: dict[int, dict[str, str]] = {}
        self.undo: list[tuple[bytes, dict, dict | None]] = []
        self.discrepancies: list[str] = []
        self.actions: list[str] = []
        self.expect = None  # Playwright's expect, once the browser runs

    def expected_on_page(self, page: int, images: list[str]) -> dict[str, str]:
        marks = self.marks.get(page, {})
        return {p: marks.get(p, self.decided.get(p, self.page_label[page])) for p in images}

    def wrote(self, before: bytes, new: dict[str, str], accepted: dict | None = None) -> None:
        """A write happened (the file changed): remember what it replaced; marks the new
        labels contradict give way."""
        self.undo = [*self.undo, (before, dict(self.decided), accepted)][-50:]
        self.give_way(new)
        self.decided.update(new)

    def give_way(self, new: dict[str, str | None]) -> None:
        for marks in self.marks.values():
            for p, label in new.items():
                if p in marks and marks[p] != label:
                    del marks[p]

    def bulk(self, chosen: list[str], label_of) -> dict[str, str]:
        """What a bulk label or a queue cluster writes: never a person's answer or a
        validation image."""
        return {p: label_of(p) for p in chosen
                if p not in self.decided and p not in self.protected}

    def single(self, p: str, label: str) -> dict[str, str]:
        """One image answered: as asked, but a validation image only keeps its label (its
        correction is declined here, and validation.csv's are made in validation.csv)."""
        return {} if p in self.protected and label != self.base[p] else {p: label}

    def check(self, what: str) -> None:
        rows = {d.path: d.label for d in read_decisions(self.paths.decisions, CLASSES)}
        if rows != self.decided:
            diff = {p: (rows.get(p), self.decided.get(p))
                    for p in set(rows) | set(self.decided) if rows.get(p) != self.decided.get(p)}
            self.discrepancies.append(f"after {what}: (on disk, decided) {diff}")
            self.decided = rows  # go on from what is there, to count the next ones apart


def settle(page, ms: int = 5000) -> None:
    """Until the page has no write in flight (its own flag) and a frame was drawn."""
    for _ in range(ms // 20):
        if not page.evaluate("() => S.busy"):
            return
        page.wait_for_timeout(20)
    raise AssertionError("a write never finished")


def in_view(page, view: str) -> None:
    if page.locator("#zoom").is_visible():
        page.keyboard.press("Escape")
    if page.evaluate("() => S.view") != view:
        page.keyboard.press("v" if view == "verify" else "g")
    if view == "plot":
        page.wait_for_selector("body[data-plot='1']")
        if page.evaluate("() => S.dims") == 3:
            page.keyboard.press("d")


def shown_page(page) -> tuple[int | None, list[str]]:
    head = page.locator("#page-head")
    n = head.get_attribute("data-page")
    images = page.eval_on_selector_all("#page-grid .thumb", "els => els.map(e => e.dataset.path)")
    return (None if n is None or not images else int(n)), images


def act_mark(page, s: Script) -> None:
    in_view(page, "verify")
    n, images = shown_page(page)
    unmarked = page.eval_on_selector_all("#page-grid .thumb:not(.marked)",
                                         "els => els.map(e => e.dataset.path)")
    if n is None or not unmarked:
        return
    wrong = [p for p in unmarked if s.truth[p] != s.page_label[n]]
    how = s.rng.random()
    p = s.rng.choice(wrong if wrong and how < 0.7 else unmarked)
    page.click(thumb_of(p))  # the other class
    marks = s.marks.setdefault(n, {})
    marks[p] = next(c for c in CLASSES if c != s.page_label[n])
    if 0.7 <= how < 0.85:
        page.keyboard.press("u")
        marks[p] = "undefined"
    elif how >= 0.85:  # a slip, taken back
        page.keyboard.press("0")
        del marks[p]
    s.actions.append(f"mark {p} {marks.get(p)}")


def act_accept(page, s: Script) -> None:
    in_view(page, "verify")
    n, images = shown_page(page)
    if n is None:
        return
    want = s.expected_on_page(n, images)
    before = s.paths.decisions.read_bytes()
    for _ in range(8):
        page.keyboard.press("Enter")
        settle(page)
        told = page.text_content("#status") or ""
        if s.paths.decisions.read_bytes() != before or "nothing changed" in told:
            break
    if s.paths.decisions.read_bytes() != before:
        exceptions = {p: lbl for p, lbl in want.items() if lbl != s.page_label[n]}
        s.wrote(before, want, {"page": n, "exceptions": exceptions})
        s.marks.pop(n, None)
    s.actions.append(f"accept page {n}")


def act_lasso(page, s: Script) -> None:
    in_view(page, "plot")
    x0, y0 = s.rng.randint(0, 10), s.rng.randint(0, 10)
    corners = [(x0, y0), (x0 + s.rng.randint(0, 2), y0 + s.rng.randint(0, 2))]
    taken = sorted(inside(s.coords, corners))
    if not taken:
        return
    lasso(page, corners)
    expect_count = page.locator("#selection-info")
    for _ in range(50):  # the person labels what the page shows selected
        if expect_count.text_content().endswith("selected") and \
                not expect_count.text_content().startswith("nothing"):
            break
        page.wait_for_timeout(20)
    taken = page.eval_on_selector_all("#selection .thumb", "els => els.map(e => e.dataset.path)")
    if not taken:
        return
    label = pd.Series([s.truth[p] for p in taken]).mode().iat[0]
    if s.rng.random() < 0.7:  # careful: the ones of the other class left out
        for p in taken:
            if s.truth[p] != label:
                page.click(f'#selection .thumb[data-path="{p}"]')
    chosen = [p for p in taken if not page.locator(
        f'#selection .thumb.excluded[data-path="{p}"]').count()]
    if not chosen:
        page.keyboard.press("Escape")
        return
    assert expect_count.text_content().startswith(f"{len(chosen)} selected"), \
        (expect_count.text_content(), chosen)
    _label_selection(page, s, chosen, label)
    s.actions.append(f"lasso {len(chosen)} -> {label}")


def _label_selection(page, s: Script, chosen: list[str], label: str) -> None:
    before = s.paths.decisions.read_bytes()
    page.keyboard.press(str(CLASSES.index(label) + 1))
    settle(page)
    new = s.single(chosen[0], label) if len(chosen) == 1 else s.bulk(chosen, lambda p: label)
    if s.paths.decisions.read_bytes() != before:
        s.wrote(before, new)


def act_queue(page, s: Script) -> None:
    in_view(page, "plot")
    page.keyboard.press("q")
    cluster = int(s.rng.choice(sorted(s.queue["cluster"].unique())))
    rows = s.queue[s.queue["cluster"] == cluster]
    box = page.locator(f'.cluster[data-cluster="{cluster}"]')
    before = s.paths.decisions.read_bytes()
    if s.rng.random() < 0.5:
        proposed = dict(zip(rows["path"], rows["proposed"], strict=True))
        box.locator("button", has_text="accept proposals").click()
        settle(page)
        new = s.bulk(list(proposed), proposed.get)
        s.actions.append(f"queue cluster {cluster}")
    else:
        p = s.rng.choice(list(rows["path"]))
        box.locator(f'.thumb[data-path="{p}"]').click()
        page.keyboard.press(str(CLASSES.index(s.truth[p]) + 1))
        settle(page)
        new = s.single(p, s.truth[p])
        s.actions.append(f"queue tile {p}")
    if s.paths.decisions.read_bytes() != before:
        s.wrote(before, new)


def act_undo(page, s: Script) -> None:
    page.keyboard.press("z")
    settle(page)
    if not s.undo:
        return
    before, decided, accepted = s.undo.pop()
    if s.paths.decisions.read_bytes() != before:
        s.discrepancies.append(f"undo after {s.actions[-3:]}: the file is not as before")
    changed = {p: decided.get(p) for p in set(decided) | set(s.decided)
               if decided.get(p) != s.decided.get(p)}
    s.give_way(changed)
    s.decided = decided
    if accepted is not None:
        s.marks[accepted["page"]] = dict(accepted["exceptions"])
    s.actions.append("undo")


def act_clear(page, s: Script) -> None:
    in_view(page, "verify")
    cursor = page.locator("#page-grid .thumb.cursor")
    if not cursor.count():
        return
    p = cursor.get_attribute("data-path")
    before = s.paths.decisions.read_bytes()
    page.keyboard.press("c")
    settle(page)
    if s.paths.decisions.read_bytes() != before:
        s.wrote(before, {})
        s.give_way({p: None})
        s.decided.pop(p, None)
    s.actions.append(f"clear {p}")


def act_view(page, s: Script) -> None:
    key = s.rng.choice(["g", "v", "q", "n", "p", "n", "e", "Escape", "s", "j", "l", "d", "?"])
    if key == "?":
        page.keyboard.press("?")
        page.keyboard.press("?")
    elif key == "d" and page.evaluate("() => S.view") == "plot":
        page.keyboard.press("d")
        page.keyboard.press("d")
    elif key != "d":
        page.keyboard.press(key)
    s.actions.append(f"key {key}")


ACTIONS = [(act_mark, 38), (act_accept, 12), (act_view, 19), (act_lasso, 6), (act_queue, 5),
           (act_undo, 9), (act_clear, 3)]


@pytest.mark.slow
def test_a_scripted_session_writes_exactly_what_the_person_decided(decisions_built):
    paths, data_dir, names = decisions_built
    start_files(paths)
    validation = validation_files(paths, data_dir)
    s = Script(paths, data_dir, names, seed=44)
    kinds, weights = zip(*ACTIONS, strict=True)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serving_on(0, ReviewData(paths, CLASSES, data_dir), None))
        port = server.server_address[1]
        page, expect, seen = stack.enter_context(browser_at(f"http://127.0.0.1:{port}/",
                                                            1440, 900))
        s.expect = expect
        page.on("dialog", lambda d: d.dismiss() if "validation image" in d.message
                else d.accept())
        for i in range(500):
            quiet_conflicts(seen)
            seen["errors"][:] = [e for e in seen["errors"]
                                 if not e.startswith("Failed to load resource: net::ERR_")
                                 and "status of 403" not in e]
            assert not seen["errors"], f"page errors after {s.actions[-3:]}: {seen['errors']}"
            roll = s.rng.random()
            if roll < 0.015:
                page.reload()
                page.wait_for_selector("body[data-ready='1']")
                s.actions.append("reload")
            elif roll < 0.023:  # the server stops and starts again on the same files
                server.shutdown()
                server.server_close()
                server = stack.enter_context(serving_on(
                    port, ReviewData(paths, CLASSES, data_dir), None))
                page.reload()
                page.wait_for_selector("body[data-ready='1']")
                s.actions.append("restart")
            else:
                s.rng.choices(kinds, weights)[0](page, s)
            s.check(f"action {i} ({s.actions[-1] if s.actions else ''})")
        page.evaluate("() => clearInterval(R.timer)")  # no poll left to race the restarts
        page.wait_for_timeout(300)
        quiet_conflicts(seen)
        seen["errors"][:] = [e for e in seen["errors"]
                             if not e.startswith("Failed to load resource: net::ERR_")
                             and "status of 403" not in e]
    assert s.discrepancies == [], "\n".join(s.discrepancies[:10])
    assert validation_files(paths, data_dir) == validation
    assert {p: row[0] for p, row in on_disk(paths).items() if p in s.protected} == \
        {p: s.base[p] for p in on_disk(paths) if p in s.protected}
    kinds_done = {a.split()[0] for a in s.actions}
    assert {"mark", "accept", "lasso", "queue", "undo", "reload", "restart", "key"} <= \
        kinds_done, kinds_done

"""The review page as a person uses it, in headless Chromium driven by Playwright, on pages as
long as the real ones (48 images): keys never fire while a control has the focus, Enter never
accepts images that were not on screen, a new page starts with its header in view, the pace
after an undo, marks kept over a reload, the view keys, the queue's headers. The label file on
disk is the oracle after every step. The harness prints page-load and per-action timings
(measured, never asserted: the machine is shared)."""

import contextlib
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from chimuffin import atomic
from chimuffin.data.sample import write_sample
from chimuffin.labels.rows import Decision, format_decisions
from chimuffin.retrain.outputs import RunOutputs
from chimuffin.retrain.retrainer import Retrainer, Run
from chimuffin.review.data import Paths, ReviewData
from chimuffin.review.verify import read_evidence
from tests.helpers.repo import default_params_dict
from tests.test_review import (
    BROWSER_ARGS,
    CHROMIUM,
    CLASSES,
    browser_or_skip,
    build_repo,
    on_disk,
    serving,
    write_pages,
)
from tests.test_review import (
    request as http_request,
)

PAGE = 48  # images on a long page, as the suggest stage makes them
TIMINGS: list[tuple[str, float]] = []


def build_long_pages(root: Path) -> tuple[Paths, Path, dict]:
    """A dataset with 100 pool images and the outputs the page reads. Pages: 0 = pool 0-47
    (chihuahua), 1 = pool 48-95 (muffin), 2 = pool 96-98 (chihuahua); pool 99 has an `auto`
    decision. The review queue: cluster 2 (ranks 49-52: one label issue, three uncertain)."""
    data = root / "dataset"
    write_sample(data, labeled_per_class=2, pool=100, test_per_class=1, seed=5)
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.jpg"))
    rows = [{"path": f, "split": "test" if f.startswith("test128") else "train",
             "label": f.split("/")[1], "label_source": "folder", "idx": i,
             "content_hash": f"h{i}", "width": 64, "height": 64} for i, f in enumerate(files)]
    manifest = pd.DataFrame(rows)
    paths = Paths.under(root)
    atomic.write_parquet(paths.prepared / "manifest.parquet", manifest)
    pool = list(manifest.loc[manifest["label"] == "undefined", "path"])
    labeled = [f for f in files if "/undefined/" not in f and f.startswith("train")]
    xy = np.array([(i % 10, i // 10) for i in range(len(manifest))], dtype=float)
    atomic.write_parquet(paths.embed / "pacmap.parquet", manifest[["path", "split", "label"]]
                         .assign(x=xy[:, 0], y=xy[:, 1], x3=xy[:, 0], y3=xy[:, 1],
                                 z3=np.arange(len(manifest)) % 7))
    atomic.write_parquet(paths.eval / "predictions.parquet", manifest[["path"]].assign(
        prediction="muffin", confidence=0.7))
    queue = pd.DataFrame({"rank": [49, 50, 51, 52], "path": [labeled[0], *pool[96:99]],
                          "kind": ["label_issue", "pool", "pool", "pool"], "cluster": 2,
                          "proposed": ["muffin", "chihuahua", "chihuahua", "muffin"],
                          "reason": ["model disagrees with the folder label", "uncertain",
                                     "uncertain", "uncertain"]})
    atomic.write_parquet(paths.suggest / "review_queue.parquet", queue)
    # the evidence behind page 2's proposals (pool 96 has a near-duplicate, pool 97)
    atomic.write_parquet(paths.suggest / "suggestions.parquet", pd.DataFrame({
        "path": pool[96:99], "model_label": "chihuahua", "model_conf": [0.7, 0.6, np.nan],
        "knn_label": ["chihuahua", "muffin", "chihuahua"], "knn_conf": 0.8, "knn_sim": 0.9,
        "nearest_labeled": labeled[0], "dup_of": [pool[97], pool[98], ""],
        "dup_sim": [0.97, 0.5, 0.0], "near_duplicate": [True, False, False]}))
    # the labeled neighbours that voted: all four for pool 96, two for pool 97, none for 98
    atomic.write_parquet(paths.suggest / "neighbours.parquet", pd.DataFrame({
        "path": [pool[96]] * 4 + [pool[97]] * 2, "rank": [1, 2, 3, 4, 1, 2],
        "neighbour": [labeled[0], labeled[2], labeled[1], labeled[3], labeled[3], labeled[0]],
        "similarity": np.array([0.93, 0.91, 0.6, 0.55, 0.8, 0.7], dtype=np.float32)}))
    scores = [0.95 - 0.004 * i for i in range(PAGE)]
    write_pages(paths.suggest / "pages.parquet",
                [("chihuahua", list(zip(pool[:PAGE], scores, strict=True))),
                 ("muffin", list(zip(pool[PAGE:2 * PAGE], scores, strict=True))),
                 ("chihuahua", [(p, 0.6) for p in pool[96:99]])])
    return paths, data, {"pool": pool, "labeled": labeled}


@pytest.fixture(scope="module")
def long_built(tmp_path_factory):
    return build_long_pages(tmp_path_factory.mktemp("review-long"))


@pytest.fixture(scope="module", autouse=True)
def report_timings(request):
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if not TIMINGS:
        return
    with capture.global_and_fixture_disabled():
        print("\nreview page timings (measured, not asserted; the machine is shared):")
        for what, ms in TIMINGS:
            print(f"  {what}: {ms:.0f} ms")


@pytest.fixture
def long_review(long_built):
    paths, data, names = long_built
    atomic.write_text(paths.decisions, format_decisions(
        [Decision(names["pool"][99], "chihuahua", "auto", "accepted")]))
    paths.state.unlink(missing_ok=True)
    with serving(ReviewData(paths, CLASSES, data)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/", paths, names


@contextlib.contextmanager
def browser_at(url, width, height):
    """A page of the given size in headless Chromium; every page error fails the test, and
    nothing may leave 127.0.0.1."""
    sync_playwright, expect = browser_or_skip()
    seen = {"requests": [], "errors": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.on("request", lambda r: seen["requests"].append(r.url))
        page.on("pageerror", lambda e: seen["errors"].append(str(e)))
        page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error"
                else None)
        started = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        TIMINGS.append((f"page load at {width}x{height}", 1000 * (time.perf_counter() - started)))
        yield page, expect, seen
        browser.close()
    assert seen["errors"] == []
    assert all(r.startswith(url.split("#")[0]) for r in seen["requests"])


def timed(page, what: str, key: str, selector: str) -> None:
    """Press `key` and wait until `selector` matches: the time it took is one action's."""
    started = time.perf_counter()
    page.keyboard.press(key)
    page.wait_for_selector(selector, timeout=10_000)
    TIMINGS.append((what, 1000 * (time.perf_counter() - started)))


def fully_visible(page, selector: str) -> list[str]:
    """data-path of the matches lying wholly inside the window and inside their scrolling
    box (what a person can see)."""
    return page.eval_on_selector_all(selector, """els => els.filter(e => {
        const r = e.getBoundingClientRect();
        const box = e.closest('#page-scroll, #right');
        const b = box ? box.getBoundingClientRect() : {top: 0, bottom: innerHeight};
        return r.top >= Math.max(0, b.top) - 1 && r.bottom <= Math.min(innerHeight, b.bottom) + 1
            && r.height > 0;
    }).map(e => e.dataset.path)""")


def header_in_view(page) -> None:
    """The page's header and its first row of images are on screen, nothing over them, and
    the title row at the top is not cut (the document itself does not scroll)."""
    layout = page.evaluate("""() => {
        const r = (id) => document.getElementById(id).getBoundingClientRect();
        const first = document.querySelector('#page-grid .thumb').getBoundingClientRect();
        const at = (x, y) => document.elementFromPoint(x, y);
        const h = r('page-head');
        return {head: [h.top, h.bottom], box: [r('page-scroll').top, r('page-scroll').bottom],
                bar: r('verify-bar').bottom, first: [first.top, first.bottom],
                title: document.querySelector('#top strong').getBoundingClientRect().top,
                headOnTop: document.getElementById('page-head').contains(
                    at(h.left + 5, (h.top + h.bottom) / 2)),
                overflow: document.scrollingElement.scrollHeight - innerHeight};
    }""")
    assert layout["box"][0] >= layout["bar"] - 1, layout
    assert layout["box"][0] <= layout["head"][0] and layout["headOnTop"], layout
    assert layout["head"][1] <= layout["first"][0] <= layout["first"][1] <= layout["box"][1], \
        layout
    assert layout["title"] >= 0 and layout["overflow"] <= 0, layout


def page_shown(page, n: int) -> str:
    return f"#page-head[data-page='{n}']"


# --- 1. a control with the focus keeps its keys -----------------------------------------

@pytest.mark.slow
def test_keys_go_to_the_focused_control_never_to_the_page(long_review):
    url, paths, names = long_review
    start = paths.decisions.read_bytes()
    with browser_at(url, 1440, 900) as (page, expect, _):
        expect(page.locator("#page-head")).to_have_attribute("data-page", "0")
        # Tab, Tab, Enter: the focus is on "Plot and queue", Enter presses it; nothing written
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        focused = page.evaluate("() => document.activeElement.textContent")
        assert focused.startswith("Plot and queue")
        timed(page, "Tab Tab Enter: plot view (plotly loaded on demand)", "Enter",
              "body[data-plot='1']")
        expect(page.locator("#plot-view")).to_be_visible()
        assert paths.decisions.read_bytes() == start
        # back with the focused "Verify pages" button and Space (a page key otherwise)
        page.keyboard.press("Shift+Tab")
        page.keyboard.press("Space")
        expect(page.locator("#verify-view")).to_be_visible()
        expect(page.locator("#zoom")).to_be_hidden()
        # page keys on a focused button do nothing: 'o' marks nothing, Enter presses "next"
        page.focus("#next-page")
        page.keyboard.press("o")
        page.keyboard.press("x")
        expect(page.locator("#page-grid .thumb.marked")).to_have_count(0)
        expect(page.locator("#status")).to_have_text(
            'the keys go to the focused "next (n)"; Esc gives them back to the page')
        page.keyboard.press("Enter")
        expect(page.locator("#page-head")).to_have_attribute("data-page", "1")
        page.keyboard.press("Enter")
        expect(page.locator("#page-head")).to_have_attribute("data-page", "2")
        assert paths.decisions.read_bytes() == start
        # Esc gives the keys back to the page: 'o' marks again
        page.keyboard.press("Escape")
        page.keyboard.press("o")
        expect(page.locator("#page-grid .thumb.marked")).to_have_count(1)
        # a focused accept button does what it says (page 2 fits: every image is on screen)
        page.focus("#accept-page")
        timed(page, "accept a page of 3 (Enter on the focused button)", "Enter",
              "#progress[data-verified='3']")
        expect(page.locator("#status")).to_have_text(re.compile("^page 2 verified"))
        p = names["pool"]
        assert on_disk(paths) == {
            p[96]: ("muffin", "human", "review page: page 2"),
            p[97]: ("chihuahua", "human", "review page: page 2"),
            p[98]: ("chihuahua", "human", "review page: page 2"),
            p[99]: ("chihuahua", "auto", "accepted")}


# --- 2. and 3. every accepted image seen; a new page starts at its header ----------------

@pytest.mark.slow
@pytest.mark.parametrize("width,height", [(1440, 900), (1280, 720)])
def test_enter_accepts_only_after_every_image_was_on_screen(long_review, width, height):
    url, paths, names = long_review
    start = paths.decisions.read_bytes()
    with browser_at(url, width, height) as (page, expect, _):
        expect(page.locator("#page-head")).to_have_attribute("data-page", "0")
        header_in_view(page)
        thumbs = "#page-grid .thumb"
        expect(page.locator(thumbs)).to_have_count(PAGE)
        seen = set(fully_visible(page, thumbs))
        assert 0 < len(seen) < PAGE  # the page is taller than the window
        presses = 0
        while paths.decisions.read_bytes() == start:
            assert presses < 10, "Enter never accepted the page"
            before = paths.decisions.read_bytes()
            seen |= set(fully_visible(page, thumbs))
            told = page.text_content("#status")
            if "not accepted yet" in told and "still below" not in told:
                # everything was shown: this press accepts (timed: the answer and page 1)
                timed(page, f"accept a page of 48 (Enter) at {width}x{height}", "Enter",
                      page_shown(page, 1))
            else:
                page.keyboard.press("Enter")
            presses += 1
            if presses == 1:  # the first Enter only shows what was below
                expect(page.locator("#status")).to_contain_text("not accepted yet")
                assert paths.decisions.read_bytes() == before
            page.wait_for_timeout(50)
            if paths.decisions.read_bytes() == before:
                expect(page.locator("#status")).to_contain_text("not accepted yet")
        # the press that wrote came after every image had been fully on screen
        assert presses >= 2 and seen == set(names["pool"][:PAGE])
        expect(page.locator("#page-head")).to_have_attribute("data-page", "1")
        rows = on_disk(paths)
        assert [rows[p] for p in names["pool"][:PAGE]] == \
            [("chihuahua", "human", "review page: page 0")] * PAGE
        header_in_view(page)


@pytest.mark.slow
@pytest.mark.parametrize("width,height", [(1280, 720), (1920, 1080)])
def test_a_new_page_shows_its_header_and_first_row(long_review, width, height):
    url, paths, names = long_review
    with browser_at(url, width, height) as (page, expect, _):
        expect(page.locator("#page-head")).to_have_attribute("data-page", "0")
        header_in_view(page)
        # to the bottom of the page with the cursor, then turn the page
        for _ in range(8):
            page.keyboard.press("j")
        assert names["pool"][PAGE - 1] in fully_visible(page, "#page-grid .thumb") or \
            page.evaluate("() => document.getElementById('page-scroll').scrollTop") > 0
        timed(page, f"page turn (n) at {width}x{height}", "n", page_shown(page, 1))
        header_in_view(page)
        timed(page, f"page back (p) at {width}x{height}", "p", page_shown(page, 0))
        header_in_view(page)
        # accept from the bottom (the Enter presses that show the rest first), then the
        # next page's header is in view
        while not page.locator(page_shown(page, 1)).count():
            page.keyboard.press("Enter")
            page.wait_for_timeout(50)
        assert on_disk(paths)[names["pool"][0]][0] == "chihuahua"
        header_in_view(page)


# --- 4. the pace after an undo ---------------------------------------------------------

def test_an_undone_page_leaves_the_pace(long_built):
    paths, data, names = long_built
    atomic.write_text(paths.decisions, "path,label,source,note\n")
    paths.state.unlink(missing_ok=True)
    clock = iter([1000.0, 1060.0, 1070.0, 1160.0, 1170.0])

    def progress(server):
        return json.loads(http_request(server, "GET", "/api/state")[2])["progress"]

    with serving(ReviewData(paths, CLASSES, data, clock=lambda: next(clock))) as server:
        post = lambda page: json.loads(http_request(  # noqa: E731
            server, "POST", "/api/verify", {"page": page, "exceptions": {}})[2])
        post(2)  # the first page after a pause counts no time and no images
        assert post(0)["progress"]["per_minute"] == 48.0  # 48 images in 60 s
        # undo the page just accepted: it leaves the pace, nothing counts yet again
        undone = json.loads(http_request(server, "POST", "/api/undo", {})[2])
        assert undone["progress"]["per_minute"] is None
        assert undone["progress"]["minutes_left"] is None
        # accepted again later: its time runs from the last action still standing (page 2)
        assert post(0)["progress"]["per_minute"] == round(48 / (1070 - 1000) * 60, 1)
        assert progress(server)["left"] == 48
        # undo both: the pace is as before the first page, an empty one
        for _ in range(2):
            http_request(server, "POST", "/api/undo", {})
        assert progress(server)["per_minute"] is None
        assert post(2)["progress"]["per_minute"] is None  # a first page again: no pace


# --- 5. marks not yet accepted survive a reload ------------------------------------------

@pytest.mark.slow
def test_marks_not_yet_accepted_survive_a_reload(long_review):
    url, paths, names = long_review
    p = names["pool"]
    start = paths.decisions.read_bytes()
    with browser_at(url, 1440, 900) as (page, expect, _):
        marked = page.locator("#page-grid .thumb.marked")
        page.keyboard.press("n")
        page.keyboard.press("n")
        expect(page.locator("#page-head")).to_have_attribute("data-page", "2")
        page.keyboard.press("o")  # p96 -> muffin
        page.keyboard.press("l")
        page.keyboard.press("u")  # p97 -> undefined
        expect(marked).to_have_count(2)
        started = time.perf_counter()
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        TIMINGS.append(("reload with marks kept", 1000 * (time.perf_counter() - started)))
        expect(page.locator("#page-head")).to_have_attribute("data-page", "2")
        expect(marked).to_have_count(2)
        expect(page.locator(f'#page-grid .thumb[data-path="{p[97]}"]')) \
            .to_have_attribute("data-mark", "undefined")
        assert paths.decisions.read_bytes() == start  # kept in the browser, not written
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_have_text(re.compile("^page 2 verified"))
        assert {x: on_disk(paths)[x][0] for x in p[96:99]} == {
            p[96]: "muffin", p[97]: "undefined", p[98]: "chihuahua"}
        # marks on page 1, then something else writes one of its images: the kept marks no
        # longer match the label file and are dropped at the next load
        expect(page.locator("#page-head")).to_have_attribute("data-page", "0")
        page.keyboard.press("n")
        expect(page.locator("#page-head")).to_have_attribute("data-page", "1")
        page.keyboard.press("o")
        expect(marked).to_have_count(1)
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        expect(marked).to_have_count(1)
        rows = format_decisions([Decision(x, *on_disk(paths)[x]) for x in on_disk(paths)]
                                + [Decision(p[50], "muffin", "3lc", "from elsewhere")])
        atomic.write_text(paths.decisions, rows)
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        expect(page.locator("#page-head")).to_have_attribute("data-page", "1")
        expect(marked).to_have_count(0)
        assert p[48] not in on_disk(paths)


# --- 6. keys switch the views; the key map lists them ------------------------------------

@pytest.mark.slow
def test_view_keys_and_the_key_map(long_review):
    url, paths, _ = long_review
    start = paths.decisions.read_bytes()
    with browser_at(url, 1280, 720) as (page, expect, _):
        rows = dict(page.eval_on_selector_all("#key-map tr", """rows => rows.map(
            r => [r.cells[0].textContent, r.cells[1].textContent])"""))
        assert (rows["v"], rows["g"], rows["?"]) == (
            "the verify view", "the plot and queue view", "every key (this map) on/off")
        assert rows["q"].startswith("the review queue")
        timed(page, "g: the plot view", "g", "body[data-plot='1']")
        expect(page.locator("#plot-view")).to_be_visible()
        assert "g the plot and queue view" in page.text_content("#key-help")
        timed(page, "v: the verify view", "v", "#verify-view:not([hidden])")
        expect(page.locator("#verify-view")).to_be_visible()
        page.keyboard.press("q")
        expect(page.locator("#plot-view")).to_be_visible()
        head, bar = (page.locator(x).bounding_box() for x in ("#queue-head", "#actions"))
        assert bar["y"] + bar["height"] <= head["y"] < 720  # in view, not under the bar
        # ? shows every key of both views; other keys do nothing while it is open
        page.keyboard.press("?")
        help_box = page.locator("#help")
        expect(help_box).to_be_visible()
        expect(help_box).to_contain_text("accept the page")
        expect(help_box).to_contain_text("the review queue")
        page.keyboard.press("v")
        expect(page.locator("#plot-view")).to_be_visible()
        page.keyboard.press("Escape")
        expect(help_box).to_be_hidden()
        page.keyboard.press("v")
        expect(page.locator("#verify-view")).to_be_visible()
        page.keyboard.press("?")
        page.keyboard.press("?")
        expect(help_box).to_be_hidden()
    assert paths.decisions.read_bytes() == start


# --- 7. the queue: counts over the whole cluster, the label file's cluster number --------

@pytest.mark.slow
def test_queue_headers_count_the_whole_cluster_and_name_the_files_cluster(long_review):
    url, paths, names = long_review
    with browser_at(url + "#plot", 1440, 900) as (page, expect, _):
        page.wait_for_selector("body[data-plot='1']")
        cluster = page.locator(".cluster")
        expect(cluster).to_have_count(1)
        expect(cluster.locator("header span")).to_have_text(
            "cluster 2 · 4 image(s): 3 uncertain, 1 label issue · proposes muffin 2, chihuahua 2")
        # captions are whole (they wrap), the full story is in the tooltip
        cut = page.eval_on_selector_all(".cluster .caption, #selection .caption",
                                        "els => els.filter(e => e.scrollWidth > e.clientWidth)"
                                        ".length")
        assert cut == 0
        assert "label issue (model disagrees with the folder label)" in \
            cluster.locator(".thumb").first.get_attribute("title")
        cluster.locator("button", has_text="select").click()
        expect(page.locator("#selection-legend")).to_be_visible()
        expect(page.locator("#selection-legend")).to_contain_text("label now / the model's")
        # the label issue changes a folder label: asked first, then written as cluster 2
        page.on("dialog", lambda d: d.accept())
        cluster.locator("button", has_text="accept proposals").click()
        expect(page.locator("#status")).to_have_text(re.compile("^saved: queue cluster 2, 4"))
        rows = on_disk(paths)
        assert {rows[p] for p in names["pool"][96:99]} | {rows[names["labeled"][0]]} == {
            ("chihuahua", "human", "review page: queue cluster 2"),
            ("muffin", "human", "review page: queue cluster 2")}
        assert rows[names["labeled"][0]][0] == "muffin"
        expect(page.locator(".cluster.done")).to_have_count(1)
        cut = page.eval_on_selector_all(".cluster .caption",
                                        "els => els.filter(e => e.scrollWidth > e.clientWidth)"
                                        ".length")
        assert cut == 0  # "proposed muffin · now muffin" wraps too


# --- 8. plotly only for the plot; its toolbar always shown; a server gone, said plainly ----

@pytest.mark.slow
def test_plotly_loads_with_the_plot_view_only_and_a_dead_server_is_named(long_built):
    paths, data, names = long_built
    atomic.write_text(paths.decisions, "path,label,source,note\n")
    paths.state.unlink(missing_ok=True)
    start = paths.decisions.read_bytes()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serving(ReviewData(paths, CLASSES, data)))
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        page, expect, seen = stack.enter_context(browser_at(url, 1280, 720))
        expect(page.locator("#page-head")).to_have_attribute("data-page", "0")
        assert not [r for r in seen["requests"] if "plotly" in r]  # the verify view: none
        timed(page, "g: the plot view, first time (loads plotly.min.js)", "g",
              "body[data-plot='1']")
        assert [r for r in seen["requests"] if r.endswith("/static/plotly.min.js")]
        # the toolbar shows without hovering the plot (the hint says where it is)
        expect(page.locator(".modebar")).to_be_visible()
        assert page.locator(".modebar-container").evaluate(
            "e => getComputedStyle(e.querySelector('.modebar')).opacity") == "1"
        assert "toolbar top right" in page.text_content(".hint")
        # the server stops: an accept says so in words, the marks stay, nothing is written
        page.keyboard.press("v")
        page.keyboard.press("n")
        page.keyboard.press("n")
        expect(page.locator("#page-head")).to_have_attribute("data-page", "2")
        page.keyboard.press("o")
        server.shutdown()
        server.server_close()
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_have_text(re.compile(
            "^not saved: the review server is not reachable .*your marks are kept"))
        expect(page.locator("#status")).to_have_class("error")
        expect(page.locator("#page-grid .thumb.marked")).to_have_count(1)
        page.keyboard.press("z")
        expect(page.locator("#status")).to_have_text(re.compile(
            "^not undone: the review server is not reachable"))
        assert paths.decisions.read_bytes() == start
        # the browser logs the failed connections: expected here, nothing else
        seen["errors"][:] = [e for e in seen["errors"]
                             if not e.startswith("Failed to load resource: net::ERR_")]


# --- doubtful images marked; a page flipped to the other class with one key ------------

@pytest.mark.slow
def test_doubtful_images_are_marked_and_a_page_flips_with_one_key(long_review):
    url, paths, names = long_review
    p = names["pool"]
    start = paths.decisions.read_bytes()
    with browser_at(url, 1440, 900) as (page, expect, _):
        head, cursor = page.locator("#page-head"), page.locator("#page-grid .thumb.cursor")
        # page 0: only its first image has model and neighbours disagreeing (the fixture)
        expect(head).to_contain_text("1 doubtful (?)")
        expect(page.locator("#page-grid .thumb.doubt")).to_have_count(1)
        widths = page.eval_on_selector_all("#page-grid .conf i", "els => els.map(e => "
                                           "e.getBoundingClientRect().width)")
        assert len(widths) == PAGE and widths[0] > widths[-1] > 0  # the score as a bar
        page.keyboard.press("l")
        expect(cursor).to_have_attribute("data-path", p[1])
        page.keyboard.press(".")  # the next doubtful image, wrapping round
        expect(cursor).to_have_attribute("data-path", p[0])
        # page 2 (chihuahua): mark one undefined, flip: the rest become muffin, the mark stays
        page.keyboard.press("n")
        page.keyboard.press("n")
        expect(head).to_have_attribute("data-page", "2")
        page.keyboard.press("u")
        timed(page, "f: flip a page", "f", "#page-grid .thumb.marked >> nth=2")
        marks = page.eval_on_selector_all("#page-grid .thumb", "els => els.map(e => "
                                          "e.dataset.mark)")
        assert marks == ["undefined", "muffin", "muffin"]
        page.keyboard.press("f")  # again: the flip is taken back, the earlier mark stays
        expect(page.locator("#page-grid .thumb.marked")).to_have_count(1)
        page.keyboard.press("f")
        page.keyboard.press("l")
        page.keyboard.press("l")
        page.keyboard.press("o")  # the exception to the flip: this one is a chihuahua
        assert paths.decisions.read_bytes() == start
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_have_text(re.compile("^page 2 verified"))
        assert {x: on_disk(paths)[x][0] for x in p[96:99]} == {
            p[96]: "undefined", p[97]: "muffin", p[98]: "chihuahua"}


# --- the evidence behind a proposal, on the enlarged view --------------------------------

def test_evidence_is_read_for_page_images_and_a_stale_file_says_why(long_built, tmp_path):
    paths, data, names = long_built
    p, lab = names["pool"], names["labeled"]
    state = ReviewData(paths, CLASSES, data).state()["evidence"]
    assert state["error"] is None and sorted(state["images"]) == sorted(p[96:99])
    assert state["images"][p[96]] == {
        "model_label": "chihuahua", "model_conf": 0.7, "knn_label": "chihuahua",
        "knn_conf": 0.8, "knn_sim": 0.9, "nearest_labeled": lab[0],
        "dup_of": p[97], "dup_sim": 0.97, "near_duplicate": True,
        "neighbours": [[lab[0], 0.93], [lab[2], 0.91], [lab[1], 0.6], [lab[3], 0.55]]}
    assert state["images"][p[97]]["neighbours"] == [[lab[3], 0.8], [lab[0], 0.7]]
    assert state["images"][p[98]]["neighbours"] == []  # no labeled image voted
    assert state["images"][p[98]]["model_conf"] is None  # NaN: JSON has none
    json.dumps(state, allow_nan=False)
    neighbours = paths.suggest / "neighbours.parquet"
    old = tmp_path / "suggestions.parquet"
    pd.read_parquet(paths.suggest / "suggestions.parquet").drop(columns="knn_sim").to_parquet(old)
    assert read_evidence(old, neighbours, set(p)) == ({}, f"{old}: column(s) knn_sim missing "
                                                      "from the suggestions; run `dvc repro "
                                                      "suggest`")
    assert read_evidence(tmp_path / "nope.parquet", neighbours, set(p))[1].endswith(
        "nope.parquet: suggestions not found (run `dvc repro suggest`)")
    # older outputs without the neighbours: the rest of the evidence, and why not those
    images, why = read_evidence(paths.suggest / "suggestions.parquet", tmp_path / "none.parquet",
                                set(p))
    assert sorted(images) == sorted(p[96:99]) and "neighbours" not in images[p[96]]
    assert why == (f"{tmp_path / 'none.parquet'}: voting neighbours not found (run `dvc repro "
                   "suggest`)")


@pytest.mark.slow
def test_the_enlarged_view_shows_the_evidence(long_review):
    url, paths, names = long_review
    p, lab = names["pool"], names["labeled"]
    with browser_at(url, 1280, 720) as (page, expect, _):
        page.keyboard.press("n")
        page.keyboard.press("n")
        expect(page.locator("#page-head")).to_have_attribute("data-page", "2")
        timed(page, "e: the enlarged view with its evidence", "e", "#zoom-evidence figure")
        box = page.locator("#zoom-evidence")
        expect(box).to_contain_text("model: chihuahua 0.70 · labeled neighbours vote "
                                    "chihuahua 0.80 (mean similarity 0.90)")
        expect(box).to_contain_text("the 4 labeled neighbours that voted, nearest first")
        # the k neighbours that voted, nearest first: image, label now, similarity
        listed = page.eval_on_selector_all("#zoom-evidence .neighbours li", """els => els.map(
            e => [e.title, e.querySelector('img').alt, e.querySelector('span').textContent,
                  e.querySelector('small').textContent])""")
        assert listed == [[lab[0], lab[0], "chihuahua", "0.93"],
                          [lab[2], lab[2], "muffin", "0.91"],
                          [lab[1], lab[1], "chihuahua", "0.60"],
                          [lab[3], lab[3], "muffin", "0.55"]]
        captions = page.eval_on_selector_all("#zoom-evidence figcaption",
                                             "els => els.map(e => e.textContent)")
        assert captions == ["NEAR-DUPLICATE, similarity 0.97: undefined"]
        assert page.eval_on_selector("#zoom-evidence figure img", "e => e.alt") == p[97]
        # everything of the enlarged view is on screen at 1280x720, every thumbnail loaded
        bottom = page.eval_on_selector("#zoom-evidence", "e => e.getBoundingClientRect().bottom")
        assert bottom <= 720
        page.wait_for_function("""() => [...document.querySelectorAll('#zoom-evidence img')]
            .every(i => i.complete && i.naturalWidth > 0)""")
        page.keyboard.press("l")
        expect(page.locator("#zoom-evidence .neighbours li")).to_have_count(2)
        expect(page.locator("#zoom-evidence .neighbours li span")).to_have_text(
            ["muffin", "chihuahua"])
        page.keyboard.press("l")
        expect(box).to_contain_text("model: chihuahua ? ·")  # a missing value, said as such
        expect(box).to_contain_text("no labeled image voted")
        expect(page.locator("#zoom-evidence .neighbours li")).to_have_count(0)
        page.keyboard.press("Escape")
        page.keyboard.press("p")  # page 1: no evidence rows, nothing claimed
        page.keyboard.press("e")
        expect(page.locator("#zoom-evidence figure")).to_have_count(0)
        expect(page.locator("#zoom-evidence .neighbours li")).to_have_count(0)


# --- the history: the last actions, each undoable back to there -------------------------

@pytest.mark.slow
def test_history_lists_the_last_actions_and_undoes_back_to_one(long_review):
    url, paths, names = long_review
    p = names["pool"]
    start = paths.decisions.read_bytes()
    with browser_at(url, 1280, 720) as (page, expect, _):
        page.on("dialog", lambda d: d.accept())
        head, items = page.locator("#page-head"), page.locator("#history-list li")
        page.keyboard.press("n")
        page.keyboard.press("n")
        page.keyboard.press("Enter")  # page 2 accepted (it fits: no scrolling first)
        expect(page.locator("#status")).to_have_text(re.compile("^page 2 verified"))
        accepted = paths.decisions.read_bytes()
        page.keyboard.press("n")
        page.keyboard.press("n")
        expect(head).to_have_attribute("data-page", "2")
        page.keyboard.press("c")
        expect(page.locator("#status")).to_have_text(re.compile("^cleared the decision"))
        page.keyboard.press("l")
        page.keyboard.press("c")
        expect(page.locator("#history summary")).to_have_text("history (3)")
        assert set(on_disk(paths)) == {p[98], p[99]}
        page.click("#history summary")
        expect(items).to_have_count(3)
        page.keyboard.press("p")  # a click on "history" leaves the keys with the page
        expect(head).to_have_attribute("data-page", "1")
        assert all(re.fullmatch(r"\d\d:\d\d:\d\d", t)
                   for t in page.locator("#history-list time").all_inner_texts())
        assert page.locator("#history-list .what").all_inner_texts() == [
            "cleared 1 image(s)", "cleared 1 image(s)", "page 2: 3 image(s), 0 exception(s)"]
        # undo back to the second: both clears taken back, the page's accept stays
        items.nth(1).locator("button").click()
        expect(page.locator("#history summary")).to_have_text("history (1)")
        assert paths.decisions.read_bytes() == accepted
        items.nth(0).locator("button", has_text="undo").click()
        expect(page.locator("#history summary")).to_have_text("history (0)")
        assert paths.decisions.read_bytes() == start


# --- the plot: the image under the mouse --------------------------------------------------

@pytest.mark.slow
def test_hovering_a_point_shows_its_image(long_review):
    url, paths, names = long_review
    target = names["pool"][0]
    with browser_at(url + "#plot", 1440, 900) as (page, expect, _):
        page.wait_for_selector("body[data-plot='1']")
        x, y = page.evaluate("""(path) => {
            const gd = document.getElementById('plot'), L = gd._fullLayout;
            const i = gd.data[0].text.indexOf(path);
            const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
            return [r.left + L.xaxis.l2p(gd.data[0].x[i]), r.top + L.yaxis.l2p(gd.data[0].y[i])];
        }""", target)
        page.mouse.move(x - 30, y - 30)
        page.mouse.move(x, y, steps=4)
        hover = page.locator("#hover-thumb")
        expect(hover).to_be_visible()
        expect(hover.locator("img")).to_have_attribute("alt", target)
        expect(hover.locator("span")).to_have_text("undefined")
        box = hover.bounding_box()
        assert box["width"] >= 128 and not (box["x"] <= x <= box["x"] + box["width"]
                                            and box["y"] <= y <= box["y"] + box["height"])
        page.mouse.move(5, 5)
        expect(hover).to_be_hidden()


@pytest.mark.slow
def test_the_plot_switches_between_2d_and_3d(long_review):
    url, paths, names = long_review
    kind = "() => document.getElementById('plot').data[0].type"
    with browser_at(url + "#plot", 1440, 900) as (page, expect, _):
        page.wait_for_selector("body[data-plot='1']")
        assert page.evaluate(kind) == "scatter"
        button = page.locator("#dims")
        expect(button).to_have_text("3-D view (d)")
        expect(page.locator("#key-help")).to_contain_text("d the plot in 3-D / in 2-D")
        timed(page, "d: the plot in 3-D", "d", "body[data-dims='3']")
        assert page.evaluate(kind) == "scatter3d"
        # the 3-D trace plots pacmap.parquet's x3, y3, z3 for the same points
        shown = page.evaluate("""() => { const t = document.getElementById('plot').data[0];
            return t.text.map((p, i) => [p, t.x[i], t.y[i], t.z[i]]); }""")
        coords = pd.read_parquet(paths.embed / "pacmap.parquet").set_index("path")
        assert len(shown) == len(names["pool"]) + len(names["labeled"])  # test images left out
        assert shown == [[p, *coords.loc[p, ["x3", "y3", "z3"]].tolist()] for p, *_ in shown]
        assert len({z for *_, z in shown}) == 7
        # the mouse on a point shows its image in 3-D too (plotly's 3-D hover has no mouse
        # event: the page's own stands in); the scene is drawn in the plot's box, so scan it
        box = page.locator("#plot").bounding_box()
        hover = page.locator("#hover-thumb")
        for y in range(int(box["y"]) + 60, int(box["y"] + box["height"]) - 40, 12):
            for x in range(int(box["x"]) + 60, int(box["x"] + box["width"]) - 60, 12):
                page.mouse.move(x, y)
                if hover.is_visible():
                    break
            else:
                continue
            break
        expect(hover).to_be_visible()
        assert hover.locator("img").get_attribute("alt") in {p for p, *_ in shown}
        page.mouse.move(5, 5)
        expect(button).to_have_text("2-D view (d)")
        button.click()
        expect(page.locator("body")).to_have_attribute("data-dims", "2")
        assert page.evaluate(kind) == "scatter"
        page.keyboard.press("?")
        expect(page.locator("#help")).to_contain_text("the plot in 3-D / in 2-D")


@pytest.mark.slow
def test_sorting_a_page_puts_the_doubtful_and_lowest_first(long_review):
    url, paths, names = long_review
    p = names["pool"]
    order = "els => els.map(e => e.dataset.path)"
    with browser_at(url, 1920, 1080) as (page, expect, _):
        expect(page.locator("#page-head")).to_have_attribute("data-page", "0")
        timed(page, "s: sort a page of 48", "s",
              f'#page-grid .thumb:nth-child(2)[data-path="{p[PAGE - 1]}"]')
        shown = page.eval_on_selector_all("#page-grid .thumb", order)
        assert shown == [p[0], *reversed(p[1:PAGE])]  # the doubtful one, then lowest score
        page.keyboard.press("l")
        page.keyboard.press("o")  # the lowest-scored image is a muffin
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        assert page.eval_on_selector_all("#page-grid .thumb", order)[:2] == [p[0], p[PAGE - 1]]
        expect(page.locator(f'#page-grid .thumb[data-path="{p[PAGE - 1]}"]')) \
            .to_have_attribute("data-mark", "muffin")
        page.keyboard.press("s")
        assert page.eval_on_selector_all("#page-grid .thumb", order) == p[:PAGE]
        for _ in range(10):
            if page.locator("#page-head[data-page='1']").count():
                break
            page.keyboard.press("Enter")
            page.wait_for_timeout(50)
        rows = on_disk(paths)
        assert rows[p[PAGE - 1]][0] == "muffin" and rows[p[0]][0] == "chihuahua"


# --- background retraining: a swap keeps the place and the marks; a failure is shown ------

def small_review(tmp_path: Path):
    """The small dataset of tests/test_review.py (page 0 = pool 0-2, chihuahua; page 1 =
    pool 3-4, muffin; pool 5 decided `auto`)."""
    paths, data, names = build_repo(tmp_path)
    atomic.write_text(paths.decisions, format_decisions(
        [Decision(names["pool"][5], "chihuahua", "auto", "accepted")]))
    return paths, ReviewData(paths, CLASSES, data), names


def test_a_swapped_in_model_brings_its_evidence_and_neighbours(tmp_path):
    paths, data, names = small_review(tmp_path)
    p, lab = names["pool"], [x for x in data.base_label if data.base_label[x] in CLASSES]
    write_pages(tmp_path / "new.parquet", [("muffin", [(p[3], 0.9), (p[4], 0.8)])])
    suggestions = pd.DataFrame({
        "path": [p[3], p[4]], "model_label": "muffin", "model_conf": 0.9,
        "knn_label": "muffin", "knn_conf": 0.7, "knn_sim": 0.8, "nearest_labeled": lab[0],
        "dup_of": "", "dup_sim": 0.1, "near_duplicate": False})
    neighbours = pd.DataFrame({"path": [p[3], p[3], p[4]], "rank": [1, 2, 1],
                               "neighbour": [lab[0], lab[1], lab[1]],
                               "similarity": [0.9, 0.7, 0.8]})
    pages = pd.read_parquet(tmp_path / "new.parquet")
    data.swap_in(Run("with-neighbours", 4, "on demand", time.time(), finished=time.time(),
                     ok=True, outputs=RunOutputs(pages, suggestions, neighbours)))
    ev = data.state()["evidence"]
    assert ev["error"] is None
    assert ev["images"][p[3]]["neighbours"] == [[lab[0], 0.9], [lab[1], 0.7]]
    assert ev["images"][p[4]]["neighbours"] == [[lab[1], 0.8]]
    # a run whose outputs lack the neighbours: the rest of the evidence, and why not those
    data.swap_in(Run("without", 4, "on demand", time.time(), finished=time.time(), ok=True,
                     outputs=RunOutputs(pages, suggestions)))
    ev = data.state()["evidence"]
    assert ev["error"] == "without: no neighbours.parquet"
    assert ev["images"][p[3]]["knn_sim"] == 0.8 and "neighbours" not in ev["images"][p[3]]


@pytest.mark.slow
def test_without_3d_coordinates_the_plot_stays_2d_and_says_why(tmp_path):
    paths, data, _ = small_review(tmp_path)  # its pacmap.parquet has x and y only
    assert "z3" not in data.state()["points"]
    with serving(data) as server, \
            browser_at(f"http://127.0.0.1:{server.server_address[1]}/#plot", 1440, 900) \
            as (page, expect, _):
        page.wait_for_selector("body[data-plot='1']")
        expect(page.locator("#dims")).to_be_disabled()
        page.keyboard.press("d")
        expect(page.locator("#status")).to_contain_text(
            "no 3-D coordinates in the embed stage's pacmap.parquet: run `dvc repro embed`")
        assert page.evaluate("() => document.getElementById('plot').data[0].type") == "scatter"


@pytest.mark.slow
def test_a_page_swap_keeps_the_place_and_the_marks(tmp_path):
    paths, data, names = small_review(tmp_path)
    p = names["pool"]
    start = paths.decisions.read_bytes()
    with serving(data) as server, \
            browser_at(f"http://127.0.0.1:{server.server_address[1]}/", 1440, 900) \
            as (page, expect, _):
        expect(page.locator("#page-head")).to_have_attribute("data-page", "0")
        expect(page.locator("#page-head")).to_contain_text("proposed by pipeline outputs")
        page.keyboard.press("o")  # pool 0 is a muffin: marked, not accepted
        expect(page.locator("#page-grid .thumb.marked")).to_have_count(1)
        # a background model finishes: its pages put the muffins first
        write_pages(tmp_path / "new.parquet", [("muffin", [(p[3], 0.9), (p[4], 0.8)]),
                                               ("chihuahua", [(p[0], 0.7), (p[1], 0.7),
                                                              (p[2], 0.7)])])
        data.swap_in(Run("review-test-4-labels", 4, "on demand", time.time(),
                         finished=time.time(), ok=True,
                         outputs=RunOutputs(pd.read_parquet(tmp_path / "new.parquet"))))
        expect(page.locator("#status")).to_contain_text("new proposals from review-test")
        # the place and the mark stay; nothing was written
        expect(page.locator("#page-head")).to_have_attribute("data-page", "0")
        expect(page.locator(f'#page-grid .thumb[data-path="{p[0]}"]')) \
            .to_have_attribute("data-mark", "muffin")
        assert paths.decisions.read_bytes() == start
        # the next page is the new model's (numbered after every page of the session)
        page.keyboard.press("n")
        expect(page.locator("#page-head")).to_have_attribute("data-page", "2")
        expect(page.locator("#page-head")).to_contain_text("proposed by review-test-4-labels")
        page.keyboard.press("p")
        expect(page.locator(f'#page-grid .thumb[data-path="{p[0]}"]')) \
            .to_have_attribute("data-mark", "muffin")
        page.keyboard.press("Enter")  # the old page, accepted with its mark
        expect(page.locator("#status")).to_contain_text("page 0 verified")
        assert on_disk(paths) == {
            p[0]: ("muffin", "human", "review page: page 0"),
            p[1]: ("chihuahua", "human", "review page: page 0"),
            p[2]: ("chihuahua", "human", "review page: page 0"),
            p[5]: ("chihuahua", "auto", "accepted")}
        # on to the new model's page (its chihuahua page held only images verified since)
        expect(page.locator("#page-head")).to_have_attribute("data-page", "2")
        page.keyboard.press("Enter")
        page.wait_for_selector("#progress[data-verified='5']")
        rows = on_disk(paths)
        assert rows[p[3]] == rows[p[4]] == ("muffin", "human", "review page: page 2")
        assert len(rows) == 6
        # how often each model was wrong so far (the page polls)
        expect(page.locator("#retrain-info")).to_contain_text(
            "pipeline outputs: 1 wrong of 3; review-test-4-labels: 0 wrong of 2")


@pytest.mark.slow
def test_a_failed_background_run_is_shown_and_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    paths, data, names = small_review(tmp_path / "ws")
    (paths.root / "params.yaml").write_text(yaml.safe_dump(default_params_dict()))
    start = paths.decisions.read_bytes()
    # not a git repository: the run fails at its first git command
    retrainer = Retrainer(paths.root, paths.root / "params.yaml", paths.decisions, CLASSES,
                          every=0, recipe="", labels_of_model=0, on_done=data.swap_in)
    with serving(data, retrainer=retrainer) as server, \
            browser_at(f"http://127.0.0.1:{server.server_address[1]}/", 1440, 900) \
            as (page, expect, _):
        expect(page.locator("#page-head")).to_have_attribute("data-page", "0")
        page.keyboard.press("Shift+R")
        expect(page.locator("#status")).to_contain_text("background retrain: started")
        expect(page.locator("#retrain-error")).to_contain_text("failed (nothing changed)",
                                                               timeout=30_000)
        expect(page.locator("#retrain-error")).to_contain_text("git rev-parse")
        page.click("#retrain-error")
        expect(page.locator("#retrain-log")).to_contain_text("not a git repository")
        expect(page.locator("#page-head")).to_have_attribute("data-page", "0")
        assert paths.decisions.read_bytes() == start
    assert data.models_state()["version"] == 0
    log = Path(retrainer.runs[0].log)
    assert log.is_file() and log.is_relative_to(tmp_path)

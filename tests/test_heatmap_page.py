"""The review page's heatmaps: GET /api/heatmap (batched, cached per model, a swapped-in model
starts afresh, the page's other requests answered while one computes) and, in headless Chromium,
Shift+H showing and hiding the overlay without writing to the label files."""

import base64
import io
import json
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from chimuffin import atomic
from chimuffin.labels.rows import Decision, format_decisions
from chimuffin.review.data import ReviewData
from chimuffin.review.heatmap_route import PageHeatmaps
from tests.test_review import CLASSES, build_repo, serving
from tests.test_review import request as http_request
from tests.test_review_page import TIMINGS, browser_at, build_long_pages


@pytest.fixture(scope="module", autouse=True)
def report_timings(request):
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    mine = [t for t in TIMINGS if "overlay" in t[0]]
    if mine:
        with capture.global_and_fixture_disabled():
            print("\nheatmap overlay timings (measured, not asserted; the machine is shared):")
            for what, ms in mine:
                print(f"  {what}: {ms:.0f} ms")


def get_json(server, url: str) -> tuple[int, dict]:
    status, ctype, body = http_request(server, "GET", url)
    assert ctype == "application/json"
    return status, json.loads(body)


def query(*paths: str) -> str:
    from urllib.parse import urlencode

    return "/api/heatmap?" + urlencode([("path", p) for p in paths])


@pytest.fixture
def small(tmp_path, tiny_checkpoint, one_thread):
    paths, data_dir, names = build_repo(tmp_path)
    data = ReviewData(paths, CLASSES, data_dir)
    heatmaps = PageHeatmaps(tiny_checkpoint, data.image_file, CLASSES)
    yield data, heatmaps, names
    heatmaps.close()


def counting(heatmaps: PageHeatmaps) -> list:
    """Record the batches the worker computes."""
    batches, compute = [], heatmaps._answers

    def spy(key, items):
        batches.append([p for p, _ in items])
        return compute(key, items)
    heatmaps._answers = spy
    return batches


def test_heatmaps_are_batched_cached_and_follow_a_swapped_in_model(small, tiny_checkpoint,
                                                                   tmp_path):
    data, heatmaps, names = small
    pool = names["pool"]
    batches = counting(heatmaps)
    with serving(data, heatmaps=heatmaps) as server:
        status, body = get_json(server, query(pool[0], pool[1]))
        assert status == 200 and body["model"] == "pipeline model"
        assert batches == [[pool[0], pool[1]]]  # one batch for the one request
        for p in pool[:2]:
            ans = body["heatmaps"][p]
            assert ans["label"] in CLASSES and 0.5 <= ans["score"] <= 1
            png = base64.b64decode(ans["png"].removeprefix("data:image/png;base64,"))
            with Image.open(io.BytesIO(png)) as im:
                assert im.format == "PNG" and im.size == (32, 32)  # the model's input size
        assert get_json(server, query(pool[1]))[1]["heatmaps"][pool[1]] == body["heatmaps"][pool[1]]
        assert len(batches) == 1  # from the cache
        # a background model swaps in: its weights, its cache
        other = tmp_path / "run.pth"
        other.write_bytes(tiny_checkpoint.read_bytes())
        heatmaps.follow(other, "bg-run-1")
        other.unlink()  # the next run replaces it: the page keeps its own copy
        status, body = get_json(server, query(pool[1]))
        assert status == 200 and body["model"] == "bg-run-1" and len(batches) == 2
        # its weights not kept (no warm starts): said, not replaced by another model's
        heatmaps.follow(None, "bg-run-2")
        status, body = get_json(server, query(pool[1]))
        assert status == 409 and "bg-run-2" in body["error"] and "warm_recipe" in body["error"]
        # bad requests name what is wrong
        assert get_json(server, "/api/heatmap")[0] == 400
        assert get_json(server, query("../../etc/passwd"))[0] in (403, 404)
    with serving(data) as server:  # a server without heatmaps
        status, body = get_json(server, query(pool[0]))
        assert status == 409 and "heatmaps are off" in body["error"]


def test_the_image_in_focus_goes_before_the_pages_prefetch(small):
    data, heatmaps, names = small
    pool = names["pool"]
    batches, compute = [], heatmaps._answers
    release = threading.Event()

    def blocking(key, items):
        batches.append([p for p, _ in items])
        release.wait(30)
        return compute(key, items)
    heatmaps._answers = blocking

    def ask(*paths, prefetch=False):
        q = query(*paths).removeprefix("/api/heatmap?") + ("&prefetch=1" if prefetch else "")
        t = threading.Thread(target=heatmaps.answer, args=(q,))
        t.start()
        return t

    def queued(n):
        deadline = time.monotonic() + 30
        while heatmaps.jobs.qsize() != n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert heatmaps.jobs.qsize() == n

    asked = [ask(pool[0])]
    while not batches:  # the worker holds pool 0
        time.sleep(0.01)
    asked.append(ask(*pool[1:5], prefetch=True))
    queued(4)
    asked.append(ask(pool[3]))  # in focus now, and already waiting as a prefetch
    queued(5)
    release.set()
    for t in asked:
        t.join(30)
    assert batches == [[pool[0]], [pool[3]], [pool[1], pool[2], pool[4]]]


def test_a_failed_swap_keeps_the_heatmaps_of_the_proposing_one(small):
    _, heatmaps, _ = small

    class SwapFailed(Exception):
        pass

    def swap_in(run):
        raise SwapFailed("its outputs could not be read")

    swapped = heatmaps.after_swap(swap_in, lambda: Path("/nonexistent"))
    with pytest.raises(SwapFailed):
        swapped(type("Run", (), {"name": "worse"})())
    assert heatmaps.name == "pipeline model"


def test_the_server_answers_other_requests_while_a_heatmap_computes(small):
    data, heatmaps, names = small
    release, started = threading.Event(), threading.Event()
    compute = heatmaps._answers

    def slow(key, items):
        started.set()
        release.wait(30)
        return compute(key, items)
    heatmaps._answers = slow
    with serving(data, heatmaps=heatmaps) as server:
        result = {}
        asker = threading.Thread(target=lambda: result.update(
            r=get_json(server, query(names["pool"][0]))))
        asker.start()
        assert started.wait(30)
        t0 = time.perf_counter()
        assert get_json(server, "/api/state")[0] == 200  # not queued behind the heatmap
        assert time.perf_counter() - t0 < 5
        assert asker.is_alive()
        release.set()
        asker.join(30)
        assert result["r"][0] == 200


@pytest.mark.slow
def test_shift_h_shows_and_hides_the_overlay_and_writes_nothing(tmp_path, tiny_checkpoint):
    paths, data_dir, names = build_long_pages(tmp_path)
    atomic.write_text(paths.decisions, format_decisions(
        [Decision(names["pool"][99], "chihuahua", "auto", "accepted")]))
    labels = sorted(paths.decisions.parent.glob("*.csv"))
    before = {f: f.read_bytes() for f in labels}
    data = ReviewData(paths, CLASSES, data_dir)
    heatmaps = PageHeatmaps(tiny_checkpoint, data.image_file, CLASSES)
    overlay = "#page-grid .thumb.cursor img.heatmap:not([hidden])"
    try:
        with serving(data, heatmaps=heatmaps) as server, \
                browser_at(f"http://127.0.0.1:{server.server_address[1]}/", 1280, 720) as (
                    page, expect, _):
            assert page.locator("img.heatmap").count() == 0
            # the server's warm-up (Captum, the model, one pass) over, as seconds after a
            # start: the timing below is then the overlay's own
            assert heatmaps.warmed.wait(60) and heatmaps.loaded is not None
            t0 = time.perf_counter()
            page.keyboard.press("Shift+H")
            page.wait_for_selector(overlay, timeout=30_000)
            TIMINGS.append(("Shift+H: the first overlay", 1000 * (time.perf_counter() - t0)))
            assert page.get_attribute(overlay, "src").startswith("data:image/png;base64,")
            expect(page.locator("#heatmap-toggle")).to_have_attribute("aria-pressed", "true")
            expect(page.locator("#heatmap-info")).to_contain_text("pipeline model")
            first = page.get_attribute(overlay, "data-path")
            # the cursor moves: the overlay follows it (one overlay, on the image in focus)
            t0 = time.perf_counter()
            page.keyboard.press("l")
            page.wait_for_selector(f"{overlay}:not([data-path='{first}'])", timeout=30_000)
            TIMINGS.append(("the next image's overlay", 1000 * (time.perf_counter() - t0)))
            assert page.locator("#page-grid img.heatmap").count() == 1
            box = page.locator(overlay).bounding_box()
            under = page.locator("#page-grid .thumb.cursor img:not(.heatmap)").bounding_box()
            assert box == under  # exactly over its image
            # the enlarged view gets its own
            page.keyboard.press("e")
            page.wait_for_selector("#zoom img.heatmap:not([hidden])", timeout=30_000)
            page.keyboard.press("Escape")
            expect(page.locator("#zoom img.heatmap")).to_have_count(0)
            # Shift+H again: gone
            page.keyboard.press("Shift+H")
            expect(page.locator("img.heatmap")).to_have_count(0)
            expect(page.locator("#heatmap-toggle")).to_have_attribute("aria-pressed", "false")
    finally:
        heatmaps.close()
    assert {f: f.read_bytes() for f in labels} == before
    assert sorted(paths.decisions.parent.glob("*.csv")) == labels

"""The review page: its server's checks (bad requests change nothing) and, in headless Chromium
driven by Playwright, a box selection labeled from the page and found on disk."""

import http.client
import json
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chimuffin import atomic
from chimuffin.data.sample import write_sample
from chimuffin.labels import Decision, format_decisions, read_decisions
from chimuffin.review.server import Paths, ReviewData, make_server

CLASSES = ["chihuahua", "muffin"]
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def build_repo(root: Path) -> tuple[Paths, Path, dict]:
    """A dataset plus the pipeline outputs the page reads. Pool images 0-2 sit in a group at
    x,y in [0, 1]; everything else at x,y >= 5 (so a box over [0, 1] selects exactly them)."""
    data = root / "dataset"
    write_sample(data, labeled_per_class=3, pool=6, test_per_class=1, seed=3)
    (data / "train128/undefined/escape.jpg").symlink_to("/etc/hostname")
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.jpg"))
    rows = []
    for i, f in enumerate(files):
        top, folder, _ = f.split("/")
        rows.append({"path": f, "split": "test" if top == "test128" else "train",
                     "label": folder, "label_source": "folder", "idx": i,
                     "content_hash": f"h{i}", "width": 64, "height": 64})
    manifest = pd.DataFrame(rows)
    paths = Paths.under(root)
    atomic.write_parquet(paths.prepared / "manifest.parquet", manifest)
    pool = [p for p in manifest.loc[manifest["label"] == "undefined", "path"]
            if not p.endswith("escape.jpg")]
    group = pool[:3]
    xy = np.array([(0.2 + 0.3 * group.index(p), 0.5) if p in group else (5 + i, 5 + i % 3)
                   for i, p in enumerate(manifest["path"])])
    atomic.write_parquet(paths.embed / "pacmap.parquet", manifest[["path", "split", "label"]]
                         .assign(x=xy[:, 0], y=xy[:, 1]))
    atomic.write_parquet(paths.eval / "predictions.parquet", manifest[["path"]].assign(
        prediction="muffin", confidence=0.7))
    queue = pd.DataFrame({"rank": [1, 2], "path": pool[3:5], "kind": "pool", "cluster": 0,
                          "proposed": "chihuahua", "reason": "uncertain"})
    atomic.write_parquet(paths.suggest / "review_queue.parquet", queue)
    return paths, data, {"group": group, "queue": pool[3:5], "pool": pool,
                         "labeled": [f for f in files if "/undefined/" not in f
                                     and f.startswith("train")],
                         "test": [f for f in files if f.startswith("test128")]}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_repo(tmp_path_factory.mktemp("review"))


@pytest.fixture
def review(built):
    paths, data, names = built
    atomic.write_text(paths.decisions, format_decisions(
        [Decision(names["pool"][5], "chihuahua", "auto", "accepted")]))
    server = make_server(ReviewData(paths, CLASSES, data), port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server, paths, names
    server.shutdown()
    server.server_close()


def request(server, method, url, body=None, headers=None):
    conn = http.client.HTTPConnection(*server.server_address, timeout=10)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    payload = body if isinstance(body, bytes | type(None)) else json.dumps(body).encode()
    conn.request(method, url, body=payload, headers=hdrs)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, r.getheader("Content-Type"), data


def post_label(server, body, **kw):
    status, ctype, data = request(server, "POST", "/api/label", body, **kw)
    assert ctype == "application/json"
    return status, json.loads(data)


def test_server_binds_loopback_only_and_ships_its_own_scripts(review):
    server, _, _ = review
    assert server.server_address[0] == "127.0.0.1"
    status, ctype, html = request(server, "GET", "/")
    assert status == 200 and ctype.startswith("text/html")
    assert b"://" not in html  # no CDN, no external anything
    status, _, js = request(server, "GET", "/static/plotly.min.js")
    assert status == 200 and len(js) > 1_000_000 and b"lasso" in js
    assert request(server, "GET", "/static/../server.py")[0] == 404


@pytest.mark.parametrize("body,status,message", [
    ({"paths": ["P0"], "label": "cat"}, 400, "unknown label 'cat'"),
    ({"paths": ["train128/undefined/nope.jpg"], "label": "muffin"}, 404,
     "not an image of the prepared dataset"),
    ({"paths": ["../outside.jpg"], "label": "muffin"}, 403, "path contains '..'"),
    ({"paths": ["/etc/passwd"], "label": "muffin"}, 403, "absolute path"),
    ({"paths": ["train128/undefined/escape.jpg"], "label": "muffin"}, 403,
     "outside the dataset"),
    ({"paths": ["T0"], "label": "muffin"}, 403, "a test image"),
    ({"paths": ["P0", "train128/undefined/nope.jpg"], "label": "muffin"}, 404, "nope.jpg"),
    ({"paths": [], "label": "muffin"}, 400, "non-empty list"),
    ({"paths": "P0", "label": "muffin"}, 400, "non-empty list"),
    ({"paths": [7], "label": "muffin"}, 400, "path must be a string"),
    ({"label": "muffin"}, 400, 'expected a JSON object {"paths"'),
    (b"{not json", 400, "body is not JSON"),
])
def test_bad_label_requests_get_a_json_error_and_change_nothing(review, body, status, message):
    server, paths, names = review
    if isinstance(body, dict) and isinstance(body.get("paths"), list):
        real = {"P0": names["group"][0], "T0": names["test"][0]}
        body = {**body, "paths": [real.get(p, p) for p in body["paths"]]}
    before = paths.decisions.read_bytes()
    got_status, got = post_label(server, body)
    assert (got_status, got["ok"]) == (status, False) and message in got["error"]
    assert paths.decisions.read_bytes() == before


def test_cross_site_requests_are_refused(review):
    server, paths, names = review
    before = paths.decisions.read_bytes()
    form = f"paths={names['group'][0]}&label=muffin".encode()
    status, _, data = request(server, "POST", "/api/label", form,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and b"application/json" in data
    status, got = post_label(server, {"paths": [names["group"][0]], "label": "muffin"},
                             headers={"Host": "attacker.example:80"})
    assert status == 403 and "Host" in got["error"]
    assert paths.decisions.read_bytes() == before


def test_thumbnails_only_for_dataset_images(review):
    server, _, names = review
    ok = names["group"][0]
    status, ctype, data = request(server, "GET", f"/thumb?path={ok}")
    assert status == 200 and ctype == "image/jpeg" and data[:2] == b"\xff\xd8"
    for bad, code in (("../../etc/passwd", 403), ("/etc/passwd", 403),
                      ("train128/undefined/escape.jpg", 403), ("train128/x/none.jpg", 404)):
        status, ctype, data = request(server, "GET", f"/thumb?path={bad}")
        assert status == code and ctype == "application/json", bad
        assert b"/etc/hostname" not in data


def test_label_action_writes_human_decisions_at_once_and_returns_counts(review):
    server, paths, names = review
    p5 = names["pool"][5]  # has an `auto` decision: a person's answer replaces it
    status, got = post_label(server, {"paths": [names["group"][0], p5], "label": "muffin"})
    assert status == 200 and got["ok"] and got["changed"] == 2
    rows = {d.path: d for d in read_decisions(paths.decisions, CLASSES)}
    assert {(d.label, d.source) for d in rows.values()} == {("muffin", "human")}
    assert set(rows) == {names["group"][0], p5}
    assert got["counts"]["labels"]["muffin"] == 3 + 2 and got["counts"]["by_source"] == \
        {"human": 2}
    status, state_json, data = request(server, "GET", "/api/state")
    state = json.loads(data)
    i = state["points"]["path"].index(names["group"][0])
    assert state["points"]["label"][i] == "muffin"
    assert names["test"][0] not in state["points"]["path"]  # test images are not offered


def browser_or_skip():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (`make browser`)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed")
    return sync_playwright, expect


@pytest.mark.slow
def test_page_box_select_label_and_file_on_disk(review):
    sync_playwright, expect = browser_or_skip()
    server, paths, names = review
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    requests, errors = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 850})
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)

        # box selection with the mouse, through plotly's own Box Select tool
        page.hover("#plot")
        page.click('.modebar-btn[data-title="Box Select"]')
        box = page.evaluate("""() => {
            const gd = document.getElementById('plot'), L = gd._fullLayout;
            const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
            const px = (x, y) => [r.left + L.xaxis.l2p(x), r.top + L.yaxis.l2p(y)];
            const [a, b] = [px(0.2, 0.5), px(0.8, 0.5)];  // the group's first and last point
            return [[a[0] - 15, a[1] + 15], [b[0] + 15, b[1] - 15]];
        }""")
        (x0, y0), (x1, y1) = box
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
        page.mouse.move(x1, y1, steps=5)
        page.mouse.up()
        # (locator assertions, not wait_for_function: the page's CSP forbids eval)
        expect(page.locator("#selection-info")).to_have_text(re.compile("^3 selected"))
        shown = page.eval_on_selector_all("#selection .thumb", "els => els.map(e => e.title)")
        assert sorted(shown) == sorted(names["group"])

        # leave one out by clicking its thumbnail, then label the rest muffin with key 2
        page.click(f'#selection .thumb[data-path="{names["group"][2]}"]')
        assert page.text_content("#selection-info").startswith("2 selected (1 left out)")
        page.keyboard.press("2")
        expect(page.locator("#status")).to_have_text(re.compile("^saved: 2 image"))
        on_disk = {d.path: (d.label, d.source) for d in read_decisions(paths.decisions,
                                                                       CLASSES)}
        assert on_disk == {names["group"][0]: ("muffin", "human"),
                           names["group"][1]: ("muffin", "human"),
                           names["pool"][5]: ("chihuahua", "auto")}
        assert "muffin 5" in page.text_content("#counts")

        # a review-queue cluster, then the remove button
        page.click(".cluster button")
        assert page.text_content("#selection-info").startswith("2 selected")
        page.click('#buttons button[data-label="remove"]')
        expect(page.locator(".cluster.done")).to_have_count(1)
        on_disk = {d.path: d.label for d in read_decisions(paths.decisions, CLASSES)}
        assert [on_disk[p] for p in names["queue"]] == ["remove", "remove"]
        assert "remove 2" in page.text_content("#counts")
        browser.close()
    assert errors == []
    assert requests and all(r.startswith(url) for r in requests)  # nothing left the machine


def test_missing_pipeline_outputs_name_the_stage(tmp_path):
    paths, data, _ = build_repo(tmp_path)
    shutil.rmtree(paths.embed)
    from chimuffin.errors import UserError

    with pytest.raises(UserError, match="pacmap.parquet: not found; run `dvc repro embed`"):
        ReviewData(paths, CLASSES, data)

"""The review page: its server's checks and actions (bad requests change nothing; verify, undo,
clear, confirmation before overwriting, progress), its HTTP hardening, the command, and in
headless Chromium driven by Playwright, the verify view by keyboard and the plot view."""

import contextlib
import http.client
import json
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from chimuffin import atomic, cli
from chimuffin.data.sample import write_sample
from chimuffin.errors import UserError
from chimuffin.labels import locked
from chimuffin.labels.rows import Decision, format_decisions, read_decisions
from chimuffin.review import history
from chimuffin.review.data import Paths, RequestError, ReviewData
from chimuffin.review.server import make_server
from tests.helpers.repo import default_params_dict

CLASSES = ["chihuahua", "muffin"]
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def write_pages(path: Path, pages: list[tuple[str, list[tuple[str, float]]]]) -> None:
    """pages.parquet by hand, in the suggest stage's schema: [(label, [(path, score)])]."""
    rows = []
    for page, (label, images) in enumerate(pages):
        mean = float(np.mean([s for _, s in images]))
        for pos, (p, score) in enumerate(images):
            rows.append({"page": page, "position": pos, "path": p, "label": label,
                         "score": score, "page_score": mean, "model_label": label,
                         "knn_label": label if pos else "muffin", "agree": pos > 0})
    df = pd.DataFrame(rows).astype({"page": "int64", "position": "int64"})
    atomic.write_parquet(path, df)


def build_repo(root: Path) -> tuple[Paths, Path, dict]:
    """A dataset plus the pipeline outputs the page reads. Pool images 0-2 sit in a group at
    x,y in [0, 1] and one seed image just above them at (0.5, 2.5); everything else at
    x,y >= 5 (so a box over [0, 1] selects exactly the group). Pages: 0 = pool 0-2
    (chihuahua), 1 = pool 3-4 (muffin); pool 5 has an `auto` decision (on no page)."""
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
    labeled = [f for f in files if "/undefined/" not in f and f.startswith("train")]
    group, seed = pool[:3], labeled[0]

    def xy(i, p):
        if p in group:
            return 0.2 + 0.3 * group.index(p), 0.5
        return (0.5, 2.5) if p == seed else (5 + i, 5 + i % 3)

    coords = np.array([xy(i, p) for i, p in enumerate(manifest["path"])])
    atomic.write_parquet(paths.embed / "pacmap.parquet", manifest[["path", "split", "label"]]
                         .assign(x=coords[:, 0], y=coords[:, 1]))
    atomic.write_parquet(paths.eval / "predictions.parquet", manifest[["path"]].assign(
        prediction="muffin", confidence=0.7))
    queue = pd.DataFrame({"rank": [1, 2], "path": pool[3:5], "kind": "pool", "cluster": 0,
                          "proposed": ["chihuahua", "muffin"], "reason": "uncertain"})
    atomic.write_parquet(paths.suggest / "review_queue.parquet", queue)
    write_pages(paths.suggest / "pages.parquet",
                [("chihuahua", [(pool[0], 0.9), (pool[1], 0.8), (pool[2], 0.7)]),
                 ("muffin", [(pool[3], 0.6), (pool[4], 0.65)])])
    return paths, data, {"group": group, "queue": pool[3:5], "pool": pool, "seed": seed,
                         "labeled": labeled,
                         "test": [f for f in files if f.startswith("test128")]}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_repo(tmp_path_factory.mktemp("review"))


def fresh_files(paths: Paths, names: dict) -> None:
    atomic.write_text(paths.decisions, format_decisions(
        [Decision(names["pool"][5], "chihuahua", "auto", "accepted")]))
    paths.state.unlink(missing_ok=True)


@contextlib.contextmanager
def serving(data: ReviewData, port: int = 0, **kw):
    server = make_server(data, port=port, **kw)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def review(built):
    paths, data, names = built
    fresh_files(paths, names)
    with serving(ReviewData(paths, CLASSES, data)) as server:
        yield server, paths, names


def request(server, method, url, body=None, headers=None):
    conn = http.client.HTTPConnection(*server.server_address, timeout=10)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    payload = body if isinstance(body, bytes | type(None)) else json.dumps(body).encode()
    conn.request(method, url, body=payload, headers=hdrs)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, r.getheader("Content-Type"), data


def post(server, action, body, **kw):
    status, ctype, data = request(server, "POST", f"/api/{action}", body, **kw)
    assert ctype == "application/json"
    return status, json.loads(data)


def post_label(server, body, **kw):
    return post(server, "label", body, **kw)


def on_disk(paths) -> dict:
    return {d.path: (d.label, d.source, d.note) for d in read_decisions(paths.decisions,
                                                                       CLASSES)}


# --- the server: checks, actions -------------------------------------------------------------

def test_server_binds_loopback_only_and_ships_its_own_scripts(review):
    server, _, _ = review
    assert server.server_address[0] == "127.0.0.1"
    status, ctype, html = request(server, "GET", "/")
    assert status == 200 and ctype.startswith("text/html")
    assert b"://" not in html  # no CDN, no external anything
    status, _, js = request(server, "GET", "/static/plotly.min.js")
    assert status == 200 and len(js) > 1_000_000 and b"lasso" in js
    for name in ("app.js", "verify.js", "app.css"):
        status, _, body = request(server, "GET", f"/static/{name}")
        assert status == 200 and b"://" not in body, name
    assert request(server, "GET", "/static/../server.py")[0] == 404


@pytest.mark.parametrize("action,body,status,message", [
    ("label", {"paths": ["P0"], "label": "cat"}, 400, "unknown label 'cat'"),
    ("label", {"paths": ["train128/undefined/nope.jpg"], "label": "muffin"}, 404,
     "not an image of the prepared dataset"),
    ("label", {"paths": ["../outside.jpg"], "label": "muffin"}, 403, "path contains '..'"),
    ("label", {"paths": ["/etc/passwd"], "label": "muffin"}, 403, "absolute path"),
    ("label", {"paths": ["train128/undefined/escape.jpg"], "label": "muffin"}, 403,
     "outside the dataset"),
    ("label", {"paths": ["T0"], "label": "muffin"}, 403, "a test image"),
    ("label", {"paths": ["P0", "train128/undefined/nope.jpg"], "label": "muffin"}, 404,
     "nope.jpg"),
    ("label", {"paths": [], "label": "muffin"}, 400, "non-empty list"),
    ("label", {"paths": "P0", "label": "muffin"}, 400, "non-empty list"),
    ("label", {"paths": [7], "label": "muffin"}, 400, "path must be a string"),
    ("label", {"label": "muffin"}, 400, 'expected a JSON object {"paths"'),
    ("label", {"paths": ["P0"], "label": "muffin", "confirm": "yes"}, 400,
     "confirm must be true or false"),
    ("label", {"paths": ["P0"], "label": "muffin", "extra": 1}, 400, "expected a JSON object"),
    ("label", b"{not json", 400, "body is not JSON"),
    ("verify", {"page": 7, "exceptions": {}}, 404, "no page 7"),
    ("verify", {"page": True, "exceptions": {}}, 404, "no page True"),
    ("verify", {"page": 0, "exceptions": {"P3": "muffin"}}, 400, "not on page 0"),
    ("verify", {"page": 0, "exceptions": {"P0": "cat"}}, 400, "unknown label 'cat'"),
    ("verify", {"page": 0, "exceptions": ["P0"]}, 400, "exceptions must be an object"),
    ("verify", {"page": 0}, 400, 'expected a JSON object {"page"'),
    ("accept-cluster", {"cluster": 9}, 404, "no review-queue cluster 9"),
    ("clear", {"paths": ["T0"]}, 403, "a test image"),
    ("undo", {"please": True}, 400, "expected a JSON object {}"),
    ("nope", {}, 404, "no such action"),
])
def test_bad_requests_get_a_json_error_and_change_nothing(review, action, body, status,
                                                           message):
    server, paths, names = review
    real = {"P0": names["group"][0], "P3": names["queue"][0], "T0": names["test"][0]}
    if isinstance(body, dict):
        body = {k: ([real.get(p, p) for p in v] if isinstance(v, list) else
                    {real.get(p, p): lbl for p, lbl in v.items()} if isinstance(v, dict) else v)
                for k, v in body.items()}
    before = paths.decisions.read_bytes()
    got_status, got = post(server, action, body)
    assert (got_status, got["ok"]) == (status, False) and message in got["error"]
    assert paths.decisions.read_bytes() == before
    assert not paths.state.exists()  # nothing recorded either


def test_cross_site_requests_are_refused(review):
    server, paths, names = review
    before = paths.decisions.read_bytes()
    form = f"paths={names['group'][0]}&label=muffin".encode()
    status, _, data = request(server, "POST", "/api/label", form,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and b"application/json" in data
    body = {"paths": [names["group"][0]], "label": "muffin"}
    status, got = post_label(server, body, headers={"Host": "attacker.example:80"})
    assert status == 403 and "Host" in got["error"]
    port = server.server_address[1]
    for origin in ("http://attacker.example", f"http://127.0.0.1:{port + 1}", "null"):
        status, got = post_label(server, body, headers={"Origin": origin})
        assert status == 403 and "another site" in got["error"], origin
    assert paths.decisions.read_bytes() == before
    # the page's own origin (either name), or no Origin at all (a script on this machine)
    for headers in ({"Origin": f"http://127.0.0.1:{port}"}, {"Origin": f"http://localhost:{port}"},
                    {}):
        assert post_label(server, body, headers=headers)[0] == 200


def test_a_slow_body_times_out_with_408(built):
    paths, data, names = built
    fresh_files(paths, names)
    before = paths.decisions.read_bytes()
    with serving(ReviewData(paths, CLASSES, data), timeout=0.5) as server:
        body = json.dumps({"paths": [names["group"][0]], "label": "muffin"}).encode()
        with socket.create_connection(server.server_address, timeout=10) as s:
            s.sendall(b"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\n"
                      + f"Content-Length: {len(body) + 50}\r\n\r\n".encode() + body)
            started = time.monotonic()
            answer = b"".join(iter(lambda: s.recv(4096), b""))  # until the server closes
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.0 408") and b"did not arrive" in answer
        assert waited < 5
        # a client that trickles bytes is held to the same deadline for the whole body
        with socket.create_connection(server.server_address, timeout=10) as s:
            s.sendall(b"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
            s.settimeout(0.2)
            answer = b""
            for _ in range(50):  # a byte every 0.2 s until the answer comes
                s.sendall(b" ")
                with contextlib.suppress(TimeoutError):
                    answer = s.recv(4096)
                    break
            assert answer.startswith(b"HTTP/1.0 408")
        assert post_label(server, json.loads(body))[0] == 200  # the server still answers
    assert paths.decisions.read_bytes() != before


def test_a_trickled_header_is_cut_off_at_the_deadline_for_all_of_it(built):
    """One byte every 0.25 s never lets a per-read timeout of 1 s expire; the server must
    still close the connection when the whole header has not arrived within 1 s."""
    paths, data, names = built
    fresh_files(paths, names)
    with serving(ReviewData(paths, CLASSES, data), timeout=1.0) as server:
        request_bytes = b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
        with socket.create_connection(server.server_address, timeout=10) as s:
            s.settimeout(0.25)
            started, closed_after = time.monotonic(), None
            for byte in request_bytes[:24]:  # at most 24 x 0.25 s = 6 s
                try:
                    s.sendall(bytes([byte]))
                    if s.recv(4096) == b"":
                        closed_after = time.monotonic() - started
                        break
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    closed_after = time.monotonic() - started
                    break
        assert closed_after is not None, "the server kept the trickling client past 6 s"
        assert closed_after < 3.0
        assert request(server, "GET", "/api/state")[0] == 200  # and still answers


@pytest.mark.parametrize("raw,message", [
    (b"[" * 100_000 + b"]" * 100_000, "body is not usable JSON: nested too deeply"),
    (b'{"page": ' + b"9" * 5000 + b', "exceptions": {}}', "body is not JSON: Exceeds the limit"),
])
def test_json_too_deep_or_a_number_too_long_is_a_400(review, raw, message, capfd):
    server, paths, names = review
    before = paths.decisions.read_bytes()
    status, got = post(server, "verify", raw)
    assert status == 400 and got["error"].startswith(message)
    assert paths.decisions.read_bytes() == before
    assert "Traceback" not in capfd.readouterr().err


def test_thumbnails_only_for_dataset_images(review):
    server, _, names = review
    ok = names["group"][0]
    status, ctype, data = request(server, "GET", f"/thumb?path={ok}")
    assert status == 200 and ctype == "image/jpeg" and data[:2] == b"\xff\xd8"
    assert data == (Path(server.RequestHandlerClass.data.images.data_dir) / ok).read_bytes()
    for bad, code in (("../../etc/passwd", 403), ("/etc/passwd", 403),
                      ("train128/undefined/escape.jpg", 403), ("train128/x/none.jpg", 404)):
        status, ctype, data = request(server, "GET", f"/thumb?path={bad}")
        assert status == code and ctype == "application/json", bad
        assert b"/etc/hostname" not in data


def test_label_action_writes_human_decisions_at_once_and_returns_counts(review):
    server, paths, names = review
    p5 = names["pool"][5]  # an `auto` chihuahua: a person's muffin changes its label
    status, got = post_label(server, {"paths": [names["group"][0], p5], "label": "muffin"})
    assert status == 409 and got["needs_confirm"] and got["overwrites"] == 1
    assert got["paths"] == [p5]
    status, got = post_label(server, {"paths": [names["group"][0], p5], "label": "muffin",
                                      "confirm": True})
    assert status == 200 and got["ok"] and got["changed"] == 2
    rows = on_disk(paths)
    assert {(label, source) for label, source, _ in rows.values()} == {("muffin", "human")}
    assert set(rows) == {names["group"][0], p5}
    assert got["counts"]["labels"]["muffin"] == 3 + 2 and got["counts"]["by_source"] == \
        {"human": 2}
    assert got["changes"] == {names["group"][0]: ["muffin", "human"], p5: ["muffin", "human"]}
    status, _, data = request(server, "GET", "/api/state")
    state = json.loads(data)
    i = state["points"]["path"].index(names["group"][0])
    assert state["points"]["label"][i] == "muffin" and state["points"]["base"][i] == "undefined"
    assert state["decisions"][p5] == ["muffin", "human"]
    assert names["test"][0] not in state["points"]["path"]  # test images are not offered


def test_changing_a_seed_image_needs_confirmation(review):
    server, paths, names = review
    seed = names["seed"]
    folder = seed.split("/")[1]
    other = next(c for c in CLASSES if c != folder)
    # the same label as its folder changes nothing a person gave: no question
    assert post_label(server, {"paths": [seed], "label": folder})[0] == 200
    before = paths.decisions.read_bytes()
    other_seed = next(p for p in names["labeled"] if p != seed and folder in p)
    status, got = post_label(server, {"paths": [other_seed, names["group"][0]], "label": other})
    assert status == 409 and got["overwrites"] == 1 and got["paths"] == [other_seed]
    assert paths.decisions.read_bytes() == before
    # a person answered the seed (the row above): a bulk action leaves it, and says so
    status, got = post_label(server, {"paths": [seed, names["group"][0]], "label": other})
    assert status == 200 and got["skipped"] == {"answered": [seed]}
    assert on_disk(paths)[seed][:2] == (folder, "human")
    assert post_label(server, {"paths": [seed], "label": other, "confirm": True})[0] == 200
    assert on_disk(paths)[seed][:2] == (other, "human")


def test_verify_a_page_with_exceptions_then_undo_byte_exact(review):
    server, paths, names = review
    g = names["group"]
    before = paths.decisions.read_bytes()
    status, got = post(server, "verify", {"page": 0, "exceptions": {g[1]: "muffin",
                                                                    g[2]: "remove"}})
    assert status == 200 and got["changed"] == 3
    note = "review page: page 0"
    assert on_disk(paths) == {g[0]: ("chihuahua", "human", note),
                              g[1]: ("muffin", "human", note), g[2]: ("remove", "human", note),
                              names["pool"][5]: ("chihuahua", "auto", "accepted")}
    assert got["undo"] == {"depth": 1, "last": "page 0: 3 image(s), 2 exception(s)"}
    # sorted rows, notes naming the page: the diff reads as the page verified
    lines = paths.decisions.read_text().splitlines()
    assert lines[1:] == sorted(lines[1:])
    status, got = post(server, "undo", {})
    assert status == 200 and got["undone"] == {
        "kind": "verify", "what": "page 0: 3 image(s), 2 exception(s)", "page": 0,
        "exceptions": {g[1]: "muffin", g[2]: "remove"}}
    assert got["changes"] == {g[0]: None, g[1]: None, g[2]: None}
    assert paths.decisions.read_bytes() == before
    status, got = post(server, "undo", {})
    assert status == 409 and "nothing to undo" in got["error"]


def test_undo_refused_after_an_outside_edit(review):
    server, paths, names = review
    assert post(server, "verify", {"page": 1, "exceptions": {}})[0] == 200
    edited = paths.decisions.read_text() + f"{names['group'][0]},muffin,human,by hand\n"
    paths.decisions.write_text(edited)
    status, got = post(server, "undo", {})
    assert status == 409 and "changed by something else" in got["error"]
    assert paths.decisions.read_text() == edited


def test_undo_survives_a_new_server_and_restores_a_hand_edited_file(built):
    paths, data, names = built
    fresh_files(paths, names)
    hand = ("path,label,source,note\r\n"
            f"{names['pool'][5]},chihuahua,auto,accepted\r\n").encode()
    paths.decisions.write_bytes(hand)
    with serving(ReviewData(paths, CLASSES, data)) as server:
        assert post(server, "verify", {"page": 0, "exceptions": {}})[0] == 200
        assert post(server, "clear", {"paths": [names["group"][0]]})[1]["changed"] == 1
    assert paths.state.is_file()
    with serving(ReviewData(paths, CLASSES, data)) as server:  # a restart
        status, got = post(server, "undo", {})
        assert status == 200 and got["undone"]["kind"] == "clear"
        assert on_disk(paths)[names["group"][0]][:2] == ("chihuahua", "human")
        status, got = post(server, "undo", {})
        assert status == 200 and got["undone"]["page"] == 0
    assert paths.decisions.read_bytes() == hand


class Crash(BaseException):
    """A kill -9 at this point: nothing of the action after it runs."""


def crash_at(monkeypatch, module, name):
    def die(*args, **kwargs):
        raise Crash
    monkeypatch.setattr(module, name, die)


@pytest.mark.parametrize("where", ["before the rename", "after the rename"])
def test_a_crash_during_an_action_keeps_history_and_file_consistent(built, monkeypatch, where):
    paths, data, names = built
    fresh_files(paths, names)
    first = paths.decisions.read_bytes()
    rd = ReviewData(paths, CLASSES, data)
    assert rd.verify({"page": 0, "exceptions": {}})["changed"] == 3
    after_first = paths.decisions.read_bytes()
    with monkeypatch.context() as m:
        crash_at(m, locked, "_check_unchanged" if where == "before the rename"
                 else "_carry_over_appends")
        with pytest.raises(Crash):
            rd.verify({"page": 1, "exceptions": {}})
    renamed = paths.decisions.read_bytes() != after_first
    assert renamed == (where == "after the rename")
    rd = ReviewData(paths, CLASSES, data)  # a restart
    expected_depth = 1 if where == "before the rename" else 2
    assert rd.state()["undo"]["depth"] == expected_depth
    if where == "after the rename":
        assert rd.undo({})["undone"]["page"] == 1
        assert paths.decisions.read_bytes() == after_first
    assert rd.undo({})["undone"]["page"] == 0
    assert paths.decisions.read_bytes() == first
    # and new actions after it undo as well
    rd.writes.clear({"paths": [names["pool"][5]]})
    assert rd.undo({})["undone"]["kind"] == "clear"
    assert paths.decisions.read_bytes() == first


def test_a_crash_during_an_undo_keeps_history_and_file_consistent(built, monkeypatch):
    paths, data, names = built
    fresh_files(paths, names)
    first = paths.decisions.read_bytes()
    rd = ReviewData(paths, CLASSES, data)
    rd.verify({"page": 0, "exceptions": {}})
    after_first = paths.decisions.read_bytes()
    rd.verify({"page": 1, "exceptions": {}})
    with monkeypatch.context() as m:
        crash_at(m, history, "pop_undo")  # the file is back, its record not yet dropped
        with pytest.raises(Crash):
            rd.undo({})
    assert paths.decisions.read_bytes() == after_first
    rd = ReviewData(paths, CLASSES, data)  # a restart: the undone record is dropped
    assert rd.state()["undo"]["depth"] == 1
    assert rd.undo({})["undone"]["page"] == 0
    assert paths.decisions.read_bytes() == first


def test_undo_of_the_first_action_removes_a_file_that_was_not_there(built):
    paths, data, names = built
    fresh_files(paths, names)
    paths.decisions.unlink()
    with serving(ReviewData(paths, CLASSES, data)) as server:
        assert post(server, "verify", {"page": 1, "exceptions": {}})[0] == 200
        assert post(server, "undo", {})[0] == 200
    assert not paths.decisions.exists()


def test_a_validation_label_is_never_changed_here(tmp_path):
    paths, data, names = build_repo(tmp_path)
    manifest = pd.read_parquet(paths.prepared / "manifest.parquet")
    v = names["pool"][0]
    manifest.loc[manifest["path"] == v, ["split", "label", "label_source"]] = [
        "val", "muffin", "validation"]
    atomic.write_parquet(paths.prepared / "manifest.parquet", manifest)
    fresh_files(paths, names)
    before = paths.decisions.read_bytes()
    rd = ReviewData(paths, CLASSES, data)
    for label in ("chihuahua", "remove"):
        with pytest.raises(RequestError, match=f"{v}.*is a validation image") as e:
            rd.writes.label({"paths": [names["pool"][1], v], "label": label, "confirm": True})
        assert e.value.status == 403
    assert paths.decisions.read_bytes() == before
    assert rd.writes.label({"paths": [v], "label": "muffin"})["changed"] == 1  # the same label


def test_clear_removes_only_the_named_rows(review):
    server, paths, names = review
    g = names["group"]
    post(server, "verify", {"page": 0, "exceptions": {}})
    status, got = post(server, "clear", {"paths": [g[0], g[1], names["seed"]]})
    assert status == 200 and got["changed"] == 2 and got["changes"] == {g[0]: None, g[1]: None}
    assert set(on_disk(paths)) == {g[2], names["pool"][5]}
    assert post(server, "clear", {"paths": [g[0]]})[1]["changed"] == 0  # nothing left there


def test_accept_cluster_gives_each_image_its_own_proposal(review):
    server, paths, names = review
    q = names["queue"]
    status, got = post(server, "accept-cluster", {"cluster": 0})
    assert status == 200 and got["changed"] == 2
    rows = on_disk(paths)
    assert (rows[q[0]], rows[q[1]]) == (("chihuahua", "human", "review page: queue cluster 0"),
                                        ("muffin", "human", "review page: queue cluster 0"))


def test_progress_and_pace_from_the_label_file_and_the_state_file(built):
    paths, data, names = built
    fresh_files(paths, names)
    clock = iter([1000.0, 1030.0])
    with serving(ReviewData(paths, CLASSES, data, clock=lambda: next(clock))) as server:
        p = json.loads(request(server, "GET", "/api/state")[2])["progress"]
        assert (p["pool"], p["verified"], p["left"], p["pages"], p["pages_left"],
                p["off_pages"], p["minutes_left"]) == (7, 0, 5, 2, 2, 2, None)
        post(server, "verify", {"page": 0, "exceptions": {names["group"][2]: "muffin"}})
        p = post(server, "verify", {"page": 1, "exceptions": {}})[1]["progress"]
    assert p["verified"] == 5 and p["verified_by_label"] == {
        "chihuahua": 2, "muffin": 3, "undefined": 0, "remove": 0}
    # pool 5 (decided by a tool) and the symlink the fixture plants are on no page
    assert (p["left"], p["pages_left"], p["off_pages"]) == (0, 0, 2)
    assert p["per_minute"] == 4.0 and p["minutes_left"] == 0.0  # page 1: 2 images in 30 s
    with serving(ReviewData(paths, CLASSES, data)) as server:  # a restart keeps the pace
        assert json.loads(request(server, "GET", "/api/state")[2])["progress"] == p


def test_without_pages_the_verify_view_says_why_and_labels_still_work(built, tmp_path):
    paths, data, names = built
    fresh_files(paths, names)
    pages = paths.suggest / "pages.parquet"
    saved = tmp_path / "pages.parquet"
    shutil.copy(pages, saved)
    try:
        pages.unlink()
        with serving(ReviewData(paths, CLASSES, data)) as server:
            state = json.loads(request(server, "GET", "/api/state")[2])
            assert state["pages"]["list"] == [] and \
                "run `dvc repro suggest`" in state["pages"]["error"]
            assert post(server, "verify", {"page": 0, "exceptions": {}})[0] == 404
            assert post_label(server, {"paths": [names["group"][0]], "label": "muffin"})[0] \
                == 200
        pd.read_parquet(saved).drop(columns="agree").to_parquet(pages)
        state = ReviewData(paths, CLASSES, data).state()
        assert "column 'agree' missing" in state["pages"]["error"]
    finally:
        shutil.copy(saved, pages)


def test_missing_pipeline_outputs_name_the_stage(tmp_path):
    paths, data, _ = build_repo(tmp_path)
    shutil.rmtree(paths.embed)
    with pytest.raises(UserError, match=r"pacmap.parquet: PaCMAP coordinates not found "
                       r"\(run `dvc repro embed`\)"):
        ReviewData(paths, CLASSES, data)


# --- the command -------------------------------------------------------------------------

def test_command_on_a_busy_port_says_so_in_one_line(built, monkeypatch, capsys):
    paths, data, names = built
    fresh_files(paths, names)
    params = default_params_dict()
    params["prepare"]["data_dir"] = str(data)
    (paths.root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(paths.root)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["review", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"port {port}" in err and "--port 0" in err
    assert "Traceback" not in err


def test_command_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["review", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 8765)", "(default: params.yaml)",
                    "(default: data/labels/decisions.csv)",
                    "(default: .chimuffin/review-state.json)", "(default: False)"):
        assert default in out
    assert "verify suggested labels page by page" in out


# --- in the browser ----------------------------------------------------------------------

def browser_or_skip():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (`make browser`)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed")
    return sync_playwright, expect


@contextlib.contextmanager
def browser_page(url):
    """A page in headless Chromium that records every request and every error."""
    sync_playwright, expect = browser_or_skip()
    seen = {"requests": [], "errors": [], "dialogs": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 850})
        page.on("request", lambda r: seen["requests"].append(r.url))
        page.on("pageerror", lambda e: seen["errors"].append(str(e)))
        page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error"
                else None)
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        yield page, expect, seen
        browser.close()
    assert seen["errors"] == []
    # nothing left the machine: every request went to this server on 127.0.0.1
    assert seen["requests"] and all(r.startswith(url.split("#")[0]) for r in seen["requests"])


@pytest.mark.slow
def test_verify_a_page_by_keyboard_undo_and_reload(review):
    server, paths, names = review
    g, p5 = names["group"], names["pool"][5]
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    start = paths.decisions.read_bytes()
    note = "review page: page 0"
    with browser_page(url) as (page, expect, seen):
        head = page.locator("#page-head")
        expect(head).to_have_text(re.compile(r"^Page 0 proposes chihuahua · page score 0\.80"))
        thumbs = page.locator("#page-grid .thumb img")
        expect(thumbs).to_have_count(3)
        for i in range(3):
            box = thumbs.nth(i).bounding_box()
            assert box["width"] >= 112 and box["height"] >= 112
        assert "Enter" in page.text_content("#key-map")  # the key map is on the page

        # keyboard only: cursor right, mark the other class; right, mark undefined
        page.keyboard.press("ArrowRight")
        page.keyboard.press("o")
        page.keyboard.press("l")
        page.keyboard.press("u")
        expect(page.locator("#page-grid .thumb.marked")).to_have_count(2)
        # the enlarged view shows the image at the cursor large
        page.keyboard.press("e")
        zoom = page.locator("#zoom-img")
        expect(zoom).to_be_visible()
        expect(zoom).to_have_attribute("alt", g[2])
        assert zoom.bounding_box()["width"] >= 300
        page.keyboard.press("Escape")
        expect(zoom).to_be_hidden()
        assert paths.decisions.read_bytes() == start  # marks are not written until accepted

        page.keyboard.press("Enter")
        expect(head).to_have_text(re.compile("^Page 1 proposes muffin"))
        assert on_disk(paths) == {g[0]: ("chihuahua", "human", note),
                                  g[1]: ("muffin", "human", note),
                                  g[2]: ("undefined", "human", note),
                                  p5: ("chihuahua", "auto", "accepted")}
        accepted = paths.decisions.read_bytes()
        expect(page.locator("#progress")).to_have_attribute("data-verified", "3")

        # undo: the file is back byte for byte, the page is back with its marks
        page.keyboard.press("z")
        expect(page.locator("#status")).to_have_text(re.compile("^undone: page 0"))
        assert paths.decisions.read_bytes() == start
        expect(head).to_have_text(re.compile("^Page 0 proposes chihuahua"))
        expect(page.locator("#page-grid .thumb.marked")).to_have_count(2)
        page.keyboard.press("Enter")
        expect(head).to_have_text(re.compile("^Page 1"))
        assert paths.decisions.read_bytes() == accepted

        # a reload keeps the progress (from the label file) and the place (from the address)
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        expect(head).to_have_text(re.compile("^Page 1 proposes muffin"))
        progress = page.locator("#progress")
        expect(progress).to_have_attribute("data-verified", "3")
        expect(progress).to_have_attribute("data-pages-left", "1")
        expect(progress).to_contain_text("left: 2 images on 1 of 2 pages (muffin 2)")

        # back to page 0: it shows as verified with its exceptions; clear one decision, undo
        page.keyboard.press("p")
        expect(head).to_contain_text("✓ verified")
        expect(page.locator("#page-grid .thumb.marked")).to_have_count(2)
        page.keyboard.press("c")
        expect(page.locator("#status")).to_have_text(re.compile("^cleared the decision"))
        assert g[0] not in on_disk(paths)
        page.keyboard.press("Control+z")
        expect(page.locator("#status")).to_have_text(re.compile("^undone: cleared"))
        assert paths.decisions.read_bytes() == accepted

        # clicks do the same as keys: a click marks the other class
        page.keyboard.press("n")
        page.click(f'#page-grid .thumb[data-path="{names["queue"][0]}"]')
        expect(page.locator(f'#page-grid .thumb[data-path="{names["queue"][0]}"]')) \
            .to_have_attribute("data-mark", "chihuahua")

        # filters only hide pages (page 0 scores 0.80, page 1 0.625)
        page.locator("#filter-min").fill("0.7")
        page.locator("#filter-min").blur()
        expect(head).to_have_text(re.compile("^Page 0 .* 1 of 1 pages shown"))
        page.select_option("#filter-class", "muffin")
        expect(head).to_have_text("no page matches the filter")
        page.locator("#filter-min").fill("0.5")
        page.locator("#filter-min").blur()
        expect(head).to_have_text(re.compile("^Page 1 proposes muffin"))


@pytest.mark.slow
def test_plot_view_box_select_confirm_seeds_and_queue(review):
    server, paths, names = review
    url = f"http://127.0.0.1:{server.server_address[1]}/#plot"
    with browser_page(url) as (page, expect, seen):
        page.wait_for_selector("body[data-plot='1']")
        # offline: no cloud / Chart Studio button or link
        titles = page.eval_on_selector_all(".modebar-btn", "els => els.map(e => e.dataset.title)")
        assert titles and not [t for t in titles if re.search("cloud|chart studio", t, re.I)]
        assert page.locator("a.js-plot-link-container").count() == 0

        def box_select(x0, x1, y0, y1):
            page.hover("#plot")
            page.click('.modebar-btn[data-title="Box Select"]')
            corners = page.evaluate("""([x0, x1, y0, y1]) => {
                const gd = document.getElementById('plot'), L = gd._fullLayout;
                const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
                const px = (x, y) => [r.left + L.xaxis.l2p(x), r.top + L.yaxis.l2p(y)];
                const [a, b] = [px(x0, y0), px(x1, y1)];
                return [[a[0] - 15, a[1] + 15], [b[0] + 15, b[1] - 15]];
            }""", [x0, x1, y0, y1])
            (a0, b0), (a1, b1) = corners
            page.mouse.move(a0, b0)
            page.mouse.down()
            page.mouse.move((a0 + a1) / 2, (b0 + b1) / 2, steps=5)
            page.mouse.move(a1, b1, steps=5)
            page.mouse.up()

        # the group's three pool images (no seed image): no question asked
        box_select(0.2, 0.8, 0.5, 0.5)
        # (locator assertions, not wait_for_function: the page's CSP forbids eval)
        expect(page.locator("#selection-info")).to_have_text(re.compile("^3 selected"))
        shown = page.eval_on_selector_all("#selection .thumb", "els => els.map(e => e.title)")
        assert sorted(shown) == sorted(names["group"])
        box = page.locator("#selection .thumb img").first.bounding_box()
        assert box["width"] >= 100

        # leave one out by clicking its thumbnail, then label the rest muffin with key 2
        page.click(f'#selection .thumb[data-path="{names["group"][2]}"]')
        assert page.text_content("#selection-info").startswith("2 selected (1 left out)")
        page.keyboard.press("2")
        expect(page.locator("#status")).to_have_text(re.compile("^saved: 2 image"))
        assert {p: v[:2] for p, v in on_disk(paths).items()} == {
            names["group"][0]: ("muffin", "human"), names["group"][1]: ("muffin", "human"),
            names["pool"][5]: ("chihuahua", "auto")}
        assert seen["dialogs"] == []
        expect(page.locator("#counts")).to_contain_text("muffin 5")

        # a box that takes in a seed image asks first; dismissed, nothing is written
        page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
        box_select(0.2, 0.8, 0.5, 2.5)
        expect(page.locator("#selection-info")).to_have_text(re.compile("^4 selected"))
        before = paths.decisions.read_bytes()
        assert names["seed"].startswith("train128/chihuahua/")
        page.keyboard.press("2")  # muffin: changes the seed's folder label (and nothing else)
        expect(page.locator("#status")).to_have_text("nothing changed")
        assert len(seen["dialogs"]) == 1 and "1 of them already have a label that this " \
            "changes (1 folder or validation label(s), 0 decision(s))" in seen["dialogs"][0]
        assert paths.decisions.read_bytes() == before

        # the queue: each image's own proposal; "select" shows the selection by the cluster
        cluster = page.locator(".cluster").first
        expect(cluster.locator("header")).to_contain_text("proposes chihuahua 1, muffin 1")
        cluster.locator("button", has_text="select").click()
        assert page.evaluate("""() => document.querySelector('.cluster').nextElementSibling.id
                             """) == "selection-box"
        expect(page.locator("#selection-info")).to_have_text(re.compile("^2 selected"))
        cluster.locator("button", has_text="accept proposals").click()
        expect(page.locator(".cluster.done")).to_have_count(1)
        rows = on_disk(paths)
        assert [rows[p][0] for p in names["queue"]] == ["chihuahua", "muffin"]

        # done clusters come from the label file: a reload keeps them
        page.reload()
        page.wait_for_selector("body[data-plot='1']")
        expect(page.locator(".cluster.done")).to_have_count(1)

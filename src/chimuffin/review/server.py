"""A local web page to label images from the embedding plot: the offline Dashboard.

Serves on 127.0.0.1 only. Every script and style comes from this package or the installed
`plotly` package (no CDN, no internet). Each label action is one POST that is validated whole
and then written at once to the label file (atomic, source `human`); a bad request changes
nothing and gets a JSON error with a 4xx status.
"""

from __future__ import annotations

import json
import mimetypes
import threading
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

from chimuffin.data.manifest import read_manifest
from chimuffin.errors import UserError
from chimuffin.labels import (
    Decision,
    allowed_labels,
    check_relative_path,
    merge_decisions,
    read_decisions,
    write_decisions,
)

HOST = "127.0.0.1"
MAX_BODY = 2_000_000
STATIC = {  # name -> content type; served from review/static
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# The page may talk to this server only: nothing else loads, even if a script tried.
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'")


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def plotly_js() -> Path:
    path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    if not path.is_file():
        raise UserError(f"{path}: plotly.min.js missing from the plotly package "
                        "(reinstall the pinned `plotly`)")
    return path


@dataclass
class Paths:
    params: Path
    decisions: Path
    prepared: Path
    embed: Path
    eval: Path
    suggest: Path

    @classmethod
    def under(cls, root: Path, params: str = "params.yaml",
              decisions: str = "data/labels/decisions.csv") -> Paths:
        return cls(root / params, root / decisions, root / "data/prepared", root / "data/embed",
                   root / "metrics/eval", root / "data/suggest")


class ReviewData:
    """The pipeline outputs the page shows, and the label file it writes."""

    def __init__(self, paths: Paths, classes: list[str], data_dir: Path):
        self.paths, self.classes = paths, classes
        self.labels = allowed_labels(classes)
        self.data_dir = data_dir.resolve()
        self.lock = threading.Lock()
        prepared = read_manifest(paths.prepared / "manifest.parquet")
        # every image the label file may name: the prepared dataset minus the test split
        # (test labels are never edited here: that would be tuning on test)
        self.split = dict(zip(prepared["path"], prepared["split"], strict=True))
        self.base_label = {p: lbl for p, lbl, s in zip(prepared["path"], prepared["label"],
                                                       prepared["split"], strict=True)
                           if s != "test"}
        self.points = self._points()
        self.queue = self._queue()

    def _points(self) -> pd.DataFrame:
        coords = _read(self.paths.embed / "pacmap.parquet", "embed")
        pred = _read(self.paths.eval / "predictions.parquet", "evaluate")
        df = coords[["path", "split", "x", "y"]].merge(
            pred[["path", "prediction", "confidence"]], on="path", how="left", validate="1:1")
        if df["prediction"].isna().any():
            raise UserError(f"{self.paths.eval / 'predictions.parquet'}: stale (no prediction "
                            "for some plotted images); run `dvc repro`")
        return df[df["split"] != "test"].reset_index(drop=True)

    def _queue(self) -> pd.DataFrame:
        path = self.paths.suggest / "review_queue.parquet"
        if not path.is_file():
            return pd.DataFrame(columns=["rank", "path", "kind", "cluster", "proposed", "reason"])
        q = pd.read_parquet(path)
        return q[q["path"].isin(self.base_label)].reset_index(drop=True)

    def decisions(self) -> list[Decision]:
        return read_decisions(self.paths.decisions, self.classes)

    def effective_labels(self, decisions: list[Decision]) -> dict[str, str]:
        labels = dict(self.base_label)
        labels.update({d.path: d.label for d in decisions if d.path in labels})
        return labels

    def counts(self, decisions: list[Decision]) -> dict:
        eff = self.effective_labels(decisions)
        return {"labels": {lbl: sum(1 for v in eff.values() if v == lbl) for lbl in self.labels},
                "decisions": len(decisions),
                "by_source": dict(sorted(Counter(d.source for d in decisions).items()))}

    def state(self) -> dict:
        decisions = self.decisions()
        eff = self.effective_labels(decisions)
        p = self.points
        q = self.queue
        return {
            "classes": self.classes, "labels": self.labels,
            "points": {"path": p["path"].tolist(), "split": p["split"].tolist(),
                       "x": _floats(p["x"]), "y": _floats(p["y"]),
                       "label": [eff[x] for x in p["path"]],
                       "prediction": p["prediction"].tolist(),
                       "confidence": _floats(p["confidence"])},
            "queue": [{"rank": int(r.rank), "path": r.path, "kind": r.kind,
                       "cluster": int(r.cluster), "proposed": r.proposed, "reason": r.reason}
                      for r in q.itertuples()],
            "counts": self.counts(decisions),
        }

    # --- checks shared by thumbnails and label actions ---

    def check_path(self, path) -> str:
        if not isinstance(path, str):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"path must be a string, got {path!r}")
        bad = check_relative_path(path)
        if bad:
            raise RequestError(HTTPStatus.FORBIDDEN, f"path {path!r}: {bad}")
        if path not in self.split:
            raise RequestError(HTTPStatus.NOT_FOUND, f"path {path!r}: not an image of the "
                               "prepared dataset")
        full = (self.data_dir / path).resolve()
        if not full.is_relative_to(self.data_dir):
            raise RequestError(HTTPStatus.FORBIDDEN, f"path {path!r}: outside the dataset")
        return path

    def image_file(self, path) -> Path:
        return (self.data_dir / self.check_path(path)).resolve()

    def label(self, body) -> dict:
        """Validate a whole label action, then write it; nothing is written if any part fails."""
        if not isinstance(body, dict) or set(body) != {"paths", "label"}:
            raise RequestError(HTTPStatus.BAD_REQUEST,
                               'expected a JSON object {"paths": [...], "label": "..."}')
        label, paths = body["label"], body["paths"]
        if label not in self.labels:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"unknown label {label!r}; allowed: "
                               f"{', '.join(self.labels)}")
        if not isinstance(paths, list) or not paths:
            raise RequestError(HTTPStatus.BAD_REQUEST, "paths must be a non-empty list")
        for p in paths:
            self.check_path(p)
            if self.split[p] == "test":
                raise RequestError(HTTPStatus.FORBIDDEN, f"path {p!r}: a test image; test "
                                   "labels are not edited here")
        new = [Decision(p, label, "human", "review page") for p in dict.fromkeys(paths)]
        with self.lock:  # read-merge-write: another tool may have changed the file meanwhile
            merged, changed = merge_decisions(self.decisions(), new, protect_sources=())
            if changed:
                write_decisions(self.paths.decisions, merged)
        return {"ok": True, "changed": changed, "label": label, "paths": [d.path for d in new],
                "counts": self.counts(merged)}


def _read(path: Path, stage: str) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: not found; run `dvc repro {stage}` first")
    return pd.read_parquet(path)


def _floats(s: pd.Series) -> list[float]:
    return [round(float(v), 5) for v in np.asarray(s, dtype=np.float64)]


class Handler(BaseHTTPRequestHandler):
    data: ReviewData  # set on the subclass that make_server creates
    server_version = "chimuffin-review"

    def log_message(self, fmt, *args) -> None:  # quiet: one line per error only
        pass

    def send(self, status: HTTPStatus, body: bytes, ctype: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: HTTPStatus, obj) -> None:
        self.send(status, json.dumps(obj).encode(), "application/json")

    def check_host(self) -> None:
        # a page on another site could resolve its name to 127.0.0.1 (DNS rebinding)
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host not in (HOST, "localhost"):
            raise RequestError(HTTPStatus.FORBIDDEN, f"unexpected Host header {host!r}")

    def handle_errors(self, fn) -> None:
        try:
            self.check_host()
            fn()
        except RequestError as e:
            self.send_json(e.status, {"ok": False, "error": str(e)})
        except UserError as e:
            self.send_json(HTTPStatus.CONFLICT, {"ok": False, "error": str(e)})

    def do_GET(self) -> None:
        self.handle_errors(self.get)

    def do_POST(self) -> None:
        self.handle_errors(self.post)

    def get(self) -> None:
        url = urlsplit(self.path)
        if url.path in ("/", "/index.html"):
            return self.static("index.html")
        if url.path.startswith("/static/"):
            return self.static(url.path.removeprefix("/static/"))
        if url.path == "/favicon.ico":
            return self.send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        if url.path == "/api/state":
            return self.send_json(HTTPStatus.OK, self.data.state())
        if url.path == "/thumb":
            values = parse_qs(url.query).get("path", [])
            if len(values) != 1:
                raise RequestError(HTTPStatus.BAD_REQUEST, "expected one ?path=")
            f = self.data.image_file(values[0])
            ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
            return self.send(HTTPStatus.OK, f.read_bytes(), ctype, cache=True)
        raise RequestError(HTTPStatus.NOT_FOUND, f"no such page {url.path!r}")

    def static(self, name: str) -> None:
        if name == "plotly.min.js":
            return self.send(HTTPStatus.OK, plotly_js().read_bytes(),
                             "text/javascript; charset=utf-8", cache=True)
        if name not in STATIC:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such file {name!r}")
        body = (resources.files("chimuffin.review") / "static" / name).read_bytes()
        self.send(HTTPStatus.OK, body, STATIC[name])

    def post(self) -> None:
        if urlsplit(self.path).path != "/api/label":
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such action {self.path!r}")
        # JSON only: a cross-site HTML form cannot send it without the browser asking first
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                               "send the action as Content-Type: application/json")
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required") from None
        if not 0 < length <= MAX_BODY:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"body must be 1 to {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {e}") from None
        self.send_json(HTTPStatus.OK, self.data.label(body))


def make_server(data: ReviewData, port: int = 0) -> ThreadingHTTPServer:
    """Bound to 127.0.0.1 (never another interface); port 0 picks a free one."""
    handler = type("BoundHandler", (Handler,), {"data": data})
    server = ThreadingHTTPServer((HOST, port), handler)
    server.daemon_threads = True
    return server

"""A local web page to verify and label images: the offline Dashboard (HTTP side).

Serves on 127.0.0.1 only. Every script and style comes from this package or the installed
`plotly` package (no CDN, no internet). The label actions themselves live in review/data.py
and review/writes.py.

Safety, for a server any page in the person's browser could try to reach:
- the Host header must name 127.0.0.1 or localhost (DNS rebinding);
- a POST must be JSON (a cross-site HTML form cannot send it without the browser asking
  first), and a POST that carries an Origin header must come from this server's own origin
  (browsers always send Origin on POST; a client without one, like curl or a script on this
  machine, is let through: it could edit the label file directly anyway);
- the request line and headers have `timeout` seconds in total to arrive (then the
  connection is closed), and the body `timeout` seconds more (then 408): deadlines for the
  whole, not for each read, so a client that trickles a byte at a time cannot hold a thread;
- a body that is not usable JSON (malformed, nested too deep, a number too long to read)
  gets 400 with the reason.
"""

from __future__ import annotations

import io
import json
import math
import mimetypes
import operator
import sys
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from chimuffin.errors import UserError
from chimuffin.labels.rows import PERSON_SOURCES
from chimuffin.review.data import RequestError, ReviewData
from chimuffin.review.heatmap_route import answer as heatmap_answer
from chimuffin.review.run_step import running_step

HOST = "127.0.0.1"
MAX_BODY = 2_000_000
TIMEOUT_S = 10.0  # the request line + headers, then the body, must each arrive within this
STATIC = {  # name -> content type; served from review/static
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "verify.js": "text/javascript; charset=utf-8",
    "retrain.js": "text/javascript; charset=utf-8",
    "heatmap.js": "text/javascript; charset=utf-8",
    "validation.js": "text/javascript; charset=utf-8",
    "validation.css": "text/css; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "final.js": "text/javascript; charset=utf-8",
}
# The page may talk to this server only: nothing else loads, even if a script tried.
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
ACTIONS = {  # POST path -> ReviewData method
    "/api/label": "writes.label", "/api/verify": "verify",
    "/api/accept-cluster": "accept_cluster", "/api/clear": "writes.clear", "/api/undo": "undo",
}


def plotly_js() -> Path:
    path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    if not path.is_file():
        raise UserError(f"{path}: plotly.min.js missing from the plotly package "
                        "(reinstall the pinned `plotly`)")
    return path


def own_origins(port: int) -> tuple[str, str]:
    return f"http://{HOST}:{port}", f"http://localhost:{port}"


class DeadlineReader(io.RawIOBase):
    """The connection's reads, each given only what is left until `deadline` (a socket
    timeout alone restarts with every byte that arrives)."""

    def __init__(self, sock):
        super().__init__()
        self.sock, self.deadline = sock, math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buf)


class Handler(BaseHTTPRequestHandler):
    data: ReviewData  # set on the subclass that make_server creates
    retrainer = None  # a chimuffin.retrain Retrainer, or None: no background retraining
    heatmaps = None  # a review.heatmap_route.PageHeatmaps, or None: no heatmaps
    validation = None  # a review.validation.Validation, or None: no validation view
    timeout = TIMEOUT_S  # socket timeout for writes; reads get deadlines (DeadlineReader)
    finisher = None  # a chimuffin.retrain.final.Finisher, or None: no final model here

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced by one that keeps to a deadline
        self.reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        # the request line and headers, in total; BaseHTTPRequestHandler closes the
        # connection on the TimeoutError
        self.reader.deadline = time.monotonic() + self.timeout
        super().handle_one_request()
    server_version = "chimuffin-review"

    def log_message(self, fmt, *args) -> None:  # quiet: errors are answered, not logged
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

    def check_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and origin not in own_origins(self.server.server_address[1]):
            raise RequestError(HTTPStatus.FORBIDDEN, f"a write from another site ({origin!r}) "
                               "is refused")

    def handle_errors(self, fn) -> None:
        self.reader.deadline = math.inf  # a body read sets its own
        self.connection.settimeout(self.timeout)  # the answer gets the full time
        try:
            self.check_host()
            fn()
        except RequestError as e:
            self.send_json(e.status, {"ok": False, "error": str(e), **e.extra})
        except UserError as e:
            self.send_json(HTTPStatus.CONFLICT, {"ok": False, "error": str(e)})
        except Exception as e:  # a bug: answer it (the page shows it) and print the traceback
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR,
                           {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"})

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
        if url.path == "/api/retrain":
            return self.send_json(HTTPStatus.OK, self.retrain_status())
        if url.path == "/api/validation":  # the validation view (review/validation.py)
            return self.send_json(HTTPStatus.OK, {"enabled": False} if self.validation is None
                                  else self.validation.state(self.data.models_state()["list"]))
        if url.path == "/api/heatmap":  # the proposing model's Grad-CAM overlays
            return self.send_json(HTTPStatus.OK, heatmap_answer(self.heatmaps, url.query))
        if url.path == "/thumb":  # the original image file (the page scales it)
            values = parse_qs(url.query).get("path", [])
            if len(values) != 1:
                raise RequestError(HTTPStatus.BAD_REQUEST, "expected one ?path=")
            f = self.data.image_file(values[0])
            ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
            return self.send(HTTPStatus.OK, f.read_bytes(), ctype, cache=True)
        if url.path == "/api/final":  # the final model: its progress, result or failure
            return self.send_json(HTTPStatus.OK, self.final_status())
        raise RequestError(HTTPStatus.NOT_FOUND, f"no such page {url.path!r}")

    def static(self, name: str) -> None:
        if name == "plotly.min.js":
            return self.send(HTTPStatus.OK, plotly_js().read_bytes(),
                             "text/javascript; charset=utf-8", cache=True)
        if name not in STATIC:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such file {name!r}")
        body = (resources.files("chimuffin.review") / "static" / name).read_bytes()
        self.send(HTTPStatus.OK, body, STATIC[name])

    def retrain_status(self) -> dict:
        """What the page polls: background runs (if on) and the models that proposed pages."""
        runs = {"enabled": False} if self.retrainer is None else \
            {"enabled": True, **self.retrainer.status()}
        running = runs.get("running")
        if running and running.get("log_file"):  # where it is: stage, epoch, time left
            running["step"] = running_step(running["log_file"])
        return {**runs, "models": self.data.models_state()}

    def final_status(self) -> dict:
        return {"enabled": False, "why": "off here"} if self.finisher is None else \
            self.finisher.status()

    def start_final(self, body) -> dict:
        """{} starts the final model (retrain/final.py); one run at a time."""
        if body != {}:
            raise RequestError(HTTPStatus.BAD_REQUEST, "expected a JSON object {}")
        if self.finisher is None:
            raise RequestError(HTTPStatus.CONFLICT, "the final model is off here")
        answer = self.finisher.request()
        if not answer["ok"]:
            raise RequestError(HTTPStatus.CONFLICT, answer["message"])
        return {**answer, **self.finisher.status()}

    def post(self) -> None:
        path = urlsplit(self.path).path
        action = ACTIONS.get(path)
        if action is None and path not in ("/api/retrain", "/api/validate", "/api/final"):
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such action {self.path!r}")
        self.check_origin()
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
        raw = self.read_body(length)
        try:
            body = json.loads(raw)
        except RecursionError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "body is not usable JSON: nested too "
                               "deeply") from None
        except (ValueError, UnicodeDecodeError) as e:  # incl. a number too long to read
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {e}") from None
        if path == "/api/validate":  # answers to validation.csv, never the label file
            if self.validation is None:
                raise RequestError(HTTPStatus.CONFLICT, "the validation view is off here")
            return self.send_json(HTTPStatus.OK, self.validation.answer(body))
        if path == "/api/final":
            return self.send_json(HTTPStatus.OK, self.start_final(body))
        if action is None:  # /api/retrain: {} asks for a background run now
            if body != {}:
                raise RequestError(HTTPStatus.BAD_REQUEST, "expected a JSON object {}")
            if self.retrainer is None:
                raise RequestError(HTTPStatus.CONFLICT, "background retraining is off here")
            return self.send_json(HTTPStatus.OK, {**self.retrainer.request("on demand"),
                                                  **self.retrain_status()})
        reply = operator.attrgetter(action)(self.data)(body)
        self.send_json(HTTPStatus.OK, reply)
        if self.retrainer is not None and reply.get("changed"):
            by_source = reply["counts"]["by_source"]
            self.retrainer.note(sum(by_source.get(s, 0) for s in PERSON_SOURCES))

    def read_body(self, length: int) -> bytes:
        """Exactly `length` bytes, all within `timeout` seconds (not per read: a client that
        trickles a byte at a time must not hold the thread either)."""
        self.reader.deadline = time.monotonic() + self.timeout
        chunks, got = [], 0
        try:
            while got < length:
                chunk = self.rfile.read1(length - got)
                if not chunk:
                    self.close_connection = True
                    raise RequestError(HTTPStatus.BAD_REQUEST, f"the body ended after {got} "
                                       f"of {length} bytes")
                chunks.append(chunk)
                got += len(chunk)
        except TimeoutError:
            self.close_connection = True
            raise RequestError(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within "
                               f"{self.timeout:g} s ({got} of {length} bytes)") from None
        finally:
            self.reader.deadline = math.inf
            self.connection.settimeout(self.timeout)  # the answer gets the full time again
        return b"".join(chunks)


def make_server(data: ReviewData, port: int = 0, timeout: float = TIMEOUT_S,
                retrainer=None, heatmaps=None, validation=None,
                finisher=None) -> ThreadingHTTPServer:
    """Bound to 127.0.0.1 (never another interface); port 0 picks a free one. `retrainer`:
    background retraining (chimuffin.retrain), None for none; `heatmaps`: the page's
    heatmaps (review/heatmap_route.py), None for none; `validation`: the validation view
    (review/validation.py), None for none; `finisher`: the final model (retrain/final.py),
    None for none."""
    handler = type("BoundHandler", (Handler,), {"data": data, "timeout": timeout,
                                                 "retrainer": retrainer, "heatmaps": heatmaps,
                                                 "validation": validation,
                                                 "finisher": finisher})
    server = ThreadingHTTPServer((HOST, port), handler)
    server.daemon_threads = True
    return server

"""The review page's heatmaps (GET /api/heatmap?path=P[&path=Q...]): the proposing model's
Grad-CAM overlay of each image, for the class it predicts.

One worker thread computes them, taking what waits as one batch; the request threads only wait,
so the page's other requests go on meanwhile. The page asks for the image in focus first, then
for the rest of its page (`&prefetch=1`): those come after any image in focus, in small batches,
so the next image in focus never waits behind a whole page. Answers are cached per model: the
key is the model file's path, size and modification time, so a retrained models/best.pth is
noticed, and a background model that swaps in (`follow`) starts an empty cache.
"""

from __future__ import annotations

import base64
import queue
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np

from chimuffin.errors import UserError
from chimuffin.review.data import RequestError

MAX_PATHS = 64  # one request: a page holds 48 images
PREFETCH_BATCH = 4  # the most a request for the image in focus can wait behind
STOP, FOCUS, PREFETCH = -1, 0, 1  # priorities: lower first
CACHE_SIZE = 2000  # answers kept (about 20-40 KB each at 128 px)
WAIT_S = 120.0


class PageHeatmaps:
    def __init__(self, model_file: Path, image_file: Callable[[str], Path], classes: list[str],
                 name: str = "pipeline model"):
        """image_file: the page's check of a requested path (ReviewData.image_file)."""
        self.image_file, self.classes = image_file, classes
        self.lock = threading.Lock()
        self.model_file: Path | None = Path(model_file)
        self.name, self.why_none = name, ""
        self.loaded: tuple | None = None  # (key, model, meta)
        self.cache: OrderedDict = OrderedDict()  # (model key, path) -> answer
        self.pending: dict = {}  # (model key, path) -> Future, while computed
        self.jobs: queue.PriorityQueue = queue.PriorityQueue()
        self.asked = 0  # a tie-breaker: first asked, first computed
        self.warmed = threading.Event()  # set once the warm-up is over (done or failed)
        self.copies = Path(tempfile.mkdtemp(prefix="chimuffin-heatmap-models-"))
        self.swaps = 0
        self.worker = threading.Thread(target=self._work, daemon=True, name="heatmaps")
        self.worker.start()

    # --- the proposing model ---

    def follow(self, weights: Path | None, name: str) -> None:
        """A background model swapped in: its weights (copied: the next run replaces the file)
        give the heatmaps from now on; None: they were not kept, and the page says so."""
        copy = None
        if weights is not None:
            self.swaps += 1
            copy = self.copies / f"{self.swaps}.pth"
            shutil.copyfile(weights, copy)
        with self.lock:
            self.model_file, self.name = copy, name
            self.why_none = "" if copy else (
                f"{name} proposes now, and its weights are not kept (review.warm_recipe is "
                "off): no heatmaps for it")
            self.cache.clear()
            self.loaded = None

    def after_swap(self, swap_in: Callable, weights: Callable[[], Path | None]) -> Callable:
        """ReviewData.swap_in, then follow the model it swapped in (a swap that fails raises
        in swap_in, and the heatmaps stay with the proposing model)."""
        def swapped(run) -> None:
            swap_in(run)
            self.follow(weights(), run.name)
        return swapped

    def close(self, wait_s: float = 30.0) -> None:
        """Stop the worker after its batch (torch must not be mid-computation when the
        interpreter exits: that aborts the process) and remove the model copies."""
        self.jobs.put((STOP, 0, None, None, None, None))
        self.worker.join(wait_s)
        shutil.rmtree(self.copies, ignore_errors=True)

    def _model_key(self) -> tuple:
        with self.lock:
            path, name, why = self.model_file, self.name, self.why_none
        if path is None:
            raise UserError(why)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise UserError(f"{path}: model file not found (run `dvc repro train`); no "
                            "heatmaps") from None
        return (str(path), st.st_size, st.st_mtime_ns, name)

    # --- requests (the server's threads) ---

    def answer(self, query: str) -> dict:
        """{"model": name, "heatmaps": {path: {"png": data URL, "label", "score"}}}."""
        fields = parse_qs(query)
        paths, priority = fields.get("path", []), PREFETCH if "prefetch" in fields else FOCUS
        if not 0 < len(paths) <= MAX_PATHS:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"expected 1 to {MAX_PATHS} ?path=")
        files = {p: self.image_file(p) for p in paths}  # refuses paths outside the dataset
        key = self._model_key()
        futures = {p: self._future(key, p, f, priority) for p, f in files.items()}
        out = {}
        for p, fut in futures.items():
            try:
                out[p] = fut.result(WAIT_S)
            except UserError as e:  # this image or the model: said per image
                out[p] = {"error": str(e)}
        return {"model": key[3], "heatmaps": out}

    def _future(self, key: tuple, path: str, file: Path, priority: int) -> Future:
        with self.lock:
            done = self.cache.get((key, path))
            if done is not None:
                fut: Future = Future()
                fut.set_result(done)
                return fut
            fut, queued_at = self.pending.get((key, path), (None, None))
            if fut is None or priority < queued_at:  # (asked again, sooner: a second entry;
                fut = fut or Future()                 # the worker skips the one done first)
                self.pending[(key, path)] = (fut, priority)
                self.asked += 1
                self.jobs.put((priority, self.asked, key, path, file, fut))
            return fut

    # --- the worker ---

    def _warm(self) -> None:
        """Import Captum, load the model and run one pass before the first request (seconds,
        once): the first overlay then comes as fast as the others. A failure here is reported by the
        request that meets it."""
        try:
            from chimuffin.infer.heatmaps import heatmaps

            model, meta = self._load(self._model_key())
            size = int(meta["image_size"])  # one pass primes the kernels' first-call setup
            heatmaps(model, np.zeros((1, 3, size, size), np.uint8))
        except Exception:  # noqa: BLE001 (the request that needs the model says why)
            self.loaded = None
        self.warmed.set()

    def _next_batch(self) -> list | None:
        """What waits at the best priority, up to its batch size, minus answered duplicates."""
        first = self.jobs.get()
        if first[0] == STOP:
            return None
        batch, most = [first], MAX_PATHS if first[0] == FOCUS else PREFETCH_BATCH
        while len(batch) < most:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job[0] != first[0]:
                self.jobs.put(job)
                break
            batch.append(job)
        jobs, seen = [], set()
        for job in batch:
            fut = job[-1]
            if not fut.done() and id(fut) not in seen:
                seen.add(id(fut))
                jobs.append(job[2:])
        return jobs

    def _work(self) -> None:
        self._warm()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            for key in dict.fromkeys(job[0] for job in batch):
                self._compute(key, [job for job in batch if job[0] == key])

    def _compute(self, key: tuple, jobs: list) -> None:
        try:
            answers = self._answers(key, [(path, file) for _, path, file, _ in jobs])
        except Exception as e:  # the model could not be read, a bug: each request says why
            error = e if isinstance(e, UserError) else UserError(f"heatmap failed: "
                                                                 f"{type(e).__name__}: {e}")
            answers = [error] * len(jobs)
        with self.lock:
            for (_, path, _, fut), ans in zip(jobs, answers, strict=True):
                self.pending.pop((key, path), None)
                if isinstance(ans, Exception):
                    fut.set_exception(ans)
                    continue
                if self.model_file is not None and key[0] == str(self.model_file):
                    # (not a model swapped out meanwhile)
                    self.cache[(key, path)] = ans
                    while len(self.cache) > CACHE_SIZE:
                        self.cache.popitem(last=False)
                fut.set_result(ans)

    def _load(self, key: tuple):
        from chimuffin.model import load_checkpoint

        if self.loaded is None or self.loaded[0] != key:
            model, meta = load_checkpoint(key[0], "cpu", self.classes)
            self.loaded = (key, model, meta)
        return self.loaded[1], self.loaded[2]

    def _answers(self, key: tuple, items: list[tuple[str, Path]]) -> list:
        """Per item: an answer, or the UserError that says why there is none."""
        import torch

        from chimuffin.data.images import ImageDecodeError, decode_image
        from chimuffin.infer.batches import softmax
        from chimuffin.infer.heatmaps import heatmaps, overlay, png_bytes
        from chimuffin.infer.preprocess import preprocess

        model, meta = self._load(key)
        size = int(meta["image_size"])
        out: list = [None] * len(items)
        pixels, where = [], []
        for i, (path, file) in enumerate(items):
            try:
                pixels.append(decode_image(file, size).pixels)
                where.append(i)
            except (ImageDecodeError, OSError) as e:
                out[i] = UserError(f"{path}: {e}")
        if not pixels:
            return out
        hwc = np.stack(pixels)
        chw = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))
        with torch.no_grad():
            probs = softmax(model(preprocess(torch.from_numpy(chw))).numpy().astype(np.float64))
        target = probs.argmax(1)
        maps, _ = heatmaps(model, chw, target)
        for j, i in enumerate(where):
            png = png_bytes(overlay(hwc[j], maps[j]))
            out[i] = {"png": "data:image/png;base64," + base64.b64encode(png).decode(),
                      "label": self.classes[target[j]],
                      "score": round(float(probs[j, target[j]]), 4)}
        return out


def answer(heatmaps: PageHeatmaps | None, query: str) -> dict:
    """The server's GET /api/heatmap."""
    if heatmaps is None:
        raise RequestError(HTTPStatus.CONFLICT, "heatmaps are off on this server")
    return heatmaps.answer(query)

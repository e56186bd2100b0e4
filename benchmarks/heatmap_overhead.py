"""What the heatmaps cost: the evaluate stage with and without its heatmap figure, and the review
page's overlay for one image.

In --repo (a checkout whose pipeline ran: data/clean, data/prepared, models/best.pth,
params.yaml; the real data for the numbers that count), it runs the evaluate stage in this
process, alternately with the heatmap figure (as the stage is) and without it (the two heatmap
calls replaced by nothing), --repeats times each, writing into a temporary folder (the repo's
outputs are not touched). It prints the median seconds of each, their ratio, the seconds the
heatmap calls themselves took, then the page's GET /api/heatmap latency for one image: the first
(computed; Captum and the model already loaded, as the server does at start) and a repeat (the
cache). With --browser (the checkout's whole pipeline ran, so the page has pages) it also starts
`chimuffin review` there and times, in headless Chromium at 1280x720, Shift+H to the overlay on
screen over the image in focus, then `l` to the next image's, at once and after a second. All
side by side in one run, with the CPU.

    python benchmarks/heatmap_overhead.py --repo /path/to/checkout [--repeats 3] [--browser]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from argparse import Namespace
from pathlib import Path
from urllib.parse import quote

from chimuffin import paths, runtime
from chimuffin.config import load_params
from chimuffin.stages import evaluate

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.page_latency import free_port, wait_until_up  # noqa: E402
from benchmarks.stats import cpu_summary  # noqa: E402


def stage_args(repo: Path, out: Path) -> Namespace:
    return Namespace(clean=str(repo / paths.CLEAN), prepared=str(repo / paths.PREPARED),
                     model=str(repo / paths.MODEL), out=str(out / "eval"),
                     embeddings=str(out / "embeddings.parquet"),
                     reference=str(repo / paths.REFERENCE_RECIPE))


def timed_evaluate(repo: Path, params, with_heatmaps: bool, spent: list[float]) -> float:
    """Seconds of one evaluate run; `spent` gets the heatmap calls' own seconds."""
    real = (evaluate.mistake_heatmaps, evaluate.mistakes_heatmaps_png)

    def clocked(fn):
        def run(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent.append(time.perf_counter() - t0)
        return run

    if with_heatmaps:
        evaluate.mistake_heatmaps, evaluate.mistakes_heatmaps_png = map(clocked, real)
    else:
        evaluate.mistake_heatmaps = lambda *a, **kw: (None, None)
        evaluate.mistakes_heatmaps_png = lambda *a, **kw: None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            evaluate.main(stage_args(repo, Path(tmp)), params)
            return time.perf_counter() - t0
    finally:
        evaluate.mistake_heatmaps, evaluate.mistakes_heatmaps_png = real


def page_latency(repo: Path, classes: list[str], image: str) -> tuple[float, float]:
    """(first, cached) milliseconds of PageHeatmaps.answer for one image, after its warm-up."""
    from urllib.parse import urlencode

    from chimuffin.review.heatmap_route import PageHeatmaps

    data_dir = Path(load_params(repo / paths.PARAMS).prepare.data_dir)
    data_dir = data_dir if data_dir.is_absolute() else repo / data_dir
    heatmaps = PageHeatmaps(repo / paths.MODEL, lambda p: data_dir / p, classes)
    try:
        heatmaps.answer(urlencode([("path", image)]))  # Captum, the model: loaded once
        heatmaps.cache.clear()
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            heatmaps.answer(urlencode([("path", image)]))
            times.append(1000 * (time.perf_counter() - t0))
        return times[0], times[1]
    finally:
        heatmaps.close()


CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
OVERLAY = "#page-grid .thumb.cursor img.heatmap:not([hidden])"


def start_review(repo: Path, state: Path) -> tuple[subprocess.Popen, str]:
    """`chimuffin review` in the checkout on a free port, no background retrain (nothing else
    runs beside the page); returns the process once it answers, and the page's address."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("chimuffin")), "review", "--port", str(port),
         "--no-retrain", "--state", str(state)],
        cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    wait_until_up(url + "api/state", server)
    return server, url


def warm_up(url: str, image: str) -> None:
    """One heatmap of an image off the first page: the server's Captum import and model load
    are over (as seconds after a start), and the cache holds nothing the page asks for."""
    with urllib.request.urlopen(f"{url}api/heatmap?path={quote(image)}", timeout=300) as r:
        body = json.loads(r.read())
    if image not in body.get("heatmaps", {}):
        raise SystemExit(f"heatmap_overhead: the warm-up heatmap failed: {body}")


def next_overlay_ms(page) -> float:
    """`l`: milliseconds until the next image's overlay is on screen."""
    shown = page.get_attribute(OVERLAY, "data-path")
    t0 = time.perf_counter()
    page.keyboard.press("l")
    page.wait_for_selector(f"{OVERLAY}:not([data-path='{shown}'])", timeout=60_000)
    return 1000 * (time.perf_counter() - t0)


def browser_overlay(repo: Path, warm_image: str) -> tuple[float, float, float]:
    """Milliseconds until the overlay is on screen over the image in focus, in headless Chromium
    at 1280x720 on the verify view: Shift+H, then `l` at once, then `l` after a second."""
    from playwright.sync_api import sync_playwright

    scratch = tempfile.TemporaryDirectory()  # the page's state file, not the checkout's
    server, url = start_review(repo, Path(scratch.name) / "state.json")
    try:
        warm_up(url, warm_image)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            page.keyboard.press("v")  # the verify view (the page may open on validation)
            page.wait_for_selector("#page-grid .thumb.cursor", timeout=30_000)
            page.wait_for_load_state("networkidle")  # the page's thumbnails in, as a person sees
            t0 = time.perf_counter()
            page.keyboard.press("Shift+H")
            page.wait_for_selector(OVERLAY, timeout=60_000)
            first = 1000 * (time.perf_counter() - t0)
            at_once = next_overlay_ms(page)  # the worst case: the page's prefetch has begun
            page.wait_for_timeout(1000)  # a second's look at the overlay
            after_a_look = next_overlay_ms(page)
            browser.close()
        return first, at_once, after_a_look
    finally:
        server.terminate()
        server.wait(60)
        scratch.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path("."))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--browser", action="store_true",
                    help="also time the overlay in Chromium against `chimuffin review`")
    args = ap.parse_args()
    repo = args.repo.resolve()
    params = load_params(repo / paths.PARAMS)
    runtime.setup(params.base.seed, params.runtime.threads)
    print(f"CPU: {cpu_summary()}; repo {repo}")
    runs: dict[bool, list[float]] = {True: [], False: []}
    spent: list[float] = []
    for _ in range(args.repeats):
        for with_heatmaps in (False, True):  # alternated: drift hits both alike
            runs[with_heatmaps].append(timed_evaluate(repo, params, with_heatmaps, spent))
    base, full = statistics.median(runs[False]), statistics.median(runs[True])
    print(f"evaluate without heatmaps: {base:.2f} s (median of {args.repeats}: "
          f"{', '.join(f'{t:.2f}' for t in runs[False])})")
    print(f"evaluate with heatmaps:    {full:.2f} s ({', '.join(f'{t:.2f}' for t in runs[True])})")
    print(f"ratio {full / base:.3f} (+{100 * (full / base - 1):.1f}%); the heatmap calls "
          f"themselves: {sum(spent) / args.repeats:.2f} s per run")
    from chimuffin.data.manifest import read_manifest

    image = read_manifest(repo / paths.CLEAN / paths.MANIFEST_FILE)["path"].iloc[0]
    first, cached = page_latency(repo, params.base.classes, image)
    print(f"page overlay, one image ({image}): {first:.0f} ms computed, {cached:.0f} ms cached")
    if args.browser:  # `image` is a seed: never on a review page
        shift_h, at_once, after_a_look = browser_overlay(repo, image)
        print(f"page overlay in Chromium 1280x720, to on screen: Shift+H {shift_h:.0f} ms; "
              f"`l` at once {at_once:.0f} ms, after a second's look {after_a_look:.0f} ms")


if __name__ == "__main__":
    main()

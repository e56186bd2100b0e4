"""What the heatmaps cost: the evaluate stage with and without its heatmap figure, and the review
page's overlay for one image.

In --repo (a checkout whose pipeline ran: data/clean, data/prepared, models/best.pth,
params.yaml; the real data for the numbers that count), it runs the evaluate stage in this
process, alternately with the heatmap figure (as the stage is) and without it (the two heatmap
calls replaced by nothing), --repeats times each, writing into a temporary folder (the repo's
outputs are not touched). It prints the median seconds of each, their ratio, the seconds the
heatmap calls themselves took, then the page's GET /api/heatmap latency for one image: the first
(computed; Captum and the model already loaded, as the server does at start) and a repeat (the
cache). All side by side in one run, with the CPU.

    python benchmarks/heatmap_overhead.py --repo /path/to/checkout [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

from chimuffin import paths, runtime
from chimuffin.config import load_params
from chimuffin.stages import evaluate

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path("."))
    ap.add_argument("--repeats", type=int, default=3)
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


if __name__ == "__main__":
    main()

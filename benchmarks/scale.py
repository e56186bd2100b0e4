"""Does chimuffin scale to 10x the hackathon data? Time and peak memory at growing sizes.

For each size N (default 5,000 and 50,000 synthetic 128x128 JPEGs) it runs, each in a fresh
subprocess:
  prepare  scan + decode + hash every image into the uint8 cache (data.prepare.prepare_dataset)
  epoch    one shuffled pass over every cached image through forward.load_batch + augment_batch,
           i.e. a training epoch's data path WITHOUT the model (the model's memory does not
           depend on N, and its compute would make one 50k-image epoch ~30 min on 2 cores)
and prints wall time, peak RSS (the kernel's VmHWM = getrusage ru_maxrss) and, sampled every
20 ms, the peaks of its two parts: anonymous memory (heap: what must fit in RAM) and file-backed
pages (memory-mapped cache pages: clean page cache the kernel reclaims under pressure).

The images: the largest set is drawn once by data.sample.write_sample in ONE process (about
5 ms of CPU per image); each smaller set is a hard-linked subset of it (same class mix).
Everything lives under --work (default /tmp/chimuffin-scale; about 3 GB at 50k and 128 px).

    python benchmarks/scale.py                       # 5k and 50k
    python benchmarks/scale.py --sizes 2000 20000    # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

CLASSES = ["chihuahua", "muffin"]
LABELED_SHARE = 0.1  # of each set: labeled train images, half per class; the rest is pool


# ---- memory sampling (runs inside each measured subprocess)

def read_status() -> dict[str, int]:
    """Memory fields of /proc/self/status in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) // 1024
    return out


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class PeakSampler(threading.Thread):
    """Peaks of anonymous and file-backed RSS, sampled every 20 ms, and the CPU time used
    (user + system: unlike wall time, it hardly depends on what else the machine runs)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.stop = threading.Event()
        self.cpu0 = cpu_seconds()

    def run(self):
        while not self.stop.is_set():
            s = read_status()
            for k in self.peak:
                self.peak[k] = max(self.peak[k], s[k])
            self.stop.wait(0.02)

    def finish(self) -> dict:
        self.stop.set()
        self.join()
        s = read_status()
        return {"cpu_seconds": cpu_seconds() - self.cpu0, "peak_rss_mb": s["VmHWM"],
                "peak_anon_mb": max(self.peak["RssAnon"], s["RssAnon"]),
                "peak_file_mb": max(self.peak["RssFile"], s["RssFile"])}


# ---- the two measured jobs

def child_prepare(data: Path, out: Path, size: int) -> dict:
    from chimuffin.data.prepare import prepare_dataset

    before = read_status()["VmRSS"]
    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    report = prepare_dataset(data, CLASSES, size, 0.1, 0, {}, "validation.csv", out)
    return {"images": report["images"], "seconds": time.perf_counter() - t0,
            "rss_before_mb": before, **sampler.finish()}


def child_epoch(prepared: Path, batch_size: int) -> dict:
    import numpy as np
    import torch

    import chimuffin
    from chimuffin.config import load_params
    from chimuffin.data.manifest import open_cache, read_manifest
    from chimuffin.infer.batches import batches, load_batch
    from chimuffin.train.augment import augment_batch

    # the params.yaml that goes with the measured sources (--src)
    aug = load_params(Path(chimuffin.__file__).parents[2] / "params.yaml").train.augment
    torch.set_num_threads(1)  # the data path only; leave the other core alone
    images = open_cache(prepared / "images.npy")
    rows = read_manifest(prepared / "manifest.parquet")["idx"].to_numpy(dtype=np.int64)
    before = read_status()["VmRSS"]
    sampler = PeakSampler()
    sampler.start()
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    seen = 0
    for pos in batches(len(rows), batch_size, g, min_size=2):
        x = augment_batch(load_batch(images, rows[pos], torch.device("cpu")), aug, g)
        seen += len(x)
    return {"images": seen, "seconds": time.perf_counter() - t0, "rss_before_mb": before,
            **sampler.finish()}


# ---- the driver

def generate(work: Path, n: int) -> Path:
    """The largest set, drawn once (reused by later runs: delete --work to redraw)."""
    from chimuffin.data.sample import write_sample

    out = work / f"raw-{n}"
    if (out / "COMPLETE").exists():
        print(f"generate: reusing {out}")
        return out
    per_class = round(n * LABELED_SHARE / 2)
    t0 = time.perf_counter()
    write_sample(out, labeled_per_class=per_class, pool=n - 2 * per_class, test_per_class=0,
                 seed=0)
    dt = time.perf_counter() - t0
    (out / "COMPLETE").write_text(f"{dt:.1f}\n")
    print(f"generate: {n} images in {dt:.0f} s ({n / dt:.0f} img/s, 1 process)")
    return out


def subset(full: Path, work: Path, n: int, n_full: int) -> Path:
    """Hard links to the first images of each folder of `full`, keeping its class mix."""
    out = work / f"raw-{n}"
    if (out / "COMPLETE").exists():
        return out
    for folder in sorted(p for p in (full / "train128").iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        keep = files[:round(len(files) * n / n_full)]
        (out / "train128" / folder.name).mkdir(parents=True, exist_ok=True)
        for f in keep:
            os.link(f, out / "train128" / folder.name / f.name)
    (out / "COMPLETE").write_text("subset\n")
    return out


def measure(args: list[str], src: Path) -> dict:
    """Run one job in a fresh interpreter; its last stdout line is the JSON result."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src),
                                                         os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                       env=env)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/chimuffin-scale"))
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src",
                    help="the chimuffin sources to measure (default: this checkout's; another "
                         "checkout's src/ compares implementations)")
    ap.add_argument("--child", choices=["prepare", "epoch"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child == "prepare":
        print(json.dumps(child_prepare(a.data, a.out, a.image_size)))
        return
    if a.child == "epoch":
        print(json.dumps(child_epoch(a.out, a.batch_size)))
        return

    sizes = sorted(a.sizes)
    a.work.mkdir(parents=True, exist_ok=True)
    full = generate(a.work, sizes[-1])
    results = []
    for n in sizes:
        data = full if n == sizes[-1] else subset(full, a.work, n, sizes[-1])
        out = a.work / f"prepared-{n}-{a.image_size}"
        for job in ("prepare", "epoch"):
            r = measure(["--child", job, "--data", str(data), "--out", str(out),
                         "--image-size", str(a.image_size), "--batch-size", str(a.batch_size)],
                        a.src)
            r.update(n=n, job=job, cache_mb=(out / "images.npy").stat().st_size // 2**20)
            results.append(r)
            print(f"  {job} {n}: {json.dumps(r)}", flush=True)

    print(f"\nsources: {a.src}\n{'images':>7} {'job':8} {'wall s':>7} {'CPU s':>7} "
          f"{'img/CPU s':>9} {'RSS at start':>12} {'peak RSS':>9} {'peak anon':>9} "
          f"{'peak file':>9} {'cache':>6}   (MB)")
    for r in results:
        print(f"{r['n']:>7} {r['job']:8} {r['seconds']:>7.1f} {r['cpu_seconds']:>7.1f} "
              f"{r['images'] / r['cpu_seconds']:>9.0f} {r['rss_before_mb']:>12} "
              f"{r['peak_rss_mb']:>9} {r['peak_anon_mb']:>9} {r['peak_file_mb']:>9} "
              f"{r['cache_mb']:>6}")
    lo, hi = sizes[0], sizes[-1]
    for job in ("prepare", "epoch"):
        a_, b_ = (next(r for r in results if r["n"] == n and r["job"] == job) for n in (lo, hi))
        print(f"{job} {hi}/{lo} ({hi / lo:.0f}x images): "
              f"CPU time x{b_['cpu_seconds'] / a_['cpu_seconds']:.2f}, "
              f"wall time x{b_['seconds'] / a_['seconds']:.2f}, "
              f"peak RSS x{b_['peak_rss_mb'] / a_['peak_rss_mb']:.2f}, "
              f"peak anon x{b_['peak_anon_mb'] / a_['peak_anon_mb']:.2f}, "
              f"peak file-backed x{b_['peak_file_mb'] / max(a_['peak_file_mb'], 1):.2f}")


if __name__ == "__main__":
    main()

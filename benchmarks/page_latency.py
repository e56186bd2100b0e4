"""Does the review page stay responsive while a model trains behind it, and what do the
background run's threads buy?

In a tiny git + DVC repository (the embedded sample's generator, `dvc repro`), or in --repo (one
with pipeline outputs), it serves `chimuffin review --no-retrain`, then times GET /api/state and
GET / from the page's own machine: first idle, then while a stand-in for a background retrain
runs at the background's priority (`nice -n 10`): ResNet-18 training steps (batch 32, 128 px,
random data) with each --threads count. It prints, per phase, the latencies (p50, p95, max) and
the training's images per second, side by side in one run, with the CPU.

    python benchmarks/page_latency.py                    # about 2 minutes on 2 cores
    python benchmarks/page_latency.py --threads 1 2 --requests 60
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from chimuffin.retrain.retrainer import NICE

if __package__ in (None, ""):  # run as a script: the repository root holds the shared harness
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers.repo import (  # noqa: E402
    BIN,
    TINY,
    deep_update,
    default_params_dict,
    make_repo,
    run,
)

from benchmarks.stats import cpu_summary  # noqa: E402

# A stand-in for a background retrain: training steps until the deadline, then images/s.
TRAIN = """
import sys, time, torch
import torch.nn.functional as F
from chimuffin.model import build_model
threads, seconds = int(sys.argv[1]), float(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
m = build_model(2, [256, 128], 0.3)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
x, y = torch.randn(32, 3, 128, 128), torch.randint(0, 2, (32,))
for _ in range(2):  # warm-up
    F.cross_entropy(m(x), y).backward()
n, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    opt.zero_grad(); F.cross_entropy(m(x), y).backward(); opt.step(); n += len(x)
print(n / (time.perf_counter() - start))
"""
ENDPOINTS = ("/api/state", "/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_ms(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        r.read()
    return (time.perf_counter() - start) * 1000


def wait_until_up(url: str, server: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the review server exited ({server.returncode}): "
                             f"{server.stderr.read()[-2000:]}")
        try:
            get_ms(url)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the review server at {url} did not answer within {timeout_s:.0f} s")


def latencies(base: str, requests: int, gap_s: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {e: [] for e in ENDPOINTS}
    for _ in range(requests):
        for e in ENDPOINTS:
            out[e].append(get_ms(base + e))
        time.sleep(gap_s)  # a person clicks; the page does not hammer its server
    return out


def summary(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=20)
    return f"{statistics.median(ms):7.1f} {q[-1]:7.1f} {max(ms):7.1f}"


def sample_repo(work: Path) -> Path:
    repo = make_repo(work / "repo", deep_update(default_params_dict(), TINY))
    run(["dvc", "repro", "-q"], repo, env={"PYTHONPATH": str(repo / "src")})
    return repo


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=None,
                    help="a repository with pipeline outputs (default: a tiny sample one)")
    ap.add_argument("--threads", nargs="+", type=int, default=None,
                    help="background training threads to try (default: cores - 1 and cores)")
    ap.add_argument("--requests", type=int, default=40, help="per endpoint and phase")
    ap.add_argument("--gap", type=float, default=0.25, help="seconds between requests")
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    threads = args.threads or sorted({max(1, cores - 1), cores})
    with tempfile.TemporaryDirectory(prefix="chimuffin-page-latency-") as tmp:
        repo = args.repo.resolve() if args.repo else sample_repo(Path(tmp))
        port = free_port()
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        server = subprocess.Popen([str(BIN / "chimuffin"), "review", "--port", str(port),
                                   "--no-retrain"], cwd=repo, env=env, text=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(base + "/api/state", server)
            phases = [("idle", latencies(base, args.requests, args.gap), None)]
            for n in threads:
                seconds = args.requests * (args.gap + 0.05) + 10
                train = subprocess.Popen(["nice", "-n", str(NICE), sys.executable, "-c", TRAIN,
                                          str(n), str(seconds)], env=env, text=True,
                                         stdout=subprocess.PIPE)
                time.sleep(5)  # past the warm-up
                ms = latencies(base, args.requests, args.gap)
                out, _ = train.communicate()
                phases.append((f"training, nice {NICE}, {n} thread{'s' * (n > 1)}", ms,
                               float(out.strip())))
        finally:
            server.terminate()
            server.wait(30)
    print(f"page_latency: cpu: {cpu_summary()}; {args.requests} requests per endpoint "
          f"and phase, {args.gap} s apart; ms: p50 p95 max")
    idle = {e: statistics.median(ms) for e, ms in phases[0][1].items()}
    for name, ms, img_s in phases:
        cols = "   ".join(f"{e} {summary(v)} (x{statistics.median(v) / idle[e]:.2f})"
                          for e, v in ms.items())
        speed = "" if img_s is None else f"   training {img_s:.1f} img/s"
        print(f"{name:<28} {cols}{speed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training and inference throughput (img/s) on the CPU and, when present, on CUDA, side by side.

It runs what the stages run: runtime.setup, then engine.train_one_epoch (augmentation on the
batch, channels_last, bf16 autocast on CUDA only) and batches.predict (fp32 on every device), with
ResNet-18 and the params.yaml head at base.image_size, on random uint8 images in memory (the
data path's cost is in benchmarks/scale.py). Warm-up batches are not timed; CUDA is synchronised
before every clock read. On CUDA it also times bf16 inference, which the stages do NOT use, to
show what fp32 inference costs.

    python benchmarks/gpu_check.py                        # CPU, and CUDA when available
    python benchmarks/gpu_check.py --cuda-images 8192 --batch-size 64
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from chimuffin import runtime
from chimuffin.config import EVAL_BATCH_SIZE, load_params
from chimuffin.infer import batches
from chimuffin.infer.preprocess import preprocess
from chimuffin.model import build_model
from chimuffin.train import engine

REPO = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def bf16_inference(model, images, rows, batch_size, device) -> int:
    """What predict would cost under bf16 autocast (for comparison only)."""
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for pos in batches.batches(len(rows), batch_size):
            x = preprocess(batches.load_batch(images, rows[pos], device))
            model(x.contiguous(memory_format=batches.CHANNELS_LAST))
    return len(rows)


def measure(device: torch.device, n_train: int, n_infer: int, params, batch_size: int,
            eval_batch_size: int, size: int) -> dict:
    t = params.train
    cfg = replace(t, batch_size=batch_size)
    runtime.setup(params.base.seed, params.runtime.threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(n_train, n_infer), 3, size, size), dtype=np.uint8)
    labels = rng.integers(0, len(params.base.classes), len(images))
    model = build_model(len(params.base.classes), t.head, t.dropout).to(device)
    model = model.to(memory_format=batches.CHANNELS_LAST)
    opt = engine.make_optimizer(model, t.lr, t.weight_decay, t.optimizer_impl)
    g = torch.Generator().manual_seed(0)

    def train(n):
        rows = np.arange(n)
        return engine.train_one_epoch(model, images, rows, labels[rows], cfg, opt, g, device)

    def infer(n):
        return batches.predict(model, images, np.arange(n), eval_batch_size, device)

    train(2 * batch_size)  # warm-up: kernel selection, allocator, lazy init
    infer(eval_batch_size)
    train_s, stats = timed(device, lambda: train(n_train))
    infer_s, _ = timed(device, lambda: infer(n_infer))
    out = {"train": stats.images / train_s, "infer_fp32": n_infer / infer_s}
    if device.type == "cuda":
        bf16_inference(model, images, np.arange(eval_batch_size), eval_batch_size, device)
        s, n = timed(device, lambda: bf16_inference(model, images, np.arange(n_infer),
                                                    eval_batch_size, device))
        out["infer_bf16"] = n / s
    return out


def main() -> None:
    params = load_params(REPO / "params.yaml")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=params.train.batch_size,
                    help="training batch (default: params.yaml train.batch_size)")
    ap.add_argument("--eval-batch-size", type=int, default=EVAL_BATCH_SIZE)
    ap.add_argument("--image-size", type=int, default=params.base.image_size)
    ap.add_argument("--cpu-images", type=int, default=96, help="training images timed on CPU "
                    "(inference times 4x as many)")
    ap.add_argument("--cuda-images", type=int, default=4096)
    a = ap.parse_args()

    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
        print(f"CUDA: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    else:
        print("CUDA: not available here (CPU only)")
    print(f"CPU: {runtime.available_cores()} cores usable; ResNet-18 at "
          f"{a.image_size} px, train batch {a.batch_size}, "
          f"inference batch {a.eval_batch_size}")
    results = {}
    for d in devices:
        n = a.cpu_images if d.type == "cpu" else a.cuda_images
        results[d.type] = measure(d, n, 4 * n, params, a.batch_size, a.eval_batch_size,
                                  a.image_size)

    cols = ["train", "infer_fp32", "infer_bf16"]
    print(f"\n{'device':8}" + "".join(f"{c + ' img/s':>18}" for c in cols))
    for dev, r in results.items():
        print(f"{dev:8}" + "".join(f"{r[c]:>18.1f}" if c in r else f"{'-':>18}" for c in cols))
    if "cuda" in results:
        cpu, cuda = results["cpu"], results["cuda"]
        print(f"cuda/cpu: training x{cuda['train'] / cpu['train']:.1f}, "
              f"inference (fp32) x{cuda['infer_fp32'] / cpu['infer_fp32']:.1f}")
    print("train = bf16 autocast on CUDA, fp32 on CPU; infer_fp32 = what evaluate/embed run; "
          "infer_bf16 = for comparison only")


if __name__ == "__main__":
    main()

"""Training and inference throughput: the reference data path against chimuffin's, interleaved.

In one process, round after round, each path trains the same ResNet-18 (model.build_model) for
a fixed number of steps on the same images:

- reference: the hackathon starter's pipeline. Image FILES decoded by PIL every step, torchvision
  per-sample transforms (Resize 136, RandomCrop 128, flip, rotation 10, affine shear 8 / scale
  0.85-1.15, ColorJitter 0.15, ToTensor, ImageNet Normalize, RandomErasing 0.05), a DataLoader
  with num_workers=0, batch 16, NCHW, AdamW (default kernels), grad-clip 1.0.
- chimuffin: engine.train_one_epoch, i.e. the uint8 tensor cache + augment.augment_batch +
  channels_last, with the batch size / AdamW kernels / training size / precision (fp32, or bf16
  autocast as runtime.cpu_bf16) of each --config.

Both paths see the same number of images per round (the reference's steps x 16).
Interleaving rounds means that a change in machine load (other processes) hits every path alike;
the medians and their ratio are what to quote. It also measures the machine's fp32 peak (a large
matrix product and a large convolution), counts the model's training FLOPs per image
(FlopCounterMode over forward + backward) and prints the fraction of that peak each path reaches,
and the evaluation / embedding throughput (batches.predict, batch 128, channels_last, inference
mode).

    python benchmarks/train_throughput.py                       # the numbers (minutes)
    python benchmarks/train_throughput.py --rounds 2 --steps 2 --max-images 96 --eval-images 128
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from chimuffin import runtime
from chimuffin.config import load_params
from chimuffin.data.images import IMAGE_SUFFIXES, decode_image
from chimuffin.infer.batches import CHANNELS_LAST, predict
from chimuffin.infer.preprocess import IMAGENET_MEAN, IMAGENET_STD
from chimuffin.model import build_model
from chimuffin.train.engine import make_optimizer, train_one_epoch

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.stats import cpu_summary  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("CHIMUFFIN_REAL_DATA",
                                REPO.parent / "shared" / "data" / "chihuahua-muffin"))


# --- images -----------------------------------------------------------------------------------

def find_images(max_images: int, workdir: Path) -> tuple[list[Path], str]:
    """Up to max_images files of the real train128/ (sorted, spread over the folders), or of a
    freshly drawn synthetic sample when the real data is absent."""
    root = REAL_DATA / "train128"
    if not root.is_dir():
        from chimuffin.data.sample import write_sample

        write_sample(workdir / "sample", labeled_per_class=max_images // 4,
                     pool=max_images // 2, test_per_class=0, seed=0)
        root = workdir / "sample" / "train128"
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    step = max(1, len(files) // max_images)
    return files[::step][:max_images], str(root)


def label_of(path: Path) -> int:
    # Labels do not change the cost of a step; pool images get alternating ones.
    return {"chihuahua": 0, "muffin": 1}.get(path.parent.name, hash(path.name) % 2)


def reference_loader(files: list[Path], labels: list[int], size: int, batch: int):
    """The starter code's pipeline, scaled to `size` (136/128 resize, then crop `size`)."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Dataset

    tf = T.Compose([
        T.Resize(round(size * 136 / 128)), T.RandomCrop(size), T.RandomHorizontalFlip(),
        T.RandomRotation(10), T.RandomAffine(0, shear=8, scale=(0.85, 1.15)),
        T.ColorJitter(0.15, 0.15, 0.15), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        T.RandomErasing(p=0.05),
    ])

    class Files(Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with Image.open(files[i]) as img:
                return tf(img.convert("RGB")), labels[i]

    loader = DataLoader(Files(), batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    return itertools.chain.from_iterable(itertools.repeat(loader))  # endless epochs


def decode_cache(files: list[Path], size: int) -> np.ndarray:
    cache = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, f in enumerate(files):
        cache[i] = decode_image(f, size).pixels.transpose(2, 0, 1)
    return cache


# --- the two training paths -------------------------------------------------------------------

class ReferencePath:
    name = "reference (PIL, NCHW, b16)"

    def __init__(self, files, labels, size, n_classes, head, dropout):
        self.batches = reference_loader(files, labels, size, 16)
        self.model = build_model(n_classes, head, dropout).train()
        self.opt = make_optimizer(self.model, 5e-4, 5e-4, "default")
        self.batch, self.train_size = 16, size

    def run(self, steps: int) -> int:
        for _ in range(steps):
            x, y = next(self.batches)
            loss = F.cross_entropy(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
        return steps * self.batch


class ChimuffinPath:
    def __init__(self, cache, labels, cfg, spec: str, n_classes, head, dropout):
        parts = spec.split(":")
        self.batch, impl = int(parts[0]), parts[1]
        full = cache.shape[-1]
        self.train_size = int(parts[2]) if len(parts) > 2 and parts[2] else full
        if len(parts) > 3 and parts[3] not in ("bf16", "fp32"):
            raise SystemExit(f"train_throughput: --configs {spec!r}: the 4th field must be bf16 "
                             f"or fp32, not {parts[3]!r}")
        self.bf16 = len(parts) > 3 and parts[3] == "bf16"  # runtime.cpu_bf16
        precision = "bf16" if self.bf16 else "fp32"
        self.name = (f"chimuffin (cache, CL, b{self.batch}, {impl}, {self.train_size}px, "
                     f"{precision})")
        self.cache, self.labels = cache, np.asarray(labels)
        # the reference's grad clip 1.0 and no label smoothing, at this path's batch/precision
        self.cfg = replace(cfg, batch_size=self.batch, label_smoothing=0.0)
        self.model = build_model(n_classes, head, dropout).to(memory_format=CHANNELS_LAST)
        self.opt = make_optimizer(self.model, 5e-4, 5e-4, impl)
        self.g = torch.Generator().manual_seed(0)
        self.out = None if self.train_size == full else self.train_size

    def run(self, steps: int) -> int:
        n = -(-steps * 16 // self.batch) * self.batch  # as many images as 16-image steps
        rows = torch.randint(0, len(self.cache), (n,), generator=self.g).numpy()
        stats = train_one_epoch(self.model, self.cache, rows, self.labels[rows], self.cfg,
                                self.opt, self.g, torch.device("cpu"), cpu_bf16=self.bf16,
                                out_size=self.out)
        return stats.images


# --- FLOPs and the machine's peak -------------------------------------------------------------

def train_flops_per_image(size: int, n_classes, head, dropout) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per image, counted by FlopCounterMode."""
    model = build_model(n_classes, head, dropout).train()
    x = torch.randn(4, 3, size, size)
    with FlopCounterMode(display=False) as fwd:
        out = model(x)
    with FlopCounterMode(display=False) as bwd:
        out.sum().backward()
    f = fwd.get_total_flops() / 4
    return f, f + bwd.get_total_flops() / 4


def best_rate(fn, flops: float, seconds: float = 0.6, reps: int = 3) -> float:
    fn()  # warm-up
    rates = []
    for _ in range(reps):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        rates.append(n * flops / (time.perf_counter() - t0))
    return max(rates)


def peak_flops(seconds: float) -> dict[str, float]:
    """Measured fp32 FLOP/s of a 2048^3 matmul and a ResNet-sized 3x3 convolution."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    x = torch.randn(32, 128, 32, 32).contiguous(memory_format=CHANNELS_LAST)
    w = torch.randn(128, 128, 3, 3).contiguous(memory_format=CHANNELS_LAST)
    conv_flops = 2 * 32 * 128 * 32 * 32 * 128 * 9
    with torch.inference_mode():
        return {"matmul": best_rate(lambda: torch.mm(a, b), 2 * n ** 3, seconds),
                "conv3x3": best_rate(lambda: F.conv2d(x, w, padding=1), conv_flops, seconds)}


# --- evaluation -------------------------------------------------------------------------------

def eval_rate(model, cache: np.ndarray, n: int, embeddings: bool) -> float:
    rows = np.arange(min(n, len(cache)))
    t0 = time.perf_counter()
    predict(model, cache, rows, 128, torch.device("cpu"), with_embeddings=embeddings)
    return len(rows) / (time.perf_counter() - t0)


# --- main -------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--steps", type=int, default=24,
                    help="timed reference steps (batch 16) per round; every chimuffin variant "
                         "trains on the same number of images, in whole batches (default 24)")
    ap.add_argument("--image-size", type=int, default=128, help="cache / full size (128)")
    ap.add_argument("--configs", default="16:default,64:fused",
                    help="chimuffin variants, comma separated BATCH:ADAMW[:TRAIN_SIZE[:bf16]] "
                         "with ADAMW default|fused; bf16 = runtime.cpu_bf16, for CPUs with "
                         "native bf16 (default 16:default,64:fused)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="shorthand for --configs BATCH:fused")
    ap.add_argument("--max-images", type=int, default=512,
                    help="images both paths draw from (default 512)")
    ap.add_argument("--eval-images", type=int, default=512,
                    help="images per evaluation timing (default 512; 0 = skip)")
    ap.add_argument("--peak-seconds", type=float, default=0.6,
                    help="length of each of the 3 timings per peak kernel (default 0.6)")
    ap.add_argument("--threads", type=int, default=0, help="0 = runtime.available_cores()")
    args = ap.parse_args(argv)
    configs = [f"{args.batch_size}:fused"] if args.batch_size else args.configs.split(",")

    threads = args.threads or runtime.available_cores()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    p = load_params(REPO / "params.yaml")
    aug = p.train.augment.__class__(**{**p.train.augment.__dict__,
                                       "resize": round(args.image_size * 136 / 128)})
    cfg = p.train.__class__(**{**p.train.__dict__, "augment": aug})
    n_cls, head, drop = len(p.base.classes), p.train.head, p.train.dropout

    with tempfile.TemporaryDirectory() as tmp:
        files, where = find_images(args.max_images, Path(tmp))
        labels = [label_of(f) for f in files]
        cache = decode_cache(files, args.image_size)
        print(f"torch {torch.__version__}, {threads} threads; {len(files)} images from {where} "
              f"at {args.image_size}px; {args.rounds} rounds x {args.steps} steps per path")
        print(f"cpu: {cpu_summary()}")
        paths = [ReferencePath(files, labels, args.image_size, n_cls, head, drop)]
        paths += [ChimuffinPath(cache, labels, cfg, c, n_cls, head, drop) for c in configs]
        for path in paths:  # warm-up: first-call allocations and kernel selection
            path.run(1)
        rates: dict[str, list[float]] = {path.name: [] for path in paths}
        for r in range(args.rounds):
            for path in paths:
                t0 = time.perf_counter()
                images = path.run(args.steps)
                rates[path.name].append(images / (time.perf_counter() - t0))
            print(f"  round {r + 1}: " + ", ".join(f"{v[-1]:.1f}" for v in rates.values())
                  + " img/s", flush=True)

    peak = peak_flops(args.peak_seconds)
    top = max(peak.values())
    print(f"\nfp32 peak measured: matmul 2048^3 {peak['matmul'] / 1e9:.1f} GFLOP/s, "
          f"conv3x3 {peak['conv3x3'] / 1e9:.1f} GFLOP/s (peak = the larger)")
    ref_rate = statistics.median(rates[paths[0].name])
    print(f"\n{'path':<54} {'img/s':>7} {'x ref':>6} {'GFLOP/img':>10} {'floor img/s':>11} "
          f"{'% peak':>7}")
    for path in paths:
        rate = statistics.median(rates[path.name])
        _, train_flops = train_flops_per_image(path.train_size, n_cls, head, drop)
        print(f"{path.name:<54} {rate:7.1f} {rate / ref_rate:6.2f} {train_flops / 1e9:10.2f} "
              f"{top / train_flops:11.1f} {100 * rate * train_flops / top:6.1f}%")
    fwd, _ = train_flops_per_image(args.image_size, n_cls, head, drop)
    print(f"(training FLOPs counted over forward + backward; forward alone {fwd / 1e9:.2f} "
          f"GFLOP/img at {args.image_size}px; medians over {args.rounds} rounds; % peak is of "
          f"the fp32 peak, which bf16 paths can pass)")

    if args.eval_images:
        model = build_model(n_cls, head, drop).to(memory_format=CHANNELS_LAST)
        eval_rate(model, cache, 128, False)  # warm-up
        ev = [eval_rate(model, cache, args.eval_images, False) for _ in range(args.rounds)]
        em = [eval_rate(model, cache, args.eval_images, True) for _ in range(args.rounds)]
        med, emb = statistics.median(ev), statistics.median(em)
        print(f"\nevaluation (batch 128, channels_last, inference mode): {med:.1f} img/s "
              f"({100 * med * fwd / top:.1f}% of peak); with 512-d embeddings: {emb:.1f} img/s "
              f"({min(args.eval_images, len(cache))} images, median of {args.rounds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ONNX float32 vs static int8 and PyTorch eager, side by side: speed, accuracy.

    python benchmarks/onnx_quantization.py                   # trains briefly on the real seeds
    python benchmarks/onnx_quantization.py --model models/best.pth --limit 500

Labeled evaluation set: the 1,000 reviewed pool images of the real data (reviewed_labels.csv)
when ../shared/data/chihuahua-muffin (or $CHIMUFFIN_REAL_DATA) exists, else the synthetic
sample's pool with its true labels (pool_labels.csv). Without --model, a model is trained for
--epochs on the labeled seed images (never on the evaluation images); static quantisation is
calibrated on those seed images too. All engines run
with the same thread count on the same decoded uint8 images; img/s is the median of --repeats
timed passes (engines interleaved, so load from other processes hits all of them alike).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from chimuffin import runtime
from chimuffin.config import load_params
from chimuffin.data.images import decode_image
from chimuffin.infer.batches import predict, softmax
from chimuffin.infer.onnx_export import export_onnx, read_metadata, run_onnx, session
from chimuffin.model import build_model, load_checkpoint, save_checkpoint
from chimuffin.report.metrics import wilson_interval
from chimuffin.train.engine import make_optimizer, train_one_epoch

REPO = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("CHIMUFFIN_REAL_DATA", REPO.parent / "shared/data/chihuahua-muffin"))


def labeled_sets(classes: list[str]) -> tuple[Path, list[tuple[str, int]], list[tuple[str, int]],
                                              str]:
    """(root, train [(rel path, class index)], eval [...], description)."""
    if (REAL / "reviewed_labels.csv").is_file():
        root, labels_csv = REAL, REAL / "reviewed_labels.csv"
        desc = f"real data: {REAL}, eval = reviewed_labels.csv"
    else:
        from chimuffin.data.sample import write_sample

        root = Path(tempfile.mkdtemp(prefix="chimuffin-bench-"))
        write_sample(root, 40, 400, 0, seed=42)
        labels_csv = root / "pool_labels.csv"
        desc = f"synthetic sample (no real data at {REAL}): eval = its pool"
    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    evals = [(r["relative_path"], classes.index(r["label"])) for r in rows]
    train = [(p.relative_to(root).as_posix(), i) for i, c in enumerate(classes)
             for p in sorted((root / "train128" / c).glob("*.jpg"))]
    return root, train, evals, desc


def decode(root: Path, items: list[tuple[str, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([decode_image(root / p, size).pixels.transpose(2, 0, 1) for p, _ in items])
    return x, np.array([y for _, y in items])


def train_briefly(images, labels, params, epochs: int, path: Path) -> None:
    t = params.train
    torch.manual_seed(params.base.seed)
    model = build_model(len(params.base.classes), t.head, t.dropout)
    opt = make_optimizer(model, t.lr, t.weight_decay)
    g = torch.Generator().manual_seed(params.base.seed)
    rows = np.arange(len(images))
    for epoch in range(1, epochs + 1):
        s = train_one_epoch(model, images, rows, labels, t, opt, g, torch.device("cpu"))
        print(f"  train epoch {epoch}/{epochs}: loss {s.loss:.3f}, acc {s.acc:.3f}", flush=True)
    save_checkpoint(path, model, {"classes": list(params.base.classes), "head": list(t.head),
                                  "dropout": t.dropout,
                                  "image_size": params.base.image_size,
                                  "epoch": epochs, "val_accuracy": None})


def timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint to use (default: train one briefly)")
    ap.add_argument("--epochs", type=int, default=8, help="brief training epochs (no --model)")
    ap.add_argument("--limit", type=int, default=0, help="evaluate on the first N images only")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="0 = every free core")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    params = load_params(REPO / "params.yaml")
    threads = args.threads or runtime.available_cores()
    runtime.setup(params.base.seed, threads)
    classes = list(params.base.classes)
    root, train_items, eval_items, desc = labeled_sets(classes)
    if args.limit:
        eval_items = eval_items[:args.limit]
    work = Path(tempfile.mkdtemp(prefix="chimuffin-onnx-"))
    ckpt = Path(args.model) if args.model else work / "brief.pth"
    size = params.base.image_size
    if args.model:
        size = int(load_checkpoint(ckpt)[1]["image_size"])
    print(f"data: {desc}; {len(eval_items)} eval images at {size} px, {threads} thread(s), "
          f"batch {args.batch_size}; torch {torch.__version__}")
    if not args.model:
        print(f"training {args.epochs} epochs on {len(train_items)} labeled seed images")
        train_briefly(*decode(root, train_items, size), params, args.epochs, ckpt)
    x, y = decode(root, eval_items, size)

    model, meta = load_checkpoint(ckpt)
    files = {"onnx fp32": work / "model.onnx", "onnx int8 st": work / "model.static.onnx"}
    calibration = decode(root, train_items, size)[0]
    export_onnx(model, meta, files["onnx fp32"])
    export_onnx(model, meta, files["onnx int8 st"], quantize="static", calibration=calibration)
    sessions = {k: session(f, threads) for k, f in files.items()}
    model = model.to(memory_format=torch.channels_last)
    rows, cpu = np.arange(len(x)), torch.device("cpu")

    runs = {"torch fp32": lambda: softmax(predict(model, x, rows, args.batch_size, cpu)[0]),
            **{k: (lambda s=s: run_onnx(s, x, args.batch_size)) for k, s in sessions.items()}}
    probs = {k: fn() for k, fn in runs.items()}  # also the warm-up pass
    speed: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            speed[k].append(timed(fn, len(x)))

    ref = probs["torch fp32"]
    sizes = {"torch fp32": ckpt.stat().st_size, **{k: f.stat().st_size for k, f in files.items()}}
    print(f"\n{'engine':<13} {'img/s':>7} {'vs onnx fp32':>12} {'accuracy (95% CI)':>24} "
          f"{'agree':>6} {'max|dp|':>8} {'MB':>6}")
    base_speed = statistics.median(speed["onnx fp32"])
    for k in runs:
        pred = probs[k].argmax(1)
        k_ok = int((pred == y).sum())
        lo, hi = wilson_interval(k_ok, len(y))
        ips = statistics.median(speed[k])
        print(f"{k:<13} {ips:7.1f} {ips / base_speed:11.2f}x {k_ok / len(y):8.4f} "
              f"({lo:.3f}-{hi:.3f})   {(pred == ref.argmax(1)).mean():6.4f} "
              f"{np.abs(probs[k] - ref).max():8.2e} {sizes[k] / 1e6:6.1f}")
    acc = {k: (probs[k].argmax(1) == y).mean() for k in runs}
    fp = probs["onnx fp32"].argmax(1)
    print("\nagree: same predicted class as torch fp32; max|dp|: largest probability difference")
    k = "onnx int8 st"
    changed = int((probs[k].argmax(1) != fp).sum())
    print(f"{k} vs onnx fp32: speed {statistics.median(speed[k]) / base_speed:.2f}x, "
          f"accuracy {100 * (acc[k] - acc['onnx fp32']):+.2f} points, predictions changed "
          f"on {changed} of {len(y)} images, file size {sizes[k] / sizes['onnx fp32']:.2f}x")
    print(f"  {read_metadata(files[k])['chimuffin.quantization']}")
    print(f"img/s per repeat: { {k: [round(v, 1) for v in s] for k, s in speed.items()} }")

if __name__ == "__main__":
    main()

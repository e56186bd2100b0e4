"""The ResNet-18 training step alone (no data loading): memory layout, torch.compile, bf16.

Answers "is the model step itself the limit?": random inputs, one fixed batch, fused AdamW,
forward + backward + step, timed after warm-up steps (the compile time is printed apart).
The bf16 variants run the step under engine.autocast with cpu_bf16 (runtime.cpu_bf16: fp32 weights
and optimizer), which only pays off on CPUs with native bf16 (AVX512_BF16 / AMX).

    python benchmarks/model_step.py                     # batch 64, 128 px, 6 timed steps
    python benchmarks/model_step.py --variants cl --steps 2 --batch-size 8   # smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from chimuffin import runtime
from chimuffin.model import build_model
from chimuffin.train.engine import autocast

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.stats import cpu_summary  # noqa: E402

# name: (channels_last, torch.compile, bf16 autocast)
VARIANTS = {"nchw": (False, False, False), "cl": (True, False, False),
            "cl+compile": (True, True, False), "nchw+compile": (False, True, False),
            "cl+bf16": (True, False, True), "nchw+bf16": (False, False, True),
            "cl+compile+bf16": (True, True, True)}


def step_rate(channels_last: bool, compiled: bool, bf16: bool, batch_size: int, size: int,
              steps: int, warmup: int = 2) -> tuple[float, float]:
    """(img/s over the timed steps, seconds spent in the warm-up steps incl. compiling)."""
    torch.manual_seed(0)
    model = build_model(2, [256, 128], 0.3)
    x = torch.randn(batch_size, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch_size,))
    opt = torch.optim.AdamW(model.parameters(), 5e-4, fused=True)
    forward = torch.compile(model) if compiled else model
    start = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            timed = time.perf_counter()
        opt.zero_grad()
        with autocast(torch.device("cpu"), cpu_bf16=bf16):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
    return batch_size * steps / (time.perf_counter() - timed), timed - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args(argv)
    runtime.setup(0)
    print(f"cpu: {cpu_summary()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch "
          f"{args.batch_size}, {args.image_size}px, {args.steps} timed steps")
    for name in args.variants:
        rate, warm = step_rate(*VARIANTS[name], args.batch_size, args.image_size, args.steps)
        print(f"{name:<14} {rate:6.1f} img/s   (warm-up {warm:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

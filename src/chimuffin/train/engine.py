"""Training as plain functions that return numbers: one epoch, the optimizer and learning-rate
schedule, and fit (epochs, validation, the best epoch).

Images come from the uint8 tensor cache (N,3,S,S), indexed by manifest row `idx`; labels are
class indices (a LabeledSet holds the three); the recipe is the `train` group of params.yaml
(config.Train), and bf16 on the CPU is the `runtime` group's cpu_bf16. Nothing here reads
files. Inference (no training) is infer/batches.py.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chimuffin import runtime
from chimuffin.config import GRAD_CLIP
from chimuffin.infer.batches import CHANNELS_LAST, batches, load_batch, per_sample_loss, predict
from chimuffin.train.augment import augment_batch
from chimuffin.train.regularize import Mix, WeightEMA, mix_batch
from chimuffin.train.schedules import lr_factor, resolution_at


def autocast(device: torch.device, cpu_bf16: bool = False):
    # Training only: bf16 autocast on CUDA (fp32 weights, optimizer state, BatchNorm statistics
    # and loss; bf16 has fp32's range, so no loss scaling). On CPU only when asked
    # (runtime.cpu_bf16): it pays off with native bf16 and is slower without (measured:
    # benchmarks/README.md, training throughput).
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_cpu_bf16(cpu_bf16: bool | str, native: bool) -> bool:
    """runtime.cpu_bf16 resolved on this CPU: true, or auto where the CPU has native bf16."""
    return cpu_bf16 is True or (cpu_bf16 == "auto" and native)


def check_cpu_bf16(cpu_bf16: bool | str, device: torch.device, native: bool) -> None:
    """runtime.cpu_bf16 true on a CPU without bf16 instructions would silently train slower:
    refuse (`auto` falls back to fp32 there instead)."""
    if cpu_bf16 is True and device.type == "cpu" and not native:
        from chimuffin.errors import UserError

        raise UserError("params: runtime.cpu_bf16 is true but this CPU has no native bf16 "
                        "(flags avx512_bf16 or amx_bf16); emulated bf16 trains slower than "
                        "fp32: set it to false or auto")


@dataclass
class EpochStats:
    loss: float
    acc: float
    images: int


@dataclass(frozen=True)
class LabeledSet:
    """Labeled images: rows of the uint8 cache and their class indices (the cache is shared,
    never copied)."""
    images: np.ndarray
    rows: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def train_one_epoch(model: nn.Module, images: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                    cfg, opt: torch.optim.Optimizer, g: torch.Generator, device: torch.device,
                    *, cpu_bf16: bool | str = False, step_lr: Callable[[], None] | None = None,
                    ema: WeightEMA | None = None, out_size: int | None = None,
                    progress: Callable[[int], None] | None = None) -> EpochStats:
    """One shuffled pass over `rows` with the recipe in cfg (config.Train: batch size,
    augmentation, mixup/cutmix, label smoothing, grad clipping) and cpu_bf16 (runtime).
    step_lr is called after every optimizer step (the learning-rate schedule), ema updated
    after it; out_size is this epoch's training resolution (None: the cache's)."""
    mix = Mix(cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob)
    bf16 = uses_cpu_bf16(cpu_bf16, runtime.has_native_bf16())
    model.train()
    n_classes = model.fc[-1].out_features
    total_loss, correct, seen = 0.0, 0, 0
    for pos in batches(len(rows), cfg.batch_size, g, min_size=2):
        x = augment_batch(load_batch(images, rows[pos], device), cfg.augment, g, out_size)
        y = torch.from_numpy(labels[pos]).to(device)
        target = y
        if mix.on:
            x, target = mix_batch(x, y, n_classes, mix, g)  # soft targets (rows sum to 1)
        x = x.contiguous(memory_format=CHANNELS_LAST)
        with autocast(device, bf16):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), target, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        if step_lr:
            step_lr()
        if ema is not None:
            ema.update(model)
        total_loss += loss.item() * len(pos)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(pos)
        if progress:
            progress(len(pos))
    return EpochStats(total_loss / max(seen, 1), correct / max(seen, 1), seen)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float,
                   impl: str = "default") -> torch.optim.Optimizer:
    """AdamW; `impl` picks torch's kernels: default (per-parameter loop on CPU) or fused (one
    kernel; on CPU too since torch 2.4). Same math for both."""
    kernels = {"default": {}, "fused": {"fused": True}}[impl]
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, **kernels)


def make_lr_schedule(opt: torch.optim.Optimizer, cfg, steps_per_epoch: int
                     ) -> Callable[[], None]:
    """The callback to call after every optimizer step for cfg.scheduler."""
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                   steps_per_epoch=max(1, steps_per_epoch),
                                                   pct_start=0.15).step

    def factor(step: int) -> float:
        return lr_factor(step, steps_per_epoch, cfg.scheduler, cfg.epochs, cfg.warmup_epochs,
                         cfg.t0)

    # Stepped per batch; cosine_restarts still changes only at epoch boundaries, like the
    # reference's CosineAnnealingWarmRestarts stepped once per epoch.
    return torch.optim.lr_scheduler.LambdaLR(opt, factor).step


@dataclass
class EpochResult:
    epoch: int
    lr: float
    train: EpochStats
    val_loss: float  # NaN for an epoch that was not validated (train.val_every)
    val_acc: float
    seconds: float
    image_size: int | None = None  # training resolution of this epoch (None = the cache size)
    model: nn.Module | None = None  # the weights validated: the EMA copy when ema_decay > 0


def evaluate_rows(model: nn.Module, images: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                  batch_size: int, device: torch.device,
                  tta_flip: bool = False) -> tuple[float, float]:
    """(mean loss, accuracy) of the model on labeled rows."""
    logits, _ = predict(model, images, rows, batch_size, device, tta_flip=tta_flip)
    losses = per_sample_loss(logits, labels)
    return float(losses.mean()), float((logits.argmax(1) == labels).mean())


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one epoch: the batches train_one_epoch makes (a last batch of one
    image is dropped)."""
    return sum(1 for _ in batches(n_train, batch_size, min_size=2))


def with_min_steps(recipe, n_train: int):
    """The recipe with its epochs grown to reach recipe.min_steps optimizer steps on n_train
    images (unchanged when it already does, or min_steps is 0). Callers apply it before fit and
    before anything that counts epochs, so every epoch-based setting sees the same count."""
    per_epoch = max(1, steps_per_epoch(n_train, recipe.batch_size))
    epochs = max(recipe.epochs, math.ceil(recipe.min_steps / per_epoch))
    return recipe if epochs == recipe.epochs else replace(recipe, epochs=epochs)


def fit(model: nn.Module, train: LabeledSet, val: LabeledSet, *, recipe, seed: int,
        device: torch.device, cpu_bf16: bool | str = False, eval_batch_size: int = 128,
        on_epoch: Callable[[EpochResult, bool], None] | None = None,
        progress: Callable[[int], None] | None = None) -> EpochResult:
    """Train on `train` for recipe.epochs (config.Train), validating on `val`; call
    on_epoch(result, is_best) after each epoch; return the best epoch. result.model holds the
    validated weights (the EMA copy when recipe.ema_decay > 0): save that one.

    Validation runs every recipe.val_every epochs and after the last. Best = highest validation
    accuracy among the validated epochs, ties broken by lower validation loss (never test)."""
    import time

    cfg = recipe
    check_cpu_bf16(cpu_bf16, device, runtime.has_native_bf16())
    model.to(device).to(memory_format=CHANNELS_LAST)
    g = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.optimizer_impl)
    steps = steps_per_epoch(len(train), cfg.batch_size)
    step_lr = make_lr_schedule(opt, cfg, steps)
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    full = int(train.images.shape[-1])
    best: EpochResult | None = None
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        size = resolution_at(epoch - 1, cfg.epochs, full, cfg.res_min, cfg.res_ramp_start)
        stats = train_one_epoch(model, train.images, train.rows, train.labels, cfg, opt, g,
                                device, cpu_bf16=cpu_bf16, step_lr=step_lr, ema=ema,
                                out_size=None if size == full else size, progress=progress)
        judged = ema.model if ema is not None else model
        vloss = vacc = math.nan
        validated = epoch % cfg.val_every == 0 or epoch == cfg.epochs
        if validated:
            vloss, vacc = evaluate_rows(judged, val.images, val.rows, val.labels,
                                        eval_batch_size, device, tta_flip=cfg.val_tta_flip)
        res = EpochResult(epoch, lr, stats, vloss, vacc, time.perf_counter() - t0, size, judged)
        is_best = validated and (best is None or (vacc, -vloss) > (best.val_acc, -best.val_loss))
        if is_best:
            best = res
        if on_epoch:
            on_epoch(res, is_best)
    return best

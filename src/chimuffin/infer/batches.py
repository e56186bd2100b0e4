"""Inference as plain functions: a model over the uint8 image cache in batches, to logits and
512-d embeddings (fp32, deterministic preprocessing), and the numbers derived from logits.

Images come from the cache (N,3,S,S), indexed by manifest row `idx`. Training (engine.py) reads
its batches the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from chimuffin.data.manifest import read_rows
from chimuffin.infer.preprocess import preprocess
from chimuffin.model import forward_with_embedding

CHANNELS_LAST = torch.channels_last


def batches(n: int, batch_size: int, g: torch.Generator | None = None,
            min_size: int = 1) -> Iterator[np.ndarray]:
    """Positions 0..n-1 in batches, shuffled when g is given; a tail smaller than min_size is
    dropped (BatchNorm cannot train on a single sample)."""
    order = torch.randperm(n, generator=g).numpy() if g is not None else np.arange(n)
    for start in range(0, n, batch_size):
        chunk = order[start:start + batch_size]
        if len(chunk) >= min_size:
            yield chunk


def load_batch(images: np.ndarray, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    # Sorted reads are kinder to a memory-mapped cache; the order is restored after.
    order = np.argsort(rows, kind="stable")
    data = np.empty((len(rows), *images.shape[1:]), dtype=np.uint8)
    data[order] = read_rows(images, rows[order])
    t = torch.from_numpy(data)
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


@torch.inference_mode()
def predict(model: nn.Module, images: np.ndarray, rows: np.ndarray, batch_size: int,
            device: torch.device, tta_flip: bool = False, out_size: int | None = None,
            with_embeddings: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (N,C) as float32, and 512-d embeddings when asked; flip TTA averages logits."""
    model.eval()
    all_logits, all_emb = [], []
    for pos in batches(len(rows), batch_size):
        x = preprocess(load_batch(images, rows[pos], device), out_size)
        x = x.contiguous(memory_format=CHANNELS_LAST)
        # fp32 on every device: inference is cheap next to training, and its logits and
        # embeddings are products (bf16 would round confidences and losses to ~3 digits).
        logits, emb = forward_with_embedding(model, x)
        if tta_flip:
            logits = (logits + model(torch.flip(x, dims=[3]))) / 2
        all_logits.append(logits.float().cpu().numpy())
        if with_embeddings:
            all_emb.append(emb.float().cpu().numpy())
    n_classes = model.fc[-1].out_features
    logits = np.concatenate(all_logits) if all_logits else np.zeros((0, n_classes), np.float32)
    emb = None
    if with_embeddings:
        emb = np.concatenate(all_emb) if all_emb else np.zeros((0, 512), np.float32)
    return logits, emb


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def per_sample_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy per sample; NaN where the label is unknown (< 0)."""
    p = softmax(logits.astype(np.float64))
    out = np.full(len(labels), np.nan)
    known = labels >= 0
    out[known] = -np.log(np.clip(p[known, labels[known]], 1e-12, None))
    return out

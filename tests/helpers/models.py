"""A tiny untrained model checkpoint for tests that need a model file but not a good model."""

from __future__ import annotations

from pathlib import Path

CLASSES = ["chihuahua", "muffin"]
SIZE = 32  # the checkpoint's image_size
HEAD = [8]


def write_tiny_checkpoint(path: Path) -> Path:
    """ResNet-18 with an 8-unit head, seeded, its BatchNorm statistics spread so predictions are
    not all ~0.5; saved the way the train stage saves (with metadata)."""
    import torch

    from chimuffin.model import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model(len(CLASSES), HEAD, 0.0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    save_checkpoint(path, model, {"classes": CLASSES, "head": HEAD, "dropout": 0.0,
                                  "image_size": SIZE, "epoch": 1, "val_accuracy": 0.5})
    return path

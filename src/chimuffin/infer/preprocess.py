"""What every image goes through before the model: uint8 to float, an optional resize, the
ImageNet normalisation. Evaluation, embedding, prediction and ONNX export use exactly this;
training augmentation (train/augment.py) ends with the same normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float().div_(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def preprocess(images_u8: torch.Tensor, out_size: int | None = None) -> torch.Tensor:
    """uint8 (B,3,S,S) -> normalised float (B,3,out,out): no randomness, an optional resize."""
    x = to_float(images_u8)
    if out_size and out_size != x.shape[-1]:
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", antialias=True,
                          align_corners=False)
    return normalize(x)

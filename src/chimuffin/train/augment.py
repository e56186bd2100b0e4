"""Per-sample random augmentation applied to a whole batch at once, as tensor ops.

The reference recipe ran torchvision transforms one PIL image at a time: resize to 136 and
random-crop 128, horizontal flip, rotation, affine shear and scale, colour jitter, random
erasing. Here every geometric part is folded into one affine matrix per sample and applied with
a single `grid_sample`, so the batch never leaves tensor land. Parameters are drawn per sample
from the same ranges as the reference. Evaluation's deterministic path is infer/preprocess.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from chimuffin.infer.preprocess import normalize, to_float


@dataclass(frozen=True)
class Draws:
    """The random numbers of one batch, kept so tests can check their ranges."""
    flip: torch.Tensor  # (B,) bool
    angle: torch.Tensor  # (B,) degrees
    shear: torch.Tensor  # (B,) degrees
    scale: torch.Tensor  # (B,)
    shift: torch.Tensor  # (B,2) normalised crop offset
    jitter: torch.Tensor  # (B,3) brightness, contrast, saturation factors
    erase: torch.Tensor  # (B,) bool


def draw(batch: int, cfg, image_size: int, g: torch.Generator) -> Draws:
    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(batch, *shape, generator=g)

    crop = image_size / cfg.resize  # random crop of `image_size` out of a `resize` image
    return Draws(
        flip=torch.rand(batch, generator=g) < cfg.flip_p,
        angle=u(-cfg.rotation_deg, cfg.rotation_deg),
        shear=u(-cfg.shear_deg, cfg.shear_deg),
        scale=u(cfg.scale_min, cfg.scale_max),
        shift=u(-(1 - crop), 1 - crop, 2),
        jitter=u(1 - cfg.jitter, 1 + cfg.jitter, 3),
        erase=torch.rand(batch, generator=g) < cfg.erase_p,
    )


def affine_matrices(d: Draws, crop: float) -> torch.Tensor:
    """(B,2,3) maps from output to input coordinates (what affine_grid expects)."""
    a = torch.deg2rad(d.angle)
    sh = torch.tan(torch.deg2rad(d.shear))
    cos, sin = torch.cos(a), torch.sin(a)
    # Forward transform = rotation @ shear-x, scaled; the grid needs its inverse.
    fwd = torch.zeros(len(a), 2, 2)
    fwd[:, 0, 0], fwd[:, 0, 1] = cos, cos * sh - sin
    fwd[:, 1, 0], fwd[:, 1, 1] = sin, sin * sh + cos
    fwd = fwd * d.scale[:, None, None]
    inv = torch.linalg.inv(fwd) * crop
    flip = torch.where(d.flip, -1.0, 1.0)
    inv[:, :, 0] = inv[:, :, 0] * flip[:, None]
    return torch.cat([inv, d.shift[:, :, None]], dim=2)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def color_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation per sample on x in [0,1] (B,3,H,W)."""
    b, c, s = (factors[:, i, None, None, None] for i in range(3))
    x = (x * b).clamp(0, 1)
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + (x - mean) * c).clamp(0, 1)
    gray = _grayscale(x)
    return (gray + (x - gray) * s).clamp(0, 1)


def erase_boxes(mask: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """(B,1,H,W) bool: one box per selected sample, area 2-33% and aspect 0.3-3.3 (torchvision's
    RandomErasing defaults)."""
    n = len(mask)
    area = (0.02 + 0.31 * torch.rand(n, generator=g)) * size * size
    log_r = math.log(0.3) + (math.log(3.3) - math.log(0.3)) * torch.rand(n, generator=g)
    ratio = torch.exp(log_r)
    h = torch.sqrt(area * ratio).clamp(1, size).long()
    w = torch.sqrt(area / ratio).clamp(1, size).long()
    top = (torch.rand(n, generator=g) * (size - h + 1)).long()
    left = (torch.rand(n, generator=g) * (size - w + 1)).long()
    ys = torch.arange(size)[None, :, None]
    xs = torch.arange(size)[None, None, :]
    box = ((ys >= top[:, None, None]) & (ys < (top + h)[:, None, None])
           & (xs >= left[:, None, None]) & (xs < (left + w)[:, None, None]))
    return (box & mask[:, None, None])[:, None]


def augment_batch(images_u8: torch.Tensor, cfg, g: torch.Generator,
                  out_size: int | None = None) -> torch.Tensor:
    """uint8 (B,3,S,S) -> normalised float (B,3,out,out), randomly augmented per sample.

    Random numbers come from `g` on the CPU, so results do not depend on the device."""
    b, _, s, _ = images_u8.shape
    out = out_size or s
    d = draw(b, cfg, s, g)
    theta = affine_matrices(d, crop=s / cfg.resize).to(images_u8.device)
    x = to_float(images_u8)
    grid = F.affine_grid(theta, [b, 3, out, out], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = color_jitter(x, d.jitter.to(x.device))
    x = normalize(x)
    boxes = erase_boxes(d.erase, out, g).to(x.device)
    return torch.where(boxes, torch.zeros((), device=x.device), x)

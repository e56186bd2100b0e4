"""The training recipe's regularizers: mixup/cutmix of a batch, and an exponential moving
average (EMA) of the weights.

engine.train_one_epoch applies them; both are off at their reference settings (mix_prob 0,
ema_decay 0), so params.yaml can reproduce the reference recipe exactly.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# --- mixup / cutmix ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Mix:
    mixup_alpha: float
    cutmix_alpha: float
    prob: float

    @property
    def on(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def _numpy_rng(g: torch.Generator) -> np.random.Generator:
    # torch has no seeded Beta sampler; derive a numpy one from the training generator.
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))


def cutmix_box(size: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box covering about 1-lam of a size x size image, centred
    uniformly and clipped at the borders (Yun et al. 2019)."""
    cut = math.sqrt(1.0 - lam)
    h = w = int(size * cut)
    cy, cx = int(rng.integers(size)), int(rng.integers(size))
    top, bottom = max(cy - h // 2, 0), min(cy + h // 2, size)
    left, right = max(cx - w // 2, 0), min(cx + w // 2, size)
    return top, bottom, left, right


def mix_batch(x: torch.Tensor, y: torch.Tensor, n_classes: int, mix: Mix, g: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix one batch with a shuffled copy of itself; returns (images, soft targets)
    whose rows sum to 1. With probability 1-prob the batch is left alone (one-hot targets);
    when both alphas are set, each mixed batch uses one of the two at random."""
    rng = _numpy_rng(g)
    targets = nn.functional.one_hot(y, n_classes).to(x.dtype)
    if rng.random() >= mix.prob:
        return x, targets
    use_cutmix = mix.cutmix_alpha > 0 and (mix.mixup_alpha <= 0 or rng.random() < 0.5)
    alpha = mix.cutmix_alpha if use_cutmix else mix.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=g).to(x.device)
    if use_cutmix:
        size = x.shape[-1]
        top, bottom, left, right = cutmix_box(size, lam, rng)
        x = x.clone()
        x[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (size * size)  # the area actually pasted
    else:
        x = lam * x + (1.0 - lam) * x[perm]
    return x, lam * targets + (1.0 - lam) * targets[perm]


# --- weight averaging -------------------------------------------------------------------------

def ema_decay_at(updates: int, decay: float) -> float:
    """Decay for the `updates`-th update: warms up as (1+n)/(10+n) so the average is not
    dominated by the random initial weights when a run has few steps (a common EMA warm-up)."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


@torch.no_grad()
def ema_update_(averages: list[torch.Tensor], values: list[torch.Tensor], decay: float) -> None:
    """In place: avg = decay * avg + (1 - decay) * value for float tensors; integer tensors
    (BatchNorm's num_batches_tracked) are copied."""
    for a, v in zip(averages, values, strict=True):
        if a.dtype.is_floating_point:
            a.lerp_(v, 1.0 - decay)
        else:
            a.copy_(v)


class WeightEMA:
    """A copy of the model holding the moving average of its parameters AND its BatchNorm
    running statistics (averaging only the parameters would pair them with the live model's
    statistics, which belong to different weights)."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0

    def update(self, model: nn.Module) -> None:
        self.updates += 1
        ema_update_(list(self.model.state_dict().values()), list(model.state_dict().values()),
                    ema_decay_at(self.updates, self.decay))

"""The training recipe's schedules as small pure functions: the learning rate per optimizer
step and the training resolution per epoch.

engine.fit follows them; at their reference settings they reproduce the reference recipe
exactly (regularize.py holds the recipe's other moving parts: mixup/cutmix and weight EMA).
"""

from __future__ import annotations

import math

from chimuffin.config import RES_RAMP_END, T_MULT

# --- learning rate ----------------------------------------------------------------------------

def _restart_phase(epoch: int, t0: int, t_mult: int) -> float:
    """Position (0..1) inside the current cosine cycle after `epoch` whole epochs."""
    t_cur, t_i = epoch, t0
    while t_cur >= t_i:
        t_cur -= t_i
        t_i *= t_mult
    return t_cur / t_i


def lr_factor(step: int, steps_per_epoch: int, schedule: str, epochs: int,
              warmup_epochs: float = 0.0, t0: int = 10, t_mult: int = T_MULT) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based).

    - a linear warm-up over the first `warmup_epochs` (in steps: 1/W, 2/W, ... 1), then
    - `cosine`: one half-cosine from the peak down to ~0 at the last step;
    - `cosine_restarts`: torch's CosineAnnealingWarmRestarts stepped once per epoch (the
      reference recipe), counted from the end of the warm-up.
    """
    spe = max(1, steps_per_epoch)
    warm = round(warmup_epochs * spe)
    if step < warm:
        return (step + 1) / warm
    if schedule == "cosine":
        total = max(1, epochs * spe - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, total) / total))
    if schedule == "cosine_restarts":
        return 0.5 * (1.0 + math.cos(math.pi * _restart_phase((step - warm) // spe, t0, t_mult)))
    raise ValueError(f"no per-step factor for schedule {schedule!r}")


# --- resolution -------------------------------------------------------------------------------

def resolution_at(epoch: int, epochs: int, full: int, res_min: int, ramp_start: float,
                  ramp_end: float = RES_RAMP_END, multiple: int = 16) -> int:
    """Training image size for 0-based `epoch`: res_min until ramp_start (a fraction of the
    epochs), a linear ramp to `full` at ramp_end, then full. Sizes are rounded to `multiple`
    (kernels like round shapes); the last epoch always trains at full size, so BatchNorm
    statistics match the validation size. res_min 0 = full size throughout."""
    low = min(res_min, full) if res_min > 0 else full
    if low >= full or epoch >= epochs - 1:
        return full
    f = epoch / epochs
    if f >= ramp_end:
        size = float(full)
    elif f < ramp_start:
        size = float(low)
    else:
        size = low + (full - low) * (f - ramp_start) / (ramp_end - ramp_start)
    size = multiple * round(size / multiple)
    return int(min(full, max(low, size)))

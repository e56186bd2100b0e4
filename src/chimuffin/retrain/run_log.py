"""Where a pipeline run is, read from its log as it grows: the stage DVC runs (`Running stage
'X'`) and, inside the train stage, its epoch (`train: epoch k/E:`, one line per epoch when the
stage's stdout is not a terminal, flushed as it is printed)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

STAGE_LINE = re.compile(r"^Running stage '([^']+)'", re.M)
EPOCH_LINE = re.compile(r"^train: epoch (\d+)/(\d+):", re.M)


@dataclass(frozen=True)
class Step:
    stage: str = ""     # "" before DVC started a stage
    epoch: int = 0      # the train stage's last finished epoch (0: none yet, or not train)
    epochs: int = 0

    def text(self) -> str:
        if not self.stage:
            return "preparing"
        if self.stage == "train" and self.epochs:
            return f"stage train, epoch {self.epoch}/{self.epochs}"
        return f"stage {self.stage}"

    def public(self) -> dict:
        return {"stage": self.stage, "epoch": self.epoch, "epochs": self.epochs,
                "text": self.text()}


def step_from_log(text: str) -> Step:
    """The last stage started, and the last epoch line printed since the train stage started."""
    stages = list(STAGE_LINE.finditer(text))
    if not stages:
        return Step()
    last = stages[-1]
    if last.group(1) != "train":
        return Step(last.group(1))
    epochs = EPOCH_LINE.findall(text, last.end())
    if not epochs:
        return Step("train")
    return Step("train", int(epochs[-1][0]), int(epochs[-1][1]))


def step_of(path: Path) -> Step:
    """The step of the run logging to `path` (Step() when the log cannot be read yet)."""
    try:
        return step_from_log(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return Step()

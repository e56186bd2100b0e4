"""Where a running background run is, for the top bar: its stage and epoch (retrain/run_log.py
reads them from the run's log as it grows) and, in the train stage, the time left that the
stage's own last epoch line printed."""

from __future__ import annotations

import re
from pathlib import Path

from chimuffin.retrain.run_log import STAGE_LINE, step_from_log

# the train stage's epoch line ends "...; 1m00s elapsed, about 3m00s left" (stages/train.py)
LEFT = re.compile(r"^train: epoch \d+/\d+:.*, about (\S+) left$", re.M)


def running_step(log_file: str) -> dict | None:
    """{"stage", "epoch", "epochs", "text", "left"} of the run logging to `log_file`; None
    when it cannot be read (yet)."""
    try:
        text = Path(log_file).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    step = step_from_log(text)
    stages = list(STAGE_LINE.finditer(text))
    since = stages[-1].end() if stages else 0
    left = LEFT.findall(text, since) if step.stage == "train" else []
    return {**step.public(), "left": left[-1] if left else None}

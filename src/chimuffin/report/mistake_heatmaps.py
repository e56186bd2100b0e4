"""The report's most confident mistakes with their heatmaps: each image beside its Grad-CAM
overlay for the class the model predicted (what drove the wrong answer; the evaluate stage
computes the overlays). A pure function of the images and overlays, so the figure is
byte-identical across `dvc repro -f`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

PAIRS_PER_ROW = 4


def mistakes_heatmaps_png(mistakes: pd.DataFrame, pixels: np.ndarray, overlays: list[np.ndarray],
                          out_path: Path, per_row: int = PAIRS_PER_ROW) -> None:
    """Pairs (image (3,S,S) | its overlay (S,S,3)), captioned `#i split: label -> prediction
    score`; with no mistakes, a figure that says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(mistakes)
    rows, cols = (math.ceil(n / per_row), 2 * per_row) if n else (1, 1)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * per_row * 1.6, rows * 2.0), dpi=80,
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (_, r) in enumerate(mistakes.iterrows()):
        left, right = axes.flat[2 * i], axes.flat[2 * i + 1]
        left.imshow(pixels[i].transpose(1, 2, 0))
        right.imshow(overlays[i])
        left.set_title(f"#{i + 1} {r['split']}: {r['label']}", fontsize=8)
        right.set_title(f"-> {r['prediction']} {r['confidence']:.2f}", fontsize=8)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no mistakes on labeled train/validation images: "
                        "no heatmaps", ha="center", va="center", fontsize=10)
    fig.suptitle("Most confident mistakes and their heatmaps for the predicted class "
                 "(red: the strongest evidence)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path, format="png", metadata={"Software": None})
    plt.close(fig)

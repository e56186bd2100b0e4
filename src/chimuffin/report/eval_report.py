"""The evaluate stage's human-readable report (report.md) and its mistakes thumbnail grid.

Everything here is a pure function of its inputs (no timestamps), so the report is
byte-identical across `dvc repro -f`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

N_MISTAKES = 16
MISTAKE_SPLITS = ("train", "val")  # never test: looking at test mistakes is tuning on test


def confident_mistakes(pred: pd.DataFrame, classes: list[str], n: int = N_MISTAKES,
                       ) -> pd.DataFrame:
    """Labeled train/validation images the model gets wrong, most confident first (ties by
    path). Confident mistakes on training images are often label errors."""
    m = pred[pred["split"].isin(MISTAKE_SPLITS) & pred["label"].isin(classes)
             & (pred["prediction"] != pred["label"])]
    return m.sort_values(["confidence", "path"], ascending=[False, True], kind="stable").head(n)


def mistakes_png(mistakes: pd.DataFrame, idx: np.ndarray, images: np.ndarray,
                 out_path: Path, cols: int = 4) -> None:
    """A grid of thumbnails from the uint8 image cache, captioned label -> prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(mistakes)
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.5), dpi=80, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, (pos, r)) in enumerate(zip(axes.flat, mistakes.iterrows(), strict=False), 1):
        ax.imshow(np.asarray(images[idx[pos]]).transpose(1, 2, 0))
        ax.set_title(f"#{i} {r['split']}: {r['label']}\n-> {r['prediction']} "
                     f"{r['confidence']:.2f}", fontsize=8)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no mistakes on labeled\ntrain/validation images",
                        ha="center", va="center", fontsize=10)
    fig.suptitle("Most confident mistakes (labeled train/validation images)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path, format="png", metadata={"Software": None})
    plt.close(fig)


def _table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(map(str, r)) + " |" for r in (header, sep, *rows)]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def data_section(summary: dict, classes: list[str], fingerprint: str) -> list[str]:
    counts = summary["by_split_label"]
    labels = [*classes, "undefined"]
    rows = []
    for split in ("train", "val", "test"):
        row = [counts.get(f"{split}/{lbl}", 0) for lbl in labels]
        if sum(row):
            rows.append([split, *row, sum(row)])
    lines = ["## Data version", "",
             f"`data/clean`: {summary['images']} images (manifest sha1 `{fingerprint}`), "
             f"{summary['decisions']} label decisions applied, "
             f"{summary['duplicates_dropped']} identical copies dropped, "
             f"{len(summary['label_conflicts'])} label conflicts.", ""]
    lines += _table(["split", *labels, "total"], rows)
    sources = ", ".join(f"{k} {v}" for k, v in sorted(summary["by_label_source"].items()))
    return [*lines, "", f"Label sources: {sources}.", ""]


def recipe_section(diff: list[tuple[str, object, object]], reference_name: str) -> list[str]:
    lines = ["## Recipe", ""]
    if not diff:
        return [*lines, f"Same as the reference recipe (`{reference_name}`).", ""]
    lines += [f"Params that differ from the reference recipe (`{reference_name}`):", ""]
    lines += _table(["param", "this run", "reference"],
                    [[f"`{k}`", _fmt(ours), _fmt(ref)] for k, ours, ref in diff], "lll")
    return [*lines, ""]


def metrics_section(reports: dict[str, dict], classes: list[str],
                    kept: str = "best") -> list[str]:
    rows = []
    for split, r in reports.items():
        lo, hi = r["accuracy_ci95"]
        rows.append([split, r["n"], f"{r['accuracy']:.4f}", f"{lo:.3f} - {hi:.3f}",
                     f"{r['loss']:.4f}", f"{r['roc_auc']:.4f}",
                     *(f"{r['per_class'][c]['f1']:.4f}" for c in classes)])
    lines = ["## Metrics", ""]
    lines += _table(["split", "n", "accuracy", "95% CI", "loss", "ROC AUC",
                     *(f"F1 {c}" for c in classes)], rows)
    chosen = ("The best epoch was chosen on validation" if kept == "best" else
              "The last epoch's weights were kept (`train.keep: last`): nothing was chosen on "
              "validation")
    lines += ["", f"95% CI: Wilson score interval of the accuracy. {chosen}; test (when "
              "present) is only evaluated.", ""]
    for split, r in reports.items():
        lines += [f"Confusion matrix, {split} (rows: actual, columns: predicted):", ""]
        lines += _table(["actual \\ predicted", *classes],
                        [[c, *r["confusion"][i]] for i, c in enumerate(classes)])
        lines.append("")
    return lines


def mistakes_section(mistakes: pd.DataFrame, png_name: str,
                     heatmaps_name: str | None = None) -> list[str]:
    lines = ["## Most confident mistakes", "",
             "Labeled training and validation images the model gets wrong, most confident "
             "first (test images are left out on purpose). A confident mistake on a training "
             "image is often a wrong or doubtful label: review it.", "",
             f"![most confident mistakes]({png_name})", ""]
    if heatmaps_name:
        lines += ["The same images, each beside its class-activation heatmap (Grad-CAM) for "
                  "the class the model predicted: red where the evidence for that class lies, "
                  "blue where there is none.", "",
                  f"![heatmaps of the most confident mistakes]({heatmaps_name})", ""]
    if mistakes.empty:
        return [*lines, "None.", ""]
    rows = [[i, f"`{r['path']}`", r["split"], r["label"], r["label_source"], r["prediction"],
             f"{r['confidence']:.3f}"] for i, (_, r) in enumerate(mistakes.iterrows(), 1)]
    lines += _table(["#", "path", "split", "label", "source", "predicted", "confidence"], rows,
                    "rlllllr")
    return [*lines, ""]


def start_lines(meta: dict) -> list[str]:
    """What the model's training started from, as the train stage recorded it (a checkpoint
    from before it did says nothing)."""
    if "warm_start" not in meta:
        return []
    start = meta["warm_start"]
    if start is None:
        return ["Trained from scratch (random weights seeded by base.seed).", ""]
    return [f"Started from {start['file']} (md5 {start['md5']}): warm-started, not from "
            "scratch.", ""]


def build_report(*, meta: dict, summary: dict, fingerprint: str, classes: list[str],
                 diff: list, reference_name: str, reports: dict[str, dict],
                 mistakes: pd.DataFrame, png_name: str, kept: str = "best",
                 heatmaps_name: str | None = None) -> str:
    """`kept`: train.keep, which weights the model holds (the best validated epoch's or the
    last epoch's)."""
    epoch, val_acc = meta.get("epoch"), meta.get("val_accuracy")
    model = f"best epoch {epoch}" if kept == "best" else f"the last epoch's weights, epoch {epoch}"
    head = [f"Model: {model}"
            + (f" (validation accuracy {val_acc:.4f})" if isinstance(val_acc, float) else "")
            + f", image size {meta.get('image_size')}, classes {', '.join(classes)}.", ""]
    lines = ["# Evaluation report", "", *head, *start_lines(meta),
             *data_section(summary, classes, fingerprint),
             *recipe_section(diff, reference_name),
             *metrics_section(reports, classes, kept),
             *mistakes_section(mistakes, png_name, heatmaps_name)]
    return "\n".join(lines).rstrip() + "\n"

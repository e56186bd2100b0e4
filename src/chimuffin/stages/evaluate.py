"""Stage `evaluate`: metrics on validation (and test when present); predictions and 512-d
embeddings for every image (one pass makes both: the embed stage maps them)."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from chimuffin import atomic, paths, runtime
from chimuffin.config import EVAL_BATCH_SIZE
from chimuffin.data.manifest import open_cache, read_json_output, read_manifest
from chimuffin.infer.embeddings import embeddings_frame
from chimuffin.infer.heatmaps import heatmaps, overlay
from chimuffin.infer.manifest_predictions import curve_tables, predict_manifest, split_metrics
from chimuffin.model import load_checkpoint
from chimuffin.progress import Progress
from chimuffin.report.eval_report import build_report, confident_mistakes, mistakes_png
from chimuffin.report.mistake_heatmaps import mistakes_heatmaps_png
from chimuffin.report.recipe_diff import load_reference, recipe_diff
from chimuffin.stages import common


def headline(report: dict) -> dict:
    """The scalars `dvc metrics show/diff` compares (the full report is in report.json)."""
    out = {k: report[k] for k in ("n", "accuracy", "loss", "roc_auc")}
    out["accuracy_ci95_low"], out["accuracy_ci95_high"] = report["accuracy_ci95"]
    for cls, m in report["per_class"].items():
        out[f"f1_{cls}"] = m["f1"]
    return out


# Every split's plot tables are written, a split without labeled images (no test128/) as
# header-only files: dvc.yaml declares both splits' plots, and `dvc plots show` then draws an
# empty chart instead of warning that it failed to load a file.
PLOT_SPLITS = ("val", "test")
CURVE_COLUMNS = {"confusion": ["actual", "predicted"], "roc": ["fpr", "tpr"],
                 "pr": ["recall", "precision"]}


def plot_tables(pred, classes: list[str], reports: dict) -> dict[str, pd.DataFrame]:
    """{file name: table} for the confusion/ROC/PR plots of every split in PLOT_SPLITS."""
    out = {}
    for split in PLOT_SPLITS:
        tables = curve_tables(pred, split, classes) if split in reports else \
            {name: pd.DataFrame(columns=cols) for name, cols in CURVE_COLUMNS.items()}
        out.update({f"{name}_{split}.csv": table for name, table in tables.items()})
    return out


def mistake_heatmaps(model, mistakes: pd.DataFrame, idx: np.ndarray, images: np.ndarray,
                     classes: list[str], device) -> tuple[np.ndarray, list[np.ndarray]]:
    """(uint8 images (N,3,S,S), their Grad-CAM overlays (S,S,3)) of the mistakes' rows, each
    explaining the predicted class the report states."""
    pixels = np.stack([np.asarray(images[idx[pos]]) for pos in mistakes.index]) \
        if len(mistakes) else np.zeros((0, *images.shape[1:]), np.uint8)
    targets = np.array([classes.index(p) for p in mistakes["prediction"]], dtype=np.int64)
    maps, _ = heatmaps(model, pixels, targets, device=device)
    return pixels, [overlay(p.transpose(1, 2, 0), m) for p, m in zip(pixels, maps, strict=True)]


def write_report(tmp: Path, args, params, meta, pred, df, images, reports, model,
                 device) -> None:
    """report.md + mistakes.png + mistakes_heatmaps.png: what a person reads after `dvc repro`."""
    clean = Path(args.clean)
    summary = read_json_output(clean / paths.SUMMARY_FILE, "clean stage's summary",
                               "dvc repro clean")
    fingerprint = hashlib.sha1((clean / paths.MANIFEST_FILE).read_bytes()).hexdigest()[:12]
    mistakes = confident_mistakes(pred, params.base.classes)
    mistakes_png(mistakes, df["idx"].to_numpy(), images, tmp / paths.MISTAKES_FILE)
    pixels, overlays = mistake_heatmaps(model, mistakes, df["idx"].to_numpy(), images,
                                        params.base.classes, device)
    mistakes_heatmaps_png(mistakes, pixels, overlays, tmp / paths.MISTAKE_HEATMAPS_FILE)
    diff = recipe_diff(params.train, load_reference(args.reference))
    atomic.write_text(tmp / paths.REPORT_MD_FILE, build_report(
        meta=meta, summary=summary, fingerprint=fingerprint, classes=params.base.classes,
        diff=diff, reference_name=args.reference, reports=reports, mistakes=mistakes,
        png_name=paths.MISTAKES_FILE, heatmaps_name=paths.MISTAKE_HEATMAPS_FILE,
        kept=params.train.keep))


def main(args, params) -> None:
    classes = params.base.classes
    runtime.setup(params.base.seed, params.runtime.threads)
    device = runtime.pick_device(params.runtime.device)
    df = read_manifest(Path(args.clean) / paths.MANIFEST_FILE)
    images = open_cache(Path(args.prepared) / paths.IMAGES_FILE)
    model, meta = load_checkpoint(args.model, device=str(device), classes=classes)
    with Progress("evaluate", len(df)) as bar:
        pred, emb = predict_manifest(model, images, df, classes, EVAL_BATCH_SIZE,
                                     device, params.evaluate.tta_flip, with_embeddings=True,
                                     progress=bar.update)
    reports = {s: r for s in PLOT_SPLITS if (r := split_metrics(pred, s, classes))}
    out = Path(args.out)
    with atomic.atomic_dir(out) as tmp:
        atomic.write_parquet(tmp / paths.PREDICTIONS_FILE, pred)
        atomic.write_json(tmp / paths.REPORT_JSON_FILE,
                          {"best_epoch": meta.get("epoch"), **reports})
        atomic.write_json(tmp / paths.METRICS_FILE, {s: headline(r) for s, r in reports.items()})
        for name, table in plot_tables(pred, classes, reports).items():
            table.to_csv(tmp / name, index=False, float_format="%.6g")
        write_report(tmp, args, params, meta, pred, df, images, reports, model, device)
    atomic.write_parquet(args.embeddings, embeddings_frame(df["path"], emb))
    for split, r in reports.items():
        lo, hi = r["accuracy_ci95"]
        print(f"evaluate: {split}: accuracy {r['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}), "
              f"n={r['n']}, loss {r['loss']:.4f}, ROC AUC {r['roc_auc']:.4f}")
    print(f"evaluate: report in {out / 'report.md'}")


if __name__ == "__main__":
    p = common.parser(__doc__)
    p.add_argument("--clean", required=True)
    p.add_argument("--prepared", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--embeddings", required=True,
                   help="the 512-d embeddings of every image (a parquet file)")
    p.add_argument("--reference", default=paths.REFERENCE_RECIPE,
                   help="the reference recipe the report compares params with")
    common.run(main, p.parse_args())

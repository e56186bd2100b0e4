"""Classify image files with a trained checkpoint: the engine behind `chimuffin predict`.

Files are decoded exactly as `prepare` decodes the dataset (data.images.decode_image: EXIF
orientation, RGB conversion, bilinear resize to the checkpoint's image_size), then go through
the same batched inference path as the evaluate stage (infer.batches.predict). An unreadable file is
one result row with its reason; it never stops the others.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from chimuffin.data.images import IMAGE_SUFFIXES, ImageDecodeError, decode_image
from chimuffin.data.scan import IGNORED_NAMES
from chimuffin.infer.batches import predict, softmax

# Images decoded per chunk: bounds memory for any folder size (128 px: 50 KB each).
CHUNK = 512


@dataclass(frozen=True)
class Item:
    shown: str  # the path as the user will read it in the output
    path: Path


@dataclass(frozen=True)
class Found:
    items: list[Item]
    missing: list[Item]  # named on the command line but not there
    skipped: int  # files inside folders that are not images by their suffix


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES


def collect_inputs(paths: Iterable[str | Path]) -> Found:
    """Files named explicitly are always tried; folders are walked recursively for files with an
    image suffix, skipping hidden files and folders, in a stable (sorted) order."""
    items, missing, skipped = [], [], 0
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for top, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not _hidden(d))
                for name in sorted(files):
                    if _hidden(name):
                        continue
                    if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                        skipped += 1
                        continue
                    f = Path(top) / name
                    items.append(Item(str(f), f))
        elif p.exists():
            items.append(Item(str(raw), p))
        else:
            missing.append(Item(str(raw), p))
    return Found(items, missing, skipped)


def decode_chunk(items: list[Item], size: int) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """(uint8 N,3,S,S of the decodable items, their positions in items, {position: reason})."""
    pixels, ok, errors = [], [], {}
    for i, item in enumerate(items):
        try:
            pixels.append(decode_image(item.path, size).pixels.transpose(2, 0, 1))
            ok.append(i)
        except ImageDecodeError as e:
            errors[i] = str(e)
        except OSError as e:  # unreadable: permissions, a folder named *.jpg, I/O errors
            errors[i] = f"cannot read ({e.strerror or type(e).__name__})"
    arr = np.stack(pixels) if pixels else np.zeros((0, 3, size, size), np.uint8)
    return arr, ok, errors


def classify(model, meta: dict, items: list[Item], batch_size: int, device,
             tta_flip: bool = False, progress: Callable[[int], None] | None = None,
             ) -> pd.DataFrame:
    """One row per item: path, label, confidence, p_<class> (NaN on error), error ('' if ok)."""
    classes, size = list(meta["classes"]), int(meta["image_size"])
    probs = np.full((len(items), len(classes)), np.nan)
    errors = [""] * len(items)
    for start in range(0, len(items), CHUNK):
        chunk = items[start:start + CHUNK]
        arr, ok, bad = decode_chunk(chunk, size)
        for i, reason in bad.items():
            errors[start + i] = reason
        if len(ok):
            logits, _ = predict(model, arr, np.arange(len(ok)), batch_size, device, tta_flip)
            probs[[start + i for i in ok]] = softmax(logits.astype(np.float64))
        if progress:
            progress(len(chunk))
    return results_frame([it.shown for it in items], probs, errors, classes)


def results_frame(shown: list[str], probs: np.ndarray, errors: list[str],
                  classes: list[str]) -> pd.DataFrame:
    good = ~np.isnan(probs).any(axis=1)
    best = np.where(good, np.nan_to_num(probs).argmax(1), -1)
    out = pd.DataFrame({"path": shown,
                        "label": [classes[i] if i >= 0 else "" for i in best],
                        "confidence": np.where(good, np.nan_to_num(probs).max(1), np.nan)})
    for i, c in enumerate(classes):
        out[f"p_{c}"] = probs[:, i]
    out["error"] = errors
    return out


def missing_rows(missing: list[Item], classes: list[str]) -> pd.DataFrame:
    probs = np.full((len(missing), len(classes)), np.nan)
    return results_frame([m.shown for m in missing], probs,
                         ["no such file or folder"] * len(missing), classes)


# ---- output formats -------------------------------------------------------------------------

def format_table(df: pd.DataFrame) -> str:
    """Aligned columns for a terminal: the classified images (errors go to stderr)."""
    ok = df[df["error"] == ""]
    width = max([len("path"), *(len(p) for p in ok["path"])])
    lines = [f"{'path':<{width}}  {'label':<10}  confidence"]
    lines += [f"{p:<{width}}  {lbl:<10}  {c:.4f}"
              for p, lbl, c in zip(ok["path"], ok["label"], ok["confidence"], strict=True)]
    return "\n".join(lines) + "\n"


def format_csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, float_format="%.6f", lineterminator="\n")


def format_json(df: pd.DataFrame, classes: list[str]) -> str:
    records = []
    for r in df.to_dict("records"):
        ok = not r["error"]
        records.append({
            "path": r["path"],
            "label": r["label"] if ok else None,
            "confidence": round(float(r["confidence"]), 6) if ok else None,
            "probabilities": ({c: round(float(r[f"p_{c}"]), 6) for c in classes} if ok
                              else None),
            "error": r["error"] or None,
        })
    return json.dumps(records, indent=2) + "\n"


def render(df: pd.DataFrame, fmt: str, classes: list[str]) -> str:
    if fmt == "table":
        return format_table(df)
    if fmt == "csv":
        return format_csv(df)
    if fmt == "json":
        return format_json(df, classes)
    raise ValueError(f"unknown format {fmt!r}")

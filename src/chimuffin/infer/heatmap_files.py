"""`chimuffin predict --heatmaps DIR`: one PNG per classified image (the image, its heatmap
overlay, the class and its score), named after the image's path as the output shows it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from chimuffin import atomic
from chimuffin.errors import UserError
from chimuffin.infer.heatmaps import heatmaps, png_bytes, side_by_side
from chimuffin.infer.predict_files import CHUNK, Item, decode_chunk


def check_heatmap_dir(folder: str | Path) -> None:
    """Refuse, before any work, a --heatmaps folder that can never be written: a file, a folder
    under a file, a folder (or its nearest existing parent) this user may not write."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: --heatmaps needs a folder, and this is a file")
    nearest = next(p for p in [folder, *folder.parents] if p.exists())
    if not nearest.is_dir():
        raise UserError(f"{folder}: cannot write: {nearest} is a file, not a folder")
    # access() also answers EROFS for a read-only file system, even for root
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise UserError(f"{folder}: cannot write ({nearest}: permission denied)")


def heatmap_name(relative: str) -> str:
    """`sub/a.jpg` -> `sub__a.jpg.png`: one flat name per path, suffix kept (so a.jpg and a.png
    do not meet)."""
    parts = [p for p in relative.replace(os.sep, "/").split("/") if p not in ("", ".", "..")]
    return "__".join(parts) + ".png"


def heatmap_names(shown: list[str]) -> list[str]:
    """Each image's name: its path below the folder all of them share, flattened."""
    full = [os.path.abspath(s) for s in shown]
    base = os.path.commonpath([os.path.dirname(f) for f in full]) if full else ""
    names = [heatmap_name(os.path.relpath(f, base)) for f in full]
    first: dict[str, str] = {}
    for s, n in zip(shown, names, strict=True):
        if first.setdefault(n, s) != s:
            raise UserError(f"{first[n]} and {s} would both be written as {n}; give them "
                            "separately, with --heatmaps to different folders")
    return names


def write_heatmaps(model, meta: dict, items: list[Item], results: pd.DataFrame, folder: Path,
                   batch_size: int, device) -> int:
    """One PNG per classified item (its `results` row: classify's, same order); the heatmap
    explains the class shown. Returns the number written."""
    classes, size = list(meta["classes"]), int(meta["image_size"])
    ok = [i for i, err in enumerate(results["error"]) if not err]
    names = heatmap_names([items[i].shown for i in ok])
    folder = Path(folder)
    with atomic.cannot_write_as_user_error(folder):
        folder.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(ok), CHUNK):
            part = ok[start:start + CHUNK]
            arr, decoded, _ = decode_chunk([items[i] for i in part], size)
            if len(decoded) != len(part):  # a file changed between the two reads
                raise UserError(f"{folder}: an image changed while heatmaps were drawn; "
                                "run again")
            rows = results.iloc[part]
            targets = np.array([classes.index(lbl) for lbl in rows["label"]])
            maps, _ = heatmaps(model, arr, targets, batch_size, device)
            for j, (label, conf) in enumerate(zip(rows["label"], rows["confidence"],
                                                  strict=True)):
                picture = side_by_side(arr[j].transpose(1, 2, 0), maps[j], f"{label} {conf:.3f}")
                atomic.write_bytes(folder / names[start + j], png_bytes(picture))
    return len(ok)

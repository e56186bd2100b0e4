"""Decode a dataset once into a uint8 tensor cache and describe it in a manifest."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from chimuffin import paths
from chimuffin.data.images import ImageDecodeError, decode_image
from chimuffin.data.manifest import COLUMNS, CacheWriter, stratified_val
from chimuffin.data.scan import POOL, Candidate, Excluded, scan_dataset
from chimuffin.errors import UserError


def decode_into_cache(root: Path, candidates: list[Candidate], size: int, cache_path: Path,
                      ) -> tuple[list[dict], list[Excluded], Counter]:
    """Decode every candidate into the (N,3,S,S) uint8 .npy cache, excluded images left out.

    Streams one image at a time with plain file writes, so peak memory does not grow with the
    dataset (only the small per-image rows do)."""
    rows: list[dict] = []
    excluded: list[Excluded] = []
    stats: Counter = Counter()
    with CacheWriter(cache_path, len(candidates), (3, size, size)) as cache:
        for c in tqdm(candidates, desc="prepare", unit="img", mininterval=2, disable=None):
            try:
                d = decode_image(root / c.path, size)
            except ImageDecodeError as e:
                excluded.append(Excluded(c.path, str(e)))
                continue
            stats["resized"] += d.resized
            if d.converted_from != "RGB":
                stats[f"converted_from_{d.converted_from}"] += 1
            chw = np.ascontiguousarray(d.pixels.transpose(2, 0, 1))
            rows.append({"path": c.path, "split": c.split, "label": c.folder_label,
                         "label_source": "folder", "idx": cache.append(chw),
                         "content_hash": hashlib.sha1(chw).hexdigest(),
                         "width": d.orig_size[0], "height": d.orig_size[1]})
    return rows, excluded, stats


def assign_splits(df: pd.DataFrame, classes: list[str], val_fraction: float, seed: int,
                  validation: dict[str, str], validation_name: str) -> pd.DataFrame:
    """Validation = a stratified, seeded part of the labeled train images, plus the images a
    person labeled in the validation file. Test stays test."""
    df = df.copy()
    labeled = df[(df["split"] == "train") & (df["label"].isin(classes))]
    val = stratified_val(labeled["label"], val_fraction, seed)
    df.loc[val[val].index, "split"] = "val"
    pos = {p: i for i, p in enumerate(df["path"])}
    rows = getattr(validation, "rows", {})
    for path, label in validation.items():
        where = f"{validation_name}: row {rows[path]}" if path in rows else validation_name
        if path not in pos:
            raise UserError(f"{where}: {path} is not in the prepared dataset (missing "
                            "or excluded: see the prepare report)")
        i = df.index[pos[path]]
        if df.at[i, "split"] == "test":
            raise UserError(f"{where}: {path} is a test image; validation images must "
                            "come from train128/")
        if df.at[i, "label"] != POOL:
            raise UserError(f"{where}: {path} is not a pool image (train128/{POOL}/): "
                            "its folder already labels it; validation.csv lists pool images "
                            "a person labeled")
        df.loc[i, ["split", "label", "label_source"]] = ["val", label, "validation"]
    return df


def check_usable(df: pd.DataFrame, classes: list[str], root: Path) -> None:
    train = df[(df["split"] == "train") & df["label"].isin(classes)]
    if df.empty:
        raise UserError(f"{root}: no usable images (see the excluded list in the report)")
    for cls in classes:
        if not (df[df["split"].isin(["train", "val"])]["label"] == cls).any():
            raise UserError(f"{root}: train128/{cls}/ has no usable images: every class needs "
                            "labeled training images")
    if not (df["split"] == "val").any():
        raise UserError("no validation images: set prepare.val_fraction > 0 or list pool images "
                        "in data/labels/validation.csv")
    if train.empty:
        raise UserError(f"{root}: no labeled training images left after the validation split")


def decode_and_split(root: Path, candidates: list[Candidate], excluded: list[Excluded],
                     classes: list[str], size: int, val_fraction: float, seed: int,
                     validation: dict[str, str], validation_name: str, cache_path: Path
                     ) -> tuple[pd.DataFrame, list[Excluded], Counter]:
    """Decode the candidates into the cache at cache_path, split and check them: the manifest
    (not written yet), `excluded` plus the images that could not be decoded, and the
    conversion counts."""
    rows, bad, stats = decode_into_cache(root, candidates, size, cache_path)
    excluded = [*excluded, *bad]
    df = pd.DataFrame(rows, columns=COLUMNS)
    if df.empty:
        raise UserError(f"{root}: no usable images (excluded {len(excluded)} files)")
    df = assign_splits(df, classes, val_fraction, seed, validation, validation_name)
    check_usable(df, classes, root)
    return df, excluded, stats


def prepare_dataset(root: Path, classes: list[str], size: int, val_fraction: float, seed: int,
                    validation: dict[str, str], validation_name: str, out_dir: Path) -> dict:
    """Write images.npy + manifest.parquet into out_dir and return the report."""
    candidates, excluded = scan_dataset(root, classes)
    df, excluded, stats = decode_and_split(root, candidates, excluded, classes, size,
                                           val_fraction, seed, validation, validation_name,
                                           out_dir / paths.IMAGES_FILE)
    from chimuffin import atomic

    atomic.write_parquet(out_dir / paths.MANIFEST_FILE, df)
    counts = df.groupby(["split", "label"]).size()
    return {
        "images": len(df),
        "counts": {f"{s}/{lbl}": int(n) for (s, lbl), n in counts.items()},
        "has_test": bool((df["split"] == "test").any()),
        "conversions": dict(sorted(stats.items())),
        "excluded": [{"path": e.path, "reason": e.reason} for e in excluded],
    }

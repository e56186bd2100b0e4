"""The manifest: one row per usable image, pointing into the uint8 tensor cache.

Columns (data/prepared/manifest.parquet and data/clean/manifest.parquet):
  path (relative to the dataset root), split (train|val|test), label (a class or undefined),
  label_source (folder|validation in the prepared manifest; a decision's source after clean),
  idx (row in images.npy), content_hash (SHA-1 of the decoded pixels), width, height (original).
"""

from __future__ import annotations

import io
import json
import math
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from chimuffin.errors import UserError

COLUMNS = ["path", "split", "label", "label_source", "idx", "content_hash", "width", "height"]
SPLITS = ("train", "val", "test")


def read_parquet_output(path: str | Path, what: str, rebuild: str,
                        columns: Iterable[str] = ()) -> pd.DataFrame:
    """A stage's parquet output with at least `columns`; a missing or damaged file, or a missing
    column, stops with the path, what is wrong and the command that rebuilds it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found (run `{rebuild}`)")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow's ArrowInvalid, OSError... on a damaged file
        raise UserError(f"{path}: {what} not readable ({type(e).__name__}); run `{rebuild}` "
                        "to rebuild it") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path}: column(s) {', '.join(missing)} missing from the {what}; "
                        f"run `{rebuild}`")
    return df


def read_json_output(path: str | Path, what: str, rebuild: str) -> dict:
    """A stage's JSON object output; missing, damaged or not an object stops like
    read_parquet_output."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found (run `{rebuild}`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path}: {what} not readable ({type(e).__name__}); run `{rebuild}` "
                        "to rebuild it") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: the {what} is not a JSON object; run `{rebuild}`")
    return data


def read_manifest(path: str | Path, columns: list[str] = COLUMNS) -> pd.DataFrame:
    return read_parquet_output(path, "manifest", "dvc repro", columns)


def align(manifest: pd.DataFrame, paths: pd.Series, what: str, stage: str) -> np.ndarray:
    """Row positions in `paths` for every manifest path; a stale input (`what`, read by
    `stage`) stops with a clear error."""
    pos = pd.Index(paths)
    if not pos.is_unique:
        raise UserError(f"{stage}: {what} lists a path twice")
    at = pos.get_indexer(manifest["path"])
    if (at < 0).any():
        missing = manifest["path"].to_numpy()[at < 0]
        raise UserError(f"{stage}: {what} has no row for {len(missing)} image(s) of the clean "
                        f"manifest (e.g. {missing[0]}); it is stale: run `dvc repro`")
    return at


def open_cache(path: str | Path) -> np.ndarray:
    """Memory-map the image cache (N,3,S,S uint8): pages load on demand, memory stays bounded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image cache not found (run `dvc repro prepare`)")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable image cache ({e}); rerun "
                        "`dvc repro prepare` to rebuild it") from e


def read_rows(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """images[rows] as an in-memory array. A memory-mapped cache is read through a fresh map that
    is dropped right after (as nanoGPT does): pages read through a map count in the process's
    RSS until it is unmapped, so one long-lived map would grow to the whole file in an epoch."""
    if isinstance(images, np.memmap) and images.filename:
        images = np.memmap(images.filename, dtype=images.dtype, mode="r", offset=images.offset,
                           shape=images.shape)
    return np.asarray(images[rows])


def _npy_header(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
              "fortran_order": False, "shape": shape})
    return buf.getvalue()


class CacheWriter:
    """Append-only writer of the uint8 (N,3,S,S) .npy cache, with plain sequential writes.

    A writable memory map would be simpler, but every page written through it counts in the
    process's RSS until it is unmapped (2.4 GB for 50,000 images of 128 px); written pages go to
    the page cache instead, so memory stays flat whatever the dataset size. The file is the same
    .npy that numpy writes, and `open_cache` maps it for reading."""

    def __init__(self, path: str | Path, capacity: int, row_shape: tuple[int, ...]):
        self.path, self.row_shape, self.n = Path(path), tuple(row_shape), 0
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed by close() / __exit__
        self._header_len = self._f.write(_npy_header((capacity, *self.row_shape)))

    def append(self, row: np.ndarray) -> int:
        """Write one row; return its index."""
        if row.shape != self.row_shape or row.dtype != np.uint8:
            raise ValueError(f"cache row must be uint8 {self.row_shape}, got {row.dtype} "
                             f"{row.shape}")
        self._f.write(np.ascontiguousarray(row))
        self.n += 1
        return self.n - 1

    def close(self) -> None:
        """Set the header to the rows actually written (fewer than capacity when some images
        were excluded) and drop the unused tail."""
        header = _npy_header((self.n, *self.row_shape))
        size = self.n * math.prod(self.row_shape)
        if len(header) == self._header_len:
            self._f.seek(0)
            self._f.write(header)
            self._f.truncate(len(header) + size)
            self._f.close()
            return
        # The shape's text got shorter across numpy's 64-byte header alignment: move the rows.
        self._f.close()
        tmp = self.path.with_suffix(".resize.npy")
        with open(self.path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(header)
            src.seek(self._header_len)
            shutil.copyfileobj(src, dst, 16 * 2**20)
            dst.truncate(len(header) + size)
        tmp.replace(self.path)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self._f.close()


def stratified_val(labels: pd.Series, fraction: float, seed: int) -> pd.Series:
    """Boolean mask choosing round(n*fraction) of each class (at least 1, at most n-1)."""
    mask = pd.Series(False, index=labels.index)
    if fraction <= 0:
        return mask
    rng = np.random.default_rng(seed)
    for cls in sorted(labels.unique()):
        idx = labels.index[labels == cls].to_numpy()
        if len(idx) < 2:
            raise UserError(
                f"params: prepare.val_fraction={fraction} leaves class '{cls}' with "
                f"{len(idx)} labeled image(s): need at least 2 to have one for training and "
                "one for validation")
        k = min(max(1, round(len(idx) * fraction)), len(idx) - 1)
        mask[rng.permutation(idx)[:k]] = True
    return mask

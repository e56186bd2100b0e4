"""The git-tracked label decisions file and how it changes the manifest.

data/labels/decisions.csv has the columns `path,label,source,note`, one row per image, sorted by
path. `label` is a class, `undefined` (take the image out of training) or `remove` (drop it from
every split). `source` says who decided. A row on a test image is refused: the test split is
only ever evaluated. Stages only read this file; the tools that write it (review page, pull-3lc,
loop) go through chimuffin.labels.locked, which locks, writes atomically and keeps it
sorted.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from chimuffin.errors import UserError

DECISION_COLUMNS = ["path", "label", "source", "note"]
SOURCES = ("human", "3lc", "auto", "rule", "oracle")
# Sources that stand for a person's answer (the oracle simulates one): never shown or asked
# again. `auto` (accepted suggestions, from label files of earlier versions) and `rule` do not.
PERSON_SOURCES = ("human", "3lc", "oracle")
UNDEFINED, REMOVE = "undefined", "remove"
TEST_DIR = "test128"  # the dataset's test folder (as data/scan.py finds it)
VAL_DIR = "val128"  # the dataset's own validation folder (as data/scan.py finds it)
# in a decision's note: a deliberate correction of one val128/ image (the review page's wording)
VALIDATION_CORRECTION = "validation correction"


@dataclass(frozen=True)
class Decision:
    path: str
    label: str
    source: str
    note: str = ""
    # Where it came from in the file, for error messages; not part of the decision itself.
    row: int = field(default=0, compare=False, repr=False)


def person_decided(decisions) -> set[str]:
    """The images a person decided (PERSON_SOURCES): verified, never shown or asked again.
    What background retraining counts, and what the review page and the sitting skip."""
    return {d.path for d in decisions if d.source in PERSON_SOURCES}


def allowed_labels(classes: list[str]) -> list[str]:
    return [*classes, UNDEFINED, REMOVE]


def check_relative_path(path: str) -> str | None:
    """Why `path` is not a safe dataset-relative path, or None."""
    if not path:
        return "empty path"
    if "\\" in path:
        return "backslash in path (use / separators)"
    p = PurePosixPath(path)
    if p.is_absolute() or (len(path) > 1 and path[1] == ":"):
        return "absolute path (must be relative to the dataset root)"
    if ".." in p.parts:
        return "path contains '..'"
    if "\x00" in path:
        return "NUL character in path"
    return None


def is_test_image(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return bool(parts) and parts[0] == TEST_DIR


TEST_REFUSED = ("is a test image: the test split is only ever evaluated, never labeled or "
                "removed; delete this row")


VALIDATION_REFUSED = ("is a validation image (labeled in data/labels/validation.csv); a "
                      "decision may not change or remove its label: edit validation.csv, or "
                      "delete this row")


VAL_FOLDER_REFUSED = (f"is a validation image (the dataset's own {VAL_DIR}/ folder); a decision "
                      "may change its label only as a deliberate correction of that one image "
                      f"(its note says '{VALIDATION_CORRECTION}', as the review page writes "
                      "it): delete this row, or correct the image on the review page")


def check_decisions_writable(decisions: list[Decision], name: str,
                             validation: dict[str, str] | None = None) -> None:
    """Refuse a label file that would hold a decision on a test image, or one that changes or
    removes a validation image's label (`validation`: {path: label}), before writing it."""
    for d in decisions:
        where = f"{name}: row {d.row}" if d.row else name
        if is_test_image(d.path):
            raise UserError(f"{where}: {d.path} {TEST_REFUSED}; nothing written")
        if validation and d.path in validation and d.label != validation[d.path]:
            raise UserError(f"{where}: {d.path} {VALIDATION_REFUSED}; nothing written")


def check_path_and_label(where: str, path: str, label: str, allowed: list[str]) -> None:
    """One row's path (relative, inside the dataset) and label (one of `allowed`), or a
    UserError that starts with `where` (file and row)."""
    bad = check_relative_path(path)
    if bad:
        raise UserError(f"{where}: path {path!r}: {bad}")
    if label not in allowed:
        raise UserError(f"{where}: unknown label {label!r} for {path}; allowed: "
                        f"{', '.join(allowed)}")


def parse_decisions(text: str, classes: list[str], name: str = "decisions.csv") -> list[Decision]:
    """Parse and validate the decisions CSV text; raise UserError naming the row on any problem."""
    if text.startswith("\ufeff"):
        text = text[1:]  # a BOM from spreadsheet tools
    if not text.strip():
        raise UserError(f"{name}: empty file; expected the header line "
                        f"'{','.join(DECISION_COLUMNS)}'")
    rows = read_csv_rows(text, name)
    header = [h.strip() for h in rows[0]]
    if header != DECISION_COLUMNS:
        missing = [c for c in DECISION_COLUMNS if c not in header]
        what = f"missing column(s) {', '.join(missing)}" if missing else f"columns {header}"
        raise UserError(f"{name}: row 1 (header): {what}; expected "
                        f"'{','.join(DECISION_COLUMNS)}'")
    labels = allowed_labels(classes)
    seen: dict[str, int] = {}
    out = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{name}: row {lineno}"
        if len(row) != len(DECISION_COLUMNS):
            raise UserError(f"{where}: expected {len(DECISION_COLUMNS)} fields "
                            f"({','.join(DECISION_COLUMNS)}), got {len(row)}")
        path, label, source, note = (c.strip() for c in row)
        check_path_and_label(where, path, label, labels)
        if is_test_image(path):
            raise UserError(f"{where}: {path} {TEST_REFUSED}")
        if source not in SOURCES:
            raise UserError(f"{where}: unknown source {source!r}; allowed: {', '.join(SOURCES)}")
        if path in seen:
            raise UserError(f"{where}: duplicate decision for {path} (first at row {seen[path]})")
        seen[path] = lineno
        out.append(Decision(path, label, source, note, row=lineno))
    return out


# `path,label` files: data/labels/validation.csv, and the true-label files that stand in for a
# person (the real data's reviewed_labels.csv and pool_labels.csv, the sample's pool_labels.csv),
# whose header says `relative_path` instead of `path`.
PATH_LABEL_HEADERS = (["path", "label"], ["relative_path", "label"])


class PathLabels(dict):
    """{path: label} that also knows each path's row in its file (`rows`), for messages."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, int] = {}


def parse_path_labels(text: str, classes: list[str], name: str) -> PathLabels:
    """`path,label` (or `relative_path,label`) rows -> {path: label}, every label a class.
    A BOM is dropped and blank rows skipped; a bad header or row stops with the file and row."""
    text = text.removeprefix("\ufeff")  # a BOM from spreadsheet tools
    rows = read_csv_rows(text, name)
    if not rows or [h.strip() for h in rows[0]] not in PATH_LABEL_HEADERS:
        expected = " or ".join(f"'{','.join(h)}'" for h in PATH_LABEL_HEADERS)
        raise UserError(f"{name}: row 1 (header): expected {expected}")
    out = PathLabels()
    first = out.rows
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        where = f"{name}: row {lineno}"
        if len(row) != 2:
            raise UserError(f"{where}: expected 2 fields (path,label), got {len(row)}")
        path, label = row[0].strip(), row[1].strip()
        check_path_and_label(where, path, label, classes)
        if path in out:
            raise UserError(f"{where}: duplicate row for {path} (first at row {first[path]})")
        out[path], first[path] = label, lineno
    return out


def read_path_labels(path: str | Path, classes: list[str], what: str = "label file"
                     ) -> PathLabels:
    """A `path,label` file; `what` names it in the not-found message."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    return parse_path_labels(read_text_file(path), classes, str(path))


def read_csv_rows(text: str, name: str) -> list[list[str]]:
    """CSV records of a hand-edited file; a malformed one is a UserError, not a traceback."""
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise UserError(f"{name}: not a valid CSV file ({e})") from e


def read_text_file(path: str | Path) -> str:
    """A hand-edited text file as str: UTF-8 (a BOM is kept for the parser to drop)."""
    path = Path(path)
    try:
        return decode_text(path.read_bytes(), path)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from e


def decode_text(data: bytes, path: str | Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from e


def read_validation(path: str | Path, classes: list[str]) -> PathLabels:
    """{path: label} of the validation file (data/labels/validation.csv); no file is no rows
    (a new repository)."""
    path = Path(path)
    if not path.exists():
        return PathLabels()
    return parse_path_labels(read_text_file(path), classes, str(path))


def read_decisions(path: str | Path, classes: list[str]) -> list[Decision]:
    path = Path(path)
    if not path.exists():
        return []
    return parse_decisions(read_text_file(path), classes, name=str(path))


def format_decisions(decisions: list[Decision]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(DECISION_COLUMNS)
    for d in sorted(decisions, key=lambda d: d.path):
        w.writerow([d.path, d.label, d.source, d.note])
    return buf.getvalue()


def per_class(labels, classes: list[str]) -> str:
    """'chihuahua 3, muffin 0': how many of `labels` are each class."""
    counts = Counter(labels)
    return ", ".join(f"{c} {counts.get(c, 0)}" for c in classes)


def merge_decisions(old: list[Decision], new: list[Decision],
                    protect_sources: tuple[str, ...] = ("human",)) -> tuple[list[Decision], int]:
    """Add or replace decisions; a decision from a protected source is never overridden by a
    decision from another source. Returns (merged, number changed)."""
    by_path = {d.path: d for d in old}
    changed = 0
    for d in new:
        cur = by_path.get(d.path)
        if cur == d:
            continue
        if cur and cur.source in protect_sources and d.source != cur.source:
            continue
        by_path[d.path] = d
        changed += 1
    return sorted(by_path.values(), key=lambda d: d.path), changed


def remove_decisions(old: list[Decision], paths) -> tuple[list[Decision], int]:
    """Drop the decisions for `paths` (the images fall back to their folder label).
    Returns (kept, number removed)."""
    drop = set(paths)
    kept = [d for d in old if d.path not in drop]
    return kept, len(old) - len(kept)


def apply_decisions(manifest: pd.DataFrame, decisions: list[Decision],
                    name: str = "decisions.csv") -> pd.DataFrame:
    """Return the manifest with decisions applied to `label`/`label_source`; `remove` rows
    dropped. A decision for a path that is not in the manifest stops with its row number."""
    df = manifest.copy()
    pos = {p: i for i, p in enumerate(df["path"])}
    for d in decisions:
        if d.path not in pos:
            raise UserError(f"{name}: row {d.row}: {d.path} is not in the prepared dataset "
                            "(missing, or excluded by prepare: see data/prepared/report.json)")
        i = pos[d.path]
        if (df.iat[i, df.columns.get_loc("label_source")] == "validation"
                and d.label != df.iat[i, df.columns.get_loc("label")]):
            raise UserError(f"{name}: row {d.row}: {d.path} {VALIDATION_REFUSED}")
        if (PurePosixPath(d.path).parts[0] == VAL_DIR and VALIDATION_CORRECTION not in d.note
                and d.label != df.iat[i, df.columns.get_loc("label")]):
            raise UserError(f"{name}: row {d.row}: {d.path} {VAL_FOLDER_REFUSED}")
        df.iat[i, df.columns.get_loc("label")] = d.label
        df.iat[i, df.columns.get_loc("label_source")] = d.source
    return df[df["label"] != REMOVE].reset_index(drop=True)


SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}


def dedupe_identical(df: pd.DataFrame) -> tuple[pd.DataFrame, list[dict], int]:
    """Keep one image per content hash: test before val before labeled train before the pool,
    so no identical image sits in two splits. Returns (kept, label conflicts, dropped count)."""
    order = df.assign(
        _split=df["split"].map(SPLIT_PRIORITY),
        _pool=(df["label"] == UNDEFINED).astype(int),
    ).sort_values(["_split", "_pool", "path"], kind="stable")
    conflicts = []
    keep_rows = []
    for _, group in order.groupby("content_hash", sort=False):
        first = group.index[0]
        labeled = sorted(set(group.loc[group["label"] != UNDEFINED, "label"]))
        if len(labeled) > 1:
            conflicts.append({"paths": sorted(group["path"]), "labels": labeled,
                              "kept": group.at[first, "path"]})
        keep_rows.append(first)
    kept = df.loc[sorted(keep_rows)].reset_index(drop=True)
    return kept, conflicts, len(df) - len(kept)

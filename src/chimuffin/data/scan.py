"""Find the images of a dataset in the hackathon layout and decide which ones are usable.

Layout: <root>/train128/{<class>...,undefined}/*, optionally <root>/test128/{<class>...}/* and
<root>/val128/{<class>...}/* (a validation split the dataset ships: added to the one drawn
from train128/, never trained on).
Scanning never raises on a single bad file: it returns the files to decode and the files it
excluded, each with a reason, so the prepare report can list them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from chimuffin.data.images import IMAGE_SUFFIXES
from chimuffin.errors import UserError

TRAIN_DIR, TEST_DIR, VAL_DIR, POOL = "train128", "test128", "val128", "undefined"
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class Candidate:
    path: str  # relative to the dataset root, posix separators
    split: str  # "train", "test" or "val" (more validation is drawn later from train)
    folder_label: str  # a class name or "undefined"


@dataclass(frozen=True)
class Excluded:
    path: str
    reason: str


def _rel(root: Path, p: Path) -> str:
    return p.relative_to(root).as_posix()


def _classify_file(root: Path, p: Path) -> str | None:
    """Why p cannot be used, or None if it should be decoded."""
    try:
        os.fsencode(_rel(root, p)).decode("utf-8")
    except UnicodeDecodeError:
        return ("file or folder name is not valid UTF-8 (DVC cannot hash it either: "
                "`chimuffin check-data` prints the commands that rename it)")
    # resolve() follows every link on the way, so a linked file and a file inside a linked
    # folder are both caught: a dataset must not make us read files from elsewhere.
    target = p.resolve()
    if not target.is_relative_to(root.resolve()):
        return f"symlink pointing outside the dataset ({_printable(str(target))})"
    if not p.is_file():
        return "not a regular file"
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        return f"unsupported file type '{p.suffix or '(none)'}'"
    return None


def _scan_folder(root: Path, folder: Path, split: str, label: str,
                 keep: list[Candidate], excluded: list[Excluded]) -> None:
    for p in sorted(folder.rglob("*"), key=lambda q: os.fsencode(str(q))):
        if p.is_dir() and not p.is_symlink():
            continue
        if p.name in IGNORED_NAMES or any(part.startswith(".") for part in
                                          p.relative_to(folder).parts):
            excluded.append(Excluded(_safe_rel(root, p), "hidden or system file"))
            continue
        reason = _classify_file(root, p)
        if reason:
            excluded.append(Excluded(_safe_rel(root, p), reason))
        else:
            keep.append(Candidate(_rel(root, p), split, label))


def _printable(name: str) -> str:
    # Non-UTF-8 names are shown with escapes so the report itself stays valid UTF-8.
    return os.fsencode(name).decode("utf-8", errors="backslashreplace")


def _safe_rel(root: Path, p: Path) -> str:
    return _printable(_rel(root, p))


def scan_dataset(root: str | Path, classes: list[str]) -> tuple[list[Candidate], list[Excluded]]:
    root = Path(root)
    train = root / TRAIN_DIR
    if not train.is_dir():
        raise UserError(
            f"{root}: no {TRAIN_DIR}/ folder; expected {TRAIN_DIR}/{{{','.join(classes)},"
            f"{POOL}}}/ and optionally {TEST_DIR}/, {VAL_DIR}/ (set prepare.data_dir)")
    missing = [c for c in classes if not (train / c).is_dir()]
    if missing:
        found = sorted(_printable(d.name) for d in train.iterdir() if d.is_dir())
        raise UserError(
            f"{train}: no folder for class {', '.join(missing)} (base.classes is "
            f"{', '.join(classes)}; found folders: {', '.join(found) or 'none'}). Rename the "
            "folders or set base.classes")
    keep: list[Candidate] = []
    excluded: list[Excluded] = []
    for split_dir, split, allowed in ((train, "train", [*classes, POOL]),
                                      (root / TEST_DIR, "test", classes),
                                      (root / VAL_DIR, "val", classes)):
        if not split_dir.is_dir():
            continue
        for sub in sorted(split_dir.iterdir()):
            if sub.name.startswith(".") or sub.name in IGNORED_NAMES:
                excluded.append(Excluded(_safe_rel(root, sub), "hidden or system file"))
            elif not sub.is_dir():
                excluded.append(Excluded(_safe_rel(root, sub),
                                         f"file directly under {split_dir.name}/ (not in a "
                                         "class folder)"))
            elif sub.name not in allowed:
                excluded.append(Excluded(
                    _safe_rel(root, sub) + "/",
                    f"unknown class folder '{_printable(sub.name)}' (base.classes allows "
                    f"{', '.join(allowed)})"))
            else:
                _scan_folder(root, sub, split, sub.name, keep, excluded)
    return keep, excluded

"""data/labels/validation.csv: pool images a person labeled to validate on, and adding to it.

The file has the columns `path,label` (label: a class), one row per image, sorted by path. The
prepare stage puts its images into the validation split: no training run, background ones
included, ever trains on them. Writers add rows through add_answers(), which holds the label
file's lock and then this file's own (in that order, the only order any tool takes both), so
an image can never be a decision and a validation label at once: an image with a decision is
refused here, and the label file's writers refuse to change a validation image's label.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from chimuffin import atomic, paths
from chimuffin.errors import UserError
from chimuffin.labels import locked
from chimuffin.labels.rows import read_validation


def format_validation(rows: dict[str, str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label"])
    for p in sorted(rows):
        w.writerow([p, rows[p]])
    return buf.getvalue()


def check_answers(answers: dict[str, str], classes: list[str], already: dict[str, str],
                  decided: set[str], where: str) -> None:
    """Every answer a class, for an image neither in the validation file nor decided."""
    for p, label in answers.items():
        if label not in classes:
            raise UserError(f"{where}: {p}: a validation label is a class ({', '.join(classes)}),"
                            f" got {label!r}")
        if p in already:
            raise UserError(f"{where}: {p} is already a validation image ({already[p]})")
        if p in decided:
            raise UserError(f"{where}: {p} has a decision in the label file: it may be a "
                            "training image, so it cannot validate")


def add_answers(path: str | Path, decisions: str | Path, classes: list[str],
                answers: dict[str, str]) -> dict[str, str]:
    """Add `answers` ({path: class}) to the validation file, all or none, under the label
    file's lock and then the validation file's; returns the file's rows after the write."""
    path, decisions = Path(path), Path(decisions)
    with locked.holding_lock(decisions), locked.holding_lock(path):
        decided = {d.path for d in locked.read(decisions, classes).decisions}
        rows = read_validation(path, classes)
        check_answers(answers, classes, rows, decided, str(path))
        new = {**rows, **answers}
        atomic.write_text(path, format_validation(new))
    return new


def validation_file(decisions: str | Path) -> Path:
    """validation.csv beside the label file (data/labels/), as the label file's writers find it
    (labels/locked.py validation_beside)."""
    return Path(decisions).parent / Path(paths.VALIDATION).name

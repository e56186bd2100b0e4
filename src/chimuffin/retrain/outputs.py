"""What one pipeline run gives the review page and the sitting: its review pages, the
evidence behind its proposals and its validation accuracy. The workspace's outputs and a
background run's copy are read the same way; a missing, damaged or stale file stops with its
path and the `dvc repro` that remakes it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from chimuffin import paths as default
from chimuffin.curate.pages import read_pages
from chimuffin.curate.scoring import EVIDENCE_COLUMNS, read_neighbours, read_suggestions
from chimuffin.errors import UserError


@dataclass(frozen=True)
class RunOutputs:
    pages: pd.DataFrame = field(repr=False)   # curate/pages.py's table
    # the suggestions' EVIDENCE_COLUMNS and the voting neighbours (the enlarged view's
    # evidence); None when not read
    suggestions: pd.DataFrame | None = field(default=None, repr=False)
    neighbours: pd.DataFrame | None = field(default=None, repr=False)
    val_accuracy: float | None = None  # None: no validation set (or no evaluation yet)
    val_n: int | None = None           # validation images behind val_accuracy

    @classmethod
    def read(cls, suggest_dir: Path, eval_dir: Path, evidence: bool = True) -> RunOutputs:
        acc, n = val_metrics(eval_dir / default.METRICS_FILE)
        pages = read_pages(suggest_dir / default.PAGES_FILE)
        if not evidence:
            return cls(pages, val_accuracy=acc, val_n=n)
        return cls(pages, read_suggestions(suggest_dir / default.SUGGESTIONS_FILE,
                                           EVIDENCE_COLUMNS),
                   read_neighbours(suggest_dir / default.NEIGHBOURS_FILE), acc, n)

    @classmethod
    def of_repository(cls, root: Path) -> RunOutputs:
        return cls.read(root / default.SUGGEST, root / default.EVAL)


def val_metrics(path: Path) -> tuple[float | None, int | None]:
    """(validation accuracy, images) from the evaluate stage's metrics; (None, None) when there
    are none (no file yet, or no validation set). A file that is there but not such metrics is
    an error (a failed run), not "no validation accuracy"."""
    if not path.is_file():
        return None, None
    try:
        val = json.loads(path.read_text(encoding="utf-8")).get("val")
        return (None, None) if not val else (float(val["accuracy"]), int(val["n"]))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not the evaluate stage's metrics (a 'val' object with "
                        f"'accuracy' and 'n'): {type(e).__name__}: {e}") from e

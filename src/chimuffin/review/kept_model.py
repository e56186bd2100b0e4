"""The latest background model the page swapped in, kept beside the undo history (in the
git-ignored .chimuffin/ folder) so that a page started again proposes from it, as the page
before the restart did, instead of from older pipeline outputs; and what the pipeline's own
model was trained on (the person's labels in its training manifest, not the label file as it
is now)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from chimuffin import atomic
from chimuffin import paths as default
from chimuffin.curate.pages import read_pages
from chimuffin.curate.scoring import EVIDENCE_COLUMNS, read_neighbours, read_suggestions
from chimuffin.errors import UserError
from chimuffin.labels.rows import PERSON_SOURCES
from chimuffin.retrain.outputs import RunOutputs
from chimuffin.retrain.retrainer import Run

KEPT = ".chimuffin/review-model"  # relative to the repository root
META = "model.json"
META_KEYS = ("name", "labels", "finished", "val_accuracy", "val_n")


def keep(folder: Path, run: Run) -> None:
    """Write a finished run's pages, evidence and numbers into `folder` (whole or not)."""
    out = run.outputs
    with atomic.atomic_dir(folder) as tmp:
        atomic.write_parquet(tmp / default.PAGES_FILE, out.pages)
        if out.suggestions is not None:
            atomic.write_parquet(tmp / default.SUGGESTIONS_FILE, out.suggestions)
        if out.neighbours is not None:
            atomic.write_parquet(tmp / default.NEIGHBOURS_FILE, out.neighbours)
        atomic.write_json(tmp / META, {"name": run.name, "labels": run.labels,
                                       "finished": run.finished, "val_accuracy":
                                       out.val_accuracy, "val_n": out.val_n})


def kept_run(folder: Path, newer_than: float | None) -> Run | None:
    """The kept model as a finished run, if one finished after `newer_than` (when the
    pipeline's pages were made: outputs made later saw more labels)."""
    meta_file = folder / META
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        name, labels, finished, acc, n = (meta[k] for k in META_KEYS)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{meta_file}: not the kept background model ({type(e).__name__}: "
                        f"{e}); delete {folder} to start from the pipeline's outputs") from e
    if newer_than is not None and finished <= newer_than:
        return None
    def optional(file: str, read):
        return read(folder / file) if (folder / file).is_file() else None
    outputs = RunOutputs(read_pages(folder / default.PAGES_FILE),
                         optional(default.SUGGESTIONS_FILE,
                                  lambda p: read_suggestions(p, EVIDENCE_COLUMNS)),
                         optional(default.NEIGHBOURS_FILE, read_neighbours), acc, n)
    return Run(name, labels, "kept from the page's last session", finished, finished=finished,
               ok=True, outputs=outputs, val_accuracy=acc, val_n=n)


def trained_on(root: Path) -> int | None:
    """The labels a person gave in the pipeline's training manifest (the clean stage's, the
    one its model was trained on); None when there is none yet."""
    path = root / default.CLEAN / default.MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        sources = pd.read_parquet(path, columns=["label_source"])["label_source"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: not the clean stage's manifest ({e}); run `dvc repro "
                        "clean`") from e
    return int(sources.isin(PERSON_SOURCES).sum())

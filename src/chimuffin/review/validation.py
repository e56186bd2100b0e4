"""The review page's validation view (server side): the seeded sample of the pool
(curate/validation_pages.py) as pages with the model's proposals, answered into
data/labels/validation.csv (beside the label file; never into the label file), and what the
page says about validation: how many images validate the models, and each model's validation
accuracy with its 95% interval."""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path

import pandas as pd

from chimuffin import paths as default
from chimuffin.curate.validation_pages import (
    folder_pool,
    sample,
    seeded_order,
    target_size,
    validation_pages,
)
from chimuffin.data.manifest import read_manifest
from chimuffin.data.scan import VAL_DIR
from chimuffin.errors import UserError
from chimuffin.infer.prediction_table import read_predictions
from chimuffin.labels import locked
from chimuffin.labels.validation import add_answers, read_validation, validation_file
from chimuffin.report.metrics import wilson_interval
from chimuffin.review.writes import RequestError


def validation_counts(manifest: pd.DataFrame, answered: int) -> dict:
    """The images that validate the models: the seeds' own validation split (drawn from the
    labeled train images), the dataset's val128/ folder, and validation.csv (as it is now)."""
    val = manifest[manifest["split"] == "val"]
    shipped = val["path"].str.startswith(f"{VAL_DIR}/")
    seeds = int(((val["label_source"] != "validation") & ~shipped).sum())
    return {"seeds": seeds, "val128": int(shipped.sum()), "file": answered,
            "total": seeds + int(shipped.sum()) + answered}


def with_interval(model: dict) -> dict:
    """A model's validation accuracy with its 95% Wilson interval (None when unknown)."""
    acc, n = model.get("val_accuracy"), model.get("val_n")
    if acc is None or not n:
        return {"name": model["name"], "labels": model.get("labels"), "accuracy": acc,
                "n": n, "ci95": None}
    lo, hi = wilson_interval(round(acc * n), n)
    return {"name": model["name"], "labels": model.get("labels"), "accuracy": acc, "n": n,
            "ci95": [lo, hi]}


class Validation:
    """The sample, its pages and the validation file, for one review session."""

    def __init__(self, root: Path, decisions: Path, classes: list[str], seed: int, size: int,
                 page_size: int):
        self.decisions, self.classes, self.size = decisions, classes, size
        self.file = validation_file(decisions)
        self.page_size = page_size
        self.manifest = read_manifest(root / default.PREPARED / default.MANIFEST_FILE)
        self.order = seeded_order(folder_pool(self.manifest), seed)
        self.target = target_size(size, len(self.order))
        self.proposals = read_predictions(root / default.PREDICTIONS)
        self.proposer = "pipeline outputs"  # the model whose proposals the pages show

    def answered(self) -> dict[str, str]:
        return read_validation(self.file, self.classes)

    def todo(self) -> tuple[list[str], int]:
        """The sample's images to answer now (seeded order) and how many are answered."""
        decided = {d.path for d in locked.read(self.decisions, self.classes).decisions}
        s = sample(self.order, self.target, set(self.answered()), decided)
        return s.todo, len(s.answered)

    def pages(self, todo: list[str]) -> list[dict]:
        df = validation_pages(todo, self.proposals, self.classes, self.page_size)
        return [{"page": int(page), "label": rows["label"].iat[0],
                 "images": [{"path": p, "score": round(s, 4)}
                            for p, s in zip(rows["path"], rows["score"], strict=True)]}
                for page, rows in df.groupby("page", sort=True)]

    def state(self, models: list[dict]) -> dict:
        """What the validation view and the top bar show."""
        todo, in_sample = self.todo()
        counts = validation_counts(self.manifest, len(self.answered()))
        return {"enabled": True, "counts": counts, "target": self.target,
                "proposer": self.proposer, "size": self.size,
                "pool": len(self.order), "answered": in_sample, "left": len(todo),
                "ask_first": counts["val128"] + counts["file"] == 0 and self.target > 0,
                "pages": self.pages(todo), "models": [with_interval(m) for m in models],
                "file": str(self.file)}

    def follow(self, run) -> None:
        """A background model finished: its proposals (the model columns of its suggestions,
        for the pool images it scored) replace the ones before for those images."""
        s = run.outputs.suggestions
        if s is None:
            return
        new = s[["path", "model_label", "model_conf"]].rename(
            columns={"model_label": "prediction", "model_conf": "confidence"})
        rest = self.proposals.loc[~self.proposals["path"].isin(new["path"]),
                                  ["path", "prediction", "confidence"]]
        self.proposals = pd.concat([new, rest], ignore_index=True)  # (one assignment)
        self.proposer = run.name

    def after_swap(self, swap_in):
        """`swap_in` (the page's), then this view follows the model it swapped in."""
        def swapped(run) -> None:
            swap_in(run)
            self.follow(run)
        return swapped

    def answer(self, body) -> dict:
        """{"labels": {path: class}}: answers for images of the sample still to answer, added
        to validation.csv all or none."""
        if not isinstance(body, dict) or set(body) != {"labels"} or \
                not isinstance(body["labels"], dict) or not body["labels"]:
            raise RequestError(HTTPStatus.BAD_REQUEST,
                               'expected a JSON object {"labels": {"path": "class"}}')
        labels = body["labels"]
        todo = set(self.todo()[0])
        for p, label in labels.items():
            if p not in todo:
                raise RequestError(HTTPStatus.CONFLICT, f"path {p!r}: not an image of the "
                                   "validation sample still to answer")
            if label not in self.classes:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"path {p!r}: a validation label "
                                   f"is a class ({', '.join(self.classes)}), got {label!r}")
        try:
            add_answers(self.file, self.decisions, self.classes, labels)
        except UserError as e:  # a decision written meanwhile: nothing was written
            raise RequestError(HTTPStatus.CONFLICT, str(e)) from None
        return {"ok": True, "added": sorted(labels)}


def without_validated(pages: list[dict], validated: set[str]) -> list[dict]:
    """Review pages without the images validation.csv holds (pages left empty dropped): an
    image answered on the validation view is never verified on a review page."""
    if not validated:
        return pages
    out = []
    for pg in pages:
        images = [im for im in pg["images"] if im["path"] not in validated]
        if images:
            out.append({**pg, "images": images})
    return out

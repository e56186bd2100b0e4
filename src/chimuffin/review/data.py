"""What the review page shows: the pipeline's outputs (plot, review queue, pages and the
evidence behind them), the models proposing the pages, and the page actions that need them
(a page verified, a queue cluster accepted). The label file's writes and their undo live in
review/writes.py."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pandas as pd

from chimuffin import paths as default
from chimuffin.curate.scoring import QUEUE_COLUMNS, read_queue
from chimuffin.data.manifest import read_manifest
from chimuffin.errors import UserError
from chimuffin.infer.embeddings import read_pacmap
from chimuffin.infer.prediction_table import read_predictions
from chimuffin.labels.rows import PERSON_SOURCES, SOURCES, Decision, person_decided
from chimuffin.labels.validation import read_validation, validation_file
from chimuffin.report.metrics import wilson_interval
from chimuffin.retrain.outputs import val_metrics
from chimuffin.retrain.retrainer import Run
from chimuffin.retrain.swap import Model, Proposals
from chimuffin.review import history, kept_model
from chimuffin.review.validation import without_validated
from chimuffin.review.verify import (
    check_pages,
    evidence_of,
    page_list,
    pages_to_verify,
    progress,
    read_evidence,
)
from chimuffin.review.writes import (
    NOTE,
    Images,
    LabelWrites,
    RequestError,
    confirm,
    fields,
    is_int,
)

XYZ = ("x3", "y3", "z3")  # pacmap.parquet's 3-D coordinates (the plot's 3-D view)
PAGE_NOTE = re.compile(re.escape(NOTE) + r": page (\d+)")  # a row a page's acceptance wrote


@dataclass(frozen=True)
class Paths:
    root: Path
    params: Path
    decisions: Path
    prepared: Path
    embed: Path
    eval: Path
    suggest: Path
    state: Path

    @classmethod
    def under(cls, root: Path, params: str = default.PARAMS,
              decisions: str = default.DECISIONS, state: str = history.STATE_FILE) -> Paths:
        root = Path(root)
        return cls(root, root / params, root / decisions, root / default.PREPARED,
                   root / default.EMBED, root / default.EVAL, root / default.SUGGEST,
                   root / state)


class ReviewData:
    """The pipeline outputs the page shows, the models proposing its pages, and (in
    `writes`) the label file it writes."""

    def __init__(self, paths: Paths, classes: list[str], data_dir: Path, clock=time.time):
        self.paths, self.classes = paths, classes
        self.images = Images.of(read_manifest(paths.prepared / default.MANIFEST_FILE), data_dir)
        self.writes = LabelWrites(paths.decisions, paths.state, paths.root, classes,
                                  self.images, self.numbers, clock)
        self.labels, self.base_label = self.writes.labels, self.images.base_label
        self.pool = self.images.pool
        self.lock = threading.Lock()  # held while the pages list is replaced
        self.points = self._points()
        self.queue = self._queue()
        self.pages, self.pages_error = self._pages()
        self.page_list = [] if self.pages is None else page_list(self.pages)
        self.page_index = {pg["page"]: pg for pg in self.page_list}
        self.page_paths: dict[int, set[str]] = {}  # each page's images (the tally reads them)
        self.evidence = read_evidence(self.paths.suggest / default.SUGGESTIONS_FILE,
                                      self.paths.suggest / default.NEIGHBOURS_FILE,
                                      set() if self.pages is None else set(self.pages["path"]))
        pages_file = self.paths.suggest / default.PAGES_FILE
        made = pages_file.stat().st_mtime if pages_file.is_file() else None
        acc, n = val_metrics(self.paths.eval / default.METRICS_FILE)
        self.proposals = Proposals(self.pages, Model(
            "pipeline outputs", kept_model.trained_on(paths.root), made, acc, n))
        # the background model the page proposed from before a restart, if it is newer
        kept = kept_model.kept_run(paths.root / kept_model.KEPT, made)
        if kept is not None and self.pages is not None:
            self.swap_in(kept)

    def _points(self) -> pd.DataFrame:
        coords = read_pacmap(self.paths.embed / default.PACMAP_FILE)
        pred = read_predictions(self.paths.eval / default.PREDICTIONS_FILE)
        # the 3-D PaCMAP coordinates too where the embed stage wrote them (older outputs lack them)
        xyz = list(XYZ) if set(XYZ) <= set(coords.columns) else []
        df = coords[["path", "split", "x", "y", *xyz]].merge(
            pred[["path", "prediction", "confidence"]], on="path", how="left", validate="1:1")
        if df["prediction"].isna().any():
            raise UserError(f"{self.paths.eval / default.PREDICTIONS_FILE}: stale (no prediction "
                            "for some plotted images); run `dvc repro`")
        return df[df["split"] != "test"].reset_index(drop=True)

    def _queue(self) -> pd.DataFrame:
        path = self.paths.suggest / default.QUEUE_FILE
        if not path.is_file():  # no queue yet: the queue view is empty, the rest works
            return pd.DataFrame(columns=QUEUE_COLUMNS)
        q = read_queue(path)
        return q[q["path"].isin(self.base_label)].reset_index(drop=True)

    def _pages(self) -> tuple[pd.DataFrame | None, str | None]:
        """The pages, or None and why not: the verify view says so, the rest still works."""
        path = self.paths.suggest / default.PAGES_FILE
        try:
            pages = pages_to_verify(path, set(self.pool), self.classes)
        except UserError as e:
            return None, str(e)
        if pages is None:
            return None, f"{path}: not found; run `dvc repro suggest` to make the pages"
        return pages, None

    # --- what the page shows ---

    def effective_labels(self, decisions: list[Decision]) -> dict[str, str]:
        labels = dict(self.base_label)
        labels.update({d.path: d.label for d in decisions if d.path in labels})
        return labels

    def numbers(self, decisions: list[Decision], state: dict) -> dict:
        """Label counts and the person's progress (every answer carries them)."""
        eff = self.effective_labels(decisions)
        counts = {"labels": {lbl: sum(1 for v in eff.values() if v == lbl)
                             for lbl in self.labels},
                  "decisions": len(decisions),
                  "by_source": dict(sorted(Counter(d.source for d in decisions).items()))}
        return {"counts": counts,
                "progress": progress(self.pool, {d.path: d for d in decisions}, self.pages,
                                     self.labels, self.classes, state["pace"])}

    def state(self) -> dict:
        data, decisions = self.writes.read()
        state = self.writes.load_state(data)
        eff = self.effective_labels(decisions)
        p, q = self.points, self.queue
        return {
            "classes": self.classes, "labels": self.labels,
            "person_sources": list(PERSON_SOURCES), "sources": list(SOURCES),
            # validation images (validation.csv, val128/): a bulk action leaves them alone
            "validation": sorted(self.images.validation | self.images.val_folder),
            "points": {"path": p["path"].tolist(), "split": p["split"].tolist(),
                       "x": _floats(p["x"]), "y": _floats(p["y"]),
                       **{c: _floats(p[c]) for c in XYZ if c in p.columns},
                       "label": [eff[x] for x in p["path"]],
                       # the label before any decision: folder, validation or undefined
                       "base": [self.base_label[x] for x in p["path"]],
                       "prediction": p["prediction"].tolist(),
                       "confidence": _floats(p["confidence"])},
            "queue": [{"rank": int(r.rank), "path": r.path, "kind": r.kind,
                       "cluster": int(r.cluster), "proposed": r.proposed, "reason": r.reason}
                      for r in q.itertuples()],
            "decisions": {d.path: [d.label, d.source] for d in decisions
                          if d.path in self.base_label},
            "pages": {"list": [{**pg, "model": self.proposals.model_of(pg["page"])}
                               for pg in without_validated(self.page_list, self.validated())],
                      "error": self.pages_error},
            "models": self.models_state(),
            # the evidence behind each page image's proposal (the enlarged view shows it)
            "evidence": {"images": self.evidence[0], "error": self.evidence[1]},
            **self.writes.summary(decisions, state),
        }

    def validated(self) -> set[str]:
        """The images validation.csv (beside the label file) holds now."""
        return set(read_validation(validation_file(self.paths.decisions), self.classes))

    def image_file(self, path) -> Path:
        return (self.images.data_dir / self.writes.check_path(path)).resolve()

    def models_state(self) -> dict:
        """The models that proposed pages this session, which proposes the list now, each
        one's validation accuracy with its 95% interval, and its tally: the images verified
        on its pages and how many of its proposals the person corrected, each image once, as
        the label file says now (a page accepted again, or undone, counts as it stands)."""
        state = self.proposals.public()
        _, decisions = self.writes.read()
        tally = self.tally(decisions)
        for i, m in enumerate(state["list"]):
            m["verified"], m["wrong"] = tally.get(i, (0, 0))
            acc, n = m["val_accuracy"], m["val_n"]
            m["val_ci"] = None if acc is None or not n else \
                list(wilson_interval(round(acc * n), n))
        return state

    def tally(self, decisions: list[Decision]) -> dict[int, tuple[int, int]]:
        """model index -> (verified, wrong): each row a page's acceptance wrote (its note
        names the page, the image is on it) counts for the model that proposed that page."""
        out: dict[int, list[int]] = {}
        for d in decisions:
            m = PAGE_NOTE.fullmatch(d.note)
            pg = self.page_index.get(int(m.group(1))) if m else None
            if pg is None or d.path not in self.paths_on(pg["page"]):
                continue
            counts = out.setdefault(self.proposals.model_of(pg["page"]), [0, 0])
            counts[0] += 1
            counts[1] += d.label != pg["label"]
        return {i: (v, w) for i, (v, w) in out.items()}

    def paths_on(self, page: int) -> set[str]:
        if page not in self.page_paths:
            self.page_paths[page] = {im["path"] for im in self.page_index[page]["images"]}
        return self.page_paths[page]

    # --- page actions (POST bodies) ---

    def verify(self, body) -> dict:
        """{"page": N, "exceptions": {path: label}, "confirm"?: bool}: every image on page N
        gets the page's label, except the exceptions, which get theirs."""
        body = fields(body, {"page", "exceptions"}, {"confirm"},
                      '{"page": 0, "exceptions": {"path": "label"}, "confirm": false}')
        page = body["page"]
        if not is_int(page) or page not in self.page_index:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no page {page!r} in "
                               f"{self.paths.suggest / default.PAGES_FILE}"
                               + (f" ({self.pages_error})" if self.pages_error else ""))
        pg = self.page_index[page]
        validated = self.validated()  # answered on the validation view: never a decision
        on_page = [im["path"] for im in pg["images"] if im["path"] not in validated]
        exceptions = body["exceptions"]
        if not isinstance(exceptions, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "exceptions must be an object "
                               '{"path": "label"}')
        for p, lbl in exceptions.items():
            if p not in on_page:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"exception {p!r}: not on page "
                                   f"{page}")
            self.writes.check_label(lbl)
        note = f"{NOTE}: page {page}"
        new = [Decision(p, exceptions.get(p, pg["label"]), "human", note) for p in on_page]
        what = f"page {page}: {len(on_page)} image(s), {len(exceptions)} exception(s)"
        reply = self.writes.write(new, {"kind": "verify", "what": what, "page": page,
                                        "exceptions": exceptions},
                                  confirmed=confirm(body), pace_images=len(on_page))
        return reply

    def accept_cluster(self, body) -> dict:
        """{"cluster": N, "confirm"?: bool}: each image of review-queue cluster N gets its
        own proposed label, but for images a person answered and validation images: a bulk
        action leaves them as they are (the answer's `skipped` lists them)."""
        body = fields(body, {"cluster"}, {"confirm"}, '{"cluster": 0, "confirm": false}')
        cluster = body["cluster"]
        rows = self.queue[self.queue["cluster"] == cluster] if is_int(cluster) else []
        if not len(rows):
            raise RequestError(HTTPStatus.NOT_FOUND, f"no review-queue cluster {cluster!r}")
        note = f"{NOTE}: queue cluster {cluster}"
        new = [Decision(p, self.writes.check_label(lbl), "human", note)
               for p, lbl in zip(rows["path"], rows["proposed"], strict=True)]
        skipped: dict[str, list[str]] = {}
        reply = self.writes.write(self.writes.bulk(new, skipped),
                                  {"kind": "cluster", "cluster": cluster,
                                   "what": f"queue cluster {cluster}: {len(new)} image(s) "
                                   "accepted"}, confirmed=confirm(body))
        return {**reply, "skipped": skipped}

    def undo(self, body) -> dict:
        """The last action taken back (each model's tally is read from the label file)."""
        return self.writes.undo(body)

    # --- background models (chimuffin.retrain) ---

    def swap_in(self, run: Run) -> None:
        """A background model finished: it proposes from now on, its pages replacing the
        pages list for the images not verified yet (retrain/swap.py). The page keeps the one
        on screen until the person turns it."""
        out = run.outputs
        new = check_pages(out.pages, Path(run.name) / default.PAGES_FILE, set(self.pool),
                          self.classes)
        _, decisions = self.writes.read()
        pages = self.proposals.swap(new, Model(run.name, run.labels, run.finished,
                                               out.val_accuracy, out.val_n),
                                    person_decided(decisions))
        kept_model.keep(self.paths.root / kept_model.KEPT, run)
        listed = page_list(pages)
        with self.lock:
            self.pages, self.pages_error, self.page_list = pages, None, listed
            self.page_index.update({pg["page"]: pg for pg in listed})
            if out.suggestions is not None:
                self.evidence = (evidence_of(out.suggestions, set(pages["path"]),
                                             out.neighbours),
                                 None if out.neighbours is not None else
                                 f"{run.name}: no {default.NEIGHBOURS_FILE}")


def _floats(s: pd.Series) -> list[float]:
    return [round(float(v), 5) for v in np.asarray(s, dtype=np.float64)]

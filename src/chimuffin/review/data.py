"""What the review page shows (pipeline outputs) and the label actions it writes.

Every action is validated whole, then written at once under the label file's inter-process
lock (chimuffin.labels.locked): read the label file, merge, record how to undo it in the state file,
write it atomically (sorted rows, source `human`, a note naming where the answer came from). A
bad request changes nothing. An action that would change an image somebody already labeled (a
folder label or an earlier decision) is refused unless the request says the person confirmed
it; test images and validation images (labeled in data/labels/validation.csv) are never
changed here.
"""

from __future__ import annotations

import copy
import os
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
from chimuffin.curate.simulated_review import person_decided
from chimuffin.data.manifest import read_manifest
from chimuffin.errors import UserError
from chimuffin.infer.embeddings import read_pacmap
from chimuffin.infer.prediction_table import read_predictions
from chimuffin.labels import locked
from chimuffin.labels.rows import (
    PERSON_SOURCES,
    UNDEFINED,
    VALIDATION_REFUSED,
    Decision,
    allowed_labels,
    check_relative_path,
    merge_decisions,
    parse_decisions,
    remove_decisions,
)
from chimuffin.review import history
from chimuffin.review.background import val_metrics
from chimuffin.review.verify import (
    check_pages,
    evidence_of,
    is_verified,
    page_list,
    pages_to_swap_in,
    pages_to_verify,
    progress,
    read_evidence,
    wrong_proposals,
)

NOTE = "review page"
CONFIRM_LISTED = 20  # paths named in a "needs confirmation" answer (the count is always whole)
HISTORY_SHOWN = 10  # the last actions the page lists (each undoable, latest first)
XYZ = ("x3", "y3", "z3")  # pacmap.parquet's 3-D coordinates (the plot's 3-D view)


class RequestError(Exception):
    """A refused request: its status, message and any extra fields for the JSON answer."""

    def __init__(self, status: HTTPStatus, message: str, **extra):
        super().__init__(message)
        self.status, self.extra = status, extra


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
    """The pipeline outputs the page shows, and the label file it writes."""

    def __init__(self, paths: Paths, classes: list[str], data_dir: Path, clock=time.time):
        self.paths, self.classes, self.clock = paths, classes, clock
        self.labels = allowed_labels(classes)
        self.data_dir = data_dir.resolve()
        self.lock = threading.Lock()
        # the undo history is kept per label file (named relative to the repository root)
        self.key = Path(os.path.relpath(paths.decisions.resolve(),
                                        paths.root.resolve())).as_posix()
        history.load_state(paths.state)  # a damaged state file stops here, not mid-session
        prepared = read_manifest(paths.prepared / default.MANIFEST_FILE)
        # every image the label file may name: the prepared dataset minus the test split
        # (test labels are never edited here: that would be tuning on test)
        self.split = dict(zip(prepared["path"], prepared["split"], strict=True))
        self.base_label = {p: lbl for p, lbl, s in zip(prepared["path"], prepared["label"],
                                                       prepared["split"], strict=True)
                           if s != "test"}
        self.pool = [p for p, lbl in self.base_label.items() if lbl == UNDEFINED]
        # labeled in validation.csv: the clean stage refuses a decision that changes them
        self.validation = set(prepared.loc[prepared["label_source"] == "validation", "path"])
        self.points = self._points()
        self.queue = self._queue()
        self.pages, self.pages_error = self._pages()
        self.page_list = [] if self.pages is None else page_list(self.pages)
        self.page_index = {pg["page"]: pg for pg in self.page_list}
        self.evidence = read_evidence(self.paths.suggest / default.SUGGESTIONS_FILE,
                                      self.paths.suggest / default.NEIGHBOURS_FILE,
                                      set() if self.pages is None else set(self.pages["path"]))
        # which model proposes each page, and how its proposals fared: the pipeline's outputs
        # first, then each background model swapped in (review/background.py)
        pages_file = self.paths.suggest / default.PAGES_FILE
        _, decisions = self.read_label_file()
        self.models = [{"name": "pipeline outputs",
                        "labels": len(person_decided(decisions)),
                        "finished": pages_file.stat().st_mtime if pages_file.is_file() else None,
                        "val_accuracy": val_metrics(self.paths.eval / default.METRICS_FILE)[0],
                        "verified": 0, "wrong": 0}]
        self.page_model = {pg["page"]: 0 for pg in self.page_list}
        self.list_version = 0  # one more each time the pages list is replaced

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

    def read_label_file(self) -> tuple[bytes | None, list[Decision]]:
        """The label file's bytes (None: no file) and its decisions, from one read."""
        snap = locked.read(self.paths.decisions, self.classes)
        return snap.data, snap.decisions

    def effective_labels(self, decisions: list[Decision]) -> dict[str, str]:
        labels = dict(self.base_label)
        labels.update({d.path: d.label for d in decisions if d.path in labels})
        return labels

    def counts(self, decisions: list[Decision]) -> dict:
        eff = self.effective_labels(decisions)
        return {"labels": {lbl: sum(1 for v in eff.values() if v == lbl) for lbl in self.labels},
                "decisions": len(decisions),
                "by_source": dict(sorted(Counter(d.source for d in decisions).items()))}

    def progress(self, decisions: list[Decision], state: dict) -> dict:
        return progress(self.pool, {d.path: d for d in decisions}, self.pages, self.labels,
                        self.classes, state["pace"])

    def summary(self, decisions: list[Decision], state: dict) -> dict:
        """The numbers every answer carries: counts, progress, what undo would undo."""
        return {"counts": self.counts(decisions), "progress": self.progress(decisions, state),
                "undo": history.undo_summary(state, self.key), "history": self.recent(state)}

    def recent(self, state: dict) -> list[dict]:
        """The last actions that undo can take back, the latest first: what, and when."""
        stack = state["undo"].get(self.key) or []
        return [{"what": r.get("what"), "kind": r.get("kind"), "at": r.get("at")}
                for r in reversed(stack[-HISTORY_SHOWN:])]

    def state(self) -> dict:
        data, decisions = self.read_label_file()
        state = history.load_state(self.paths.state)
        history.reconcile(state, self.key, data)
        eff = self.effective_labels(decisions)
        p, q = self.points, self.queue
        return {
            "classes": self.classes, "labels": self.labels,
            "person_sources": list(PERSON_SOURCES),
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
            "pages": {"list": [{**pg, "model": self.page_model.get(pg["page"], 0)}
                               for pg in self.page_list], "error": self.pages_error},
            "models": self.models_state(),
            # the evidence behind each page image's proposal (the enlarged view shows it)
            "evidence": {"images": self.evidence[0], "error": self.evidence[1]},
            **self.summary(decisions, state),
        }

    # --- checks shared by images and label actions ---

    def check_path(self, path) -> str:
        if not isinstance(path, str):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"path must be a string, got {path!r}")
        bad = check_relative_path(path)
        if bad:
            raise RequestError(HTTPStatus.FORBIDDEN, f"path {path!r}: {bad}")
        if path not in self.split:
            raise RequestError(HTTPStatus.NOT_FOUND, f"path {path!r}: not an image of the "
                               "prepared dataset")
        full = (self.data_dir / path).resolve()
        if not full.is_relative_to(self.data_dir):
            raise RequestError(HTTPStatus.FORBIDDEN, f"path {path!r}: outside the dataset")
        return path

    def image_file(self, path) -> Path:
        return (self.data_dir / self.check_path(path)).resolve()

    def check_editable(self, paths) -> list[str]:
        """A non-empty list of distinct dataset images outside the test split."""
        if not isinstance(paths, list) or not paths:
            raise RequestError(HTTPStatus.BAD_REQUEST, "paths must be a non-empty list")
        for p in paths:
            self.check_path(p)
            if self.split[p] == "test":
                raise RequestError(HTTPStatus.FORBIDDEN, f"path {p!r}: a test image; test "
                                   "labels are not edited here")
        return list(dict.fromkeys(paths))

    def check_label(self, label) -> str:
        if label not in self.labels:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"unknown label {label!r}; allowed: "
                               f"{', '.join(self.labels)}")
        return label

    def check_validation(self, new: list[Decision]) -> None:
        for d in new:
            if d.path in self.validation and d.label != self.base_label[d.path]:
                raise RequestError(HTTPStatus.FORBIDDEN, f"path {d.path!r}: {VALIDATION_REFUSED}")

    def overwrites(self, old: list[Decision], new: list[Decision]) -> list[str]:
        """Images somebody already labeled (folder, validation or a decision) whose label the
        change from old to new would change."""
        was, now = {d.path: d.label for d in old}, {d.path: d.label for d in new}
        out = []
        for p in sorted(set(was) | set(now)):
            base = self.base_label.get(p, UNDEFINED)
            if was.get(p, base) != now.get(p, base) and (p in was or base != UNDEFINED):
                out.append(p)
        return out

    # --- label actions (POST bodies, validated whole before anything is written) ---

    def label(self, body) -> dict:
        """{"paths": [...], "label": L, "confirm"?: bool}: every path gets L."""
        body = _fields(body, {"paths", "label"}, {"confirm"},
                       '{"paths": [...], "label": "...", "confirm": false}')
        label = self.check_label(body["label"])
        paths = self.check_editable(body["paths"])
        new = [Decision(p, label, "human", NOTE) for p in paths]
        reply = self._write(lambda old: merge_decisions(old, new, protect_sources=())[0],
                            {"kind": "label", "what": f"{len(paths)} image(s) -> {label}"},
                            confirmed=_confirm(body))
        return {**reply, "label": label, "paths": paths}

    def verify(self, body) -> dict:
        """{"page": N, "exceptions": {path: label}, "confirm"?: bool}: every image on page N
        gets the page's label, except the exceptions, which get theirs."""
        body = _fields(body, {"page", "exceptions"}, {"confirm"},
                       '{"page": 0, "exceptions": {"path": "label"}, "confirm": false}')
        page = body["page"]
        if not _is_int(page) or page not in self.page_index:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no page {page!r} in "
                               f"{self.paths.suggest / default.PAGES_FILE}"
                               + (f" ({self.pages_error})" if self.pages_error else ""))
        pg = self.page_index[page]
        on_page = [im["path"] for im in pg["images"]]
        exceptions = body["exceptions"]
        if not isinstance(exceptions, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "exceptions must be an object "
                               '{"path": "label"}')
        for p, lbl in exceptions.items():
            if p not in on_page:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"exception {p!r}: not on page "
                                   f"{page}")
            self.check_label(lbl)
        note = f"{NOTE}: page {page}"
        new = [Decision(p, exceptions.get(p, pg["label"]), "human", note) for p in on_page]
        what = f"page {page}: {len(on_page)} image(s), {len(exceptions)} exception(s)"
        reply = self._write(lambda old: merge_decisions(old, new, protect_sources=())[0],
                            {"kind": "verify", "what": what, "page": page,
                             "exceptions": exceptions},
                            confirmed=_confirm(body), pace_images=len(on_page))
        if reply["changed"]:
            self.count_proposals(page, len(on_page), wrong_proposals(pg["label"], exceptions))
        return reply

    # --- background models (review/background.py) ---

    def count_proposals(self, page: int, images: int, wrong: int) -> None:
        """A page accepted (or, negative, its acceptance undone): its model's tally."""
        model = self.models[self.page_model.get(page, 0)]
        with self.lock:
            model["verified"] = max(0, model["verified"] + images)
            model["wrong"] = max(0, model["wrong"] + wrong)

    def swap_in(self, run) -> None:
        """A background model finished: its pages replace the pages list for the images not
        verified yet (renumbered after every page number this session used, so the page's
        per-page marks never land on another page). Pages of earlier models stay acceptable by
        number (the page keeps the one on screen until the person turns it)."""
        model = {"name": run.name, "labels": run.labels, "finished": run.finished,
                 "val_accuracy": run.val_accuracy, "verified": 0, "wrong": 0}
        new = check_pages(run.pages, Path(run.name) / default.PAGES_FILE, set(self.pool),
                          self.classes)
        _, decisions = self.read_label_file()
        with self.lock:
            self.models.append(model)
            self._show(new, decisions, run.suggestions, run.neighbours, run.name)

    def _show(self, new: pd.DataFrame, decisions: list[Decision], suggestions, neighbours,
              source: str) -> None:
        """Under self.lock: `new` pages (checked) become the list, proposed by the last model."""
        done = {d.path for d in decisions if is_verified(d)}
        first = max(self.page_index, default=-1) + 1
        pages = pages_to_swap_in(new, done, first)
        listed = page_list(pages)
        index = len(self.models) - 1
        self.page_model.update({pg["page"]: index for pg in listed})
        self.pages, self.pages_error, self.page_list = pages, None, listed
        self.page_index.update({pg["page"]: pg for pg in listed})
        self.list_version += 1
        if suggestions is not None:
            self.evidence = (evidence_of(suggestions, set(pages["path"]), neighbours),
                             None if neighbours is not None else
                             f"{source}: no {default.NEIGHBOURS_FILE}")

    def models_state(self) -> dict:
        """The models that proposed pages this session, and which proposes the list now."""
        with self.lock:
            return {"version": self.list_version, "current": len(self.models) - 1,
                    "list": [dict(m) for m in self.models]}

    def accept_cluster(self, body) -> dict:
        """{"cluster": N, "confirm"?: bool}: each image of review-queue cluster N gets its
        own proposed label."""
        body = _fields(body, {"cluster"}, {"confirm"}, '{"cluster": 0, "confirm": false}')
        cluster = body["cluster"]
        rows = self.queue[self.queue["cluster"] == cluster] if _is_int(cluster) else []
        if not len(rows):
            raise RequestError(HTTPStatus.NOT_FOUND, f"no review-queue cluster {cluster!r}")
        note = f"{NOTE}: queue cluster {cluster}"
        new = [Decision(p, self.check_label(lbl), "human", note)
               for p, lbl in zip(rows["path"], rows["proposed"], strict=True)]
        return self._write(lambda old: merge_decisions(old, new, protect_sources=())[0],
                           {"kind": "cluster", "cluster": cluster,
                            "what": f"queue cluster {cluster}: {len(new)} image(s) accepted"},
                           confirmed=_confirm(body))

    def clear(self, body) -> dict:
        """{"paths": [...]}: remove these images' decisions (they fall back to their folder
        label). Asking for it is the confirmation: nothing else is touched."""
        body = _fields(body, {"paths"}, set(), '{"paths": [...]}')
        paths = self.check_editable(body["paths"])
        return self._write(lambda old: remove_decisions(old, paths)[0],
                           {"kind": "clear", "what": f"cleared {len(paths)} image(s)"},
                           confirmed=True)

    def undo(self, body) -> dict:
        """{}: put the label file back exactly as it was before the last action."""
        _fields(body, set(), set(), "{}")
        with self.lock, locked.holding_lock(self.paths.decisions):
            state = history.load_state(self.paths.state)
            current, old = self.read_label_file()
            history.reconcile(state, self.key, current)
            record = history.last_undo(state, self.key)
            if record is None:
                raise RequestError(HTTPStatus.CONFLICT, "nothing to undo")
            try:
                restored = history.undone_bytes(record, current, self.classes,
                                                str(self.paths.decisions))
                if not locked.restore(self.paths.decisions, current, restored):
                    raise history.UndoRefused(f"{self.paths.decisions} was changed by something "
                                              "else during the undo; undo refused, nothing "
                                              "changed")
            except history.UndoRefused as e:
                raise RequestError(HTTPStatus.CONFLICT, str(e)) from None
            new = [] if restored is None else parse_decisions(restored.decode("utf-8"),
                                                              self.classes)
            # after the rename: a crash in between leaves a record reconcile() drops
            history.pop_undo(state, self.key)
            if "pace_before" in record:
                state["pace"] = record["pace_before"]
            history.save_state(self.paths.state, state)
        undone = {k: record[k] for k in ("kind", "what", "page", "exceptions", "cluster")
                  if k in record}
        if record.get("kind") == "verify" and record.get("page") in self.page_index:
            pg = self.page_index[record["page"]]
            self.count_proposals(record["page"], -len(pg["images"]),
                                 -wrong_proposals(pg["label"], record.get("exceptions") or {}))
        return {"ok": True, "undone": undone, "changed": len(_changes(old, new)),
                "changes": _changes(old, new), **self.summary(new, state)}

    def _write(self, change, info: dict, confirmed: bool, pace_images: int = 0) -> dict:
        """Apply change(old) -> new to the label file as it is now, under the label file's
        lock (another request or tool may have changed it since the page loaded): refuse
        unconfirmed overwrites, save the undo record and the pace, then rename the new file
        in (in that order: see history.reconcile)."""
        with self.lock:
            saved = history.load_state(self.paths.state)
            out = {"state": saved}

            def checked_change(old: list[Decision]) -> list[Decision]:
                new = change(old)
                self.check_validation(new)
                over = [] if confirmed else self.overwrites(old, new)
                if _changes(old, new) and over:
                    raise RequestError(
                        HTTPStatus.CONFLICT, f"{len(over)} image(s) already labeled would "
                        "change; send it again with \"confirm\": true if that is meant",
                        needs_confirm=True, overwrites=len(over), paths=over[:CONFIRM_LISTED])
                return new

            def record(before: locked.Snapshot, new: list[Decision], after: bytes) -> None:
                state = copy.deepcopy(saved)  # a retry starts from the saved state again
                history.reconcile(state, self.key, before.data)
                # when (the page's history shows it) and, for a page, the pace before it
                # (undoing the action takes its images out of the pace)
                stamped = {**info, "at": round(time.time(), 1)}
                if pace_images:
                    stamped["pace_before"] = state["pace"]
                history.push_undo(state, self.key, history.undo_record(
                    before.data, before.decisions, new, after, stamped))
                if pace_images:
                    state["pace"] = history.add_to_pace(state["pace"], self.clock(),
                                                        pace_images)
                history.save_state(self.paths.state, state)
                out["state"] = state

            written = locked.update(self.paths.decisions, self.classes, checked_change,
                                       before_write=record)
            if written.after is None and out["state"] is not saved:
                # a retry found nothing left to change: the record saved for it is void
                history.save_state(self.paths.state, saved)
                out["state"] = saved
        changes = _changes(written.before.decisions, written.new)
        return {"ok": True, "changed": len(changes), "changes": changes,
                **self.summary(written.new, out["state"])}


def _changes(old: list[Decision], new: list[Decision]) -> dict[str, list[str] | None]:
    """path -> its new [label, source] (None: no decision any more), for changed rows only."""
    was = {d.path: (d.label, d.source, d.note) for d in old}
    now = {d.path: (d.label, d.source, d.note) for d in new}
    return {p: (list(now[p][:2]) if p in now else None)
            for p in sorted(set(was) | set(now)) if was.get(p) != now.get(p)}


def _fields(body, required: set[str], optional: set[str], shape: str) -> dict:
    if (not isinstance(body, dict) or not required <= set(body)
            or set(body) - required - optional):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"expected a JSON object {shape}")
    return body


def _confirm(body: dict) -> bool:
    confirm = body.get("confirm", False)
    if not isinstance(confirm, bool):
        raise RequestError(HTTPStatus.BAD_REQUEST, "confirm must be true or false")
    return confirm


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _floats(s: pd.Series) -> list[float]:
    return [round(float(v), 5) for v in np.asarray(s, dtype=np.float64)]

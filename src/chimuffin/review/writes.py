"""The label actions the review page writes, and their undo.

Every action is validated whole, then written at once under the label file's inter-process
lock (chimuffin.labels.locked): read the label file, merge, record how to undo it in the state
file, write it atomically (sorted rows, source `human`, a note naming where the answer came
from). A bad request changes nothing. An action that would change an image somebody already
labeled (a folder label or an earlier decision) is refused unless the request says the person
confirmed it; test images and validation images (labeled in data/labels/validation.csv) are
never changed here.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import pandas as pd

from chimuffin.labels import locked
from chimuffin.labels.rows import (
    PERSON_SOURCES,
    UNDEFINED,
    VAL_DIR,
    VALIDATION_CORRECTION,
    VALIDATION_REFUSED,
    Decision,
    allowed_labels,
    check_relative_path,
    merge_decisions,
    parse_decisions,
    remove_decisions,
)
from chimuffin.review import history

NOTE = "review page"
CONFIRM_LISTED = 20  # paths named in a "needs confirmation" answer (the count is always whole)
HISTORY_SHOWN = 10  # the last actions the page lists (each undoable, latest first)


class RequestError(Exception):
    """A refused request: its status, message and any extra fields for the JSON answer."""

    def __init__(self, status: HTTPStatus, message: str, **extra):
        super().__init__(message)
        self.status, self.extra = status, extra


@dataclass(frozen=True)
class Images:
    """The images the label file may name: the prepared dataset minus the test split (test
    labels are never edited here: that would be tuning on test), each with its label before
    any decision (folder, validation or undefined)."""
    data_dir: Path
    split: dict[str, str]       # every prepared image, test ones too
    base_label: dict[str, str]  # outside the test split
    validation: set[str]        # labeled in validation.csv: the clean stage refuses changes
    # the dataset's own validation folder (val128/): changed only by a deliberate correction
    val_folder: frozenset[str] = frozenset()

    @classmethod
    def of(cls, prepared: pd.DataFrame, data_dir: Path) -> Images:
        rows = list(zip(prepared["path"], prepared["label"], prepared["split"], strict=True))
        return cls(data_dir.resolve(), {p: s for p, _, s in rows},
                   {p: lbl for p, lbl, s in rows if s != "test"},
                   set(prepared.loc[prepared["label_source"] == "validation", "path"]),
                   frozenset(p for p, _, s in rows if s == "val" and p.startswith(VAL_DIR + "/")))

    def is_validation(self, path: str) -> bool:
        """In validation.csv or in the dataset's val128/ folder."""
        return path in self.validation or path in self.val_folder

    @property
    def pool(self) -> list[str]:
        return [p for p, lbl in self.base_label.items() if lbl == UNDEFINED]


class LabelWrites:
    """The label file `decisions` as the page writes it, with the undo history and pace in
    the state file. `numbers(decisions, state)`: the page's counts and progress, which every
    answer carries."""

    def __init__(self, decisions: Path, state: Path, root: Path, classes: list[str],
                 images: Images, numbers: Callable[[list[Decision], dict], dict],
                 clock=time.time):
        self.decisions, self.state_file, self.classes = decisions, state, classes
        self.images, self.numbers, self.clock = images, numbers, clock
        self.labels = allowed_labels(classes)
        self.lock = threading.Lock()
        # the undo history is kept per label file (named relative to the repository root)
        self.key = Path(os.path.relpath(decisions.resolve(), root.resolve())).as_posix()
        history.load_state(state)  # a damaged state file stops here, not mid-session

    def read(self) -> tuple[bytes | None, list[Decision]]:
        """The label file's bytes (None: no file) and its decisions, from one read."""
        snap = locked.read(self.decisions, self.classes)
        return snap.data, snap.decisions

    def load_state(self, data: bytes | None) -> dict:
        """The state file, with undo records the label file no longer matches dropped."""
        state = history.load_state(self.state_file)
        history.reconcile(state, self.key, data)
        return state

    def summary(self, decisions: list[Decision], state: dict) -> dict:
        """The numbers every answer carries: counts, progress, what undo would undo."""
        return {**self.numbers(decisions, state),
                "undo": history.undo_summary(state, self.key), "history": self.recent(state)}

    def recent(self, state: dict) -> list[dict]:
        """The last actions that undo can take back, the latest first: what, and when."""
        stack = state["undo"].get(self.key) or []
        return [{"what": r.get("what"), "kind": r.get("kind"), "at": r.get("at")}
                for r in reversed(stack[-HISTORY_SHOWN:])]

    # --- checks ---

    def check_path(self, path) -> str:
        if not isinstance(path, str):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"path must be a string, got {path!r}")
        bad = check_relative_path(path)
        if bad:
            raise RequestError(HTTPStatus.FORBIDDEN, f"path {path!r}: {bad}")
        if path not in self.images.split:
            raise RequestError(HTTPStatus.NOT_FOUND, f"path {path!r}: not an image of the "
                               "prepared dataset")
        full = (self.images.data_dir / path).resolve()
        if not full.is_relative_to(self.images.data_dir):
            raise RequestError(HTTPStatus.FORBIDDEN, f"path {path!r}: outside the dataset")
        return path

    def check_editable(self, paths) -> list[str]:
        """A non-empty list of distinct dataset images outside the test split."""
        if not isinstance(paths, list) or not paths:
            raise RequestError(HTTPStatus.BAD_REQUEST, "paths must be a non-empty list")
        for p in paths:
            self.check_path(p)
            if self.images.split[p] == "test":
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
            if d.path in self.images.validation and d.label != self.images.base_label[d.path]:
                raise RequestError(HTTPStatus.FORBIDDEN, f"path {d.path!r}: {VALIDATION_REFUSED}")
            if (d.path in self.images.val_folder and d.label != self.images.base_label[d.path]
                    and VALIDATION_CORRECTION not in d.note):
                raise RequestError(HTTPStatus.FORBIDDEN, f"path {d.path!r}: a validation image "
                                   f"({VAL_DIR}/) changes only by a correction of that image")

    def bulk(self, new: list[Decision], skipped: dict[str, list[str]]) -> Callable:
        """change(old): `new` merged into `old` less what a bulk action never changes: an
        image a person answered (in `old`, under the lock) and a validation image. `skipped`
        gets them, by why: {"answered": [...], "validation": [...]}."""
        def change(old: list[Decision]) -> list[Decision]:
            answered = {d.path for d in old if d.source in PERSON_SOURCES}
            skipped.clear()
            keep = []
            for d in new:
                why = "answered" if d.path in answered else \
                    "validation" if self.images.is_validation(d.path) else None
                if why is None:
                    keep.append(d)
                else:
                    skipped.setdefault(why, []).append(d.path)
            return merge_decisions(old, keep, protect_sources=())[0]
        return change

    def overwrites(self, old: list[Decision], new: list[Decision]) -> list[str]:
        """Images somebody already labeled (folder, validation or a decision) whose label the
        change from old to new would change."""
        was, now = {d.path: d.label for d in old}, {d.path: d.label for d in new}
        out = []
        for p in sorted(set(was) | set(now)):
            base = self.images.base_label.get(p, UNDEFINED)
            if was.get(p, base) != now.get(p, base) and (p in was or base != UNDEFINED):
                out.append(p)
        return out

    # --- actions (POST bodies, validated whole before anything is written) ---

    def label(self, body) -> dict:
        """{"paths": [...], "label": L, "confirm"?: bool, "correction"?: bool}: every path
        gets L. Several images are a bulk action: images a person answered and val128/
        images are left out (the answer's `skipped`); a validation.csv image is refused. One
        image is answered as asked; a val128/ image only as a correction ("correction": true),
        which its row's note says."""
        body = fields(body, {"paths", "label"}, {"confirm", "correction"},
                      '{"paths": [...], "label": "...", "confirm": false, "correction": false}')
        label = self.check_label(body["label"])
        paths = self.check_editable(body["paths"])
        info = {"kind": "label", "what": f"{len(paths)} image(s) -> {label}"}
        skipped: dict[str, list[str]] = {}
        if len(paths) == 1:
            new = [self.one_label(paths[0], label, flag(body, "correction"))]
            if VALIDATION_CORRECTION in new[0].note:
                info["what"] = f"validation correction: {paths[0]} -> {label}"
        else:
            self.check_validation([Decision(p, label, "human") for p in paths
                                   if p in self.images.validation])
            new = self.bulk([Decision(p, label, "human", NOTE) for p in paths], skipped)
        reply = self.write(new, info, confirmed=confirm(body))
        return {**reply, "label": label, "paths": paths, "skipped": skipped}

    def one_label(self, path: str, label: str, correction: bool) -> Decision:
        """One image's answer; a val128/ image's new label only with `correction`."""
        base = self.images.base_label[path]
        if correction and path not in self.images.val_folder:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"path {path!r}: not in the dataset's "
                               f"{VAL_DIR}/ folder; a correction is for those only")
        if path in self.images.val_folder and label != base and not correction:
            raise RequestError(
                HTTPStatus.CONFLICT, f"{path} is a validation image (the dataset's {VAL_DIR}/ "
                f"folder says {base}): every model is scored on it. Correcting it to {label} "
                "changes the validation set; send it again with \"correction\": true if "
                "that is meant", needs_correction=True, path=path, was=base)
        note = f"{NOTE}: {VALIDATION_CORRECTION} ({VAL_DIR}/ said {base})" if correction else NOTE
        return Decision(path, label, "human", note)

    def clear(self, body) -> dict:
        """{"paths": [...]}: remove these images' decisions (they fall back to their folder
        label). Asking for it is the confirmation: nothing else is touched."""
        body = fields(body, {"paths"}, set(), '{"paths": [...]}')
        paths = self.check_editable(body["paths"])
        return self.write(lambda old: remove_decisions(old, paths)[0],
                          {"kind": "clear", "what": f"cleared {len(paths)} image(s)"},
                          confirmed=True)

    def undo(self, body) -> dict:
        """{}: put the label file back exactly as it was before the last action; the answer's
        `undone` says what that action was."""
        fields(body, set(), set(), "{}")
        with self.lock, locked.holding_lock(self.decisions):
            current, old = self.read()
            state = self.load_state(current)
            record = history.last_undo(state, self.key)
            if record is None:
                raise RequestError(HTTPStatus.CONFLICT, "nothing to undo")
            try:
                restored = history.undone_bytes(record, current, self.classes,
                                                str(self.decisions))
                if not locked.restore(self.decisions, current, restored):
                    raise history.UndoRefused(f"{self.decisions} was changed by something "
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
            history.save_state(self.state_file, state)
        undone = {k: record[k] for k in ("kind", "what", "page", "exceptions", "cluster")
                  if k in record}
        return {"ok": True, "undone": undone, "changed": len(changes(old, new)),
                "changes": changes(old, new), **self.summary(new, state)}

    def write(self, new, info: dict, confirmed: bool, pace_images: int = 0) -> dict:
        """Merge `new` decisions (or apply change(old) -> new) into the label file as it is
        now, under its lock (another request or tool may have changed it since the page
        loaded): refuse unconfirmed overwrites, save the undo record and the pace, then rename
        the new file in (in that order: see history.reconcile)."""
        change = new if callable(new) else \
            lambda old: merge_decisions(old, new, protect_sources=())[0]
        with self.lock:
            saved = history.load_state(self.state_file)
            out = {"state": saved}

            def checked_change(old: list[Decision]) -> list[Decision]:
                after = change(old)
                self.check_validation(after)
                over = [] if confirmed else self.overwrites(old, after)
                if changes(old, after) and over:
                    raise RequestError(
                        HTTPStatus.CONFLICT, f"{len(over)} image(s) already labeled would "
                        "change; send it again with \"confirm\": true if that is meant",
                        needs_confirm=True, overwrites=len(over), paths=over[:CONFIRM_LISTED])
                return after

            def record(before: locked.Snapshot, after: list[Decision], data: bytes) -> None:
                out["state"] = self.record_undo(saved, before, after, data, info, pace_images)

            written = locked.update(self.decisions, self.classes, checked_change,
                                    before_write=record)
            if written.after is None and out["state"] is not saved:
                # a retry found nothing left to change: the record saved for it is void
                history.save_state(self.state_file, saved)
                out["state"] = saved
        done = changes(written.before.decisions, written.new)
        return {"ok": True, "changed": len(done), "changes": done,
                "labels_changed": self.labels_changed(written.before.decisions, written.new),
                **self.summary(written.new, out["state"])}

    def labels_changed(self, old: list[Decision], new: list[Decision]) -> int:
        """Images whose label changed (a row whose note alone changed is not one)."""
        base = self.images.base_label
        was, now = {d.path: d.label for d in old}, {d.path: d.label for d in new}
        return sum(was.get(p, base.get(p, UNDEFINED)) != now.get(p, base.get(p, UNDEFINED))
                   for p in set(was) | set(now))

    def record_undo(self, saved: dict, before: locked.Snapshot, new: list[Decision],
                    after: bytes, info: dict, pace_images: int) -> dict:
        """The state with how to undo this write (and, for a page, the pace), saved."""
        state = copy.deepcopy(saved)  # a retry starts from the saved state again
        history.reconcile(state, self.key, before.data)
        # when (the page's history shows it) and, for a page, the pace before it (undoing
        # the action takes its images out of the pace)
        stamped = {**info, "at": round(time.time(), 1)}
        if pace_images:
            stamped["pace_before"] = state["pace"]
        history.push_undo(state, self.key, history.undo_record(
            before.data, before.decisions, new, after, stamped))
        if pace_images:
            state["pace"] = history.add_to_pace(state["pace"], self.clock(), pace_images)
        history.save_state(self.state_file, state)
        return state


def changes(old: list[Decision], new: list[Decision]) -> dict[str, list[str] | None]:
    """path -> its new [label, source] (None: no decision any more), for changed rows only."""
    was = {d.path: (d.label, d.source, d.note) for d in old}
    now = {d.path: (d.label, d.source, d.note) for d in new}
    return {p: (list(now[p][:2]) if p in now else None)
            for p in sorted(set(was) | set(now)) if was.get(p) != now.get(p)}


def fields(body, required: set[str], optional: set[str], shape: str) -> dict:
    if (not isinstance(body, dict) or not required <= set(body)
            or set(body) - required - optional):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"expected a JSON object {shape}")
    return body


def confirm(body: dict) -> bool:
    return flag(body, "confirm")


def flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} must be true or false")
    return value


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)

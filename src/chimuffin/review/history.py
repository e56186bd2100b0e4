"""What the review page remembers beyond the label file: the undo history and the person's pace.

Both live in a small git-ignored JSON file (`.chimuffin/review-state.json` by default), written
atomically after every action, so they survive a reload and a server restart. The label file
stays the only truth for labels. An undo record holds just enough to put the label file back
byte for byte: the rows the action changed (when the file was in the form the tools write) or
the whole old file (when it was not, e.g. after a hand edit), plus the file's hash before and
after the action, so that an undo refuses when anything else has changed the file since.

A crash (kill -9) at any point leaves the two consistent: an action saves its undo record
before it renames the new label file in, and an undo renames the old file back before it drops
the record. So the only leftover a crash can leave is a record on top whose action is not in
the file (never renamed in, or already undone): the file then holds that record's `before`
content, and reconcile() drops it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from chimuffin import atomic
from chimuffin.errors import UserError
from chimuffin.labels.rows import Decision, format_decisions, parse_decisions

STATE_FILE = ".chimuffin/review-state.json"  # relative to the repository root; git-ignored
STATE_VERSION = 1
UNDO_DEPTH = 50  # actions kept per label file (a page is a few KB; the file stays small)
IDLE_S = 180.0  # a longer gap between two actions is a pause, not work: it does not count


class UndoRefused(Exception):
    """The last action cannot be undone (nothing to undo, or the file changed since)."""


# --- the state file -----------------------------------------------------------------------

def empty_state() -> dict:
    return {"version": STATE_VERSION, "undo": {}, "pace": {}}


def load_state(path: Path) -> dict:
    """The state file's content, or an empty state when there is none yet."""
    if not path.exists():
        return empty_state()
    fix = "delete it to start afresh (it holds only the undo history and the pace)"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable review state file ({e}); {fix}") from e
    if (not isinstance(state, dict) or state.get("version") != STATE_VERSION
            or not isinstance(state.get("undo"), dict) or not isinstance(state.get("pace"), dict)):
        raise UserError(f"{path}: not a review state file of version {STATE_VERSION}; {fix}")
    return state


def save_state(path: Path, state: dict) -> None:
    atomic.write_json(path, state)


# --- undo ---------------------------------------------------------------------------------

def file_digest(data: bytes | None) -> str:
    """Identity of the label file's content; None means the file does not exist."""
    return "absent" if data is None else hashlib.sha256(data).hexdigest()


def _row(d: Decision | None) -> list[str] | None:
    return None if d is None else [d.label, d.source, d.note]


def undo_record(before: bytes | None, old: list[Decision], new: list[Decision],
                after: bytes, info: dict) -> dict:
    """What undoing `old -> new` needs; `info` (kind, what, page...) is shown to the person."""
    record = {**info, "before": file_digest(before), "after": file_digest(after)}
    if before is None:
        record["before_absent"] = True
    elif format_decisions(old).encode() == before:
        was, now = {d.path: d for d in old}, {d.path: d for d in new}
        record["rows"] = {p: _row(was.get(p)) for p in sorted(set(was) | set(now))
                          if _row(was.get(p)) != _row(now.get(p))}
    else:  # not in the form the tools write: only the file itself restores it exactly
        record["before_b64"] = base64.b64encode(before).decode("ascii")
    return record


def undone_bytes(record: dict, current: bytes | None, classes: list[str],
                 name: str) -> bytes | None:
    """The label file as it was before the recorded action (None: it did not exist)."""
    if file_digest(current) != record["after"]:
        raise UndoRefused(f"{name} was changed by something else since the last action "
                          f"({record.get('what', 'unknown')}); undo refused, nothing changed")
    if record.get("before_absent"):
        return None
    if "before_b64" in record:
        return base64.b64decode(record["before_b64"])
    rows = {d.path: d for d in parse_decisions(current.decode("utf-8"), classes, name)}
    for path, row in record["rows"].items():
        if row is None:
            rows.pop(path, None)
        else:
            rows[path] = Decision(path, *row)
    return format_decisions(list(rows.values())).encode()


def reconcile(state: dict, key: str, current: bytes | None) -> int:
    """Drop the records on top whose action the label file does not hold: it holds exactly
    what it held before them (a crash came between saving the record and the rename, or
    between an undo's rename and dropping its record). Returns how many were dropped."""
    stack = state["undo"].get(key) or []
    digest, dropped = file_digest(current), 0
    while stack and stack[-1].get("before") == digest and stack[-1].get("after") != digest:
        stack.pop()
        dropped += 1
    return dropped


def push_undo(state: dict, key: str, record: dict) -> None:
    stack = state["undo"].setdefault(key, [])
    stack.append(record)
    del stack[:-UNDO_DEPTH]


def last_undo(state: dict, key: str) -> dict | None:
    stack = state["undo"].get(key) or []
    return stack[-1] if stack else None


def pop_undo(state: dict, key: str) -> None:
    state["undo"][key].pop()


def undo_summary(state: dict, key: str) -> dict:
    last = last_undo(state, key)
    return {"depth": len(state["undo"].get(key) or []),
            "last": None if last is None else last.get("what")}


# --- pace ---------------------------------------------------------------------------------

def add_to_pace(pace: dict, at: float, images: int) -> dict:
    """Count `images` verified at time `at`: the time since the previous action is the work
    they took, unless it was a pause (longer than IDLE_S, or the first action ever)."""
    out = {"images": pace.get("images", 0), "active_s": pace.get("active_s", 0.0),
           "last_at": at}
    last = pace.get("last_at")
    if last is not None and 0 < at - last <= IDLE_S:
        out["images"] += images
        out["active_s"] += at - last
    return out


def images_per_minute(pace: dict) -> float | None:
    images, active = pace.get("images", 0), pace.get("active_s", 0.0)
    return 60.0 * images / active if images > 0 and active > 0 else None

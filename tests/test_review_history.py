"""The review page's pure parts: undo records (byte-exact restores), pace, the pages file and
the progress numbers."""

import pandas as pd
import pytest

from chimuffin.errors import UserError
from chimuffin.labels.rows import Decision, format_decisions
from chimuffin.review import history
from chimuffin.review.verify import page_list, pages_to_verify, progress

CLASSES = ["chihuahua", "muffin"]
LABELS = [*CLASSES, "undefined", "remove"]
A = Decision("a.jpg", "muffin", "auto", "accepted")
B = Decision("b.jpg", "chihuahua", "human", "review page")


def roundtrip(before: bytes | None, old, new) -> bytes | None:
    after = format_decisions(new).encode()
    record = history.undo_record(before, old, new, after, {"kind": "label", "what": "x"})
    return history.undone_bytes(record, after, CLASSES, "decisions.csv")


def test_undo_restores_the_file_byte_for_byte():
    old = [A, B]
    new = [Decision("a.jpg", "chihuahua", "human", "review page: page 3"), B,
           Decision("c.jpg", "remove", "human", "review page: page 3")]
    before = format_decisions(old).encode()
    assert roundtrip(before, old, new) == before
    # a hand-edited file (CRLF, a BOM, spaces) is kept whole, so it comes back exactly too
    odd = "\ufeffpath,label,source,note\r\na.jpg, muffin ,auto,accepted\r\n\r\n" \
          "b.jpg,chihuahua,human,review page\r\n"
    assert roundtrip(odd.encode(), old, new) == odd.encode()
    assert roundtrip(None, [], new) is None  # there was no file: undo removes it


def test_undo_record_keeps_only_the_changed_rows():
    old = [A, B]
    new = [A, Decision("b.jpg", "muffin", "human", "n")]
    after = format_decisions(new).encode()
    record = history.undo_record(format_decisions(old).encode(), old, new, after, {})
    assert record["rows"] == {"b.jpg": ["chihuahua", "human", "review page"]}


def test_undo_refuses_when_the_file_changed_since():
    old, new = [A], [A, B]
    after = format_decisions(new).encode()
    record = history.undo_record(format_decisions(old).encode(), old, new, after,
                                 {"what": "page 1"})
    with pytest.raises(history.UndoRefused, match="changed by something else.*page 1"):
        history.undone_bytes(record, after + b"x.jpg,muffin,human,\n", CLASSES, "d.csv")
    with pytest.raises(history.UndoRefused):
        history.undone_bytes(record, None, CLASSES, "d.csv")


def test_undo_stack_is_bounded_and_per_label_file():
    state = history.empty_state()
    for i in range(history.UNDO_DEPTH + 5):
        history.push_undo(state, "a.csv", {"what": str(i)})
    assert history.undo_summary(state, "a.csv") == {"depth": history.UNDO_DEPTH,
                                                    "last": str(history.UNDO_DEPTH + 4)}
    assert history.last_undo(state, "other.csv") is None


def test_state_file_roundtrip_and_a_damaged_one_is_named(tmp_path):
    f = tmp_path / ".chimuffin" / "review-state.json"
    assert history.load_state(f) == history.empty_state()
    state = history.empty_state()
    history.push_undo(state, "d.csv", {"what": "x"})
    history.save_state(f, state)
    assert history.load_state(f) == state
    f.write_text("{not json")
    with pytest.raises(UserError, match="review-state.json: not a readable.*delete it"):
        history.load_state(f)
    f.write_text('{"version": 99, "undo": {}, "pace": {}}')
    with pytest.raises(UserError, match="not a review state file of version 1"):
        history.load_state(f)


def test_pace_counts_active_time_only():
    pace = history.add_to_pace({}, 1000.0, 20)  # the first action: no time to measure it by
    assert history.images_per_minute(pace) is None
    pace = history.add_to_pace(pace, 1030.0, 20)  # 20 images in 30 s
    pace = history.add_to_pace(pace, 1030.0 + history.IDLE_S + 1, 20)  # after a pause
    pace = history.add_to_pace(pace, 1030.0 + history.IDLE_S + 31, 10)  # 10 in 30 s
    assert pace["images"] == 30 and pace["active_s"] == pytest.approx(60.0)
    assert history.images_per_minute(pace) == pytest.approx(30.0)


def pages_frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["page", "position", "path", "label", "score"])
    df["page_score"] = df.groupby("page")["score"].transform("mean")
    return df.assign(model_label=df["label"], knn_label=df["label"], agree=True)


def test_pages_come_in_page_order_and_bad_files_are_named(tmp_path):
    f = tmp_path / "pages.parquet"
    assert pages_to_verify(f, set(), CLASSES) is None
    df = pages_frame([(3, 0, "p1", "muffin", 0.9), (3, 1, "p2", "muffin", 0.7),
                      (0, 0, "p3", "chihuahua", 0.6)])
    df.to_parquet(f)
    got = page_list(pages_to_verify(f, {"p1", "p2", "p3"}, CLASSES))
    assert [(p["page"], p["label"], [im["path"] for im in p["images"]]) for p in got] == \
        [(0, "chihuahua", ["p3"]), (3, "muffin", ["p1", "p2"])]
    assert got[1]["page_score"] == pytest.approx(0.8)
    with pytest.raises(UserError, match="p3 is not a pool image.*dvc repro suggest"):
        pages_to_verify(f, {"p1", "p2"}, CLASSES)
    df.drop(columns="agree").to_parquet(f)
    with pytest.raises(UserError, match="column 'agree' missing"):
        pages_to_verify(f, {"p1", "p2", "p3"}, CLASSES)
    df.assign(label=["muffin", "chihuahua", "chihuahua"]).to_parquet(f)
    with pytest.raises(UserError, match="page 3 proposes more than one class"):
        pages_to_verify(f, {"p1", "p2", "p3"}, CLASSES)


def test_progress_counts_person_answers_and_pages_left():
    pages = pages_frame([(0, 0, "p1", "muffin", 0.9), (0, 1, "p2", "muffin", 0.9),
                         (1, 0, "p3", "chihuahua", 0.8), (1, 1, "p4", "chihuahua", 0.8)])
    pool = ["p1", "p2", "p3", "p4", "p5", "p6"]
    decisions = {d.path: d for d in [
        Decision("p1", "muffin", "human"), Decision("p2", "undefined", "oracle"),
        Decision("p3", "muffin", "auto"),  # a tool's answer is not a verification
        Decision("p5", "chihuahua", "auto")]}
    pace = {"images": 20, "active_s": 60.0}
    got = progress(pool, decisions, pages, LABELS, CLASSES, pace)
    assert got == {"pool": 6, "verified": 2,
                   "verified_by_label": {"chihuahua": 0, "muffin": 1, "undefined": 1,
                                         "remove": 0},
                   "left": 2, "left_by_class": {"chihuahua": 2, "muffin": 0},
                   "pages": 2, "pages_left": 1, "off_pages": 2,
                   "per_minute": 20.0, "minutes_left": 0.1}
    none = progress(pool, {}, None, LABELS, CLASSES, {})
    assert (none["pages"], none["left"], none["off_pages"], none["minutes_left"]) == \
        (0, 0, 6, None)

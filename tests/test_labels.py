import pandas as pd
import pytest

from chimuffin.errors import UserError
from chimuffin.labels.rows import (
    Decision,
    apply_decisions,
    dedupe_identical,
    format_decisions,
    merge_decisions,
    parse_decisions,
    parse_path_labels,
    read_path_labels,
    remove_decisions,
)

CLASSES = ["chihuahua", "muffin"]
HEADER = "path,label,source,note\n"


def test_parse_roundtrip_and_tolerated_formats():
    text = HEADER + "b.jpg,muffin,human,looks like a muffin\na.jpg,remove,3lc,\n"
    ds = parse_decisions(text, CLASSES)
    assert [d.path for d in ds] == ["b.jpg", "a.jpg"]
    assert parse_decisions(format_decisions(ds), CLASSES) == sorted(ds, key=lambda d: d.path)
    # a BOM and Windows line endings (spreadsheet exports) parse the same
    assert parse_decisions("\ufeff" + text.replace("\n", "\r\n"), CLASSES) == ds
    assert parse_decisions(HEADER, CLASSES) == []


@pytest.mark.parametrize("text,message", [
    ("", "empty file"),
    ("path,label,source\nx.jpg,muffin,human\n", "missing column(s) note"),
    (HEADER + "x.jpg,muffin,human,\nx.jpg,chihuahua,human,\n", "row 3: duplicate decision"),
    (HEADER + "x.jpg,cat,human,\n", "row 2: unknown label 'cat'"),
    (HEADER + "x.jpg,muffin,robot,\n", "row 2: unknown source 'robot'"),
    (HEADER + "../x.jpg,muffin,human,\n", "row 2: path '../x.jpg': path contains '..'"),
    (HEADER + "/etc/passwd,muffin,human,\n", "absolute path"),
    (HEADER + "x.jpg,muffin\n", "row 2: expected 4 fields"),
    (HEADER + "train128/undefined/a.jpg,muffin,human,\ntest128/muffin/b.jpg,chihuahua,human,\n",
     "row 3: test128/muffin/b.jpg is a test image: the test split is only ever evaluated"),
    (HEADER + "test128/chihuahua/b.jpg,remove,3lc,\n", "row 2: test128/chihuahua/b.jpg is a "
     "test image"),
])
def test_bad_decisions_name_the_row(text, message):
    with pytest.raises(UserError) as e:
        parse_decisions(text, CLASSES, name="decisions.csv")
    assert message in str(e.value)


def manifest(rows):
    return pd.DataFrame(rows, columns=["path", "split", "label", "label_source", "idx",
                                       "content_hash"])


def test_apply_relabels_removes_and_rejects_unknown_paths():
    df = manifest([("a", "train", "chihuahua", "folder", 0, "h1"),
                   ("b", "train", "undefined", "folder", 1, "h2"),
                   ("c", "train", "muffin", "folder", 2, "h3")])
    out = apply_decisions(df, [Decision("b", "muffin", "human"), Decision("c", "remove", "auto")])
    assert out["path"].tolist() == ["a", "b"]
    assert out.loc[1, "label"] == "muffin" and out.loc[1, "label_source"] == "human"
    assert df.loc[1, "label"] == "undefined"  # input untouched
    bad = parse_decisions(HEADER + "a,muffin,human,\n\nzzz,muffin,human,\n", CLASSES)
    with pytest.raises(UserError, match="decisions.csv: row 4: zzz is not in the prepared"):
        apply_decisions(df, bad)


def test_dedupe_keeps_test_copy_and_reports_conflicts():
    df = manifest([("t/a", "test", "muffin", "folder", 0, "same"),
                   ("u/a", "train", "chihuahua", "folder", 1, "same"),
                   ("u/b", "train", "undefined", "folder", 2, "dup"),
                   ("u/c", "train", "muffin", "folder", 3, "dup"),
                   ("u/d", "train", "muffin", "folder", 4, "solo")])
    kept, conflicts, dropped = dedupe_identical(df)
    assert kept["path"].tolist() == ["t/a", "u/c", "u/d"]
    assert dropped == 2
    assert conflicts == [{"paths": ["t/a", "u/a"], "labels": ["chihuahua", "muffin"],
                          "kept": "t/a"}]


def test_merge_never_overrides_a_person():
    old = [Decision("a", "muffin", "human"), Decision("b", "muffin", "auto")]
    new = [Decision("a", "chihuahua", "auto"), Decision("b", "chihuahua", "auto"),
           Decision("c", "muffin", "auto")]
    merged, changed = merge_decisions(old, new)
    assert {d.path: d.label for d in merged} == {"a": "muffin", "b": "chihuahua", "c": "muffin"}
    assert changed == 2


def test_remove_decisions_drops_only_the_named_paths():
    old = [Decision("a", "muffin", "human"), Decision("b", "muffin", "auto")]
    kept, removed = remove_decisions(old, ["b", "not-decided"])
    assert (kept, removed) == ([Decision("a", "muffin", "human")], 1)
    assert remove_decisions(old, []) == (old, 0)
def test_a_decision_may_not_change_or_remove_a_validation_label():
    df = manifest([("v", "val", "muffin", "validation", 0, "h1"),
                   ("b", "train", "undefined", "folder", 1, "h2")])
    same = parse_decisions(HEADER + "b,muffin,human,\nv,muffin,human,\n", CLASSES)
    assert apply_decisions(df, same)["label"].tolist() == ["muffin", "muffin"]
    for label in ("chihuahua", "remove", "undefined"):
        bad = parse_decisions(HEADER + f"b,muffin,human,\nv,{label},human,\n", CLASSES)
        with pytest.raises(UserError, match="decisions.csv: row 3: v is a validation image "
                           r"\(labeled in data/labels/validation.csv\); a decision may not "
                           "change or remove its label"):
            apply_decisions(df, bad)


# --- path,label files: validation.csv and the true-label files ------------------------------

def test_path_label_files_take_either_header_a_bom_and_blank_rows():
    assert parse_path_labels("relative_path,label\na.jpg,muffin\n", CLASSES, "o.csv") == \
        {"a.jpg": "muffin"}
    assert parse_path_labels("\ufeffpath,label\r\nb.jpg,chihuahua\r\n\r\n c.jpg , muffin\r\n",
                             CLASSES, "v.csv") == {"b.jpg": "chihuahua", "c.jpg": "muffin"}
    assert parse_path_labels("path,label\n", CLASSES, "v.csv") == {}


@pytest.mark.parametrize("text,message", [
    ("", "o.csv: row 1 (header): expected 'path,label' or 'relative_path,label'"),
    ("file,label\na.jpg,muffin\n", "o.csv: row 1 (header): expected"),
    ("path,label\na.jpg,cat\n", "o.csv: row 2: unknown label 'cat' for a.jpg; allowed: "
     "chihuahua, muffin"),
    ("path,label\na.jpg,undefined\n", "o.csv: row 2: unknown label 'undefined'"),
    ("relative_path,label\n../a.jpg,muffin\n", "o.csv: row 2: path '../a.jpg': path contains"),
    ("path,label\n/a.jpg,muffin\n", "o.csv: row 2: path '/a.jpg': absolute path"),
    ("path,label\na.jpg,muffin,extra\n", "o.csv: row 2: expected 2 fields (path,label), got 3"),
    ("path,label\na.jpg,muffin\n\na.jpg,chihuahua\n",
     "o.csv: row 4: duplicate row for a.jpg (first at row 2)"),
])
def test_path_label_files_name_the_file_and_row_of_a_bad_line(text, message):
    with pytest.raises(UserError) as e:
        parse_path_labels(text, CLASSES, "o.csv")
    assert message in str(e.value)


def test_reading_a_path_label_file_names_what_is_missing(tmp_path):
    with pytest.raises(UserError, match="nope.csv: oracle file not found"):
        read_path_labels(tmp_path / "nope.csv", CLASSES, "oracle file")
    f = tmp_path / "v.csv"
    f.write_bytes(b"path,label\n\xff.jpg,muffin\n")
    with pytest.raises(UserError, match="v.csv: not UTF-8 text"):
        read_path_labels(f, CLASSES)

"""Hand-edited decisions.csv and mistyped params: a one-line message naming the row or key,
exit code 2, and the file left byte for byte as it was."""

from __future__ import annotations

import copy
import json
import math
import shutil

import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from chimuffin.config import Params, as_dict, load_params, parse_params
from chimuffin.errors import UserError
from chimuffin.labels.rows import (
    SOURCES,
    allowed_labels,
    check_relative_path,
    parse_decisions,
    parse_path_labels,
)
from tests.helpers.badinput import (
    CLASSES,
    error_line,
    file_hash,
    stage,
    tiny_params,
    tiny_prepared,
    tree_hashes,
    write_params,
)
from tests.helpers.repo import make_repo, run

HEADER = "path,label,source,note"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny prepared dataset (in-process, no subprocess): the input of clean and train."""
    tmp = tiny_prepared(tmp_path_factory.mktemp("prepared"), pool=4, seed=3)
    df = pd.read_parquet(tmp / "prepared/manifest.parquet")
    pool = sorted(df.loc[df["label"] == "undefined", "path"])
    return tmp, pool


# --- decisions.csv through the clean stage --------------------------------------------------

def decision_cases(p: str, q: str) -> dict[str, tuple[bytes, str | None]]:
    """name -> (file bytes, message; None when the file must load)."""
    ok = f"{HEADER}\n{p},muffin,human,a note\n"
    return {
        "missing column": (f"path,label,source\n{p},muffin,human\n".encode(),
                           "row 1 (header): missing column(s) note"),
        "duplicate rows": (f"{HEADER}\n{p},muffin,human,\n{p},chihuahua,human,\n".encode(),
                           f"row 3: duplicate decision for {p} (first at row 2)"),
        "unknown label": (f"{HEADER}\n{p},cat,human,\n".encode(),
                          f"row 2: unknown label 'cat' for {p}; allowed: chihuahua, muffin, "
                          "undefined, remove"),
        "path does not exist": (f"{HEADER}\n{p},muffin,human,\ntrain128/undefined/nope.jpg,"
                                "muffin,human,\n".encode(),
                                "row 3: train128/undefined/nope.jpg is not in the prepared "
                                "dataset"),
        "path with ..": (f"{HEADER}\n../../etc/passwd,muffin,human,\n".encode(),
                         "row 2: path '../../etc/passwd': path contains '..'"),
        "absolute path": (f"{HEADER}\n/etc/passwd,muffin,human,\n".encode(),
                          "row 2: path '/etc/passwd': absolute path"),
        "Windows drive path": (f"{HEADER}\nC:/data/x.jpg,muffin,human,\n".encode(),
                               "row 2: path 'C:/data/x.jpg': absolute path"),
        "unquoted comma in note": (f"{HEADER}\n{p},muffin,human,small, brown\n".encode(),
                                   "row 2: expected 4 fields (path,label,source,note), got 5"),
        "decision on a test image": (
            f"{HEADER}\n{p},muffin,human,\ntest128/chihuahua/img_00001.jpg,muffin,human,\n"
            .encode(), "row 3: test128/chihuahua/img_00001.jpg is a test image: the test split "
            "is only ever evaluated"),
        "test image removed": (f"{HEADER}\ntest128/muffin/img_00002.jpg,remove,human,\n"
                               .encode(), "row 2: test128/muffin/img_00002.jpg is a test image"),
        "empty file": (b"", "empty file; expected the header line 'path,label,source,note'"),
        "not UTF-8": (f"{HEADER}\n{p},muffin,human,caf\xe9\n".encode("latin-1"),
                      "not UTF-8 text (byte"),
        "CRLF with a bad row 3": (f"{HEADER}\r\n{p},muffin,human,\r\n{q},dog,human,\r\n"
                                  .encode(), "row 3: unknown label 'dog'"),
        "Windows line endings": (ok.replace("\n", "\r\n").encode(), None),
        "BOM": (b"\xef\xbb\xbf" + ok.encode(), None),
        "BOM and CRLF": (b"\xef\xbb\xbf" + ok.replace("\n", "\r\n").encode(), None),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", list(decision_cases("p", "q")))
def test_clean_reports_bad_decisions_by_row_and_never_rewrites_them(prepared, tmp_path, case):
    src, pool = prepared
    data, message = decision_cases(pool[0], pool[1])[case]
    shutil.copytree(src / "prepared", tmp_path / "prepared")
    decisions = tmp_path / "decisions.csv"
    decisions.write_bytes(data)
    write_params(tmp_path / "params.yaml", tiny_params())
    before = tree_hashes(tmp_path)

    p = stage("clean", "--params", "params.yaml", "--prepared", "prepared", "--decisions",
              "decisions.csv", "--out", "clean", cwd=tmp_path)

    if message is None:  # tolerated spreadsheet formats: parsed, applied
        assert p.returncode == 0, p.stderr
        summary = json.loads((tmp_path / "clean/summary.json").read_text())
        assert summary["decisions"] == 1
        df = pd.read_parquet(tmp_path / "clean/manifest.parquet").set_index("path")
        assert df.loc[pool[0], "label"] == "muffin"
        assert df.loc[pool[0], "label_source"] == "human"
        shutil.rmtree(tmp_path / "clean")
    else:
        assert p.returncode == 2
        line = error_line(p)
        assert line.startswith("chimuffin clean: error: decisions.csv: "), line
        assert message in line, line
    assert tree_hashes(tmp_path) == before  # decisions.csv and prepared/ untouched, no output


# --- params -----------------------------------------------------------------------------

def params_cases() -> dict[str, tuple[dict, str]]:
    def edit(path, value):
        d = tiny_params()
        node = d
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        return d

    return {
        "unknown key": (edit(["train", "lrr"], 0.1), "unknown key train.lrr in train; allowed:"),
        "unknown group": (edit(["trian"], {"lr": 0.1}), "unknown key trian; allowed: base,"),
        "wrong type": (edit(["train", "batch_size"], "16"),
                       "train.batch_size must be an integer, got '16'"),
        "zero lr": (edit(["train", "lr"], 0), "train.lr must be > 0.0, got 0.0"),
        "negative lr": (edit(["train", "lr"], -0.001), "train.lr must be > 0.0, got -0.001"),
        "nan lr": (edit(["train", "lr"], math.nan), "train.lr must be a finite number, got nan"),
        "class name with a slash": (edit(["base", "classes"], ["dogs/chihuahua", "muffin"]),
                                    "base.classes: 'dogs/chihuahua' is not usable as a folder"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", list(params_cases()))
def test_stage_names_the_bad_param(tmp_path, case):
    params, message = params_cases()[case]
    pfile = write_params(tmp_path / "params.yaml", params)
    before = file_hash(pfile)
    p = stage("sample", "--params", "params.yaml", "--out", "out", cwd=tmp_path)
    assert p.returncode == 2
    line = error_line(p)
    assert line.startswith("chimuffin sample: error: params.yaml: params: "), line
    assert message in line, line
    assert file_hash(pfile) == before and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_dvc_exp_run_set_param_typos_are_rejected_with_the_key(tmp_path):
    """`dvc exp run -S` refuses a new key itself (it needs `+key=`); with `+`, DVC writes the
    key into params.yaml and our strict loader stops the first stage naming it."""
    repo = make_repo(tmp_path / "repo", tiny_params())
    labels = tree_hashes(repo / "data/labels")

    p = run(["dvc", "exp", "run", "-S", "train.lrr=0.1"], repo, check=False)
    assert p.returncode != 0
    assert "To append to your config use +train.lrr=0.1" in p.stderr + p.stdout
    assert not (repo / "data/raw/sample").exists()

    for setting, message in (("+train.lrr=0.1", "unknown key train.lrr in train"),
                             ("train.lr=-0.1", "train.lr must be > 0.0, got -0.1")):
        p = run(["dvc", "exp", "run", "-S", setting], repo, check=False)
        out = p.stdout + p.stderr
        assert p.returncode != 0
        assert f"chimuffin sample: error: params.yaml: params: {message}" in out, out
        assert "Traceback" not in out
        assert not (repo / "data/raw/sample").exists()  # the stage wrote nothing
        # DVC applies -S to the workspace params.yaml and leaves it there after a failure
        # (`git checkout params.yaml` undoes it); chimuffin itself never writes params.yaml.
        run(["git", "checkout", "params.yaml"], repo)
    assert tree_hashes(repo / "data/labels") == labels


@pytest.mark.slow
def test_batch_size_larger_than_training_set(prepared, tmp_path):
    src, _ = prepared
    for sub in ("prepared", "clean"):
        shutil.copytree(src / sub, tmp_path / sub)
    df = pd.read_parquet(tmp_path / "clean/manifest.parquet")
    n_train = int(((df["split"] == "train") & (df["label"] != "undefined")).sum())
    write_params(tmp_path / "params.yaml", tiny_params(train={"batch_size": 64}))
    before = tree_hashes(tmp_path)
    p = stage("train", "--params", "params.yaml", "--clean", "clean", "--prepared", "prepared",
              "--model", "models/best.pth", "--live", "metrics/train", "--tables", "tables",
              "--run", "run", cwd=tmp_path)
    assert p.returncode == 2
    assert error_line(p) == (f"chimuffin train: error: params: train.batch_size (64) is larger "
                             f"than the training set ({n_train} labeled images)")
    assert tree_hashes(tmp_path) == before


# --- property-based: nothing but a clean load or a UserError --------------------------------

CELL = st.one_of(
    st.sampled_from(["train128/undefined/u_1.jpg", "a b.jpg", "../x.jpg", "/abs.jpg", "C:\\x",
                     "", " ", '"', "x\x00y", *allowed_labels(CLASSES), *SOURCES, "cat",
                     "HUMAN", "\ufeff", "path", "label", "source", "note"]),
    st.text(max_size=12))
ROW = st.lists(CELL, min_size=0, max_size=6)


def _csv_text(header: list[str], rows: list[list[str]], sep: str, newline: str, bom: bool,
              quote: bool) -> str:
    def fmt(cell):
        return '"' + cell.replace('"', '""') + '"' if quote else cell

    lines = [sep.join(map(fmt, r)) for r in [header, *rows]]
    return ("\ufeff" if bom else "") + newline.join(lines) + newline


@settings(max_examples=150, deadline=None)
@given(header=st.one_of(st.just(HEADER.split(",")), ROW), rows=st.lists(ROW, max_size=6),
       sep=st.sampled_from([",", ";", ", "]), newline=st.sampled_from(["\n", "\r\n", "\r"]),
       bom=st.booleans(), quote=st.booleans())
def test_decisions_parser_loads_or_raises_user_error(header, rows, sep, newline, bom, quote):
    text = _csv_text(header, rows, sep, newline, bom, quote)
    try:
        decisions = parse_decisions(text, CLASSES, name="decisions.csv")
    except UserError as e:
        assert str(e).startswith("decisions.csv: ")
        return
    for d in decisions:  # whatever loads is safe to apply
        assert check_relative_path(d.path) is None
        assert d.label in allowed_labels(CLASSES) and d.source in SOURCES
    assert len({d.path for d in decisions}) == len(decisions)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_decisions_and_validation_parsers_take_any_text(text):
    for parse in (lambda t: parse_decisions(t, CLASSES, "d.csv"),
                  lambda t: parse_path_labels(t, CLASSES, "v.csv")):
        try:
            parse(text)
        except UserError:
            pass


SCALAR = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
# the edge values YAML can express and a range check can miss
EDGE = st.sampled_from([math.nan, math.inf, -math.inf, 10**400, 0, -1, 0.0, 1e-12, "1e-3", ""])
VALUE = st.one_of(EDGE, SCALAR, st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                                             | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=3), max_leaves=5))


def _key_paths(d: dict, prefix=()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += _key_paths(v, (*prefix, k))
    return out


VALID = tiny_params()
PATHS = _key_paths(VALID)


def _node(raw, path) -> dict | None:
    """The mapping at path inside raw, if it is still there after earlier edits."""
    for k in path:
        raw = raw.get(k) if isinstance(raw, dict) else None
    return raw if isinstance(raw, dict) else None


LEAVES = [p for p in PATHS if not isinstance(_node(VALID, p[:-1])[p[-1]], dict)]


@settings(max_examples=200, deadline=None)
@given(edits=st.lists(st.tuples(st.sampled_from(LEAVES), VALUE), min_size=1, max_size=2))
def test_params_loader_loads_or_raises_user_error(edits):
    """Random values for one or two keys (what -S and hand edits produce): a clean load
    within the documented ranges, or a UserError naming the key."""
    raw = copy.deepcopy(VALID)
    for path, value in edits:
        _node(raw, path[:-1])[path[-1]] = value
    try:
        params = parse_params(raw)
    except UserError as e:
        assert str(e).startswith("params: ")
        assert any(".".join(p) in str(e) for p, _ in edits), str(e)
        return
    assert isinstance(params, Params)
    assert all(math.isfinite(v) for v in _numbers(as_dict(params)) if isinstance(v, float))
    assert 0 <= params.base.seed < 2**63
    t = params.train
    assert t.lr > 0 and 1 <= t.batch_size and t.epochs >= 1
    assert len(set(params.base.classes)) == 2


@settings(max_examples=100, deadline=None)
@given(path=st.sampled_from([p for p in PATHS if isinstance(_node(VALID, p), dict)] + [()]),
       key=st.text(max_size=8), value=VALUE, drop=st.booleans())
def test_params_loader_names_unknown_and_missing_keys(path, key, value, drop):
    """A new key (`-S +group.key=`) or a deleted one is always refused, by name."""
    raw = copy.deepcopy(VALID)
    node = _node(raw, path)
    if drop:
        key = sorted(node)[len(key) % len(node)]
        del node[key]
    elif key in node:
        return
    else:
        node[key] = value
    with pytest.raises(UserError) as e:
        parse_params(raw)
    assert ".".join((*path, key)) in str(e.value)


def _numbers(d):
    for v in d.values():
        if isinstance(v, dict):
            yield from _numbers(v)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            yield v


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=120))
def test_params_file_of_any_text_loads_or_raises_user_error(tmp_path_factory, text):
    f = tmp_path_factory.mktemp("p") / "params.yaml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(UserError):  # no random text is a complete params file
        load_params(f)


def test_yaml_special_floats_and_huge_numbers_are_refused():
    for value, message in ((".inf", "must be a finite number, got inf"),
                           (".nan", "must be a finite number, got nan"),
                           ("1" + "0" * 400, "must be a finite number")):
        text = yaml.safe_dump(VALID).replace("lr: 0.0005", f"lr: {value}")
        with pytest.raises(UserError, match=f"train.lr {message}"):
            parse_params(yaml.safe_load(text))

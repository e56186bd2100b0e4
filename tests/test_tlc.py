"""3LC integration, the parts that need no `import tlc`: config and version checks, table rows,
metrics columns, revision lineage, and `pull-3lc` turning a revision into decisions."""

import copy
import importlib
import importlib.metadata
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chimuffin import tlcio
from chimuffin.cli import main as cli_main
from chimuffin.commands.pull_3lc import revision_decisions
from chimuffin.config import parse_params
from chimuffin.errors import UserError
from chimuffin.labels.rows import Decision, format_decisions, read_decisions
from tests.helpers.repo import REPO, default_params_dict

CLASSES = ["chihuahua", "muffin"]


def test_tlc_params_group_is_strict():
    p = parse_params(default_params_dict())
    assert p.tlc.enabled is True and p.tlc.collect_every == 10
    for tlc, message in (
            ({"enabled": True}, "missing key tlc.collect_every"),
            ({"enabled": "yes", "collect_every": 1}, "tlc.enabled must be true"),
            ({"enabled": True, "collect_every": -1}, "tlc.collect_every must be >="),
            ({"enabled": True, "collect_every": 1, "every": 2}, "unknown key tlc.every")):
        raw = copy.deepcopy(default_params_dict())
        raw["tlc"] = tlc
        with pytest.raises(UserError, match=message):
            parse_params(raw)


def test_repo_config_resolves_relative_to_itself(tmp_path):
    s = tlcio.read_settings(REPO / "tlc-config.yaml")
    assert s.project_root == REPO / "data" / "3lc"
    assert s.data_alias == REPO / "data" / "raw"
    assert tlcio.resolve_anchored("$../x", tmp_path / "a") == tmp_path / "x"
    env = tlcio.environment(s)
    assert env["TLC_CONFIG_FILE"] == str(REPO / "tlc-config.yaml")
    assert (env["TLC_SENTRY_ENVIRONMENT"], env["TLC_TELEMETRY"]) == ("local", "0")
    assert env["TLC_LOGFILE"] == str(REPO / ".tlc" / "3lc.log")


def test_config_problems_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="cannot read the 3LC config"):
        tlcio.read_settings(tmp_path / "missing.yaml")
    cfg = tmp_path / "tlc-config.yaml"
    cfg.write_text("aliases: {}\n")
    with pytest.raises(UserError, match="project-root-url is missing"):
        tlcio.read_settings(cfg)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    cfg.write_text("indexing:\n  project-root-url: $./blocker/3lc\n")
    with pytest.raises(UserError, match=r"project-root-url resolves to .*blocker is a file"):
        tlcio.read_settings(cfg)
    cfg.write_text("indexing:\n  project-root-url: s3://bucket/3lc\n")
    with pytest.raises(UserError, match="must be a local folder"):
        tlcio.read_settings(cfg)


@pytest.mark.parametrize("version,message", [
    ("2.13.0", "validates an API key online"),
    ("3.4.2", "validates an API key online"),
    ("2.11.3", "older than the tested"),
    ("banana", "unrecognised version"),
])
def test_versions_that_cannot_work_offline_are_refused(version, message):
    with pytest.raises(UserError, match=message):
        tlcio.check_version(version)


def test_tested_version_passes_and_is_installed():
    tlcio.check_version("2.12.1")
    assert tlcio.installed_version().startswith("2.12.")


@pytest.fixture
def fresh_load(monkeypatch):
    """load() as in a new process; the environment it sets is restored afterwards."""
    monkeypatch.setattr(tlcio, "_loaded", None)
    for key in tlcio.environment(tlcio.read_settings(REPO / "tlc-config.yaml")):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_missing_package_is_a_user_error(fresh_load):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    fresh_load.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(UserError, match=r"3LC is not installed .*tlc.enabled: false"):
        tlcio.load(REPO / "tlc-config.yaml")


def test_api_key_version_is_refused_before_import(fresh_load):
    imported = []
    fresh_load.setattr(importlib.metadata, "version", lambda name: "2.13.1")
    fresh_load.setattr(importlib, "import_module", lambda name: imported.append(name))
    with pytest.raises(UserError, match="API key"):
        tlcio.load(REPO / "tlc-config.yaml")
    assert imported == []  # importing 2.13+ would already try to reach the licence server


def test_failing_import_is_a_user_error_after_setting_the_environment(fresh_load):
    def broken(name):
        raise RuntimeError("API key required\nmore detail")

    fresh_load.setattr(importlib.metadata, "version", lambda name: "2.12.1")
    fresh_load.setattr(importlib, "import_module", broken)
    with pytest.raises(UserError, match=r"`import tlc` \(3lc 2.12.1\) failed: RuntimeError: "
                                        r"API key required$"):
        tlcio.load(REPO / "tlc-config.yaml")
    assert os.environ["TLC_CONFIG_FILE"] == str(REPO / "tlc-config.yaml")
    assert os.environ["TLC_SENTRY_ENVIRONMENT"] == "local"


def test_image_paths_use_the_data_alias_inside_data_raw(tmp_path):
    s = tlcio.Settings(tmp_path / "tlc-config.yaml", tmp_path / "data/3lc", tmp_path / "data/raw")
    assert tlcio.image_prefix(tmp_path / "data/raw/sample", s) == "<CHIMUFFIN_DATA>/sample"
    assert tlcio.image_prefix(tmp_path / "data/raw", s) == "<CHIMUFFIN_DATA>"
    assert tlcio.image_prefix(tmp_path / "elsewhere", s) == (tmp_path / "elsewhere").as_posix()


def manifest(rows):
    return pd.DataFrame(rows, columns=["path", "split", "label"]).assign(
        label_source="folder", idx=range(len(rows)), content_hash="h", width=128, height=128)


MANIFEST = manifest([
    ("train128/muffin/m1.jpg", "train", "muffin"),
    ("train128/chihuahua/c1.jpg", "train", "chihuahua"),
    ("train128/undefined/u1.jpg", "train", "undefined"),
    ("train128/chihuahua/c2.jpg", "val", "chihuahua"),
])


def test_table_frame_has_pool_at_weight_zero_sorted_by_path():
    f = tlcio.table_frame(MANIFEST, "train", CLASSES, "<CHIMUFFIN_DATA>/sample")
    assert list(f.columns) == ["image", "label", "weight", "path"]
    assert list(f["path"]) == sorted(MANIFEST.loc[MANIFEST.split == "train", "path"])
    assert list(f["label"]) == [0, 1, 2] and list(f["weight"]) == [1.0, 1.0, 0.0]
    assert f["image"][0] == "<CHIMUFFIN_DATA>/sample/train128/chihuahua/c1.jpg"
    assert tlcio.table_frame(MANIFEST, "test", CLASSES, "x").empty


def test_table_rows_must_match_the_clean_manifest(tmp_path):
    paths = ["train128/undefined/u1.jpg", "train128/muffin/m1.jpg", "train128/chihuahua/c1.jpg"]
    rows = tlcio.rows_in_table_order(MANIFEST, paths, "train", tmp_path)
    assert list(rows["path"]) == paths and list(rows["idx"]) == [2, 0, 1]
    with pytest.raises(UserError, match="does not match data/clean"):
        tlcio.rows_in_table_order(MANIFEST, paths[:2], "train", tmp_path)
    with pytest.raises(UserError, match="dvc repro tables"):
        tlcio.rows_in_table_order(MANIFEST, [*paths[:2], "train128/x.jpg"], "train", tmp_path)


def write_object(folder: Path, created: str, **fields) -> Path:
    folder.mkdir(parents=True)
    (folder / "object.3lc.json").write_text(json.dumps({"type": "EditedTable",
                                                        "created": created, **fields}))
    return folder


def test_same_object_folder_ignores_only_the_creation_time(tmp_path):
    a = write_object(tmp_path / "a" / "t", "2026-01-01 00:00:00+00:00", row_count=3)
    b = write_object(tmp_path / "b" / "t", "2026-02-02 00:00:00+00:00", row_count=3)
    (a / "t.parquet").write_bytes(b"same")
    (b / "t.parquet").write_bytes(b"same")
    assert tlcio.same_object_folder(a, b)
    (b / "t.parquet").write_bytes(b"diff")
    assert not tlcio.same_object_folder(a, b)
    assert not tlcio.same_object_folder(a, tmp_path / "missing")


def test_lineage_follows_revisions_back_to_the_base(tmp_path):
    tables = tmp_path / "tables"
    base = write_object(tables / "train", "2026-01-02 00:00:00+00:00")
    old = write_object(tables / "train_0000", "2026-01-01 00:00:00+00:00",
                       input_table_url="../train")
    new = write_object(tables / "train_0001", "2026-01-03 00:00:00.5+00:00",
                       input_table_url="../train_0000")
    assert tlcio.lineage(new, base) == [new, old]
    assert tlcio.lineage(base, base) == []
    assert [tlcio.created_at(p) < tlcio.created_at(base) for p in (new, old)] == [False, True]
    orphan = write_object(tables / "other", "2026-01-03 00:00:00+00:00")
    with pytest.raises(UserError, match="without input_table_url"):
        tlcio.lineage(orphan, base)
    moved = tlcio.retire([new, old], tmp_path / "pulled")
    assert [p.name for p in moved] == ["train_0001", "train_0000"]
    assert not new.exists() and all((p / "object.3lc.json").is_file() for p in moved)


def test_pacmap_neighbours_fit_small_tables():
    assert tlcio.pacmap_neighbors(4733, 10) == 10
    assert tlcio.pacmap_neighbors(18, 10) == 10
    assert tlcio.pacmap_neighbors(12, 10) == 4
    assert tlcio.pacmap_neighbors(10, 10) == 2


def test_metrics_columns_are_empty_for_unlabeled_images():
    pred = pd.DataFrame({"prediction": ["muffin", "chihuahua"], "confidence": [0.9, 0.6],
                         "loss": [0.1, np.nan], "correct": [1.0, np.nan]})
    m = tlcio.metrics_columns(pred, np.ones((2, 512)), CLASSES, epoch=3, best=True)
    assert list(m["predicted"]) == [1, 0] and list(m["epoch"]) == [3, 3] and m["best"] == [True] * 2
    assert np.isnan(m["loss"][1]) and np.isnan(m["correct"][1]) and m["correct"][0] == 1.0
    assert m["embedding"].shape == (2, 512) and m["embedding"].dtype == np.float32


def frame(rows):
    return pd.DataFrame(rows, columns=["path", "label", "weight"])


BASE = frame([("a.jpg", "chihuahua", 1.0), ("b.jpg", "muffin", 1.0), ("c.jpg", "undefined", 0.0),
              ("d.jpg", "undefined", 0.0), ("e.jpg", "muffin", 1.0), ("f.jpg", "muffin", 1.0)])


def test_revision_decisions_cover_relabel_label_unlabel_and_delete():
    latest = frame([("a.jpg", "muffin", 1.0),        # relabel
                    ("b.jpg", "undefined", 1.0),     # unlabel by label
                    ("c.jpg", "chihuahua", 0.0),     # pool image labeled (weight untouched)
                    ("e.jpg", "muffin", 0.0),        # unlabel by weight
                    ("f.jpg", "muffin", 2.0),        # weight only: a note, no decision
                    ("z.jpg", "muffin", 1.0)])       # added row: a note; d.jpg deleted
    decisions, notes = revision_decisions(BASE, latest, CLASSES, "train_0000")
    assert [(d.path, d.label, d.source) for d in decisions] == [
        ("d.jpg", "remove", "3lc"), ("a.jpg", "muffin", "3lc"), ("b.jpg", "undefined", "3lc"),
        ("c.jpg", "chihuahua", "3lc"), ("e.jpg", "undefined", "3lc")]
    assert decisions[1].note == "3LC train_0000: chihuahua -> muffin"
    assert decisions[4].note == "3LC train_0000: weight 1 -> 0"
    assert len(notes) == 2 and notes[0].startswith("z.jpg") and notes[1].startswith("f.jpg")
    assert revision_decisions(BASE, BASE, CLASSES, "r") == ([], [])


def test_revision_with_an_unknown_class_is_refused():
    latest = BASE.assign(label=["frog", *BASE["label"][1:]])
    with pytest.raises(UserError, match="a.jpg has label 'frog'"):
        revision_decisions(BASE, latest, CLASSES, "train_0002")


def test_pull_3lc_merges_keeps_human_decisions_and_retires(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "decisions.csv").write_text(
        format_decisions([Decision("b.jpg", "muffin", "human", "checked")]))
    rev_dir = write_object(tmp_path / "tables" / "train_0000", "2026-01-03 00:00:00+00:00")
    latest = BASE.assign(label=["muffin", "chihuahua", *BASE["label"][2:]])
    revision = tlcio.Revision("tables/train", str(rev_dir), [rev_dir], [], BASE, latest)
    monkeypatch.setattr(tlcio, "read_latest_revision", lambda table, config: revision)
    argv = ["pull-3lc", "--decisions", "decisions.csv", "--archive", "pulled"]
    assert cli_main([*argv, "--dry-run"]) == 0
    assert [d.path for d in read_decisions("decisions.csv", CLASSES)] == ["b.jpg"]
    assert cli_main(argv) == 0
    got = {d.path: (d.label, d.source) for d in read_decisions("decisions.csv", CLASSES)}
    assert got == {"a.jpg": ("muffin", "3lc"), "b.jpg": ("muffin", "human")}
    assert not rev_dir.exists() and len(list((tmp_path / "pulled").glob("*/train_0000"))) == 1

    stale = tlcio.Revision("tables/train", "x", [rev_dir], [rev_dir], BASE, latest)
    monkeypatch.setattr(tlcio, "read_latest_revision", lambda table, config: stale)
    assert cli_main(argv) == 2  # a one-line error, not a traceback


def test_stage_reports_a_bad_3lc_setup_in_one_line(tmp_path):
    """Through the real entry point: an unwritable project root and a failing `import tlc`
    each end the stage with one line and exit 2, before any table is written."""
    import subprocess

    (tmp_path / "clean").mkdir()
    MANIFEST.to_parquet(tmp_path / "clean" / "manifest.parquet")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "blocker").write_text("")
    (tmp_path / "bad.yaml").write_text("indexing:\n  project-root-url: $./blocker/3lc\n")
    shutil.copy(REPO / "tlc-config.yaml", tmp_path / "tlc-config.yaml")
    guards = str(Path(__file__).parent / "guards")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [guards, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}
    stage = [sys.executable, "-m", "chimuffin.stages.tables", "--clean", "clean", "--out", "t"]
    bad = subprocess.run([*stage, "--tlc-config", "bad.yaml"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    forbid = {**env, "CHIMUFFIN_FORBID_TLC": str(tmp_path / "tlc.log")}
    broken = subprocess.run(stage, cwd=tmp_path, env=forbid, capture_output=True, text=True)
    for p, message in ((bad, "project-root-url resolves to"),
                       (broken, "`import tlc` (3lc 2.12.1) failed: ImportError")):
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.count("\n") == 1 and message in p.stderr, p.stderr
    assert not (tmp_path / "t").exists()


def test_pull_3lc_without_3lc_tables_is_a_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    tlcio.write_placeholder(tmp_path / "t" / "train", "3LC is off")
    assert cli_main(["pull-3lc", "--tables", "t"]) == 2
    assert "no 3LC table here; run `dvc repro tables` first" in capsys.readouterr().err

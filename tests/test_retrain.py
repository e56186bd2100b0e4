"""Background retraining (chimuffin.retrain) behind the review page: when a run starts, the
round params, which pages a finished model swaps in, per-model tallies; end to end on a tiny
repository (a named DVC experiment, the workspace and `dvc status` unchanged, also when the
server is stopped or killed mid-run)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from chimuffin.config import parse_params
from chimuffin.errors import UserError
from chimuffin.labels.rows import Decision, format_decisions
from chimuffin.retrain.outputs import RunOutputs, val_metrics
from chimuffin.retrain.params import due, round_params, threads_for_run, warm_start_due
from chimuffin.retrain.retrainer import Retrainer, Run
from chimuffin.retrain.swap import pages_from
from chimuffin.review.data import ReviewData
from tests.helpers.repo import BIN, REPO, TINY, deep_update, default_params_dict, run
from tests.test_review import CLASSES, build_repo, write_pages

# --- pure pieces --------------------------------------------------------------------------------


def test_due_counts_decisions_since_the_model():
    assert not due(10, 5, every=0, busy=False)  # 0: only on demand
    assert not due(9, 5, every=5, busy=False)
    assert due(10, 5, every=5, busy=False)
    assert not due(50, 5, every=5, busy=True)  # one run at a time


def test_runs_use_every_core_at_a_lower_priority():
    assert threads_for_run(2) == 2
    assert threads_for_run(16) == 16
    assert threads_for_run(None) == 1


def test_round_params_take_the_recipe_and_are_checked():
    params = yaml.safe_dump(default_params_dict())
    recipe = yaml.safe_dump({"train": {**default_params_dict()["train"], "epochs": 3}})
    out = round_params(params, recipe, 1, "params.yaml", "recipes/r.yaml")
    assert out["train"]["epochs"] == 3 and out["runtime"]["threads"] == 1
    assert out["base"] == default_params_dict()["base"]
    assert round_params(params, None, 2, "params.yaml", "params.yaml")["train"] == \
        default_params_dict()["train"]
    bad = yaml.safe_dump({"train": {**default_params_dict()["train"], "epochs": 0}})
    with pytest.raises(UserError, match=r"recipes/r.yaml.*train.epochs"):
        round_params(params, bad, 1, "params.yaml", "recipes/r.yaml")
    with pytest.raises(UserError, match="one group, `train`"):
        round_params(params, "base: {}\n", 1, "params.yaml", "recipes/r.yaml")


def test_background_set_changes_the_copys_params_after_the_recipe():
    params = yaml.safe_dump(default_params_dict())
    recipe = yaml.safe_dump({"train": {**default_params_dict()["train"], "epochs": 3}})
    out = round_params(params, recipe, 1, "params.yaml", "recipes/r.yaml",
                       ["tlc.enabled=false", "evaluate.tta_flip=false", "train.epochs=2"])
    assert out["tlc"]["enabled"] is False and out["evaluate"]["tta_flip"] is False
    assert out["train"]["epochs"] == 2  # after the recipe: it wins
    for bad, says in [("tlc.enabeld=false", r"review.background_set.*unknown key tlc.enabeld"),
                      ("evaluate.tta_flip=maybe", r"review.background_set.*evaluate.tta_flip"),
                      ("epochs=2", r"review.background_set: 'epochs=2' is not GROUP.KEY=VALUE"),
                      ("train.epochs.x=1", r"train.epochs is a value, not a group")]:
        with pytest.raises(UserError, match=says):
            round_params(params, recipe, 1, "params.yaml", "recipes/r.yaml", [bad])


def test_params_refuse_a_background_set_item_that_is_not_a_key_and_value():
    raw = default_params_dict()
    raw["review"]["background_set"] = ["tlc.enabled=false", "tlc.enabled"]
    with pytest.raises(UserError, match=r"review.background_set\[1\].*not GROUP.KEY=VALUE"):
        parse_params(raw)


@pytest.mark.parametrize("group, key, value", [
    ("review", "fresh_votes", False), ("review", "rebuild_on_swap", True),
    ("review", "swap_gate", False), ("suggest", "page_order", "confident"),
    ("suggest", "uncertain_share", 0.2)])
def test_a_removed_review_or_page_key_is_named_as_removed(group, key, value):
    raw = default_params_dict()
    raw[group][key] = value
    with pytest.raises(UserError, match=rf"params: {group}\.{key} was removed \(measured no "
                       r"better: .*\); delete it"):
        parse_params(raw)


def test_background_retraining_is_on_in_the_shipped_params():
    assert parse_params(default_params_dict()).review.retrain_every == 120


def test_warm_starts_wait_for_warm_after_decisions(tmp_path):
    weights = tmp_path / "weights.pth"
    assert warm_start_due(999, 1000, weights) is None
    assert warm_start_due(1000, 1000, weights) == weights
    assert warm_start_due(5000, 1000, None) is None  # no model finished yet
    assert warm_start_due(0, 0, weights) == weights


def test_round_recipe_is_the_12_epoch_variant():
    from chimuffin.config import read_recipe

    rnd = read_recipe(REPO / "recipes/round.yaml")
    assert (rnd["epochs"], rnd["min_steps"], rnd["res_min"], rnd["val_every"]) == (12, 300, 80,
                                                                                    1000)
    assert default_params_dict()["review"]["round_recipe"] == "recipes/round.yaml"


def pages_frame(pages: list[tuple[str, list[str]]]) -> pd.DataFrame:
    return pd.DataFrame([{"page": i, "position": j, "path": p, "label": lbl}
                         for i, (lbl, paths) in enumerate(pages) for j, p in enumerate(paths)])


def test_pages_from_drop_verified_images_and_take_new_numbers():
    new = pages_frame([("muffin", ["a", "b"]), ("chihuahua", ["c"]), ("muffin", ["d", "e"])])
    out = pages_from(new, {"b", "c"}, first_page=7)
    assert out[["page", "path"]].values.tolist() == [[7, "a"], [8, "d"], [8, "e"]]
    assert out["label"].tolist() == ["muffin"] * 3
    assert out["built"].tolist() == [2, 2, 2]  # what its model put on each page


def test_swap_in_keeps_old_pages_acceptable_and_tallies_each_model(tmp_path):
    paths, data_dir, info = build_repo(tmp_path)
    data = ReviewData(paths, CLASSES, data_dir)
    old = data.page_list
    pool = info["pool"]
    # the person verifies page 0 (pipeline model) with one exception
    data.verify({"page": 0, "exceptions": {pool[1]: "muffin"}})
    write_pages(tmp_path / "new.parquet", [("muffin", [(pool[0], 0.9), (pool[3], 0.8)]),
                                           ("chihuahua", [(pool[4], 0.7)])])
    run_ = Run("review-x-4-labels", 4, "on demand", time.time(), finished=time.time(), ok=True,
               outputs=RunOutputs(pd.read_parquet(tmp_path / "new.parquet")))
    data.swap_in(run_)
    state = data.state()
    listed = state["pages"]["list"]
    first = max(pg["page"] for pg in old) + 1
    assert [pg["page"] for pg in listed] == [first, first + 1]
    assert [im["path"] for im in listed[0]["images"]] == [pool[3]]  # pool[0] was verified
    assert all(pg["model"] == 1 for pg in listed)
    models = state["models"]
    assert models["current"] == 1 and models["version"] == 1
    assert models["list"][0]["verified"] == 3 and models["list"][0]["wrong"] == 1
    # a new page counts for the new model; an old page is still accepted by number
    data.verify({"page": first, "exceptions": {pool[3]: "chihuahua"}})
    data.verify({"page": old[1]["page"], "exceptions": {}, "confirm": True})
    m = data.models_state()["list"]
    assert (m[0]["verified"], m[0]["wrong"]) == (3 + len(old[1]["images"]), 1)
    # pool 3 counts once: for the page it was accepted on last (the old one)
    assert (m[1]["verified"], m[1]["wrong"]) == (0, 0)
    data.undo({})  # taking an acceptance back takes it out of its model's tally
    assert data.models_state()["list"][0] == {**m[0], "verified": 3, "wrong": 1}


def test_val_metrics_tell_no_metrics_from_metrics_that_are_not_the_evaluate_stages(tmp_path):
    metrics = tmp_path / "metrics.json"
    assert val_metrics(metrics) == (None, None)  # no evaluation yet
    metrics.write_text(json.dumps({"train": {"accuracy": 0.9, "n": 10}}))
    assert val_metrics(metrics) == (None, None)  # no validation set
    metrics.write_text(json.dumps({"val": {"accuracy": 0.875, "n": 1000}}))
    assert val_metrics(metrics) == (0.875, 1000)
    for broken in ('{"val": {"accuracy": 0.9', '{"val": {"n": 1000}}', '["val"]'):
        metrics.write_text(broken)
        with pytest.raises(UserError, match=r"metrics\.json: not the evaluate stage's metrics"):
            val_metrics(metrics)
    assert metrics.read_text() == '["val"]'  # read, never changed


def test_swap_in_refuses_pages_of_images_outside_the_pool(tmp_path):
    paths, data_dir, info = build_repo(tmp_path)
    data = ReviewData(paths, CLASSES, data_dir)
    before = data.page_list
    write_pages(tmp_path / "bad.parquet", [("muffin", [(info["seed"], 0.9)])])
    with pytest.raises(UserError, match="not a pool image"):
        data.swap_in(Run("r", 1, "x", 0.0,
                         outputs=RunOutputs(pd.read_parquet(tmp_path / "bad.parquet"))))
    assert data.page_list == before and data.models_state()["version"] == 0


# --- end to end on a tiny repository ---------------------------------------------------------


def tiny_round_repo(tmp_path: Path, every: int = 0) -> Path:
    """A tiny git + DVC repo, reproduced and committed, with a tiny round recipe; then one
    person decision left uncommitted (the workspace has changes a run must carry, not write)."""
    from tests.helpers.repo import make_repo

    params = deep_update(default_params_dict(), TINY)
    params["review"] = {"retrain_every": every, "round_recipe": "recipes/tiny_round.yaml",
                        "warm_recipe": "",
                        "background_set": ["evaluate.tta_flip=false"], "warm_after": 0,
                        "validation_size": 0, "final_recipe": "recipes/finish.yaml"}
    root = tmp_path / "repo"
    root.mkdir(parents=True)
    (root / "recipes").mkdir()
    (root / "recipes/tiny_round.yaml").write_text(yaml.safe_dump({"train": params["train"]}))
    make_repo(root, params)
    run(["dvc", "repro", "-q"], root, env={"PYTHONPATH": ""})
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "repro"], root)
    pool = pd.read_parquet(root / "data/suggest/pages.parquet")["path"].tolist()
    (root / "data/labels/decisions.csv").write_text(format_decisions(
        [Decision(pool[0], "muffin", "human", "review page")]))
    return root


def fingerprint(root: Path) -> dict:
    """Every workspace file outside .git and .dvc/cache|tmp, by content; plus git and dvc
    status."""
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith((".git/", ".dvc/cache/", ".dvc/tmp/")) \
                and "__pycache__" not in rel and not rel.startswith("data/labels/."):
            files[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    git = run(["git", "status", "--porcelain"], root).stdout
    dvc = run(["dvc", "status", "--json"], root).stdout
    return {"files": files, "git": git, "dvc": dvc}


def exp_names(root: Path) -> list[str]:
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    return [e.get("name") for rev in shown for e in (rev.get("experiments") or [])]


def retrain_leftovers() -> list[str]:
    return [p.name for p in Path(tempfile.gettempdir()).glob("chimuffin-retrain-*")]


@pytest.mark.slow
def test_background_run_is_a_named_experiment_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = tiny_round_repo(tmp_path)
    before = fingerprint(root)
    done = []
    r = Retrainer(root, root / "params.yaml", root / "data/labels/decisions.csv", CLASSES,
                  every=0, recipe="recipes/tiny_round.yaml", labels_of_model=0,
                  on_done=lambda run_: done.append(len(run_.outputs.pages)), cpus=2)
    assert r.request()["message"] == "started"
    assert "queued" in r.request()["message"]  # one run at a time: the next waits
    r.thread.join(180)
    first = r.runs[0]
    assert first.ok, (first.error, first.log_tail)
    assert first.labels == 1 and first.name.endswith("-1-labels")
    assert done and done[0] > 0  # its pages were handed over
    # the queued request ran after it
    deadline = time.monotonic() + 180
    while len(r.runs) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(r.runs) == 2 and r.runs[1].ok, r.runs[-1].error
    assert r.labels_of_model == 1
    names = exp_names(root)
    assert first.name in names and r.runs[1].name in names
    # review.background_set is in the experiment's params; the workspace's are unchanged
    ref = next(ref for ref in run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
                                  root).stdout.split() if ref.endswith(first.name))
    ran = yaml.safe_load(run(["git", "show", f"{ref}:params.yaml"], root).stdout)
    assert ran["evaluate"]["tta_flip"] is False
    assert yaml.safe_load((root / "params.yaml").read_text())["evaluate"]["tta_flip"] is True
    assert fingerprint(root) == before
    assert retrain_leftovers() == []


@pytest.mark.slow
def test_a_failed_run_keeps_its_log_and_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = tiny_round_repo(tmp_path)
    # a recipe the strict params check refuses: the run fails before anything runs
    (root / "recipes/tiny_round.yaml").write_text("train: {epochs: 1}\n")
    before = fingerprint(root)
    r = Retrainer(root, root / "params.yaml", root / "data/labels/decisions.csv", CLASSES,
                  every=0, recipe="recipes/tiny_round.yaml", labels_of_model=0, cpus=2)
    r.request()
    r.thread.join(60)
    failed = r.status()["runs"][0]
    assert failed["ok"] is False and "tiny_round.yaml" in failed["error"]
    assert Path(failed["log"]).is_file()
    assert fingerprint(root) == before and exp_names(root) == []


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def start_review(root: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "TMPDIR": str(root.parent), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(REPO / "src")}
    p = subprocess.Popen([sys.executable, "-m", "chimuffin.cli", "review", "--port", str(port)],
                         cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            get(f"http://127.0.0.1:{port}/api/retrain")
            return p
        except OSError:
            time.sleep(0.3)
    p.kill()
    raise AssertionError(p.stdout.read())


def wait_for_dvc_run(root: Path, port: int) -> None:
    """Until the run's `dvc exp run` is under way in its copy."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        logs = list(root.parent.glob("chimuffin-retrain-*/retrain.log"))
        if logs and "dvc exp run" in logs[0].read_text():
            time.sleep(2)
            return
        time.sleep(0.2)
    raise AssertionError(get(f"http://127.0.0.1:{port}/api/retrain"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_server_mid_run_leaves_the_workspace(tmp_path, free_port, sig):
    root = tiny_round_repo(tmp_path)
    before = fingerprint(root)
    server = start_review(root, free_port)
    try:
        answer = post(f"http://127.0.0.1:{free_port}/api/retrain", {})
        assert answer["ok"] and answer["running"] is not None
        wait_for_dvc_run(root, free_port)
        server.send_signal(sig)
        server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
    if sig == signal.SIGTERM:  # stopped cleanly: its copy is gone
        assert list(tmp_path.glob("chimuffin-retrain-*")) == []
    assert fingerprint(root) == before
    # a SIGKILLed server's run goes on in its own copy; end it (the test's cleanup)
    for pid in pids_under(tmp_path):
        os.kill(pid, signal.SIGKILL)


def pids_under(folder: Path) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "cwd").startswith(str(folder / "chimuffin-retrain-")):
                    out.append(int(proc.name))
            except OSError:
                pass
    return out



def test_a_run_from_a_folder_inside_a_repository_fails_and_writes_nothing(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    outer = tmp_path / "outer"
    (outer / "inner").mkdir(parents=True)
    run(["git", "init", "-q"], outer)
    inner = outer / "inner"
    (inner / "params.yaml").write_text(yaml.safe_dump(default_params_dict()))
    r = Retrainer(inner, inner / "params.yaml", inner / "decisions.csv", CLASSES, every=0,
                  recipe="", labels_of_model=0, cpus=2)
    r.request()
    r.thread.join(30)
    failed = r.status()["runs"][0]
    assert failed["ok"] is False and "not the top folder of a git repository" in failed["error"]
    assert sorted(p.name for p in inner.iterdir()) == ["params.yaml"]

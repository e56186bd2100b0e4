"""`chimuffin loop` (simulate/sitting.py): the simulated person verifies pages at the
cost model's pace, writing each page at once, while background retrains run behind it."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from chimuffin.labels.rows import Decision, format_decisions, read_decisions
from chimuffin.retrain.outputs import RunOutputs
from chimuffin.retrain.retrainer import Run
from chimuffin.simulate import sitting
from chimuffin.simulate.reviewer import ReviewCost, page_answers
from chimuffin.simulate.sitting import SittingConfig, next_page, run_sitting, summary
from tests.helpers.repo import REPO, TINY, deep_update, default_params_dict, make_repo, run
from tests.test_review import CLASSES, write_pages


def frame(pages):
    return pd.DataFrame([{"page": i, "position": j, "path": p, "label": lbl}
                         for i, (lbl, paths) in enumerate(pages) for j, p in enumerate(paths)])


def test_next_page_skips_what_is_verified():
    pages = frame([("muffin", ["a", "b"]), ("chihuahua", ["c", "d"])])
    page, rows = next_page(pages, {"a", "b", "c"})
    assert page == 1 and rows["path"].tolist() == ["d"]
    assert next_page(pages, {"a", "b", "c", "d"}) is None


def test_answers_count_exceptions_and_pass_over_the_unknown():
    rows = frame([("muffin", ["a", "b", "c"])])
    new, wrong, unknown = page_answers(rows, {"a": "muffin", "b": "chihuahua"},
                                      "sitting page 0 (muffin)", "sitting page 0 exception")
    assert (wrong, unknown) == (1, 1)
    assert [(d.path, d.label, d.source) for d in new] == [("a", "muffin", "oracle"),
                                                         ("b", "chihuahua", "oracle")]
    assert new[1].note == "sitting page 0 exception"


def sitting_files(tmp_path):
    suggest = tmp_path / "suggest"
    write_pages(suggest / "pages.parquet", [("muffin", [("p0", 0.9), ("p1", 0.8)]),
                                            ("chihuahua", [("p2", 0.7), ("p3", 0.6)])])
    decisions = tmp_path / "decisions.csv"
    decisions.write_text(format_decisions([Decision("p1", "muffin", "human", "by hand")]))
    truth = {"p0": "muffin", "p1": "muffin", "p2": "muffin", "p3": "chihuahua"}
    return suggest, decisions, truth


def config(root, decisions, suggest, every=0, eval_dir=None) -> SittingConfig:
    return SittingConfig(root, root / "params.yaml", decisions, suggest, CLASSES, every=every,
                         recipe="", eval_dir=eval_dir)


def test_the_person_goes_at_the_cost_models_pace_and_never_waits(tmp_path):
    suggest, decisions, truth = sitting_files(tmp_path)
    slept = []
    s = run_sitting(config(tmp_path, decisions, suggest), truth, math.inf, sleep=slept.append,
                    report=lambda _: None)
    cost = ReviewCost()
    # page 0: only p0 left (p1 verified by hand); page 1: p2 is an exception
    assert slept == [cost.page(1, 0), cost.page(2, 1)]
    assert (s.pages, s.verified, s.exceptions, s.idle_s) == (2, 3, 1, 0.0)
    assert s.seconds == pytest.approx(sum(slept)) and s.reason == "every page is verified"
    on_disk = {d.path: (d.label, d.source) for d in read_decisions(decisions, CLASSES)}
    assert on_disk == {"p0": ("muffin", "oracle"), "p1": ("muffin", "human"),
                       "p2": ("muffin", "oracle"), "p3": ("chihuahua", "oracle")}
    assert "3 images verified on 2 pages, 1 exceptions" in summary(s)
    # the page log: page 0 was cut (p1 verified before), page 1 whole; both the pipeline's
    assert [(p.verified_before, p.images, p.built, p.wrong, p.model) for p in s.log] == [
        (0, 1, 2, 0, "pipeline outputs"), (1, 2, 2, 1, "pipeline outputs")]
    assert 0 <= s.log[0].at_s <= s.log[1].at_s


def test_the_budget_stops_before_a_page_it_cannot_pay_for(tmp_path):
    suggest, decisions, truth = sitting_files(tmp_path)
    s = run_sitting(config(tmp_path, decisions, suggest), truth, 2.0, sleep=lambda _: None,
                    report=lambda _: None)
    assert (s.pages, s.verified) == (1, 1) and "needs 3.8 s; 0.6 s" in s.reason


def test_a_stop_from_another_thread_ends_the_sitting_before_the_page_is_written(tmp_path):
    import threading

    suggest, decisions, truth = sitting_files(tmp_path)
    stop = threading.Event()
    before = decisions.read_bytes()

    def sleep_then_stop(seconds):  # Ctrl-C arrives while the person looks at the first page
        stop.set()

    s = run_sitting(config(tmp_path, decisions, suggest), truth, math.inf,
                    sleep=sleep_then_stop, report=lambda _: None, stop=stop)
    assert (s.pages, s.verified, s.reason) == (0, 0, "stopped")
    assert decisions.read_bytes() == before


def test_a_finished_model_proposes_from_the_next_page_on(tmp_path, monkeypatch):
    """A background model finishes after the first page, validating 0.7 against the pipeline
    model's 0.8: its pages are the next ones all the same (it saw more labels)."""
    class OneRunRetrainer:  # finishes one run, at once, after the first page
        def __init__(self, *args, on_done, **kwargs):
            self.on_done, self.runs = on_done, []

        def note(self, labels_now):
            if self.runs:
                return False
            run_ = Run("review-worse", labels_now, "1 new decisions", 0.0, ok=True,
                       outputs=RunOutputs(frame([("chihuahua", ["p3", "p2"])]),
                                          val_accuracy=0.7))
            self.on_done(run_)
            self.runs.append(run_)
            return True

        def stop(self):
            pass

    monkeypatch.setattr(sitting, "Retrainer", OneRunRetrainer)
    suggest, decisions, truth = sitting_files(tmp_path)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval/metrics.json").write_text(json.dumps({"val": {"accuracy": 0.8, "n": 10}}))
    reports = []
    cfg = config(tmp_path, decisions, suggest, every=1, eval_dir=tmp_path / "eval")
    s = run_sitting(cfg, truth, math.inf, sleep=lambda _: None, report=reports.append)
    assert s.models_finished == 1
    second = s.log[1]
    assert (second.model, second.wrong) == ("review-worse", 1)  # p2 is a muffin
    assert any("review-worse finished (val acc 0.7000)" in m for m in reports), reports
    on_disk = {d.path: d.label for d in read_decisions(decisions, CLASSES)}
    assert on_disk == truth


@pytest.mark.slow
def test_loop_background_on_the_sample_verifies_the_pool_while_a_retrain_runs(tmp_path):
    params = deep_update(default_params_dict(), TINY)
    params["suggest"]["page_size"] = 3
    params["review"] = {"retrain_every": 2, "round_recipe": "", "warm_recipe": "",
                        "background_set": [],
                        "warm_after": 0, "validation_size": 0,
                        "final_recipe": "recipes/finish.yaml"}
    root = make_repo(tmp_path / "repo", params)
    run(["dvc", "repro", "-q"], root, env={"PYTHONPATH": ""})
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "repro"], root)
    p = run(["chimuffin", "loop", "--reviewer",
             "data/raw/sample/pool_labels.csv", "--minutes", "inf", "--no-final"], root,
            env={"PYTHONPATH": str(REPO / "src"), "TMPDIR": str(tmp_path)}, timeout=240)
    out = p.stdout
    assert "idle 0.0 s" in out and "a background retrain started" in out, out
    truth = {r.split(",")[0]: r.split(",")[1] for r in
             (root / "data/raw/sample/pool_labels.csv").read_text().splitlines()[1:]}
    rows = read_decisions(root / "data/labels/decisions.csv", CLASSES)
    assert {d.path for d in rows if d.source == "oracle"} <= set(truth)
    assert all(truth[d.path] == d.label for d in rows if d.source == "oracle")
    verified = int(out.split(" images verified")[0].rsplit(" ", 1)[1])
    assert verified == len([d for d in rows if d.source == "oracle"]) > 0
    # the label file is the only workspace file the sitting changed; its runs left no copy
    changed = run(["git", "status", "--porcelain"], root).stdout.split("\n")
    assert [c for c in changed if c] == [" M data/labels/decisions.csv"]
    assert list(tmp_path.glob("chimuffin-retrain-*")) == []
    assert yaml.safe_load((root / "params.yaml").read_text()) == params


def exp_run_niceness() -> list[int]:
    """Niceness of every running `dvc exp run` of a background retrain (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmd = stat.read_bytes().split(b"\0")
            fields = (stat.parent / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if b"exp" in cmd and b"run" in cmd and any(c.startswith(b"review-") for c in cmd):
            found.append(int(fields[16]))  # field 19 of /proc/PID/stat: nice
    return found


@pytest.mark.slow
def test_a_model_finishing_mid_sitting_proposes_the_pages_after_it(tmp_path, monkeypatch):
    """The person is slow on its second page (it waits there until the background model is
    done, as a long page would): the pages after it come from that model, whose run ran at
    nice 10 and is a named experiment; the workspace holds only the person's decisions."""
    import os
    import tempfile
    import time

    from tests.test_retrain import exp_names, tiny_round_repo

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = tiny_round_repo(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["suggest"]["page_size"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run(["dvc", "repro", "-q"], root, env={"PYTHONPATH": ""})  # pages of 2
    run(["git", "commit", "-qm", "pages of 2", "params.yaml", "dvc.lock"], root)
    truth = {r.split(",")[0]: r.split(",")[1] for r in
             (root / "data/raw/sample/pool_labels.csv").read_text().splitlines()[1:]}
    live, events, niceness = {}, [], []
    own_nice = os.nice(0)

    def person(seconds: float) -> None:
        s = live["sitting"]
        events.append(("page", s.pages, live["proposals"].proposer().name))
        if s.pages == 1:  # the second page: stay on it until the first model is done
            deadline = time.monotonic() + 240
            while s.models_finished == 0 and time.monotonic() < deadline:
                niceness.extend(exp_run_niceness())
                time.sleep(0.2)

    cfg = SittingConfig(root, root / "params.yaml", root / "data/labels/decisions.csv",
                        root / "data/suggest", CLASSES, every=1,
                        recipe="recipes/tiny_round.yaml")
    s = run_sitting(cfg, truth, math.inf, sleep=person, report=events.append, live=live)
    assert s.models_started >= 1 and s.models_finished >= 1, events
    assert s.idle_s == 0 and s.reason == "every page is verified"
    assert niceness and set(niceness) == {own_nice + 10}
    finished = next(i for i, e in enumerate(events) if "finished" in str(e))
    after = [e for e in events[finished:] if isinstance(e, tuple)]
    assert after, events  # pages were verified after the swap, proposed by the new model
    proposer = after[0][2]
    assert proposer.startswith("review-") and proposer in exp_names(root), events
    rows = read_decisions(root / "data/labels/decisions.csv", CLASSES)
    assert all(truth[d.path] == d.label for d in rows if d.source == "oracle")
    changed = [c for c in run(["git", "status", "--porcelain"], root).stdout.split("\n") if c]
    assert changed == [" M data/labels/decisions.csv"]


@pytest.mark.parametrize("args,message", [
    (["--minutes", "0"], "--minutes must be > 0"),
    (["--minutes", "nan"], "--minutes must be > 0"),
    (["--minutes", "1", "--validation", "-1"], "--validation must be >= 0"),
])
def test_loop_refuses_unclear_options_before_reading_anything(tmp_path, monkeypatch, args,
                                                              message):
    from chimuffin.cli import build_parser
    from chimuffin.errors import UserError

    monkeypatch.chdir(tmp_path)  # no params.yaml, no repository: the options are checked first
    parsed = build_parser().parse_args(["loop", "--reviewer", "truth.csv", *args])
    with pytest.raises(UserError, match=message):
        parsed.func(parsed)

"""`chimuffin labels accept`, the loop's pieces (simulated reviewer, commit step, signals), and
`loop` end to end in a temporary git + DVC repo."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from chimuffin import atomic
from chimuffin.cli import main
from chimuffin.errors import UserError
from chimuffin.labels.rows import (
    Decision,
    format_decisions,
    parse_decisions,
    read_decisions,
    read_path_labels,
)
from chimuffin.proc import deferred_signals, sigterm_as_interrupt
from chimuffin.simulate.rounds import check_clean, commit_round, parse_trailers
from tests.helpers.repo import REPO, init_repo, run

CLASSES = ["chihuahua", "muffin"]


def write_suggestions(path, rows):
    atomic.write_parquet(path, pd.DataFrame(
        [{"path": p, "label": lbl, "score": s, "agree": a, "model_label": lbl, "model_conf": s,
          "knn_label": lbl if a else "other", "knn_conf": s} for p, lbl, s, a in rows]))


@pytest.fixture
def accept_dir(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    write_suggestions(tmp_path / "s.parquet", [
        ("p/a.jpg", "chihuahua", 0.99, True), ("p/b.jpg", "chihuahua", 0.98, False),
        ("p/c.jpg", "muffin", 0.97, True), ("p/d.jpg", "muffin", 0.96, True),
        ("p/e.jpg", "muffin", 0.50, True), ("p/h.jpg", "chihuahua", 0.99, True)])
    atomic.write_text(tmp_path / "decisions.csv", format_decisions(
        [Decision("p/h.jpg", "muffin", "human", "checked by hand")]))
    return tmp_path


def accept_cli(d, *extra):
    return main(["labels", "accept", "--suggestions", str(d / "s.parquet"), "--decisions",
                 str(d / "decisions.csv"), "--params", str(d / "params.yaml"), *extra])


def test_labels_accept_merges_auto_labels_and_reports_per_class(accept_dir, capsys):
    before = (accept_dir / "decisions.csv").read_bytes()
    assert accept_cli(accept_dir, "--min-score", "0.9", "--dry-run") == 0
    assert "would add 4 auto labels (chihuahua 2, muffin 2)" in capsys.readouterr().out
    assert (accept_dir / "decisions.csv").read_bytes() == before

    assert accept_cli(accept_dir, "--min-score", "0.9", "--require-agreement",
                      "--per-class-cap", "1") == 0
    assert "added 2 auto labels (chihuahua 1, muffin 1) of 5" in capsys.readouterr().out
    got = {d.path: d for d in read_decisions(accept_dir / "decisions.csv", CLASSES)}
    assert {p: (d.label, d.source) for p, d in got.items()} == {
        "p/a.jpg": ("chihuahua", "auto"), "p/c.jpg": ("muffin", "auto"),
        "p/h.jpg": ("muffin", "human")}  # the person's decision stands

    assert accept_cli(accept_dir, "--min-score", "0.9") == 0  # the rest; nothing twice
    assert "added 2 auto labels (chihuahua 1, muffin 1)" in capsys.readouterr().out
    assert len(read_decisions(accept_dir / "decisions.csv", CLASSES)) == 5


@pytest.mark.parametrize("extra,message", [
    (["--min-score", "1.5"], "--min-score must be between 0 and 1"),
    (["--min-score", "0.9", "--per-class-cap", "-1"], "--per-class-cap must be >= 0"),
])
def test_labels_accept_rejects_bad_options(accept_dir, capsys, extra, message):
    assert accept_cli(accept_dir, *extra) == 2
    assert message in capsys.readouterr().err


def test_labels_accept_names_missing_suggestions(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    assert main(["labels", "accept", "--min-score", "0.9", "--suggestions",
                 str(tmp_path / "nope.parquet"), "--params", str(tmp_path / "params.yaml"),
                 "--decisions", str(tmp_path / "d.csv")]) == 2
    assert "nope.parquet: suggestions not found (run `dvc repro suggest`)" in \
        capsys.readouterr().err
    assert not (tmp_path / "d.csv").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_commit_step_lands_after_it(tmp_path, signum):
    marker = tmp_path / "done"
    before = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        with deferred_signals():
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # the handler runs during this step, and only records
            marker.write_text("the whole step ran")
        pytest.fail("the held signal must raise when the step ends")
    assert marker.read_text() == "the whole step ran"
    assert signal.getsignal(signum) == before
    with deferred_signals():  # nothing held: nothing raised
        pass


def git_repo(path):
    """A git-only repo (no DVC) holding an empty label file, committed."""
    path.mkdir()
    (path / "labels.csv").write_text("path,label,source,note\n")
    (path / ".gitignore").write_text(".*.lock\n")  # the label file's lock, as in the project
    return init_repo(path, dvc=False)


def test_loop_refuses_to_start_over_uncommitted_inputs_naming_them(tmp_path):
    repo = git_repo(tmp_path / "r")
    for name, text in (("params.yaml", "train:\n  lr: 0.0005\n"), ("src/m.py", "x = 1\n"),
                       ("README.md", "hi\n")):
        (repo / name).parent.mkdir(exist_ok=True)
        (repo / name).write_text(text)
    commit_all(repo, "inputs")
    labels = repo / "labels.csv"
    check_clean(repo, labels)  # all committed
    (repo / "README.md").write_text("edited\n")
    check_clean(repo, labels)  # not an input of a round
    (repo / "params.yaml").write_text("train:\n  lr: 0.001\n")
    (repo / "src/new.py").write_text("y = 2\n")
    with pytest.raises(UserError, match=r"uncommitted changes to params.yaml, src/new.py: a "
                       r"round's commit would record a dvc.lock made with them"):
        check_clean(repo, labels)
    run(["git", "checkout", "-q", "params.yaml"], repo)
    (repo / "src/new.py").unlink()
    labels.write_text(labels.read_text() + "a.jpg,muffin,human,\n")
    with pytest.raises(UserError, match="uncommitted changes to labels.csv"):
        check_clean(repo, labels)


def commit_all(repo, message):
    """Commit everything (message "--amend": into the last commit)."""
    run(["git", "add", "-A"], repo)
    how = ["--amend", "--no-edit"] if message == "--amend" else ["-m", message]
    run(["git", "commit", "-q", *how], repo)


def test_commit_round_commits_or_restores_the_label_file(tmp_path):
    repo = git_repo(tmp_path / "r")
    labels = repo / "labels.csv"
    seen = []
    commit_round(repo, labels, lambda cur: [*cur, Decision("a.jpg", "muffin", "auto")],
                 CLASSES, "round 1\n\nbody", seen.append)
    assert git_log(repo).split("\n")[0] == "round 1" and len(seen) == 1
    assert run(["git", "status", "--porcelain"], repo).stdout == ""
    # a failing commit (here: a hook) leaves the label file as committed
    hook = repo / ".git/hooks/pre-commit"
    hook.write_text("#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)
    before = labels.read_bytes()
    with pytest.raises(UserError, match="git commit"):
        commit_round(repo, labels, lambda cur: [*cur, Decision("b.jpg", "muffin", "auto")],
                     CLASSES, "round 2", seen.append)
    assert labels.read_bytes() == before and len(seen) == 1


@pytest.mark.slow
def test_loop_two_rounds_one_commit_each_with_reviewer_and_accepted_suggestions(tiny_repo):
    repo = tiny_repo
    decisions = repo / "data/labels/decisions.csv"
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # pages of 2: any one page fits the 0.1-minute budget, the 10-image pool does not (see
    # test_loop_with_a_simulated_reviewer_on_the_sample), so both rounds review and accept
    params["suggest"]["page_size"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "pages of 2"], repo)
    p = run(["python", "-m", "chimuffin.cli", "loop", "--rounds", "2", "--min-score", "0.5",
             "--per-class-cap", "1", "--reviewer", "data/raw/sample/pool_labels.csv",
             "--minutes", "0.1"], repo, timeout=1200)
    assert "loop: 2 round(s) committed" in p.stdout, p.stdout + p.stderr
    log = run(["git", "log", "--format=%s"], repo).stdout.splitlines()
    assert len(log) == 4 and log[2:] == ["pages of 2", "init"]
    assert log[1].startswith("loop round 1/2: val acc ") and log[0].startswith("loop round 2/2")
    # round 1: at most 3 pages (6 images) fit, so suggestions are left to accept, 1 per class
    assert " verified (" in log[1] and 1 <= int(re.search(r"\+(\d+) auto", log[1])[1]) <= 2
    rows = read_decisions(decisions, CLASSES)
    by_source = pd.Series([d.source for d in rows]).value_counts().to_dict()
    verified = sum(int(parse_trailers(m)["Review-Verified"]) for m in run(
        ["git", "log", "-2", "--format=%B%x00"], repo).stdout.split("\0") if m.strip())
    # round 2's reviewer may verify round 1's auto labels (they are shown again)
    assert by_source["oracle"] == verified >= 2 and set(by_source) <= {"oracle", "auto"}
    truth = dict(line.split(",") for line in
                 (repo / "data/raw/sample/pool_labels.csv").read_text().split()[1:])
    assert all(d.label == truth[d.path] for d in rows if d.source == "oracle")
    # the second round's commit holds the label file and the dvc.lock of its own repro
    changed = run(["git", "show", "--name-only", "--format=", "HEAD"], repo).stdout.split()
    assert set(changed) == {"data/labels/decisions.csv", "dvc.lock"}
    assert run(["git", "status", "--porcelain", "--", "data/labels"], repo).stdout == ""


FAKE_DVC = """#!/bin/sh
# stands in for `dvc repro`: round 1 returns at once, round 2 hangs until interrupted
n=$(cat "$FAKE_DVC_STATE" 2>/dev/null || echo 0)
echo $((n + 1)) > "$FAKE_DVC_STATE"
if [ "$n" -ge 1 ]; then touch "$FAKE_DVC_STATE.hanging"; exec sleep 60; fi
"""


def test_loop_interrupted_in_round_two_keeps_round_one_and_nothing_else(tmp_path):
    repo = git_repo(tmp_path / "r")
    (repo / "params.yaml").write_text((REPO / "params.yaml").read_text())
    commit_all(repo, "--amend")  # in the first commit: the loop refuses uncommitted params
    write_suggestions(repo / "data/suggest/suggestions.parquet",
                      [("p/a.jpg", "chihuahua", 0.99, True), ("p/b.jpg", "muffin", 0.98, True)])
    atomic.write_json(repo / "metrics/eval/metrics.json", {"val": {"accuracy": 0.75, "n": 8}})
    atomic.write_json(repo / "data/clean/summary.json", {"by_split_label": {}})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dvc").write_text(FAKE_DVC)
    (bin_dir / "dvc").chmod(0o755)
    state = tmp_path / "dvc-state"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FAKE_DVC_STATE": str(state)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chimuffin.cli", "loop", "--rounds", "3", "--min-score", "0.9",
         "--per-class-cap", "1", "--decisions", "labels.csv"],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not Path(f"{state}.hanging").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "loop: interrupted; 1 complete round(s) committed" in err
    log = git_log(repo).splitlines()
    assert len(log) == 2 and log[0].startswith("loop round 1/3: val acc 0.7500 (n=8); +2 auto")
    assert run(["git", "status", "--porcelain", "labels.csv"], repo).stdout == ""
    assert [d.path for d in read_decisions(repo / "labels.csv", CLASSES)] == ["p/a.jpg",
                                                                              "p/b.jpg"]


def git_log(repo, fmt="%s"):
    return run(["git", "log", f"--format={fmt}"], repo).stdout


def reviewer_repo(tmp_path):
    """A git repo with this round's outputs already in place and a `dvc` that does nothing."""
    repo = git_repo(tmp_path / "r")
    (repo / "params.yaml").write_text((REPO / "params.yaml").read_text())
    commit_all(repo, "--amend")  # in the first commit: the loop refuses uncommitted params
    rows = [(0, "chihuahua", ["p/a.jpg", "p/b.jpg", "p/c.jpg"]), (1, "muffin", ["p/d.jpg",
                                                                               "p/e.jpg"])]
    atomic.write_parquet(repo / "data/suggest/pages.parquet", pd.DataFrame(
        [{"page": page, "position": i, "path": p, "label": label, "score": 0.9,
          "page_score": 0.9, "model_label": label, "knn_label": label, "agree": True}
         for page, label, paths in rows for i, p in enumerate(paths)]))
    atomic.write_json(repo / "metrics/eval/metrics.json", {"val": {"accuracy": 0.75, "n": 8}})
    atomic.write_json(repo / "data/clean/summary.json", {"by_split_label": {}})
    # the header real-data truth files use, and a BOM
    (repo / "truth.csv").write_text("\ufeffrelative_path,label\np/a.jpg,chihuahua\n"
                                    "p/b.jpg,muffin\np/c.jpg,chihuahua\np/d.jpg,muffin\n"
                                    "p/e.jpg,muffin\n", encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dvc").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "dvc").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return repo, env


def loop_cli(repo, env, *args):
    return run([sys.executable, "-m", "chimuffin.cli", "loop", "--decisions", "labels.csv",
                *args], repo, check=False, timeout=120, env=env)


def test_loop_reviewer_commits_each_round_with_its_session_and_stops_when_nothing_is_left(
        tmp_path):
    repo, env = reviewer_repo(tmp_path)
    # page 0: 1 + 3 x 0.4 + 2 (b is an exception) = 4.2 s; page 1: 1 + 2 x 0.4 = 1.8 s.
    # 0.08 min = 4.8 s: round 1 reviews page 0 only; round 2 (page 0 now decided) page 1.
    p = loop_cli(repo, env, "--rounds", "5", "--reviewer", "truth.csv", "--minutes", "0.08")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "loop: round 3 added no labels (the reviewer verified nothing: every image on the 2 " \
        "pages is already decided by a person); stopping" in p.stdout
    assert "loop: 3 round(s) committed" in p.stdout
    subjects = git_log(repo).splitlines()
    assert subjects[:3] == [
        "loop round 3/5: val acc 0.7500 (n=8); +0 verified (0 pages, 0 exceptions), "
        "0.00 simulated min (total 0.10)",
        "loop round 2/5: val acc 0.7500 (n=8); +2 verified (1 page, 0 exceptions), "
        "0.03 simulated min (total 0.10)",
        "loop round 1/5: val acc 0.7500 (n=8); +3 verified (1 page, 1 exception), "
        "0.07 simulated min (total 0.07)"]
    first = git_log(repo, "%B").split("loop round 1/5")[1]
    assert "1 page, 3 images verified (chihuahua 2, muffin 1), 1 exception, 0 passed over" \
        in first
    assert "4.2 s of a 5 s budget (0.07 simulated min); cumulative 0.07 min" in first
    assert "stopped: the next page (page 1, 2 images) needs 1.8 s and 0.6 s" in first
    assert "Review-Verified: 3\nReview-Exceptions: 1\nReview-Passed-Over: 0\n" \
        "Review-Seconds: 4.2\nReview-Seconds-Total: 4.2" in first
    got = {d.path: (d.label, d.source, d.note) for d in read_decisions(repo / "labels.csv",
                                                                       CLASSES)}
    assert got == {"p/a.jpg": ("chihuahua", "oracle", "page 0 (chihuahua, page score 0.90)"),
                   "p/b.jpg": ("muffin", "oracle", "page 0 exception"),
                   "p/c.jpg": ("chihuahua", "oracle", "page 0 (chihuahua, page score 0.90)"),
                   "p/d.jpg": ("muffin", "oracle", "page 1 (muffin, page score 0.90)"),
                   "p/e.jpg": ("muffin", "oracle", "page 1 (muffin, page score 0.90)")}
    # a later loop keeps counting the simulated minutes from the last round's commit
    p = loop_cli(repo, env, "--rounds", "1", "--reviewer", "truth.csv", "--minutes", "inf")
    last = git_log(repo, "%B").split("loop round 3/5")[0]
    assert "Review-Seconds-Total: 6.0" in last and "0.0 s of an unlimited budget" in last


@pytest.mark.parametrize("args,message", [
    ([], "nothing would add labels: give --reviewer CSV --minutes M"),
    (["--reviewer", "truth.csv"], "--reviewer needs --minutes M > 0"),
    (["--reviewer", "truth.csv", "--minutes", "nan"], "--reviewer needs --minutes M > 0"),
    (["--minutes", "3"], "--minutes needs --reviewer"),
    (["--per-class-cap", "3", "--reviewer", "truth.csv", "--minutes", "1"],
     "--require-agreement and --per-class-cap need --min-score"),
    (["--reviewer", "nope.csv", "--minutes", "1"],
     "nope.csv: reviewer's file of true labels not found"),
])
def test_loop_refuses_unclear_options_before_running_anything(tmp_path, args, message):
    repo, env = reviewer_repo(tmp_path)
    p = loop_cli(repo, env, "--rounds", "1", *args)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert git_log(repo).splitlines() == ["init"]


@pytest.mark.slow
def test_loop_with_a_simulated_reviewer_on_the_sample(tiny_repo):
    repo = tiny_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # Pages of 2: whatever the 1-epoch model proposes, any one page (at most 1 + 2 x 0.4 + 2 x 2
    # = 5.8 s) fits the 0.1-minute budget, and the 10-image pool (>= 5 pages, >= 9 s) does not:
    # each round verifies at least one page and leaves work for the next.
    params["suggest"]["page_size"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "pages of 2"], repo)
    p = run(["python", "-m", "chimuffin.cli", "loop", "--rounds", "2", "--reviewer",
             "data/raw/sample/pool_labels.csv", "--minutes", "0.1"], repo, timeout=1200)
    assert "loop: 2 round(s) committed" in p.stdout, p.stdout + p.stderr
    messages = [m for m in run(["git", "log", "--format=%B%x00"], repo).stdout.split("\0")
                if m.strip().startswith("loop round")]
    assert len(messages) == 2
    trailers = [parse_trailers(m) for m in reversed(messages)]
    seconds = [float(t["Review-Seconds"]) for t in trailers]
    assert all(0 < s <= 6.0 for s in seconds)  # 0.1 min, pages all or nothing
    assert float(trailers[1]["Review-Seconds-Total"]) == pytest.approx(sum(seconds))
    truth = read_path_labels(repo / "data/raw/sample/pool_labels.csv", CLASSES)
    rows = read_decisions(repo / "data/labels/decisions.csv", CLASSES)
    assert rows and all(d.source == "oracle" and d.label == truth[d.path]
                        and d.note.startswith("page ") for d in rows)
    assert len(rows) == sum(int(t["Review-Verified"]) for t in trailers)
    # round 2 reviewed pages built without the images round 1 labeled
    round1 = run(["git", "show", "HEAD~1:data/labels/decisions.csv"], repo).stdout
    pages = pd.read_parquet(repo / "data/suggest/pages.parquet")
    assert {d.path for d in parse_decisions(round1, CLASSES)}.isdisjoint(pages["path"])
    changed = run(["git", "show", "--name-only", "--format=", "HEAD"], repo).stdout.split()
    assert set(changed) == {"data/labels/decisions.csv", "dvc.lock"}

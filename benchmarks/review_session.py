"""Accuracy per human-minute: a simulated person verifies the pool's review pages in one
sitting while the model retrains in the background.

Protocol, per arm, in a fresh temporary git + DVC repository made from this checkout (tracked
files as they are in the working tree; the data is read in place, never copied):
- params: prepare.data_dir = the data, prepare.val_fraction 0, tlc.enabled false, train.keep
  last (final weights: an honest validation number), the train group of params.yaml unless
  --recipe / --set say otherwise;
- data/labels/validation.csv = every row of reviewed_labels.csv: those images validate and are
  never shown to the simulated person (they are not pool images); decisions.csv starts empty;
- the person answers from pool_labels.csv without the reviewed rows, at the cost model of
  chimuffin.simulate.reviewer (1 s per page, 0.4 s per thumbnail, 2 s per exception).

Arms (default: both, in this order; they share one DVC cache):
- wall-clock: one sitting of `chimuffin loop`'s person (chimuffin.simulate.sitting), in
  wall-clock time: after one `dvc repro` (the first model), the person verifies pages at the
  cost model's pace while background retrains (every --retrain-every decisions, the arm's
  train group as the round recipe) swap in new pages. At each --wall-schedule checkpoint
  (wall-clock minutes since the first page) it records images verified, exceptions,
  background models finished, the person's idle time (0 by construction) and the validation
  accuracy (95% interval) of the model proposing the pages then; a last row when the sitting
  ends (the whole pool, or the last checkpoint with --no-whole-pool). The JSON keeps its page
  log too (each accepted page: when, images verified on it, images its model put on it, wrong
  proposals, the proposing model).
  With --validation N (this arm alone) the sitting's person first builds its own validation
  set, as the review page asks a person to: N pool images of the validation view's seeded
  random sample, on pages with the first model's proposals, answered from the truth file at
  the pages' cost model and written to validation.csv. For that run validation.csv starts
  empty, the seeds' validation split stays (prepare.val_fraction of params.yaml: a user's
  starting point), and reviewed_labels.csv's images are held out of everything (`remove`
  decisions, source rule: never trained, on no page, never sampled). After the sitting one
  `dvc repro` trains the final model (params.yaml's train group, whatever --recipe the
  retrains used); it is scored on the sitting's validation set and on the held-out reviewed
  images (`chimuffin predict`), each with its 95% interval: the two should agree.
- ceiling: every pool label (outside reviewed_labels.csv) as a decision, one `dvc repro`: what
  the sitting's models are held against.

The round-based loop (rounds of `dvc repro`, each followed by a few simulated minutes of pages;
dropped, the sitting is the loop now) was the arm `pages-confident`, as recorded at 87c2b2c.
Its saved runs are still read: --on-wall-clock puts one on the wall clock (each session, then a
wait for its `dvc repro`) and sets a sitting's wrong proposals beside it at the same number of
verified images, splitting the sitting's pages at the checkpoints into whole ones and ones cut
short (some of their images were verified on an earlier model's pages); --pooled does so for
pairs of a saved round-based run and a sitting of the same seed, summed.

    python benchmarks/review_session.py --smoke          # the embedded sample, tiny, ~2 min
    python benchmarks/review_session.py --recipe round   # the default sitting: a retrain every 120
    python benchmarks/review_session.py --arms wall-clock --validation 500
    python benchmarks/review_session.py --on-wall-clock ROUNDS_JSON WALL_JSON

Writes OUT/review_session.json and OUT/review_session.png; prints a table and the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

from chimuffin.config import (
    as_dict,
    parse_override,
    parse_params,
    read_recipe,
    read_yaml_file,
    set_override,
)
from chimuffin.data.sample import write_sample
from chimuffin.errors import UserError
from chimuffin.labels.rows import Decision, format_decisions, read_decisions, read_path_labels
from chimuffin.report.metrics import wilson_interval
from chimuffin.simulate.reviewer import ReviewCost

if __package__ in (None, ""):  # run as a script: the repository root holds the shared harness
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers.repo import init_repo, run  # noqa: E402

from benchmarks.stats import cpu_summary  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

REAL_DATA = Path(os.environ.get("CHIMUFFIN_REAL_DATA",
                                REPO.parent / "shared" / "data" / "chihuahua-muffin"))
WALL_ARM = "wall-clock"
ARMS = (WALL_ARM, "ceiling")
WALL_SCHEDULE = (0.0, 10.0, 20.0, 30.0, 40.0)  # wall-clock minutes since the first page
SMOKE_PARAMS = {"base": {"image_size": 32},
                "train": {"epochs": 1, "batch_size": 4}, "runtime": {"threads": 1},
                "sample": {"labeled_per_class": 4, "pool": 4, "test_per_class": 0,
                           "val_per_class": 0},
                "suggest": {"page_size": 4},
                # the warm recipe trains in batches of 64: more than the smoke's pool
                "review": {"warm_recipe": ""}}


# --- the data ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Data:
    root: Path
    reviewed: dict          # validation: path -> label
    pool_truth: dict        # what the person knows: pool_labels.csv minus the reviewed rows


def load_data(root: Path, classes: list[str]) -> Data:
    root = root.resolve()
    for need in (root / "train128", root / "reviewed_labels.csv", root / "pool_labels.csv"):
        if not need.exists():
            raise UserError(f"{need} not found: the data must hold train128/, "
                            "reviewed_labels.csv and pool_labels.csv (set --data or "
                            "CHIMUFFIN_REAL_DATA, or run --smoke)")
    reviewed = read_path_labels(root / "reviewed_labels.csv", classes)
    pool = read_path_labels(root / "pool_labels.csv", classes)
    return Data(root, reviewed, {p: lbl for p, lbl in pool.items() if p not in reviewed})


def smoke_data(dest: Path, seed: int, classes: list[str]) -> Path:
    """The embedded sample's generator, in the real data's layout: a third of the pool labels
    become reviewed_labels.csv (validation)."""
    write_sample(dest, labeled_per_class=6, pool=36, test_per_class=0, seed=seed,
                 classes=tuple(classes))
    pool = sorted(read_path_labels(dest / "pool_labels.csv", classes).items())
    pick = np.sort(np.random.default_rng(seed).permutation(len(pool))[:len(pool) // 3])
    write_path_labels(dest / "reviewed_labels.csv", dict(pool[i] for i in pick),
                      "relative_path")
    return dest


def write_path_labels(path: Path, rows: dict, header: str = "path") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{header},label\n" + "".join(f"{p},{lbl}\n" for p, lbl in
                                                 sorted(rows.items())), encoding="utf-8")


# --- params -----------------------------------------------------------------------------------

def recipe_train(name: str | None, base: dict) -> dict:
    """The train group: params.yaml's, or a recipe file's (recipes/NAME.yaml or a yaml path),
    merged onto its base."""
    if not name:
        return base["train"]
    path = Path(name) if name.endswith((".yaml", ".yml")) else REPO / "recipes" / f"{name}.yaml"
    return read_recipe(path)


def parse_set(item: str) -> tuple[list[str], object]:
    """--set 'GROUP.KEY=VALUE' -> (key path, YAML-parsed value)."""
    return parse_override(item, "--set")


def arm_params(base: dict, train: dict, sets: list, data: Path, arm: str, smoke: bool,
               validation: int = 0) -> dict:
    """params.yaml for one arm: recipe, --set overrides, then the protocol's own keys (which
    win). Validated strictly, like `dvc repro` would. `validation` (the wall-clock arm's
    --validation): the seeds' validation split stays, the sample's size is review's."""
    raw = yaml.safe_load(yaml.safe_dump(base))
    raw["train"] = yaml.safe_load(yaml.safe_dump(train))
    for group, values in (SMOKE_PARAMS.items() if smoke else ()):
        for k, v in values.items():
            raw[group][k] = v
    for path, value in sets:
        set_override(raw, path, value)
    raw["prepare"].update(data_dir=str(data), val_fraction=0.0)
    raw["tlc"]["enabled"] = False
    raw["train"]["keep"] = "last"
    if arm == WALL_ARM:  # background runs retrain with the arm's own train group
        raw["review"]["round_recipe"] = ""
    if arm == WALL_ARM and validation:
        raw["prepare"]["val_fraction"] = base["prepare"]["val_fraction"]
        raw["review"]["validation_size"] = validation
    return as_dict(parse_params(raw))


# --- a repository per arm -----------------------------------------------------------------------

def env_for(repo: Path) -> dict:
    # the stages import the repository's copy of the code (what dvc.lock hashes)
    return {"PYTHONPATH": str(repo / "src")}


def sh(cmd: list[str], repo: Path) -> tuple[str, float]:
    """Run a command in the repo; (stdout + stderr, wall seconds). Fails loudly."""
    t = time.perf_counter()
    p = run(cmd, repo, check=False, timeout=None, env=env_for(repo))
    if p.returncode != 0:
        raise UserError(f"{' '.join(cmd)} failed in {repo} ({p.returncode}):\n"
                        f"{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p.stdout + p.stderr, time.perf_counter() - t


def tracked_files() -> list[str]:
    """The checkout's files as they are now: tracked ones, and new ones git does not ignore."""
    out = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
              REPO).stdout
    return [f for f in out.split("\0") if f and not f.startswith(".dvc/")
            and (REPO / f).is_file()]


def make_repo(dest: Path, params: dict, validation: dict, cache: Path,
              decisions: list[Decision] = ()) -> Path:
    for f in tracked_files():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_path_labels(dest / "data/labels/validation.csv", validation)
    (dest / "data/labels/decisions.csv").write_text(format_decisions(list(decisions)))
    return init_repo(dest, "review_session", "bench@example.com", "review_session: start",
                     dvc_cache=cache)


# --- measuring --------------------------------------------------------------------------------

@dataclass
class Checkpoint:
    """One `dvc repro`'s model: the ceiling's (and, in saved runs, each round's of the
    round-based loop)."""
    arm: str
    minutes: float              # cumulative simulated human-minutes (NaN: the ceiling)
    accuracy: float
    correct: int
    n: int
    lo: float
    hi: float
    train_images: int
    sources: dict               # decisions per source
    pages: int = 0              # cumulative
    verified: int = 0
    exceptions: int = 0
    repro_s: float = 0.0        # wall time of this checkpoint's `dvc repro`
    trained: bool = True        # False: the train stage was up to date or restored from cache


def run_ceiling(repo: Path, data: Data, classes: list[str]) -> Checkpoint:
    """Every pool label as a decision, one `dvc repro`: the model the sitting's are held
    against (a row in the saved runs' checkpoint format)."""
    decisions = [Decision(p, lbl, "oracle", "pool_labels.csv")
                 for p, lbl in sorted(data.pool_truth.items())]
    (repo / "data/labels/decisions.csv").write_text(format_decisions(decisions))
    sh(["git", "commit", "-qam", "ceiling: every pool label"], repo)
    out, wall = sh(["dvc", "repro"], repo)
    metrics = json.loads((repo / "metrics/eval/metrics.json").read_text())["val"]
    n = int(metrics["n"])
    k = round(metrics["accuracy"] * n)
    lo, hi = wilson_interval(k, n)
    by = json.loads((repo / "data/clean/summary.json").read_text()).get("by_split_label", {})
    sources = Counter(d.source for d in read_decisions(repo / "data/labels/decisions.csv",
                                                       classes))
    row = Checkpoint("ceiling", math.nan, metrics["accuracy"], k, n, lo, hi,
                     sum(by.get(f"train/{c}", 0) for c in classes), dict(sources),
                     verified=len(decisions), repro_s=wall,
                     trained="Running stage 'train'" in out)
    print(row_line(row), flush=True)
    return row


@dataclass
class WallCheckpoint:
    minutes: float              # wall-clock minutes since the first page
    verified: int
    exceptions: int
    pages: int
    models_started: int
    models_finished: int
    idle_s: float
    model: str                  # the model proposing the pages at that moment
    accuracy: float | None      # its validation accuracy
    lo: float | None
    hi: float | None
    n: int | None


def wall_row(minutes: float, live: dict) -> WallCheckpoint:
    s, m = live["sitting"], live["proposals"].proposer()
    acc, n = m.val_accuracy, m.val_n
    lo, hi = wilson_interval(round(acc * n), n) if acc is not None and n else (None, None)
    return WallCheckpoint(minutes, s.verified, s.exceptions, s.pages, s.models_started,
                          s.models_finished, s.idle_s, m.name, acc, lo, hi, n)


def run_wall_clock(repo: Path, truth_csv: Path, classes: list[str], schedule: list[float],
                   whole_pool: bool, validation: int = 0
                   ) -> tuple[list[WallCheckpoint], list[dict], dict | None]:
    """One sitting in wall-clock time, sampled at the schedule's minutes since its first page
    (with `validation`: the validation set built first counts in them); also its page log
    (simulate/sitting.py PageDone, one per accepted page) and its validation set's numbers."""
    import threading

    from chimuffin.config import load_params
    from chimuffin.simulate.sitting import SittingConfig, run_sitting, summary

    sh(["dvc", "repro"], repo)  # the first model: the person starts on its pages
    params = load_params(repo / "params.yaml")
    truth = read_path_labels(truth_csv, classes)
    budget = math.inf if whole_pool else schedule[-1] * 60
    live: dict = {}
    done: dict = {}
    stop = threading.Event()  # Ctrl-C here ends the sitting and stops its background run

    def sit() -> None:
        try:
            cfg = SittingConfig(repo, repo / "params.yaml", repo / "data/labels/decisions.csv",
                                repo / "data/suggest", classes, params.review.retrain_every,
                                params.review.round_recipe, params.review.warm_recipe,
                                repo / "metrics/eval", ReviewCost(),
                                validation_step(repo, params) if validation else None)
            done["sitting"] = run_sitting(cfg, truth, budget, sleep=stop.wait,
                                          report=lambda m: print(m, flush=True), live=live,
                                          stop=stop)
        except BaseException as e:  # shown by the main thread
            done["error"] = e

    thread = threading.Thread(target=sit, daemon=True)
    start = time.monotonic()
    thread.start()
    while "sitting" not in live and thread.is_alive():
        time.sleep(0.01)
    rows = []
    try:
        for minutes in schedule:
            thread.join(max(0.0, start + minutes * 60 - time.monotonic()))
            if not thread.is_alive():
                break
            rows.append(wall_row(minutes, live))
            print(wall_line(rows[-1]), flush=True)
        thread.join()
    except KeyboardInterrupt:  # the sitting's thread would go on, its retrain with it
        print("review_session: interrupted; stopping the sitting and its background run",
              flush=True)
        stop.set()
        thread.join()
        raise
    if "error" in done:
        raise UserError(f"the wall-clock sitting failed: {done['error']}")
    rows.append(wall_row((time.monotonic() - start) / 60, live))
    print(wall_line(rows[-1]) + "  (the sitting's end)", flush=True)
    print(summary(done["sitting"]), flush=True)
    built = done["sitting"].validation
    return rows, [asdict(p) for p in done["sitting"].log], \
        None if built is None else {**asdict(built), "minutes": built.minutes}


def validation_step(repo: Path, params):
    """The sample the sitting's person answers first: the validation view's."""
    from chimuffin.simulate.validation import ValidationStep

    return ValidationStep(params.review.validation_size, params.base.seed,
                          params.suggest.page_size, repo / "data/prepared/manifest.parquet",
                          repo / "metrics/eval/predictions.parquet",
                          repo / "data/labels/validation.csv", repo / "data/labels/decisions.csv")


def held_out(reviewed: dict) -> list[Decision]:
    """--validation: the reviewed images out of every split (never trained, on no page, never
    sampled): the yardstick the sitting's own validation set is held against."""
    return [Decision(p, "remove", "rule", "held out: reviewed_labels.csv")
            for p in sorted(reviewed)]


def scored(what: str, right: int, n: int) -> dict:
    lo, hi = wilson_interval(right, n)
    return {"what": what, "accuracy": right / n if n else math.nan, "correct": right, "n": n,
            "lo": lo, "hi": hi}


def final_model_check(repo: Path, data: Data, classes: list[str], work: Path,
                      train: dict) -> list[dict]:
    """After the sitting: one `dvc repro` with `train` as the train group (params.yaml's:
    the final model, whatever recipe the background retrains used), scored on the sitting's
    validation set (the evaluate stage's predictions) and on the held-out reviewed images
    (`chimuffin predict`, flip TTA as evaluate.tta_flip says)."""
    import pandas as pd

    from chimuffin.config import load_params

    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "train": train},
                                                     sort_keys=False))
    sh(["dvc", "repro"], repo)
    pred = pd.read_parquet(repo / "metrics/eval/predictions.parquet")
    own = read_path_labels(repo / "data/labels/validation.csv", classes)
    mine = pred[pred["path"].isin(own)]
    files = {str(data.root / p): p for p in sorted(data.reviewed)}
    out = work / "held_out_predictions.csv"
    tta = ["--tta-flip"] if load_params(repo / "params.yaml").evaluate.tta_flip else []
    sh([sys.executable, "-m", "chimuffin.cli", "predict", "--model",
        str(repo / "models/best.pth"), "--format", "csv", "--output", str(out), *tta, *files],
       repo)
    got = pd.read_csv(out, keep_default_na=False)
    right = sum(data.reviewed[files[p]] == lbl for p, lbl in zip(got["path"], got["label"],
                                                                   strict=True))
    return [scored("the sitting's own validation set (validation.csv)",
                   int((mine["prediction"] == mine["path"].map(own)).sum()), len(mine)),
            scored("held out: reviewed_labels.csv", int(right), len(got))]


def final_lines(built: dict, final: list[dict]) -> list[str]:
    return [f"validation set built first: {built['answered']} images on {built['pages']} pages "
            f"({built['exceptions']} proposals corrected) in {built['minutes']:.2f} simulated "
            "min", "the final model (one `dvc repro` after the sitting):",
            *(f"  {r['what']}: {r['accuracy']:.4f} [{r['lo']:.4f}, {r['hi']:.4f}] "
              f"({r['correct']} of {r['n']})" for r in final)]


WALL_HEADER = (f"{'wall-min':>8} {'pages':>6} {'verified':>8} {'exc':>5} {'models':>6} "
               f"{'idle s':>6}  {'proposing model: val acc [95% CI]':<36} model")


def wall_line(r: WallCheckpoint) -> str:
    acc = "-" if r.accuracy is None else f"{r.accuracy:.4f} [{r.lo:.4f}, {r.hi:.4f}]"
    return (f"{r.minutes:>8.1f} {r.pages:>6} {r.verified:>8} {r.exceptions:>5} "
            f"{r.models_finished:>6} {r.idle_s:>6.1f}  {acc:<36} {r.model}")


# --- saved round-based runs on the wall clock -------------------------------------------------

def rounds_on_wall_clock(checkpoints: list[dict]) -> list[tuple]:
    """A round-based arm's saved checkpoints as the wall clock its person lives, from the first
    page: each session's simulated minutes, then the wait for its `dvc repro` (not after the
    last session: the pool is done). Knots (wall s, pages, verified, exceptions, idle s, models
    finished since the first page); the proposing model is checkpoint[models]."""
    knots = [(0.0, 0, 0, 0, 0.0, 0)]
    wall = idle = 0.0
    for i in range(1, len(checkpoints)):
        prev, cur = checkpoints[i - 1], checkpoints[i]
        wall += (cur["minutes"] - prev["minutes"]) * 60
        knots.append((wall, cur["pages"], cur["verified"], cur["exceptions"], idle, i - 1))
        if i < len(checkpoints) - 1:
            wall += cur["repro_s"]
            idle += cur["repro_s"]
            knots.append((wall, cur["pages"], cur["verified"], cur["exceptions"], idle, i))
    return knots


def round_row(minutes: float, knots: list[tuple], checkpoints: list[dict]) -> WallCheckpoint:
    """The round-based person's state `minutes` after the first page; counts interpolated within
    a session (pages are whole, so they are approximate there)."""
    t = min(minutes * 60, knots[-1][0])
    j = max(k for k in range(len(knots)) if knots[k][0] <= t)
    left, right = knots[j], knots[min(j + 1, len(knots) - 1)]
    f = 0.0 if right[0] == left[0] else (t - left[0]) / (right[0] - left[0])
    pages, verified, exceptions, idle = (a + f * (b - a)
                                         for a, b in zip(left[1:5], right[1:5], strict=True))
    models = left[5]
    m = checkpoints[models]
    return WallCheckpoint(t / 60, round(verified), round(exceptions), round(pages), models,
                          models, idle, f"repro {models} ({m['verified']} verified)",
                          m["accuracy"], m["lo"], m["hi"], m["n"])


def round_based_on_wall_clock(checkpoints: list[dict], schedule: list[float],
                              ) -> list[WallCheckpoint]:
    """The schedule's rows while the sitting lasts, then a row at its end (the last page)."""
    knots = rounds_on_wall_clock(checkpoints)
    end = knots[-1][0] / 60
    return [round_row(m, knots, checkpoints) for m in schedule if m < end] + \
        [round_row(end, knots, checkpoints)]


def exceptions_at(checkpoints: list[dict], verified: int) -> float:
    """A round-based arm's wrong proposals after `verified` images (linear between
    checkpoints): the yardstick for the wall-clock arm's."""
    return float(np.interp(verified, [c["verified"] for c in checkpoints],
                           [c["exceptions"] for c in checkpoints]))


def compare_on_wall_clock(rounds_file: Path, wall_file: Path | None, schedule: list[float],
                          ) -> str:
    """Each round-based arm of a saved run on the wall clock; with a wall-clock run's JSON, its
    wrong proposals beside the round-based arms' at the same number of verified images."""
    saved = json.loads(rounds_file.read_text())
    arms = {}
    for c in saved["checkpoints"]:
        if c["arm"].startswith("pages-"):
            arms.setdefault(c["arm"], []).append(c)
    if not arms:
        raise UserError(f"{rounds_file}: no round-based pages arm in its checkpoints")
    lines = [f"round-based arms of {rounds_file} (cpu: {saved['cpu']}), on the wall clock: "
             "each session, then a wait for its `dvc repro`"]
    for arm, cps in arms.items():
        lines += [f"\n{arm}:", WALL_HEADER,
                  *(wall_line(r) for r in round_based_on_wall_clock(cps, schedule))]
    if wall_file is not None:
        wall = json.loads(wall_file.read_text())
        if not wall.get("wall_clock"):
            raise UserError(f"{wall_file}: no wall-clock arm in it")
        lines += [f"\nwrong proposals at the same number of verified images: wall-clock arm "
                  f"({wall_file}, cpu: {wall['cpu']}) against the round-based arms "
                  "(interpolated)",
                  f"{'wall-min':>8} {'verified':>8} {'wall-clock exc':>14} "
                  + " ".join(f"{arm + ' exc':>22}" for arm in arms)]
        for r in wall["wall_clock"]["checkpoints"]:
            lines.append(f"{r['minutes']:>8.1f} {r['verified']:>8} {r['exceptions']:>14} "
                         + " ".join(f"{exceptions_at(cps, r['verified']):>22.0f}"
                                    for cps in arms.values()))
        if wall["wall_clock"].get("pages"):  # runs before the page log have none
            pages = wall["wall_clock"]["pages"]
            lines += ["\nthe wall-clock arm's pages by proposing model, and the round-based "
                      "arms' wrong proposals over the same counts (interpolated)",
                      f"{'model':<44} {'verified':>11} {'pages':>5} {'images':>6} {'wrong':>5} "
                      + " ".join(f"{arm + ' wrong':>24}" for arm in arms),
                      *(f"{m['model']:<44} {f'{lo}-{hi}':>11} {m['pages']:>5} {m['images']:>6} "
                        f"{m['wrong']:>5} "
                        + " ".join(f"{exceptions_at(cps, hi) - exceptions_at(cps, lo):>24.0f}"
                                   for cps in arms.values())
                        for m in pages_by_model(pages) for lo, hi in [(m["first"], m["last"])]),
                      "\nthe wall-clock arm's pages between checkpoints: whole (as their model "
                      "built them) and cut (some images verified on an earlier model's pages)",
                      PAGE_SPLIT_HEADER,
                      *page_split_lines(pages, wall["wall_clock"]["checkpoints"])]
    return "\n".join(lines)


def round_based_arm(saved: dict, source: Path) -> list[dict]:
    """The confident-order round-based arm of a saved run: the loop a sitting is held against."""
    cps = [c for c in saved["checkpoints"] if c["arm"] == "pages-confident"]
    if not cps:
        raise UserError(f"{source}: no pages-confident arm in its checkpoints")
    return cps


def pooled_comparison(pairs: list[tuple[Path, Path]], minutes: list[float]) -> str:
    """Several sittings, each against the round-based loop of its seed: wrong proposals at the
    sitting's number of verified images, at the checkpoints in `minutes` and at each sitting's
    end (the whole pool), per pair and summed. One seed's round-based run may face several
    sittings; it is then counted once for each."""
    runs = []
    for rounds_file, wall_file in pairs:
        wall = json.loads(wall_file.read_text())
        if not wall.get("wall_clock"):
            raise UserError(f"{wall_file}: no wall-clock arm in it")
        cps = round_based_arm(json.loads(rounds_file.read_text()), rounds_file)
        sitting = wall["wall_clock"]["checkpoints"]
        at = {f"{m:g}": c for m in minutes for c in sitting if c["minutes"] == m}
        at["end"] = sitting[-1]
        runs.append((wall_file.parent.name, wall["cpu"].split(",")[0],
                     {k: (c["verified"], c["exceptions"], exceptions_at(cps, c["verified"]))
                      for k, c in at.items()}))
    lines = ["wrong proposals at the same number of verified images: each sitting (wall-clock "
             "arm) against its seed's round-based loop (interpolated)"]
    lines += [f"  {name} ({cpu}) against {r.parent.name}"
              for (name, cpu, _), (r, _) in zip(runs, pairs, strict=True)]
    lines.append(f"{'wall-min':>8}  {'per sitting: verified sitting/round-based':<56} "
                 f"{'sum: sitting':>12} {'round-based':>11} {'difference':>16} {'no more':>8} "
                 f"{'per sitting: mean (sd)':>22}")
    for key in [f"{m:g}" for m in minutes] + ["end"]:
        got = [at[key] for _, _, at in runs if key in at]
        if len(got) < len(runs) or key == "0":
            continue  # a checkpoint some sitting did not reach (it ended before)
        mine, theirs = sum(e for _, e, _ in got), sum(r for _, _, r in got)
        diff = f"{mine - theirs:+.0f} ({(mine - theirs) / theirs:+.1%})" if theirs else "-"
        lines.append(f"{key:>8}  " + f"{'  '.join(f'{v}: {e}/{r:.0f}' for v, e, r in got):<56} "
                     f"{mine:>12} {theirs:>11.0f} {diff:>16} "
                     f"{sum(e <= round(r) for _, e, r in got):>3} of {len(got)} "
                     f"{spread([e - r for _, e, r in got]):>22}")
    return "\n".join(lines)


def spread(differences: list[float]) -> str:
    """Mean and sample standard deviation: how far one sitting's difference strays."""
    sd = f"{np.std(differences, ddof=1):.1f}" if len(differences) > 1 else "-"
    return f"{np.mean(differences):+.1f} ({sd})"


def pages_by_model(pages: list[dict]) -> list[dict]:
    """Per proposing model, in the order they proposed: its pages, images, wrong proposals,
    and the verified count before its first page (first) and after its last (last)."""
    out: dict[str, dict] = {}
    for p in pages:
        m = out.setdefault(p["model"], {"model": p["model"], "pages": 0, "images": 0,
                                        "wrong": 0, "first": p["verified_before"]})
        m["pages"] += 1
        m["images"] += p["images"]
        m["wrong"] += p["wrong"]
        m["last"] = p["verified_before"] + p["images"]
    return list(out.values())


PAGE_SPLIT_HEADER = (f"{'wall-min':>8} {'verified':>8} "
                     f"{'whole: pages, images (wrong)':>30} {'cut: pages, images (wrong)':>28}")


def page_split(pages: list[dict], upto: int, since: int = 0) -> dict[str, list[int]]:
    """Of the pages begun with `since` to `upto` images verified: [pages, images, wrong] on
    whole pages and on cut ones."""
    out = {"whole": [0, 0, 0], "cut": [0, 0, 0]}
    for p in pages:
        if since <= p["verified_before"] < upto:
            tally = out["cut" if p["images"] < p["built"] else "whole"]
            tally[0] += 1
            tally[1] += p["images"]
            tally[2] += p["wrong"]
    return out


def page_split_lines(pages: list[dict], checkpoints: list[dict]) -> list[str]:
    lines, since = [], 0
    for c in checkpoints:
        if c["verified"] <= since:
            continue
        split = page_split(pages, c["verified"], since)
        lines.append(f"{c['minutes']:>8.1f} {c['verified']:>8} "
                     + " ".join(f"{f'{k}, {n} ({w})':>{width}}" for (k, n, w), width in
                                ((split["whole"], 30), (split["cut"], 28))))
        since = c["verified"]
    return lines


# --- reporting --------------------------------------------------------------------------------

HEADER = (f"{'arm':<16} {'human-min':>9} {'pages':>6} {'verified':>8} {'exc':>5} "
          f"{'train':>6}  {'val acc [95% CI]':<24} {'repro':>7}    labels by source")


def row_line(r: Checkpoint) -> str:
    minutes = "-" if math.isnan(r.minutes) else f"{r.minutes:.1f}"
    ran = "  " if r.trained else "c "
    sources = ", ".join(f"{k} {v}" for k, v in sorted(r.sources.items())) or "-"
    return (f"{r.arm:<16} {minutes:>9} {r.pages:>6} {r.verified:>8} {r.exceptions:>5} "
            f"{r.train_images:>6}  {r.accuracy:.4f} [{r.lo:.4f}, {r.hi:.4f}] "
            f"{r.repro_s / 60:6.1f}m{ran}  {sources}")


def table(rows: list[Checkpoint]) -> str:
    return "\n".join([HEADER, *map(row_line, rows),
                      "human-min: cumulative simulated minutes; verified: images the person "
                      "labeled; exc: exceptions marked; train: labeled training images; val acc: "
                      "final weights on the reviewed validation images; repro: `dvc repro` wall "
                      "time (c: the train stage did not run: up to date or restored from the "
                      "DVC cache)"])


def plot(wall: list[WallCheckpoint], rows: list[Checkpoint], path: Path) -> None:
    """The sitting's proposing model at each checkpoint (the person never waits, so wall-clock
    minutes are the person's), and the ceiling as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    scored = [r for r in wall if r.accuracy is not None]
    if scored:
        y = np.array([r.accuracy for r in scored])
        err = [y - [r.lo for r in scored], [r.hi for r in scored] - y]
        ax.errorbar([r.minutes for r in scored], y, yerr=err, marker="o", capsize=3,
                    label="the sitting's proposing model")
    for r in rows:
        if r.arm == "ceiling":
            ax.axhline(r.accuracy, color="black", linestyle="--",
                       label=f"ceiling (every pool label) {r.accuracy:.3f}")
            ax.axhspan(r.lo, r.hi, color="black", alpha=0.08)
    ax.set_xlabel("wall-clock minutes since the first page (the person never waits)")
    ax.set_ylabel("validation accuracy (95% Wilson interval)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REAL_DATA,
                    help="train128/ + reviewed_labels.csv + pool_labels.csv (default: "
                    "%(default)s; CHIMUFFIN_REAL_DATA overrides)")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                    help="default: %(default)s")
    ap.add_argument("--wall-schedule", nargs="+", type=float, default=None, metavar="MIN",
                    help="wall-clock arm: checkpoints in wall-clock minutes since the first "
                    f"page (default: {' '.join(f'{m:g}' for m in WALL_SCHEDULE)}; --smoke: "
                    "0 0.25 0.5)")
    ap.add_argument("--validation", type=int, default=0, metavar="N",
                    help="wall-clock arm only: the person first builds a validation set of N "
                    "pool images (the validation view's sample), reviewed_labels.csv held out; "
                    "after the sitting the final model is scored on both (default: "
                    "%(default)s: validate on reviewed_labels.csv as the ceiling does)")
    ap.add_argument("--retrain-every", type=int, default=120, metavar="N",
                    help="wall-clock arm: a background retrain every N new decisions "
                    "(default: %(default)s; --smoke: the page size)")
    ap.add_argument("--no-whole-pool", dest="whole_pool", action="store_false",
                    help="wall-clock arm: end the sitting at the last --wall-schedule "
                    "checkpoint instead of when the whole pool is verified")
    ap.add_argument("--recipe", default=None, metavar="FILE",
                    help="train group from a recipe (recipes/NAME.yaml or a yaml path; "
                    "default: params.yaml's)")
    ap.add_argument("--set", action="append", default=[], metavar="GROUP.KEY=VALUE",
                    help="override a param, e.g. train.epochs=30; repeatable (the protocol's "
                    "own keys win)")
    ap.add_argument("--smoke", action="store_true",
                    help="the embedded sample's generator, tiny sizes: checks the script runs")
    ap.add_argument("--out", type=Path, default=None,
                    help="where the JSON and PNG go (default: WORKDIR/results)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="repositories and scratch files (default: a new temporary folder)")
    ap.add_argument("--on-wall-clock", nargs="+", type=Path, default=None,
                    metavar=("ROUNDS_JSON", "WALL_JSON"),
                    help="run nothing: print a saved run's round-based arm (pages-confident, "
                    "as recorded at 87c2b2c) on the wall clock "
                    "(at --wall-schedule), and with a wall-clock run's JSON its wrong proposals "
                    "beside theirs at the same number of verified images")
    ap.add_argument("--pooled", nargs="+", type=Path, default=None,
                    metavar="ROUNDS_JSON WALL_JSON",
                    help="run nothing: pairs of a saved round-based run and a sitting of the same "
                    "seed; their wrong proposals at the same number of verified images at the "
                    "--wall-schedule checkpoints and at the end, per pair and summed")
    ap.add_argument("--keep-repos", action="store_true",
                    help="keep each arm's repository (default: removed at the end)")
    args = ap.parse_args(argv)
    if args.on_wall_clock is not None:
        if len(args.on_wall_clock) > 2:
            ap.error("--on-wall-clock takes ROUNDS_JSON and at most one WALL_JSON")
        rounds_file, wall_file = (args.on_wall_clock + [None])[:2]
        print(compare_on_wall_clock(rounds_file, wall_file,
                                    sorted(args.wall_schedule or WALL_SCHEDULE)))
        return 0

    if args.pooled is not None:
        if len(args.pooled) % 2:
            ap.error("--pooled takes pairs: ROUNDS_JSON WALL_JSON [ROUNDS_JSON WALL_JSON ...]")
        print(pooled_comparison(list(zip(args.pooled[::2], args.pooled[1::2], strict=True)),
                                sorted(args.wall_schedule or WALL_SCHEDULE)))
        return 0

    base = read_yaml_file(REPO / "params.yaml", "params file")
    classes = base["base"]["classes"]
    sets = [parse_set(item) for item in args.set]
    train = recipe_train(args.recipe, base)
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="chimuffin-review-session-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    root = smoke_data(work / "sample-data", base["base"]["seed"], classes) if args.smoke \
        else args.data
    data = load_data(root, classes)
    out = (args.out or work / "results").resolve()
    out.mkdir(parents=True, exist_ok=True)
    truth_csv = work / "pool_truth.csv"
    write_path_labels(truth_csv, data.pool_truth)
    if args.validation and args.arms != [WALL_ARM]:
        raise UserError("--validation N runs with --arms wall-clock only (the ceiling "
                        "validates on reviewed_labels.csv)")
    params = {arm: arm_params(base, train, sets, data.root, arm, args.smoke, args.validation)
              for arm in args.arms}
    wall_schedule = sorted(args.wall_schedule if args.wall_schedule is not None
                           else [0.0, 0.25, 0.5] if args.smoke else WALL_SCHEDULE)
    if WALL_ARM in params:
        if args.retrain_every < 1:
            raise UserError(f"--retrain-every must be >= 1, got {args.retrain_every}")
        params[WALL_ARM]["review"]["retrain_every"] = (
            SMOKE_PARAMS["suggest"]["page_size"] if args.smoke else args.retrain_every)
    cpu = cpu_summary()
    print(f"review_session: {data.root}: {len(data.pool_truth)} pool images the person can "
          f"verify, {len(data.reviewed)} reviewed validation images; arms {args.arms}; "
          f"wall-clock checkpoints {wall_schedule} min"
          f"{' + the whole pool' if args.whole_pool else ''}; "
          f"cost: {ReviewCost().describe()}; cpu: {cpu}; work: {work}", flush=True)

    rows: list[Checkpoint] = []
    wall: list[WallCheckpoint] = []
    page_log: list[dict] = []
    built, final = None, []
    cache = work / "dvc-cache"
    for arm in args.arms:
        repo = make_repo(work / f"repo-{arm}", params[arm], {} if args.validation
                         else data.reviewed, cache,
                         held_out(data.reviewed) if args.validation else ())
        if arm == WALL_ARM:
            print(WALL_HEADER, flush=True)
            wall, page_log, built = run_wall_clock(repo, truth_csv, classes, wall_schedule,
                                                   args.whole_pool, args.validation)
            if built is not None:
                final = final_model_check(repo, data, classes, work, arm_params(
                    base, base["train"], sets, data.root, arm, args.smoke)["train"])
                print("\n".join(final_lines(built, final)), flush=True)
        else:
            print(HEADER, flush=True)
            rows.append(run_ceiling(repo, data, classes))
        if not args.keep_repos:
            shutil.rmtree(repo, ignore_errors=True)

    print()
    if rows:
        print(table(rows))
    if wall:
        print("\nwall-clock arm (one sitting; retrains in the background):")
        print("\n".join([WALL_HEADER, *map(wall_line, wall)]))
    print(f"cpu: {cpu}")
    result = {"cpu": cpu, "data": str(data.root), "smoke": args.smoke,
              "cost": asdict(ReviewCost()), "whole_pool": args.whole_pool,
              "train": params[args.arms[0]]["train"], "review": params[args.arms[0]]["review"],
              "validation_images": len(data.reviewed),
              "pool_images": len(data.pool_truth),
              "checkpoints": [{**asdict(r), "minutes": None if math.isnan(r.minutes)
                               else r.minutes} for r in rows],
              "wall_clock": {"schedule": wall_schedule, "checkpoints": [asdict(r) for r in wall],
                             "pages": page_log}
              if wall else None,
              "validation": {"built": built, "final": final} if built else None}
    (out / "review_session.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(wall, rows, out / "review_session.png")
    print(f"wrote {out / 'review_session.json'} and {out / 'review_session.png'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"review_session: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("review_session: interrupted; no results were written (the work folder, printed "
              "at the start, is left as it was)", file=sys.stderr)
        sys.exit(130)

"""Where the time of one retrain goes: each pipeline stage's wall time in the `dvc repro` that
follows a review session, at pool scale, and one background retrain of the review page end to
end.

Pool protocol, in a fresh git + DVC repository made from this checkout like
benchmarks/review_session.py's (tracked files as they are; the data is read in place): the 1,000
reviewed_labels.csv images validate, prepare.val_fraction is 0, and the label file holds pool
labels from pool_labels.csv (a seeded sample outside the reviewed rows, source `oracle`).

1. Set-up, not measured: the label file holds --labels minus --step labels and `dvc repro`
   builds everything once with a one-epoch train group (prepare's image cache, a first model).
2. The measured repro: --step more labels (what a session adds) and the train group of
   --recipe / --set; every stage the change reruns is run alone, in pipeline order
   (`dvc repro --single-item STAGE`), and timed; `dvc status` after it says nothing is left.
3. With --background: --step more labels again, and one background retrain as the review page
   starts it (chimuffin.retrain.retrainer.Retrainer: a throwaway clone, `dvc exp run` at nice 10,
   its ref pushed back, its pages read), timed end to end; the clone's own set-up is the
   difference between that and its stages (measured in 2 at about the same size).

    python benchmarks/stage_times.py --recipe round --labels 2000 --background
    python benchmarks/stage_times.py --labels 3533 --set train.epochs=2   # the default, 2 epochs
    python benchmarks/stage_times.py --smoke

Prints a table and the CPU; --json writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from chimuffin.config import as_dict, parse_params, read_yaml_file, set_override
from chimuffin.errors import UserError
from chimuffin.labels.rows import Decision, format_decisions

if __package__ in (None, ""):  # run as a script: the repository root holds the shared harness
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.review_session import (  # noqa: E402
    REAL_DATA,
    REPO,
    SMOKE_PARAMS,
    load_data,
    make_repo,
    parse_set,
    recipe_train,
    sh,
    smoke_data,
)
from benchmarks.stats import cpu_summary  # noqa: E402

# dvc.yaml's order; `sample` and `prepare` do not rerun after a label change
STAGES = ("sample", "prepare", "clean", "tables", "train", "evaluate", "embed", "suggest")
SETUP_TRAIN = {"epochs": 1, "val_every": 1}


def bench_params(base: dict, train: dict, sets: list, data: Path, smoke: bool) -> dict:
    """params.yaml for the measured repro: the recipe, --set, then the protocol's keys."""
    raw = yaml.safe_load(yaml.safe_dump(base))
    raw["train"] = yaml.safe_load(yaml.safe_dump(train))
    for group, values in (SMOKE_PARAMS.items() if smoke else ()):
        raw[group].update(values)
    if smoke:
        raw["tlc"]["enabled"] = False  # importing 3LC alone takes longer than the tiny stages
    for path, value in sets:
        set_override(raw, path, value)
    raw["prepare"].update(data_dir=str(data), val_fraction=0.0)
    return as_dict(parse_params(raw))


def with_train(params: dict, train: dict) -> dict:
    out = yaml.safe_load(yaml.safe_dump(params))
    out["train"].update(train)
    return out


def label_order(pool: dict, seed: int) -> list[Decision]:
    """Every pool label in a seeded random order: the first N are what a person verified."""
    paths = sorted(pool)
    order = np.random.default_rng(seed).permutation(len(paths))
    return [Decision(paths[i], pool[paths[i]], "oracle", "pool_labels.csv") for i in order]


def write_labels(repo: Path, decisions: list[Decision], message: str) -> None:
    (repo / "data/labels/decisions.csv").write_text(format_decisions(decisions))
    sh(["git", "commit", "-qam", message], repo)


def write_params(repo: Path, params: dict, message: str) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "commit", "-qam", message], repo)


def timed_stages(repo: Path) -> dict[str, float]:
    """Each stage run alone, in pipeline order: {stage: wall seconds} for those that ran (the
    others find their deps unchanged and skip)."""
    times = {}
    for stage in STAGES:
        out, seconds = sh(["dvc", "repro", "--single-item", stage], repo)
        if f"Running stage '{stage}'" in out:
            times[stage] = seconds
            print(f"  {stage:<9} {seconds:7.1f} s", flush=True)
    out, _ = sh(["dvc", "status"], repo)
    if "changed" in out:
        raise UserError(f"after the measured repro, `dvc status` still says:\n{out}")
    return times


def background_retrain(repo: Path, classes: list[str]) -> tuple[float, str]:
    """One background retrain as the review page starts it: (wall seconds, its name)."""
    from chimuffin.retrain.retrainer import Retrainer

    retrainer = Retrainer(repo, repo / "params.yaml", repo / "data/labels/decisions.csv",
                          classes, every=0, recipe="", labels_of_model=0)
    start = time.perf_counter()
    retrainer.request("stage_times.py")
    while retrainer.thread is None:
        time.sleep(0.01)
    retrainer.thread.join()
    wall = time.perf_counter() - start
    run = retrainer.runs[-1]
    if not run.ok:
        raise UserError(f"the background retrain failed: {run.error}\n{run.log_tail}")
    return wall, run.name


def table(times: dict[str, float]) -> str:
    total = sum(times.values())
    lines = [f"{'stage':<10} {'seconds':>8} {'share':>6}"]
    lines += [f"{s:<10} {t:8.1f} {t / total:6.1%}" for s, t in times.items()]
    lines.append(f"{'total':<10} {total:8.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REAL_DATA,
                    help="train128/ + reviewed_labels.csv + pool_labels.csv (default: "
                    "%(default)s)")
    ap.add_argument("--labels", type=int, default=3533,
                    help="pool labels in the label file for the measured repro (default: "
                    "%(default)s, every pool label outside the validation rows)")
    ap.add_argument("--step", type=int, default=240,
                    help="labels the measured repro (and the background retrain) adds "
                    "(default: %(default)s)")
    ap.add_argument("--recipe", default=None, metavar="FILE",
                    help="train group from a recipe (recipes/NAME.yaml or a yaml path; "
                    "default: params.yaml's)")
    ap.add_argument("--set", action="append", default=[], metavar="GROUP.KEY=VALUE",
                    help="override a param, e.g. train.epochs=2 or tlc.enabled=false")
    ap.add_argument("--background", action="store_true",
                    help="also time one background retrain of the review page")
    ap.add_argument("--smoke", action="store_true",
                    help="the embedded sample's generator, tiny sizes: checks the script runs")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = ap.parse_args(argv)

    base = read_yaml_file(REPO / "params.yaml", "params file")
    classes = base["base"]["classes"]
    work = Path(tempfile.mkdtemp(prefix="chimuffin-stage-times-"))
    try:
        root = smoke_data(work / "sample-data", base["base"]["seed"], classes) if args.smoke \
            else args.data
        data = load_data(root, classes)
        step = min(args.step, 4) if args.smoke else args.step
        n = min(args.labels, len(data.pool_truth) - (step if args.background else 0))
        if n < step:
            raise UserError(f"--labels {args.labels}: needs at least --step ({step}) labels")
        params = bench_params(base, recipe_train(args.recipe, base),
                              [parse_set(s) for s in args.set], data.root, args.smoke)
        order = label_order(data.pool_truth, base["base"]["seed"])
        cpu = cpu_summary()
        more = f" (+{step} for the background run)" if args.background else ""
        print(f"stage_times: {data.root}: {n} pool labels{more} of {len(data.pool_truth)}, "
              f"{len(data.reviewed)} validation images; "
              f"train {params['train']['epochs']} epochs; tlc "
              f"{'on' if params['tlc']['enabled'] else 'off'}; cpu: {cpu}", flush=True)

        repo = make_repo(work / "repo", with_train(params, SETUP_TRAIN), data.reviewed,
                         work / "dvc-cache")
        write_labels(repo, order[:n - step], "set-up labels")
        _, setup_s = sh(["dvc", "repro"], repo)
        print(f"set-up `dvc repro` (one epoch): {setup_s:.0f} s; the measured repro:",
              flush=True)
        write_params(repo, params, "the measured train group")
        write_labels(repo, order[:n], f"{step} more labels")
        times = timed_stages(repo)
        print(table(times))
        result = {"cpu": cpu, "data": str(data.root), "labels": n, "step": step,
                  "train": params["train"], "tlc": params["tlc"]["enabled"],
                  "stages_s": times, "setup_s": setup_s}
        if args.background:
            sh(["git", "add", "-A"], repo)
            sh(["git", "commit", "-qm", "the measured repro's outputs"], repo)
            write_labels(repo, order[:n + step], f"{step} more labels for the background run")
            wall, name = background_retrain(repo, classes)
            stages = sum(times.values())
            print(f"background retrain {name}: {wall:.1f} s end to end; its stages took "
                  f"{stages:.1f} s in the measured repro, so the clone, checkout, experiment "
                  f"bookkeeping and reading its pages about {wall - stages:.1f} s")
            result["background_s"] = wall
        print(f"cpu: {cpu}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
            print(f"wrote {args.json}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"stage_times: error: {e}", file=sys.stderr)
        sys.exit(2)

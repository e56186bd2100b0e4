"""Finishing budget: the final step's recipe, from a sitting's last background model, at several
training budgets on the pool protocol, beside the 70-epoch from-scratch default.

Start weights: `--repo DIR`, a repository a sitting ran in (`chimuffin loop`, or
`benchmarks/review_session.py --arms wall-clock --keep-repos`): its last background model, found
as `chimuffin final` finds it (the latest `review-...-labels` experiment, its models/best.pth
from the DVC cache), once the repository's data/labels/validation.csv is checked to hold every
reviewed_labels.csv row (so no model of its chain trained on this protocol's validation images);
or `--weights FILE`, a checkpoint whose training the caller vouches for (said in the output).

Protocol: time_to_accuracy.py's pool protocol (the 200 seeds and every pool_labels.csv row
outside reviewed_labels.csv train; the reviewed rows validate; nothing called test is read).
Per budget (--budgets, minutes of training) the finishing recipe (recipes/finish.yaml, or
--recipe) trains from the start weights for E epochs: --epochs gives them, else E = (budget -
one validation) / one training epoch, both measured first on this machine (one epoch of the
recipe from the start weights, thrown away). --shrink-perturb S P adds an arm per budget with
train.warm_shrink S and train.warm_perturb P. Each run's final weights are scored on the
validation images (95% Wilson interval) and paired (exact McNemar; one-sided non-inferiority
bound at --margin) with --scratch-json: a time_to_accuracy.py --json from the same protocol and
data (checked), e.g. the saved 70-epoch default, benchmarks/results/pool/ref70.json. Wall times
compare only within one machine: every run records its CPU, and the table prints them.

    python benchmarks/finish_budget.py --repo SITTING_REPO \
        --scratch-json benchmarks/results/pool/ref70.json --json finish.json
    python benchmarks/finish_budget.py --repo SITTING_REPO --epochs 8 16 24 \
        --shrink-perturb 0.4 0.1
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.stats import cpu_summary  # noqa: E402
from benchmarks.time_to_accuracy import (  # noqa: E402
    REAL_DATA,
    REPO,
    label_rows,
    prepare_protocol,
    read_saved_results,
    recipe_params,
    split_pool,
    table,
    train_recipe,
    validation_digest,
)
from chimuffin import runtime  # noqa: E402
from chimuffin.config import EVAL_BATCH_SIZE, read_yaml_file  # noqa: E402
from chimuffin.data.views import labeled, rows_and_labels  # noqa: E402
from chimuffin.errors import UserError  # noqa: E402
from chimuffin.retrain.final import start_model  # noqa: E402
from chimuffin.stages.train import warm_start  # noqa: E402
from chimuffin.train.engine import LabeledSet, evaluate_rows, fit  # noqa: E402

BUDGETS = (5.0, 10.0, 15.0, 20.0)


# --- the start weights ------------------------------------------------------------------------

def held_out(repo: Path, reviewed: list[str]) -> None:
    """The sitting's repository validated on every reviewed row: none of them trained a model
    of its chain (background runs train on the label file's decisions, never on validation)."""
    listed = repo / "data" / "labels" / "validation.csv"
    try:
        with open(listed, newline="", encoding="utf-8") as f:
            paths = {row["path"] for row in csv.DictReader(f)}
    except (OSError, KeyError) as e:
        raise UserError(f"{listed}: cannot read its paths ({e})") from e
    missing = sorted(set(reviewed) - paths)
    if missing:
        raise UserError(f"{listed} lacks {len(missing)} reviewed_labels.csv rows (e.g. "
                        f"{missing[0]}): that sitting's models may have trained on this "
                        "protocol's validation images")


def sh(cmd: list[str], cwd: Path) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise UserError(f"`{' '.join(cmd)}` failed in {cwd}: {p.stderr.strip()}")
    return p.stdout.strip()


def start_weights(args, reviewed: list[str]) -> tuple[Path, str]:
    """The weights every arm starts from, and what they are."""
    if args.weights:
        if not args.weights.is_file():
            raise UserError(f"--weights {args.weights}: file not found")
        return args.weights, (f"{args.weights} (given: the caller vouches that it never "
                              "trained on the validation images)")
    held_out(args.repo, reviewed)
    model = start_model(sh, args.repo.resolve(), args.from_exp)
    return model.path, f"{model.name} in {args.repo} (md5 {model.md5})"


# --- budgets ----------------------------------------------------------------------------------

def epochs_for(budget_s: float, epoch_s: float, val_s: float) -> int:
    """Whole epochs of training that fit the budget with the one validation after the last."""
    return max(1, math.floor((budget_s - val_s) / epoch_s))


def measure(params, df, images, weights: Path) -> tuple[float, float]:
    """(seconds of one training epoch, seconds of one validation) of the recipe from the start
    weights, on this machine; the weights it trains are thrown away."""
    from chimuffin.model import build_model

    t, classes = params.train, params.base.classes
    runtime.setup(params.base.seed, params.runtime.threads)
    device = runtime.pick_device(params.runtime.device)
    model = build_model(len(classes), t.head, t.dropout)
    warm_start(weights, model, params)
    train = LabeledSet(images, *rows_and_labels(labeled(df, "train"), classes))
    val = LabeledSet(images, *rows_and_labels(labeled(df, "val"), classes))
    one = fit(model, train, val, recipe=replace(t, epochs=1),
              seed=params.base.seed, device=device, cpu_bf16=params.runtime.cpu_bf16,
              eval_batch_size=EVAL_BATCH_SIZE)
    start = time.perf_counter()
    evaluate_rows(one.model, val.images, val.rows, val.labels, EVAL_BATCH_SIZE,
                  device, tta_flip=t.val_tta_flip)
    val_s = time.perf_counter() - start
    return max(one.seconds - val_s, 1e-3), val_s


def plan(args, epoch_s: float | None, val_s: float | None) -> list[tuple[str, int, dict]]:
    """(arm name, epochs, train keys it changes) for every arm, in order."""
    if args.epochs:
        sized = [(f"{e} ep", e) for e in args.epochs]
    else:
        sized = [(f"{b:g} min", epochs_for(b * 60, epoch_s, val_s)) for b in args.budgets]
    variants = [("finish", {})]
    if args.shrink_perturb:
        shrink, perturb = args.shrink_perturb
        variants.append((f"finish s&p {shrink:g}/{perturb:g}",
                         {"warm_shrink": shrink, "warm_perturb": perturb}))
    return [(f"{name} {size}", epochs, keys) for size, epochs in sized
            for name, keys in variants]


# --- the command ------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    start = ap.add_mutually_exclusive_group(required=True)
    start.add_argument("--repo", type=Path, help="a repository a sitting ran in")
    start.add_argument("--weights", type=Path, help="a checkpoint to start from")
    ap.add_argument("--from", dest="from_exp", default=None, metavar="EXPERIMENT",
                    help="with --repo: this background experiment instead of the last")
    ap.add_argument("--data", type=Path, default=REAL_DATA, help=f"default {REAL_DATA}")
    ap.add_argument("--recipe", default="finish", help="default: recipes/finish.yaml")
    ap.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS), metavar="MIN",
                    help="minutes of training per arm (default: 5 10 15 20)")
    ap.add_argument("--epochs", nargs="+", type=int, default=None,
                    help="epochs per arm instead of --budgets (nothing measured first)")
    ap.add_argument("--shrink-perturb", nargs=2, type=float, default=None,
                    metavar=("SHRINK", "PERTURB"), help="an extra arm per budget with these "
                    "train.warm_shrink and train.warm_perturb")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a train key (or runtime.KEY) for every arm; repeatable")
    ap.add_argument("--scratch-json", type=Path, default=None, metavar="FILE",
                    help="time_to_accuracy.py --json of the from-scratch run(s) to pair with")
    ap.add_argument("--max-train", type=int, default=None, help="subsample training (smoke)")
    ap.add_argument("--max-val", type=int, default=None, help="cap validation rows (smoke)")
    ap.add_argument("--image-size", type=int, default=None, help="default base.image_size")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--margin", type=float, default=1.0, metavar="POINTS")
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args(argv)
    if args.from_exp and not args.repo:
        ap.error("--from needs --repo")
    return args


def setting(item: str) -> tuple[str, str, object]:
    key, eq, value = item.partition("=")
    if not (key and eq):
        raise UserError(f"--set {item!r}: expected KEY=VALUE")
    return "all", key, yaml.safe_load(value)


def main(argv=None) -> int:
    args = parse_args(argv)
    reviewed, pool = args.data / "reviewed_labels.csv", args.data / "pool_labels.csv"
    for f in (reviewed, pool):
        if not f.is_file():
            raise UserError(f"{f} not found (the real data; set --data or CHIMUFFIN_REAL_DATA)")
    base = read_yaml_file(REPO / "params.yaml", "params file")
    base["prepare"].update({"data_dir": str(args.data), "val_fraction": 0.0})
    if args.image_size:
        base["base"]["image_size"] = args.image_size
    settings = [setting(s) for s in args.set]
    first = recipe_params(base, args.recipe, None, settings)
    classes = first.base.classes
    decisions, validation = split_pool(pool, reviewed, args.max_val, classes)
    weights, said = start_weights(args, [p for p, _ in label_rows(reviewed, classes)])
    print(f"start weights: {said}\ncpu: {cpu_summary()}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        df, images = prepare_protocol(args.data, classes, first.base.image_size,
                                      first.base.seed, decisions, validation,
                                      first.clean.dedupe, Path(work))
        timing = (None, None) if args.epochs else measure(first, df, images, weights)
        if timing[0] is not None:
            print(f"one epoch of {args.recipe}: {timing[0]:.1f} s training, "
                  f"{timing[1]:.1f} s validation", flush=True)
        results = []
        for name, epochs, keys in plan(args, *timing):
            params = recipe_params(base, args.recipe, epochs,
                                   settings + [("all", k, v) for k, v in keys.items()])
            results.append(train_recipe(name, params, df, images, args.max_train, None,
                                        start=lambda model, p: warm_start(weights, model, p)))
        digest = validation_digest(labeled(df, "val"))
    return report(args, results, digest)


def report(args, results: list[dict], digest: str) -> int:
    saved = read_saved_results(args.scratch_json, digest, results[0]["val_images"]) \
        if args.scratch_json else []
    rule = (args.margin / 100, args.alpha)
    everything = saved + results
    print()
    print(table(everything, *rule))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"finish_budget: error: {e}", file=sys.stderr)
        sys.exit(2)

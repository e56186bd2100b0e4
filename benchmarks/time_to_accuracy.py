"""Time to accuracy: train recipes one after the other on the real data; print a table.

Protocol: train on the 200 labeled seed images plus part of reviewed_labels.csv (as
`oracle` decisions, what a verified label would be), validate on the DISJOINT rest of
reviewed_labels.csv (listed as validation images, like data/labels/validation.csv, with
prepare.val_fraction 0 so validation = reviewed pool images only). Nothing called test is used.

The data goes through the prepare and clean code (scan, decode into the uint8 cache, split with
the validation list, apply the decisions, drop identical copies, keeping the validation copy);
only images the protocol uses are decoded. Each recipe (recipes/<name>.yaml or a yaml path,
merged onto its base by config.read_recipe) is validated strictly like params.yaml and trained
by engine.fit, on the cores runtime.available_cores() finds. Wall time counts training plus the
per-epoch validation.

    python benchmarks/time_to_accuracy.py                            # the reference recipe
    python benchmarks/time_to_accuracy.py --recipes reference round --budget-minutes 45
    python benchmarks/time_to_accuracy.py --recipes round --set round:epochs=80
    python benchmarks/time_to_accuracy.py --epochs 1 --max-train 64 --max-val 64   # smoke

--budget-minutes is a hard cap: a recipe stops after the epoch during which its budget ran out
(its schedule then did not finish: the table says so). Set a recipe's epochs to fit the budget.

With two or more recipes, a paired line per pair compares their final weights on the same
validation images (exact McNemar test): the images only one of them gets right, and the p-value;
then the promotion rule's test: the less accurate one is non-inferior to the other when the
one-sided upper confidence bound (level --alpha, default 0.05) of the accuracy difference, from
the same discordant images (Tango's score bound, report/metrics.py says why), is below --margin
(default 1 point). The last lines name the best run by final accuracy, the runs non-inferior to
it, and the cheapest of those by wall time (with its image-steps, which compare across machines;
wall times compare only when one quiet machine ran every run: each run records its cpu).
`--paired-with FILE` adds the results of an earlier run (its --json) to the table and the pairs,
marked "(saved)"; it must come from the same --protocol and data (checked: the validation
images' digest, and their number). `--recipes` may then be empty: compare saved runs only.

    python benchmarks/time_to_accuracy.py --protocol pool --recipes reference \
        --budget-minutes 45 --paired-with pool-candidate.json --json reference.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from chimuffin import runtime
from chimuffin.config import EVAL_BATCH_SIZE, parse_params, read_recipe, read_yaml_file
from chimuffin.data.prepare import decode_and_split
from chimuffin.data.scan import scan_dataset
from chimuffin.data.views import labeled, rows_and_labels
from chimuffin.errors import UserError
from chimuffin.infer.batches import predict
from chimuffin.labels.rows import (
    Decision,
    apply_decisions,
    dedupe_identical,
    read_path_labels,
)
from chimuffin.model import build_model
from chimuffin.report.metrics import wilson_interval
from chimuffin.train.engine import LabeledSet, fit, with_min_steps

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.stats import (  # noqa: E402
    cpu_summary,
    mcnemar_exact,
    paired_difference_upper_bound,
)

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("CHIMUFFIN_REAL_DATA",
                                REPO.parent / "shared" / "data" / "chihuahua-muffin"))


# --- the protocol's data ----------------------------------------------------------------------

def label_rows(path: Path, classes: list[str]) -> list[tuple[str, str]]:
    """(path, label) rows of a path,label file (reviewed_labels.csv, pool_labels.csv), sorted."""
    return sorted(read_path_labels(path, classes).items())


def split_reviewed(reviewed: Path, n_train: int, max_val: int | None, seed: int,
                   classes: list[str]) -> tuple[list[Decision], dict[str, str]]:
    """Seeded shuffle of reviewed_labels.csv: the first n_train rows become oracle decisions
    (training), the rest (at most max_val) the validation list. Disjoint by construction."""
    rows = label_rows(reviewed, classes)
    if n_train >= len(rows):
        raise UserError(f"--train-reviewed {n_train} leaves no validation rows "
                        f"({reviewed} has {len(rows)})")
    order = np.random.default_rng(seed).permutation(len(rows))
    train = [rows[i] for i in order[:n_train]]
    val = [rows[i] for i in order[n_train:]][:max_val]
    decisions = [Decision(p, lbl, "oracle", "reviewed_labels.csv") for p, lbl in sorted(train)]
    return decisions, dict(sorted(val))


def split_pool(pool_labels: Path, reviewed: Path, max_val: int | None, classes: list[str]
               ) -> tuple[list[Decision], dict[str, str]]:
    """The labeled-pool protocol: every pool_labels.csv row NOT in reviewed_labels.csv becomes an
    oracle decision (training); the reviewed rows (at most max_val, in path order) validate."""
    reviewed_rows = label_rows(reviewed, classes)
    held_out = {p for p, _ in reviewed_rows}  # never trained, even the rows --max-val leaves out
    val = dict(reviewed_rows[:max_val])
    train = [(p, lbl) for p, lbl in label_rows(pool_labels, classes) if p not in held_out]
    decisions = [Decision(p, lbl, "oracle", "pool_labels.csv") for p, lbl in train]
    return decisions, val


def prepare_protocol(root: Path, classes: list[str], size: int, seed: int,
                     decisions: list[Decision], validation: dict[str, str], dedupe: bool,
                     workdir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The prepare + clean stages' code restricted to the images the protocol uses (seeds,
    oracle rows, validation rows): manifest after decisions, and the uint8 cache."""
    wanted = {d.path for d in decisions} | set(validation)
    candidates, _ = scan_dataset(root, classes)
    use = [c for c in candidates if c.split == "train" and
           (c.folder_label in classes or c.path in wanted)]
    cache_path = workdir / "images.npy"
    df, bad, _ = decode_and_split(root, use, [], classes, size, 0.0, seed, validation,
                                  "reviewed_labels.csv (validation)", cache_path)
    if bad:
        raise UserError(f"{len(bad)} protocol images could not be decoded, e.g. {bad[0]}")
    df = apply_decisions(df, decisions, name="reviewed_labels.csv (oracle decisions)")
    if dedupe:
        df, _, _ = dedupe_identical(df)
    return df, np.load(cache_path, mmap_mode="r")


# --- recipes ----------------------------------------------------------------------------------

def recipe_path(name: str) -> Path:
    return Path(name) if name.endswith((".yaml", ".yml")) else REPO / "recipes" / f"{name}.yaml"


def recipe_label(name: str) -> str:
    """The table's name for a recipe: a yaml path shows as its file name without .yaml."""
    return recipe_path(name).stem


def parse_override(item: str, recipes: list[str]) -> tuple[str, str, object]:
    """'RECIPE:KEY=VALUE' -> (recipe or 'all', dotted key, YAML-parsed value); KEY is a train
    key, or runtime.KEY for where the recipe runs."""
    who, _, assignment = item.partition(":")
    key, eq, value = assignment.partition("=")
    if not (key and eq) or who not in (*recipes, "all"):
        raise UserError(f"--set {item!r}: expected RECIPE:KEY=VALUE with RECIPE one of "
                        f"{', '.join(recipes)} or all")
    return who, key, yaml.safe_load(value)


def recipe_params(base: dict, name: str, epochs: int | None,
                  overrides: list[tuple[str, str, object]]):
    """params.yaml with the recipe's train group (plus --epochs/--set), validated strictly."""
    raw = copy.deepcopy(base)
    raw["train"] = read_recipe(recipe_path(name))
    if epochs:
        raw["train"]["epochs"] = epochs
    for who, key, value in overrides:
        if who in (name, "all"):
            *parents, leaf = key.split(".")
            node = raw if parents[:1] == ["runtime"] else raw["train"]
            for k in parents:
                node = node.setdefault(k, {})
            node[leaf] = value
    return parse_params(raw)


# --- one run ----------------------------------------------------------------------------------

class BudgetSpent(Exception):
    """Raised after the epoch during which a recipe's --budget-minutes ran out: it stops fit."""


def train_recipe(name: str, params, df, images, max_train: int | None, budget_s: float | None,
                 start=None):
    """`start(model, params)`, when given, sets the weights training starts from (e.g. a
    warm start: benchmarks/finish_budget.py); else a fresh seeded initialisation."""
    t, classes, seed = params.train, params.base.classes, params.base.seed
    train_rows, train_y = rows_and_labels(labeled(df, "train"), classes)
    val_rows, val_y = rows_and_labels(labeled(df, "val"), classes)
    if max_train and max_train < len(train_rows):
        keep = np.sort(np.random.default_rng(seed).permutation(len(train_rows))[:max_train])
        train_rows, train_y = train_rows[keep], train_y[keep]
    t = with_min_steps(t, len(train_rows))  # as the train stage does: epochs grown to min_steps
    runtime.setup(seed, params.runtime.threads)
    device = runtime.pick_device(params.runtime.device)
    model = build_model(len(classes), t.head, t.dropout)
    if start is not None:
        start(model, params)
    start, history, best = time.perf_counter(), [], []

    def on_epoch(r, is_best):
        history.append(r)
        if is_best:
            best[:] = [r]
        print(f"  {name} epoch {r.epoch}/{t.epochs}: {r.image_size}px lr {r.lr:.2e} "
              f"loss {r.train.loss:.3f} val acc {r.val_acc:.4f} ({r.seconds:.0f}s)"
              f"{' *' if is_best else ''}", flush=True)
        if budget_s is not None and time.perf_counter() - start >= budget_s:
            raise BudgetSpent

    with contextlib.suppress(BudgetSpent):
        fit(model, LabeledSet(images, train_rows, train_y), LabeledSet(images, val_rows, val_y),
            recipe=t, seed=seed, device=device, cpu_bf16=params.runtime.cpu_bf16,
            eval_batch_size=EVAL_BATCH_SIZE, on_epoch=on_epoch)
    wall = time.perf_counter() - start
    last, n = history[-1], len(val_rows)
    # stopped before the first validated epoch: the last epoch is the only candidate
    best = best[0] if best else last
    # per-image correctness of the final weights, for the paired test (outside the wall time)
    def final_correct(tta_flip: bool) -> np.ndarray:
        logits, _ = predict(last.model, images, val_rows, EVAL_BATCH_SIZE, device,
                            tta_flip=tta_flip)
        return logits.argmax(1) == val_y

    correct = final_correct(t.val_tta_flip)
    # the same weights scored with flip TTA too: evaluate.tta_flip's effect at no training cost
    flipped = None if t.val_tta_flip else final_correct(True).astype(int).tolist()
    return {"recipe": name, "validation_digest": validation_digest(labeled(df, "val")),
            "epochs": last.epoch, "planned_epochs": t.epochs,
            "wall_s": wall, "train_images": int(len(train_rows)), "val_images": int(n),
            "val_tta_flip": t.val_tta_flip, "device": str(device),
            "final_acc": float(correct.mean()), "final_k": int(correct.sum()),
            "image_steps": int(sum(r.train.images for r in history)),
            "best_epoch": best.epoch, "best_acc": best.val_acc,
            "cpu": cpu_summary(), "final_correct": correct.astype(int).tolist(),
            "flip_correct": flipped}


def with_flip_rows(results: list[dict]) -> list[dict]:
    """Each run scored without flip TTA, followed by a row for its same final weights scored
    with it ("NAME +flip": same training, same wall time; evaluation is outside the wall time
    for both). Saved runs from before this was recorded have no such row."""
    out = []
    for r in results:
        out.append(r)
        if r.get("flip_correct") is not None:
            k = int(sum(r["flip_correct"]))
            out.append({**r, "recipe": f"{r['recipe']} +flip", "val_tta_flip": True,
                        "final_correct": r["flip_correct"], "final_k": k,
                        "final_acc": k / len(r["flip_correct"]), "flip_correct": None})
    return out


def validation_digest(val: pd.DataFrame) -> str:
    """Which validation images, in which order: earlier results pair only with the same ones."""
    return hashlib.sha256("\n".join(val["path"].astype(str)).encode()).hexdigest()[:16]


def read_saved_results(path: Path, digest: str | None, n_val: int | None) -> list[dict]:
    """An earlier run's --json, checked against this run's validation images where known."""
    if not path.is_file():
        raise UserError(f"--paired-with {path}: file not found")
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"--paired-with {path}: not JSON ({e})") from None
    needed = {"recipe", "epochs", "planned_epochs", "wall_s", "image_steps", "train_images",
              "val_images", "final_acc", "final_k", "val_tta_flip", "best_acc", "best_epoch",
              "final_correct"}
    if not isinstance(saved, list) or not all(isinstance(r, dict) for r in saved):
        raise UserError(f"--paired-with {path}: not a time_to_accuracy --json result list")
    for r in saved:
        if missing := sorted(needed - set(r)):
            raise UserError(f"--paired-with {path}: recipe {r.get('recipe')} lacks "
                            f"{', '.join(missing)} (not a time_to_accuracy --json result)")
        if digest and r.get("validation_digest", digest) != digest:
            raise UserError(f"--paired-with {path}: recipe {r.get('recipe')} was validated on "
                            "other images (another --protocol or data)")
        if n_val is not None and len(r["final_correct"]) != n_val:
            raise UserError(f"--paired-with {path}: recipe {r.get('recipe')} has "
                            f"{len(r['final_correct'])} validation results, this run {n_val}")
        r["recipe"] = f"{r['recipe']} (saved)"
    return saved


def table(results: list[dict], margin: float = 0.01, alpha: float = 0.05) -> str:
    lines = [f"{'recipe':<16} {'epochs':>8} {'wall':>9} {'image-steps':>11} {'train':>6} "
             f"{'val':>5}  "
             f"{'final val acc [95% CI]':<26} {'best-epoch val acc':<19}"]
    for r in results:
        epochs = f"{r['epochs']}" + ("" if r["epochs"] == r["planned_epochs"]
                                     else f"/{r['planned_epochs']}")
        lo, hi = wilson_interval(r["final_k"], r["val_images"])
        tta = " tta" if r["val_tta_flip"] else ""
        lines.append(f"{r['recipe']:<16} {epochs:>8} {r['wall_s'] / 60:8.1f}m "
                     f"{r['image_steps']:>11,} {r['train_images']:>6} {r['val_images']:>5}  "
                     f"{r['final_acc']:.4f} [{lo:.4f}, {hi:.4f}]{tta:<5} "
                     f"{r['best_acc']:.4f} (ep {r['best_epoch']})")
    lines.append("final = the last epoch's (EMA) weights, the honest number; best-epoch = chosen "
                 "on this same validation set (optimistic; among validated epochs). tta = "
                 "flip-averaged predictions. image-steps = training images seen, all epochs.")
    lines += paired_lines(results, margin, alpha)
    if len(results) > 1:
        wrong = ~np.array([r["final_correct"] for r in results], bool)
        lines.append(f"wrong for every recipe (final weights): {int(wrong.all(0).sum())} of "
                     f"{wrong.shape[1]} validation images")
        lines += rule_lines(results, margin, alpha)
    return "\n".join(lines)


def paired_lines(results: list[dict], margin: float = 0.01, alpha: float = 0.05) -> list[str]:
    """Per pair of recipes: the images only one gets right (final weights) with the exact
    McNemar p, then whether the less accurate one is non-inferior to the other."""
    lines = []
    for i, a in enumerate(results):
        for b in results[i + 1:]:
            only_a, only_b, p = mcnemar_exact(np.array(a["final_correct"], bool),
                                              np.array(b["final_correct"], bool))
            lines.append(f"paired, final weights: {a['recipe']} alone right on {only_a}, "
                         f"{b['recipe']} alone right on {only_b}; exact McNemar p = {p:.3g}")
            better, worse = (a, b) if a["final_k"] >= b["final_k"] else (b, a)
            lines.append("  " + non_inferiority_line(better, worse, margin, alpha))
    return lines


def non_inferior(better: dict, worse: dict, margin: float, alpha: float) -> tuple[bool, float]:
    """(worse is non-inferior to better, the upper bound of acc_better - acc_worse): paired on
    the same images, one-sided at level alpha (Tango's score bound, report.metrics)."""
    only_better, only_worse, _ = mcnemar_exact(np.array(better["final_correct"], bool),
                                               np.array(worse["final_correct"], bool))
    upper = paired_difference_upper_bound(only_better, only_worse,
                                          len(better["final_correct"]), alpha)
    return upper < margin, upper


def non_inferiority_line(better: dict, worse: dict, margin: float, alpha: float) -> str:
    ok, upper = non_inferior(better, worse, margin, alpha)
    return (f"non-inferiority: {better['recipe']} - {worse['recipe']} is at most "
            f"{100 * upper:+.2f} points (one-sided {100 * (1 - alpha):g}% bound, Tango score); "
            f"{worse['recipe']} is {'' if ok else 'NOT '}non-inferior at a "
            f"{100 * margin:g}-point margin")


def cheapest_not_worse(results: list[dict], margin: float, alpha: float
                       ) -> tuple[dict, list[dict], dict]:
    """The promotion rule: (the best run by final accuracy, the runs non-inferior to it, best
    included, cheapest first, and the cheapest of them: the default's candidate)."""
    best = max(results, key=lambda r: (r["final_k"], -r["wall_s"]))
    kept = [r for r in results if r is best or non_inferior(best, r, margin, alpha)[0]]
    kept.sort(key=lambda r: r["wall_s"])
    return best, kept, kept[0]


def rule_lines(results: list[dict], margin: float, alpha: float) -> list[str]:
    """What the promotion rule says about these runs; the wall times compare only when one quiet
    machine ran them all, so the CPU each run recorded is shown."""
    best, kept, cheapest = cheapest_not_worse(results, margin, alpha)

    def cost(r):
        return (f"{r['recipe']} ({r['final_acc']:.4f}, {r['wall_s'] / 60:.1f} min, "
                f"{r['image_steps']:,} image-steps)")

    cpus = {r.get("cpu", "not recorded") for r in results}
    return [f"promotion rule (cheapest run not measurably worse than the best: paired, "
            f"one-sided {100 * (1 - alpha):g}%, margin {100 * margin:g} point):",
            f"  best measured: {cost(best)}",
            f"  non-inferior to it, cheapest first: {'; '.join(cost(r) for r in kept)}",
            f"  cheapest not measurably worse: {cheapest['recipe']}",
            "  wall times compare only when one quiet machine ran every run; cpu: "
            + "; ".join(sorted(cpus))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", nargs="*", default=["reference"],
                    help="recipe names (recipes/NAME.yaml) or yaml paths, run in this order "
                         "(none: only compare --paired-with files)")
    ap.add_argument("--data", type=Path, default=REAL_DATA, help=f"default {REAL_DATA}")
    ap.add_argument("--protocol", choices=["reviewed", "pool"],
                    default="reviewed",
                    help="reviewed: seeds + --train-reviewed reviewed rows train, the other "
                         "reviewed rows validate; pool: seeds + every pool_labels.csv row outside "
                         "reviewed_labels.csv train, the 1,000 reviewed rows validate")
    ap.add_argument("--train-reviewed", type=int, default=500,
                    help="reviewed_labels.csv rows added to training (default 500; the rest "
                         "validate)")
    ap.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help="per-recipe wall-clock cap (stops after the epoch that crosses it)")
    ap.add_argument("--set", action="append", default=[], metavar="RECIPE:KEY=VALUE",
                    help="override a train key of one recipe (or all:KEY=VALUE), e.g. "
                         "round:augment.resize=144; repeatable")
    ap.add_argument("--max-train", type=int, default=None, help="subsample training (smoke)")
    ap.add_argument("--max-val", type=int, default=None, help="cap validation rows (smoke)")
    ap.add_argument("--image-size", type=int, default=None, help="default base.image_size")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch dir (default: temp)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--paired-with", type=Path, action="append", default=[], metavar="FILE",
                    help="an earlier run's --json (same --protocol and data): its results join "
                         "the table and the paired tests; repeatable")
    ap.add_argument("--margin", type=float, default=1.0, metavar="POINTS",
                    help="non-inferiority margin in accuracy points (default 1)")
    ap.add_argument("--alpha", type=float, default=0.05,
                    help="one-sided level of the non-inferiority bound (default 0.05)")
    args = ap.parse_args(argv)
    if not 0 < args.margin < 100 or not 0 < args.alpha < 0.5:
        raise UserError(f"--margin {args.margin} must be between 0 and 100 points and "
                        f"--alpha {args.alpha} between 0 and 0.5")
    rule = (args.margin / 100, args.alpha)
    if not args.recipes:
        return compare_saved(args.paired_with, *rule)
    reviewed = args.data / "reviewed_labels.csv"
    if not reviewed.is_file():
        raise UserError(f"{reviewed} not found (the real data; set --data or "
                        "CHIMUFFIN_REAL_DATA)")

    base = read_yaml_file(REPO / "params.yaml", "params file")
    base["prepare"].update({"data_dir": str(args.data), "val_fraction": 0.0})
    if args.image_size:
        base["base"]["image_size"] = args.image_size
    overrides = [parse_override(item, args.recipes) for item in args.set]
    params = {name: recipe_params(base, name, args.epochs, overrides) for name in args.recipes}
    first = next(iter(params.values()))
    pool_labels = args.data / "pool_labels.csv"
    if args.protocol.startswith("pool") and not pool_labels.is_file():
        raise UserError(f"{pool_labels} not found (needed by --protocol {args.protocol})")
    if args.protocol == "pool":
        decisions, validation = split_pool(pool_labels, reviewed, args.max_val,
                                           first.base.classes)
    else:
        decisions, validation = split_reviewed(reviewed, args.train_reviewed, args.max_val,
                                               first.base.seed, first.base.classes)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        df, images = prepare_protocol(args.data, first.base.classes, first.base.image_size,
                                      first.base.seed, decisions, validation,
                                      first.clean.dedupe, work)
        sources = labeled(df, "train")["label_source"].value_counts().to_dict()
        print(f"data: {len(labeled(df, 'train'))} training images ({sources}"
              f"{f'; --max-train {args.max_train}' if args.max_train else ''}), "
              f"{len(labeled(df, 'val'))} validation (reviewed, disjoint); "
              f"{first.base.image_size}px; prepared in {time.perf_counter() - t0:.0f}s; "
              f"cpu: {cpu_summary()}", flush=True)
        budget = args.budget_minutes * 60 if args.budget_minutes else None
        results = [train_recipe(recipe_label(n), p, df, images, args.max_train, budget)
                   for n, p in params.items()]
        del images
    first_result = results[0]
    saved = [r for path in args.paired_with for r in read_saved_results(
        path, first_result["validation_digest"], first_result["val_images"])]
    print()
    print(table(with_flip_rows(results + saved), *rule))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def compare_saved(paths: list[Path], margin: float = 0.01, alpha: float = 0.05) -> int:
    """No recipe to train: the table and paired tests of earlier runs, checked alike."""
    if not paths:
        raise UserError("--recipes is empty: name recipes to train, or --paired-with files to "
                        "compare")
    first = read_saved_results(paths[0], None, None)
    digest, n_val = first[0].get("validation_digest"), len(first[0]["final_correct"])
    saved = first + [r for path in paths[1:] for r in read_saved_results(path, digest, n_val)]
    print(table(with_flip_rows(saved), margin, alpha))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:  # bad options, or a recipe / --set value params.yaml would refuse
        print(f"time_to_accuracy: error: {e}", file=sys.stderr)
        sys.exit(2)

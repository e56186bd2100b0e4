"""How good are the suggest stage's auto-labels and label-issue scores on the real data?

Runs the real pipeline (`dvc repro`) in a temporary git + DVC repo holding this checkout's
pipeline files and code (tests/helpers/repo.py make_repo) that reads the real dataset (never
copied), with an affordable training recipe, and measures against reviewed_labels.csv (1,000
pool images a careful person labeled). Those images are NEVER trained on here: they are never
accepted, flipped or used as validation.

1. Label-issue detection: flip --flips labeled seed images on purpose (a `rule` decision),
   reproduce, and count how many flipped images rank in the top of the label-issue ranking
   (against what a random ranking would give).
2. The loop: --rounds rounds of reproduce -> measure -> accept (--min-score, --per-class-cap)
   -> commit. Per round: precision and coverage of the suggestions on the reviewed images at
   several score thresholds, and the model's own accuracy on them.

    python benchmarks/label_quality.py [--data DIR] [--rounds 2] [--epochs 15] ...

Prints wall times; a round costs minutes on 2 CPU cores (training dominates).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from chimuffin import paths
from chimuffin.curate.accept import accept
from chimuffin.curate.scoring import read_label_issues, read_suggestions
from chimuffin.data.manifest import read_manifest
from chimuffin.infer.prediction_table import read_predictions
from chimuffin.labels import locked
from chimuffin.labels.rows import Decision, read_path_labels
from chimuffin.simulate.rounds import commit_round

if __package__ in (None, ""):  # run as a script: the repository root holds the shared harness
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers.repo import default_params_dict, make_repo, run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["chihuahua", "muffin"]
THRESHOLDS = (0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def sh(cmd: list[str], cwd: Path) -> float:
    """Run a command; return its wall time. Fails loudly with its output."""
    t = time.perf_counter()
    p = run(cmd, cwd, check=False, timeout=None)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return time.perf_counter() - t


def bench_repo(dest: Path, data: Path, args) -> Path:
    """The shared harness's temporary repo (this checkout's pipeline files and code), with this
    benchmark's params committed."""
    params = default_params_dict()
    params["prepare"]["data_dir"] = str(data)
    params["base"]["image_size"] = args.image_size
    params["train"].update(epochs=args.epochs, batch_size=args.batch_size)
    params["runtime"]["threads"] = args.threads
    params["tlc"]["enabled"] = False  # measured here: labels, not the 3LC bookkeeping
    return make_repo(dest, params, user="label_quality", email="bench@example.com",
                     message="label_quality params")


def repro(repo: Path) -> float:
    t = sh(["dvc", "repro"], repo)
    print(f"  dvc repro: {t:.0f} s", flush=True)
    return t


def flip_experiment(repo: Path, n_flips: int, seed: int) -> dict:
    sh(["dvc", "repro", "prepare"], repo)
    manifest = read_manifest(repo / paths.PREPARED / paths.MANIFEST_FILE)
    seeds = manifest[manifest["label"].isin(CLASSES) & manifest["split"].isin(["train", "val"])]
    rng = np.random.default_rng(seed)
    chosen = seeds.iloc[np.sort(rng.choice(len(seeds), n_flips, replace=False))]
    flips = [Decision(r.path, CLASSES[1 - CLASSES.index(r.label)], "rule",
                      "flipped on purpose by benchmarks/label_quality.py")
             for r in chosen.itertuples()]
    locked.update(repo / "data/labels/decisions.csv", CLASSES, lambda _: flips)
    t = repro(repo)
    issues = read_label_issues(repo / paths.SUGGEST / paths.LABEL_ISSUES_FILE)  # worst first
    flipped = set(chosen["path"])
    hit = issues["path"].isin(flipped).to_numpy()
    n = len(issues)
    out = {"labeled": n, "flipped": n_flips, "repro_s": round(t),
           "flipped_in_train": int((chosen["split"] == "train").sum()),
           "flipped_in_val": int((chosen["split"] == "val").sum())}
    for k in sorted({n_flips, 2 * n_flips, 50}):
        out[f"top{k}"] = {"found": int(hit[:k].sum()), "random_expected":
                          round(n_flips * min(k, n) / n, 1)}
    # average precision of the ranking for the flipped images
    ranks = np.nonzero(hit)[0] + 1
    out["average_precision"] = round(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)), 3)
    by_split = issues.assign(hit=hit).head(n_flips).groupby("split")["hit"].sum()
    out["top_flips_found_by_split"] = {k: int(v) for k, v in by_split.items()}
    over = issues["issue_score"] >= 0.6
    out["flagged_at_0.6"] = {"flagged": int(over.sum()), "of_them_flipped": int(hit[over].sum())}
    locked.update(repo / "data/labels/decisions.csv", CLASSES, lambda _: [])
    return out


def measure(repo: Path, truth: dict[str, str]) -> dict:
    s = read_suggestions(repo / paths.SUGGEST / paths.SUGGESTIONS_FILE)
    pred = read_predictions(repo / paths.PREDICTIONS).set_index("path")
    metrics = json.loads((repo / "metrics/eval/metrics.json").read_text())
    t = s[s["path"].isin(truth)].copy()
    t["truth"] = t["path"].map(truth)
    out = {"reviewed_in_pool": len(t), "val_accuracy": metrics.get("val", {}).get("accuracy"),
           "model_accuracy_on_reviewed": round(float(
               (pred.loc[t["path"], "prediction"].to_numpy() == t["truth"].to_numpy()).mean()),
               4),
           "suggestion_accuracy_on_reviewed": round(float((t["label"] == t["truth"]).mean()), 4),
           "thresholds": {}}
    for thr in THRESHOLDS:
        for agree in (False, True):
            sel = t[(t["score"] >= thr) & (t["agree"] | (not agree))]
            key = f">={thr}" + (" +agree" if agree else "")
            out["thresholds"][key] = {
                "precision": round(float((sel["label"] == sel["truth"]).mean()), 4)
                if len(sel) else None,
                "coverage": round(len(sel) / max(len(t), 1), 4),
                "pool_accepted": int(((s["score"] >= thr) & (s["agree"] | (not agree))).sum())}
    return out


def print_round(r: int, m: dict) -> None:
    print(f"round {r}: val acc {m['val_accuracy']}, model acc on {m['reviewed_in_pool']} "
          f"reviewed pool images {m['model_accuracy_on_reviewed']}, suggestion acc "
          f"{m['suggestion_accuracy_on_reviewed']}")
    print(f"  {'min score':<16}{'precision':>10}{'coverage':>10}{'pool n':>8}")
    for key, v in m["thresholds"].items():
        prec = "-" if v["precision"] is None else f"{v['precision']:.4f}"
        print(f"  {key:<16}{prec:>10}{v['coverage']:>10.4f}{v['pool_accepted']:>8}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = os.environ.get("CHIMUFFIN_REAL_DATA", REPO.parent / "shared/data/chihuahua-muffin")
    ap.add_argument("--data", type=Path, default=Path(default))
    ap.add_argument("--truth", type=Path, default=None,
                    help="relative_path,label CSV (default: DATA/reviewed_labels.csv)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: all cores; 1 is far faster on a busy machine)")
    ap.add_argument("--min-score", type=float, default=0.9)
    ap.add_argument("--per-class-cap", type=int, default=200)
    ap.add_argument("--flips", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="kept when given")
    args = ap.parse_args()
    data = args.data.resolve()
    truth_csv = args.truth or data / "reviewed_labels.csv"
    if not (data / "train128").is_dir() or not truth_csv.is_file():
        sys.exit(f"{data}: real data not found (train128/ and {truth_csv.name})")
    truth = read_path_labels(truth_csv, CLASSES, "truth file")
    start = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="chimuffin-label-quality-"))
    repo = work / "repo"
    bench_repo(repo, data, args)
    print(f"label_quality: {data}, repo {repo}; recipe: {args.epochs} epochs, batch "
          f"{args.batch_size}, {args.image_size}px, {args.threads} thread(s); {len(truth)} "
          "reviewed pool images held out",
          flush=True)

    print(f"label-issue detection: {args.flips} flipped seed labels", flush=True)
    flips = flip_experiment(repo, args.flips, args.seed)
    print(json.dumps(flips, indent=1))

    rounds = []
    for r in range(1, args.rounds + 1):
        print(f"round {r}/{args.rounds}", flush=True)
        t = repro(repo)
        m = measure(repo, truth)
        m["repro_s"] = round(t)
        print_round(r, m)
        s = read_suggestions(repo / paths.SUGGEST / paths.SUGGESTIONS_FILE)
        s = s[~s["path"].isin(truth)]  # the reviewed images stay out of training
        found = {}

        def change(decisions, s=s, found=found):
            decisions, found["accepted"] = accept(decisions, s, args.min_score, False,
                                                  args.per_class_cap)
            return decisions

        commit_round(repo, repo / "data/labels/decisions.csv", change, CLASSES,
                     f"benchmark round {r}", lambda _: None)
        accepted = found["accepted"]
        m["accepted"] = accepted["label"].value_counts().to_dict()
        print(f"  accepted {len(accepted)} auto labels {m['accepted']} (score >= "
              f"{args.min_score}, cap {args.per_class_cap}/class, reviewed images excluded)",
              flush=True)
        rounds.append(m)
    wall = time.perf_counter() - start
    print(f"label_quality: total wall time {wall / 60:.1f} min on {os.cpu_count()} CPUs")
    print(json.dumps({"flips": flips, "rounds": rounds, "wall_s": round(wall)}, indent=None))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""`chimuffin loop --rounds R`: rounds of `dvc repro`, oracle answers, accepted suggestions and
one git commit each (see chimuffin.loop for what an interruption leaves behind)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from chimuffin.commands.labels import add_accept_options, check_accept_options, per_class
from chimuffin.config import load_params
from chimuffin.errors import UserError
from chimuffin.labels import merge_decisions, read_decisions
from chimuffin.loop import (
    check_clean,
    commit_round,
    oracle_answers,
    read_json,
    read_oracle,
    repo_root,
    round_message,
    run_child,
    sigterm_as_interrupt,
)
from chimuffin.suggest import accept, read_suggestions


def register(sub) -> None:
    p = sub.add_parser("loop", help="rounds of: dvc repro, accept suggestions, ask the oracle, "
                       "commit the label file")
    p.add_argument("--rounds", type=int, required=True)
    add_accept_options(p)
    p.add_argument("--oracle", help="relative_path,label CSV that answers review requests "
                   "(simulates a person)")
    p.add_argument("--budget", type=int, default=0, metavar="K",
                   help="review requests the oracle answers per round")
    p.add_argument("--decisions", default="data/labels/decisions.csv")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--suggest-dir", default="data/suggest")
    p.add_argument("--eval-dir", default="metrics/eval")
    p.add_argument("--clean-dir", default="data/clean")
    p.set_defaults(func=run)


def check_args(args) -> None:
    check_accept_options(args)
    if args.rounds < 1:
        raise UserError(f"--rounds must be >= 1, got {args.rounds}")
    if args.budget < 0:
        raise UserError(f"--budget must be >= 0, got {args.budget}")
    if args.budget and not args.oracle:
        raise UserError("--budget needs --oracle (the file that answers review requests)")


def one_round(r: int, args, root: Path, classes: list[str], progress: dict) -> int:
    """Returns the number of decisions added; progress["committed"] = r once committed."""
    print(f"loop: round {r}/{args.rounds}: dvc repro", flush=True)
    rc = run_child(["dvc", "repro"], root)
    if rc != 0:
        raise UserError(f"round {r}: `dvc repro` failed (exit {rc}); the label file is "
                        "unchanged since the last round's commit")
    decisions_path = Path(args.decisions)
    decisions = read_decisions(decisions_path, classes)
    answers: list = []
    if args.oracle and args.budget:
        queue = pd.read_parquet(Path(args.suggest_dir) / "review_queue.parquet")
        answers, passed = oracle_answers(queue, read_oracle(args.oracle, classes), decisions,
                                         args.budget)
        decisions, _ = merge_decisions(decisions, answers)
        print(f"loop: oracle answered {len(answers)} review requests "
              f"({per_class([a.label for a in answers], classes)}); passed over {passed} it "
              "cannot answer")
    suggestions = read_suggestions(Path(args.suggest_dir) / "suggestions.parquet")
    decisions, accepted = accept(decisions, suggestions, args.min_score,
                                 args.require_agreement, args.per_class_cap)
    print(f"loop: accepted {len(accepted)} suggestions "
          f"({per_class(accepted['label'], classes)})")
    metrics = read_json(Path(args.eval_dir) / "metrics.json", "evaluation metrics")
    summary = read_json(Path(args.clean_dir) / "summary.json", "clean summary")
    message = round_message(r, args.rounds, metrics, summary, accepted, answers, classes)

    def on_commit(commit: str) -> None:
        progress["committed"] = r
        print(f"loop: committed {commit[:10]}: {message.splitlines()[0]}", flush=True)

    commit_round(root, decisions_path.resolve(), decisions, message, on_commit)
    return len(accepted) + len(answers)


def run(args) -> int:
    check_args(args)
    classes = load_params(args.params).base.classes
    root = repo_root(Path.cwd())
    check_clean(root, Path(args.decisions).resolve())
    progress = {"committed": 0}
    with sigterm_as_interrupt():
        try:
            for r in range(1, args.rounds + 1):
                if one_round(r, args, root, classes, progress) == 0:
                    print(f"loop: round {r} added no labels; stopping (the next round would "
                          "train on the same data)")
                    break
        except KeyboardInterrupt:
            print(f"loop: interrupted; {progress['committed']} complete round(s) committed; "
                  "the label file is as of the last commit", file=sys.stderr)
            raise
    print(f"loop: {progress['committed']} round(s) committed")
    return 0

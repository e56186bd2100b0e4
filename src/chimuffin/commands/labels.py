"""`chimuffin labels ...`: tools that write the git-tracked label file (data/labels/decisions.csv).

`labels accept` merges the suggest stage's proposals with source `auto`. Other label tools (e.g.
pulling edits from 3LC) register their own `labels` subcommand in SUBCOMMANDS below.
"""

from __future__ import annotations

from collections import Counter

from chimuffin.config import load_params
from chimuffin.errors import UserError
from chimuffin.labels import read_decisions, write_decisions
from chimuffin.suggest import accept, read_suggestions


def register(sub) -> None:
    p = sub.add_parser("labels", help="edit data/labels/decisions.csv (accept suggestions, ...)")
    lsub = p.add_subparsers(dest="labels_command", required=True)
    for add in SUBCOMMANDS:
        add(lsub)


def add_accept_options(p) -> None:
    """Options shared by `labels accept` and `loop`."""
    p.add_argument("--min-score", type=float, required=True,
                   help="accept suggestions scoring at least this (0-1)")
    p.add_argument("--require-agreement", action="store_true",
                   help="only where the model and the labeled neighbours agree")
    p.add_argument("--per-class-cap", type=int, default=None, metavar="N",
                   help="accept at most N new labels per class (highest scores first)")


def check_accept_options(args) -> None:
    if not 0.0 <= args.min_score <= 1.0:
        raise UserError(f"--min-score must be between 0 and 1, got {args.min_score}")
    if args.per_class_cap is not None and args.per_class_cap < 0:
        raise UserError(f"--per-class-cap must be >= 0, got {args.per_class_cap}")


def add_accept(lsub) -> None:
    p = lsub.add_parser("accept", help="merge label suggestions (source auto); never overrides "
                        "an existing decision")
    add_accept_options(p)
    p.add_argument("--suggestions", default="data/suggest/suggestions.parquet")
    p.add_argument("--decisions", default="data/labels/decisions.csv")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--dry-run", action="store_true", help="print what would be added, write "
                   "nothing")
    p.set_defaults(func=run_accept)


def per_class(labels, classes: list[str]) -> str:
    counts = Counter(labels)
    return ", ".join(f"{c} {counts.get(c, 0)}" for c in classes)


def run_accept(args) -> int:
    check_accept_options(args)
    classes = load_params(args.params).base.classes
    decisions = read_decisions(args.decisions, classes)
    suggestions = read_suggestions(args.suggestions)
    merged, rows = accept(decisions, suggestions, args.min_score, args.require_agreement,
                          args.per_class_cap)
    above = int((suggestions["score"] >= args.min_score).sum())
    if not args.dry_run and len(rows):
        write_decisions(args.decisions, merged)
    verb = "would add" if args.dry_run else "added"
    print(f"labels accept: {verb} {len(rows)} auto labels ({per_class(rows['label'], classes)}) "
          f"of {above} suggestions with score >= {args.min_score}; {args.decisions} "
          f"{'would have' if args.dry_run else 'now has'} {len(merged)} decisions")
    return 0


SUBCOMMANDS = [add_accept]

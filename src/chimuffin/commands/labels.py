"""`chimuffin labels ...`: tools that write the git-tracked label file (data/labels/decisions.csv).

`labels accept` merges the suggest stage's proposals with source `auto`. Other label tools (e.g.
pulling edits from 3LC) register their own `labels` subcommand in SUBCOMMANDS below.
"""

from __future__ import annotations

import sys
from pathlib import Path

from chimuffin import paths
from chimuffin.config import load_params
from chimuffin.curate.accept import accept
from chimuffin.curate.scoring import read_suggestions
from chimuffin.errors import UserError
from chimuffin.labels import locked
from chimuffin.labels.rows import per_class


def register(sub) -> None:
    p = sub.add_parser("labels", help=f"edit {paths.DECISIONS} (accept suggestions, ...)",
                       description=f"Tools that write the git-tracked label file "
                       f"({paths.DECISIONS}); stages only read it.")
    lsub = p.add_subparsers(dest="labels_command", title="subcommands", metavar="SUBCOMMAND")
    for add in SUBCOMMANDS:
        add(lsub)
    p.set_defaults(func=lambda args: no_subcommand(p))  # each subcommand sets its own func


def no_subcommand(parser) -> int:
    """`chimuffin labels` alone: its help, which lists the subcommands, and exit status 2."""
    sys.stderr.write(parser.format_help())
    sys.stderr.write(f"{parser.prog}: error: choose a subcommand\n")
    return 2


def add_accept_options(p, required: bool = True) -> None:
    """Options shared by `labels accept` and `loop` (where accepting is optional)."""
    p.add_argument("--min-score", type=float, required=required, default=None,
                   help="accept suggestions scoring at least this (0-1)"
                   + ("" if required else "; none are accepted without it (default: "
                      "%(default)s)"))
    p.add_argument("--require-agreement", action="store_true",
                   help="only where the model and the labeled neighbours agree "
                   "(default: %(default)s)")
    p.add_argument("--per-class-cap", type=int, default=None, metavar="N",
                   help="accept at most N new labels per class, highest scores first "
                   "(default: %(default)s = no cap)")


def check_accept_options(args) -> None:
    if not 0.0 <= args.min_score <= 1.0:
        raise UserError(f"--min-score must be between 0 and 1, got {args.min_score}")
    if args.per_class_cap is not None and args.per_class_cap < 0:
        raise UserError(f"--per-class-cap must be >= 0, got {args.per_class_cap}")


def add_accept(lsub) -> None:
    p = lsub.add_parser("accept", help="merge label suggestions (source auto); never overrides "
                        "an existing decision",
                        description="Merge the suggest stage's proposals scoring at least "
                        "--min-score into the label file with source auto. An image that already "
                        "has a decision (a person's, an oracle's, an earlier one) is never "
                        "changed.")
    add_accept_options(p)
    p.add_argument("--suggestions", default=f"{paths.SUGGEST}/{paths.SUGGESTIONS_FILE}",
                   help="default: %(default)s")
    p.add_argument("--decisions", default=paths.DECISIONS, help="default: %(default)s")
    p.add_argument("--params", default=paths.PARAMS, help="default: %(default)s")
    p.add_argument("--dry-run", action="store_true", help="print what would be added, write "
                   "nothing (default: %(default)s)")
    p.set_defaults(func=run_accept)


def run_accept(args) -> int:
    check_accept_options(args)
    classes = load_params(args.params).base.classes
    suggestions = read_suggestions(Path(args.suggestions))
    result = {}

    def change(decisions):
        # under the label file's lock: merged into what the file holds now
        result["merged"], result["rows"] = accept(decisions, suggestions, args.min_score,
                                                  args.require_agreement, args.per_class_cap)
        return result["merged"]

    if args.dry_run:
        change(locked.read(args.decisions, classes).decisions)
    else:
        locked.update(args.decisions, classes, change)
    merged, rows = result["merged"], result["rows"]
    above = int((suggestions["score"] >= args.min_score).sum())
    verb = "would add" if args.dry_run else "added"
    print(f"labels accept: {verb} {len(rows)} auto labels ({per_class(rows['label'], classes)}) "
          f"of {above} suggestions with score >= {args.min_score}; {args.decisions} "
          f"{'would have' if args.dry_run else 'now has'} {len(merged)} decisions")
    return 0


SUBCOMMANDS = [add_accept]

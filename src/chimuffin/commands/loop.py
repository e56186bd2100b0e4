"""`chimuffin loop --rounds R`: rounds of `dvc repro`, a simulated person's review and/or
accepted suggestions, and one git commit each (the rounds live in chimuffin.simulate.rounds)."""

from __future__ import annotations

from pathlib import Path

from chimuffin import paths
from chimuffin.commands.final import where as final_where
from chimuffin.commands.labels import add_accept_options, check_accept_options
from chimuffin.config import load_params
from chimuffin.errors import UserError
from chimuffin.labels.validation import validation_file
from chimuffin.proc import foreground, repo_root, sigterm_as_interrupt
from chimuffin.retrain.final import run_and_report
from chimuffin.simulate.reviewer import ReviewCost
from chimuffin.simulate.rounds import AutoAccept, LoopConfig, Reviewer, run_loop
from chimuffin.simulate.sitting import SittingConfig, run_sitting, summary
from chimuffin.simulate.validation import ValidationStep

DESCRIPTION = """\
Each round: `dvc repro`; then a simulated person adds labels (source oracle) from a file of
true labels (--reviewer), verifying this repro's review pages (data/suggest/pages.parquet) for
--minutes simulated minutes; and/or suggestions scoring at least --min-score are accepted
(source auto).
Then ONE git commit holds the label file and dvc.lock; its message states the round's metrics
and the review session. A round that adds no label is the last. Ctrl-C leaves every round
committed whole or not at all. Simulated cost: """ + ReviewCost().describe() + "."


def register(sub) -> None:
    p = sub.add_parser("loop", help="rounds of: dvc repro, a simulated review, accepted "
                       "suggestions, one commit each", description=DESCRIPTION)
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds to run (at most); not with --background")
    p.add_argument("--background", action="store_true",
                   help="one sitting instead of rounds: after one `dvc repro`, the --reviewer "
                   "verifies pages for --minutes WALL-CLOCK minutes at the cost model's pace "
                   "while background retrains (params.yaml `review`: retrain_every, "
                   "round_recipe) swap in new pages; writes the label file, commits nothing; "
                   "then the final step (`chimuffin final`)")
    p.add_argument("--no-final", action="store_true",
                   help="with --background: end with the sitting, no final step "
                   "(default: %(default)s)")
    who = p.add_argument_group("simulated person")
    who.add_argument("--reviewer", metavar="CSV", default=None,
                     help="path,label (or relative_path,label) file of true labels; the person "
                     "verifies review pages in order (default: %(default)s)")
    who.add_argument("--minutes", type=float, default=None, metavar="M",
                     help="simulated minutes of page review per round, with --reviewer; "
                     "inf = until every page is verified (default: %(default)s)")
    who.add_argument("--validation", type=int, default=0, metavar="N",
                     help="with --background: first the --reviewer answers the validation "
                     "view's random sample of the pool (base.seed) until validation.csv holds "
                     "N pool images (at most a quarter of the pool), at the pages' cost "
                     "model; 0 = none (default: %(default)s)")
    add_accept_options(p.add_argument_group("accepting suggestions (optional)"), required=False)
    files = p.add_argument_group("files")
    files.add_argument("--decisions", default=paths.DECISIONS,
                       help="the label file (default: %(default)s)")
    files.add_argument("--params", default=paths.PARAMS, help="default: %(default)s")
    files.add_argument("--suggest-dir", default=paths.SUGGEST,
                       help="the suggest stage's output (default: %(default)s)")
    files.add_argument("--eval-dir", default=paths.EVAL,
                       help="the evaluate stage's output (default: %(default)s)")
    files.add_argument("--clean-dir", default=paths.CLEAN,
                       help="the clean stage's output (default: %(default)s)")
    p.set_defaults(func=run)


def check_args(args) -> None:
    if args.validation < 0:
        raise UserError(f"--validation must be >= 0, got {args.validation}")
    if args.validation and not args.background:
        raise UserError("--validation N needs --background (the sitting builds the validation "
                        "set before its first page)")
    if args.background:
        if args.rounds is not None or args.min_score is not None:
            raise UserError("--background is one sitting of the --reviewer: no --rounds or "
                            "--min-score")
        if not args.reviewer or not (args.minutes is not None and args.minutes > 0):
            raise UserError("--background needs --reviewer CSV and --minutes M > 0 "
                            "(wall-clock minutes; inf: until every page is verified)")
        return
    if args.rounds is None:
        raise UserError("--rounds N is needed (or --background for one sitting)")
    if args.rounds < 1:
        raise UserError(f"--rounds must be >= 1, got {args.rounds}")
    if args.min_score is not None:
        check_accept_options(args)
    elif args.require_agreement or args.per_class_cap is not None:
        raise UserError("--require-agreement and --per-class-cap need --min-score")
    if args.reviewer and not (args.minutes is not None and args.minutes > 0):
        raise UserError("--reviewer needs --minutes M > 0 (simulated minutes per round; inf: "
                        "until every page is verified)")
    if args.minutes is not None and not args.reviewer:
        raise UserError("--minutes needs --reviewer (the file of true labels)")
    if not (args.reviewer or args.min_score is not None):
        raise UserError("nothing would add labels: give --reviewer CSV --minutes M or "
                        "--min-score X")


def reviewer(args, classes: list[str]) -> Reviewer | None:
    """The simulated person. Its truth file is read after each `dvc repro` (the sample stage
    writes one); when it already exists it is checked now, before any round runs."""
    if not args.reviewer:
        return None
    rv = Reviewer(Path(args.reviewer), args.minutes * 60.0, ReviewCost())
    if rv.truth_file.exists():
        rv.truth(classes)
    return rv


def validation_step(args, params, root: Path) -> ValidationStep:
    """The sample the person answers first (the validation view's, sized --validation)."""
    decisions = root / args.decisions
    return ValidationStep(args.validation, params.base.seed, params.suggest.page_size,
                          root / paths.PREPARED / paths.MANIFEST_FILE,
                          root / args.eval_dir / paths.PREDICTIONS_FILE,
                          validation_file(decisions), decisions)


def run_background(args) -> int:
    params = load_params(args.params)
    classes = params.base.classes
    root = repo_root(Path.cwd())
    if not args.no_final and params.review.retrain_every == 0:
        raise UserError("review.retrain_every is 0: the sitting trains no background model for "
                        "the final step to start from; pass --no-final")
    rv = reviewer(args, classes)
    with sigterm_as_interrupt():
        if foreground(["dvc", "repro"], root) != 0:
            raise UserError("`dvc repro` failed; the sitting needs the pipeline's pages")
        if params.review.retrain_every == 0:
            print("loop: review.retrain_every is 0: no background retrains in this sitting")
        cfg = SittingConfig(root, root / args.params, root / args.decisions,
                            root / args.suggest_dir, classes, params.review.retrain_every,
                            params.review.round_recipe, params.review.warm_recipe,
                            root / args.eval_dir, rv.cost,
                            validation_step(args, params, root) if args.validation else None)
        s = run_sitting(cfg, rv.truth(classes), rv.budget_s)
        print(summary(s), flush=True)
        if not args.no_final:  # the person is done: the last background model, finished
            run_and_report(final_where(root, args.params, args.decisions, None))
    return 0


def run(args) -> int:
    check_args(args)
    if args.background:
        return run_background(args)
    classes = load_params(args.params).base.classes
    auto = (AutoAccept(args.min_score, args.require_agreement, args.per_class_cap)
            if args.min_score is not None else None)
    cfg = LoopConfig(args.rounds, classes, Path(args.decisions), Path(args.suggest_dir),
                     Path(args.eval_dir), Path(args.clean_dir), reviewer(args, classes), auto)
    run_loop(cfg, repo_root(Path.cwd()))
    return 0

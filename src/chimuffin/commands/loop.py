"""`chimuffin loop`: one sitting of a simulated person at the review pages while the model
retrains behind it (chimuffin.simulate.sitting), then the final step (`chimuffin final`)."""

from __future__ import annotations

from pathlib import Path

from chimuffin import paths
from chimuffin.commands.final import where as final_where
from chimuffin.config import load_params
from chimuffin.errors import UserError
from chimuffin.labels.rows import read_path_labels
from chimuffin.labels.validation import validation_file
from chimuffin.proc import foreground, repo_root, sigterm_as_interrupt
from chimuffin.retrain.final import run_and_report
from chimuffin.simulate.reviewer import ReviewCost
from chimuffin.simulate.sitting import SittingConfig, run_sitting, summary
from chimuffin.simulate.validation import ValidationStep

DESCRIPTION = """\
After one `dvc repro`, a simulated person (source oracle) verifies the review pages
(data/suggest/pages.parquet) in page order for --minutes WALL-CLOCK minutes, answering from a
file of true labels (--reviewer) at the cost model's pace, while background retrains (params.yaml
`review`: retrain_every, round_recipe) swap in new pages. Each page is written to the label file
at once; nothing is committed. Then the final step (`chimuffin final`) trains the final model.
Simulated cost: """ + ReviewCost().describe() + "."


def register(sub) -> None:
    p = sub.add_parser("loop", help="one simulated sitting at the review pages with background "
                       "retrains, then the final model", description=DESCRIPTION)
    p.add_argument("--reviewer", metavar="CSV", required=True,
                   help="path,label (or relative_path,label) file of true labels")
    p.add_argument("--minutes", type=float, required=True, metavar="M",
                   help="wall-clock minutes of page review; inf = until every page is verified")
    p.add_argument("--validation", type=int, default=0, metavar="N",
                   help="first the --reviewer answers the validation view's random sample of "
                   "the pool (base.seed) until validation.csv holds N pool images (at most a "
                   "quarter of the pool), at the pages' cost model; 0 = none "
                   "(default: %(default)s)")
    p.add_argument("--no-final", action="store_true",
                   help="end with the sitting, no final step (default: %(default)s)")
    files = p.add_argument_group("files")
    files.add_argument("--decisions", default=paths.DECISIONS,
                       help="the label file (default: %(default)s)")
    files.add_argument("--params", default=paths.PARAMS, help="default: %(default)s")
    files.add_argument("--suggest-dir", default=paths.SUGGEST,
                       help="the suggest stage's output (default: %(default)s)")
    files.add_argument("--eval-dir", default=paths.EVAL,
                       help="the evaluate stage's output (default: %(default)s)")
    p.set_defaults(func=run)


def check_args(args) -> None:
    if args.validation < 0:
        raise UserError(f"--validation must be >= 0, got {args.validation}")
    if not args.minutes > 0:
        raise UserError(f"--minutes must be > 0 (inf: until every page is verified), got "
                        f"{args.minutes}")


def validation_step(args, params, root: Path) -> ValidationStep:
    """The sample the person answers first (the validation view's, sized --validation)."""
    decisions = root / args.decisions
    return ValidationStep(args.validation, params.base.seed, params.suggest.page_size,
                          root / paths.PREPARED / paths.MANIFEST_FILE,
                          root / args.eval_dir / paths.PREDICTIONS_FILE,
                          validation_file(decisions), decisions)


def run(args) -> int:
    check_args(args)
    params = load_params(args.params)
    classes = params.base.classes
    root = repo_root(Path.cwd())
    if not args.no_final and params.review.retrain_every == 0:
        raise UserError("review.retrain_every is 0: the sitting trains no background model for "
                        "the final step to start from; pass --no-final")
    truth_file = Path(args.reviewer)
    if truth_file.exists():  # checked before the repro; the sample stage may write it
        read_path_labels(truth_file, classes, "reviewer's file of true labels")
    with sigterm_as_interrupt():
        if foreground(["dvc", "repro"], root) != 0:
            raise UserError("`dvc repro` failed; the sitting needs the pipeline's pages")
        if params.review.retrain_every == 0:
            print("loop: review.retrain_every is 0: no background retrains in this sitting")
        cfg = SittingConfig(root, root / args.params, root / args.decisions,
                            root / args.suggest_dir, classes, params.review.retrain_every,
                            params.review.round_recipe, params.review.warm_recipe,
                            root / args.eval_dir,
                            validation=validation_step(args, params, root) if args.validation
                            else None)
        truth = read_path_labels(truth_file, classes, "reviewer's file of true labels")
        s = run_sitting(cfg, truth, args.minutes * 60.0)
        print(summary(s), flush=True)
        if not args.no_final:  # the person is done: the last background model, finished
            run_and_report(final_where(root, args.params, args.decisions, None))
    return 0

"""`chimuffin final`: the final model, finished from the last background model of the sitting.

The last background model's weights (the latest `review-...-labels` experiment, from the DVC
cache) go into models/warm_start/ of a throwaway copy of the repository, DVC-tracked, and the
finishing recipe (params.yaml `review.final_recipe`) trains from them on every label as the
DVC experiment `final-<UTC time>-<N>-labels`: the whole pipeline, the workspace untouched.
It prints the progress (stage, epoch), then the validation accuracy with its 95% interval and
the commands that keep the model (`dvc exp apply`, `git commit`); `dvc repro` of that commit
reproduces it. A failed run prints its log's tail and where the log is; nothing changed.
"""

from __future__ import annotations

from pathlib import Path

from chimuffin import paths, proc
from chimuffin.config import load_params
from chimuffin.errors import UserError
from chimuffin.retrain.final import Where, run_and_report


def register(sub) -> None:
    p = sub.add_parser("final", help="the final model: the last background model finished on "
                       "every label, as a DVC experiment (the workspace is not changed)",
                       description=__doc__)
    p.add_argument("--from", dest="start", default=None, metavar="EXPERIMENT",
                   help="start from this background experiment (`dvc exp show` lists them; "
                   "default: the last one)")
    p.add_argument("--recipe", default=None, metavar="FILE",
                   help="the finishing recipe (default: params.yaml review.final_recipe)")
    p.add_argument("--params", default=paths.PARAMS, help="default: %(default)s")
    p.add_argument("--decisions", default=paths.DECISIONS,
                   help="the label file (default: %(default)s)")
    p.set_defaults(func=run)


def where(root: Path, params_file: str, decisions: str, recipe: str | None) -> Where:
    """The final step's files in the repository at `root` (the recipe: review.final_recipe
    unless given)."""
    root = root.resolve()
    params = load_params(root / params_file)
    return Where(root, root / params_file, root / decisions, list(params.base.classes),
                 root / (recipe or params.review.final_recipe))


def run(args) -> int:
    found = proc.git(["rev-parse", "--show-toplevel"], Path.cwd(), check=False)
    if found.returncode != 0:
        raise UserError(f"{Path.cwd()}: not inside a git repository (run `chimuffin final` in "
                        "the repository whose background models it finishes)")
    root = Path(found.stdout.strip()).resolve()
    with proc.sigterm_as_interrupt():
        run_and_report(where(root, args.params, args.decisions, args.recipe), args.start)
    return 0

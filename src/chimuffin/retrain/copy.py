"""The throwaway copy a background run trains in, so that it never writes the workspace:
`git clone --shared` (the objects are borrowed, not copied) at HEAD, with the workspace's
tracked changes (`git stash create`, which touches neither the files nor the stash list) read
into it, the label-file snapshot and the run's params written into it, and the main
repository's DVC cache as its cache. `sh(cmd, cwd, ...)` runs each command (retrainer.Shell)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

from chimuffin import paths as default
from chimuffin.errors import UserError

Sh = Callable[..., str]


def check_top_folder(root: Path, sh: Sh) -> None:
    """The copy is of the repository: `root` must be its own top folder."""
    top = Path(sh(["git", "rev-parse", "--show-toplevel"], root)).resolve()
    if top != root:
        raise UserError(f"{root}: not the top folder of a git repository (that is {top}); "
                        "run `chimuffin review` there")


def clone_workspace(root: Path, copy: Path, sh: Sh) -> None:
    """HEAD plus the workspace's tracked changes, with the workspace's DVC cache."""
    head = sh(["git", "rev-parse", "HEAD"], root)
    changes = sh(["git", "stash", "create"], root)  # "" when nothing is changed
    cache = sh(["dvc", "cache", "dir"], root)
    sh(["git", "clone", "-q", "--shared", "--no-checkout", str(root), str(copy)], root)
    sh(["git", "checkout", "-q", "--detach", head], copy)
    if changes:
        sh(["git", "read-tree", "-u", "--reset", changes], copy)
    sh(["dvc", "cache", "dir", "--local", cache], copy)


def write_inputs(copy: Path, label_file: Path, labels: bytes | None, params_file: Path,
                 params: dict, sh: Sh) -> None:
    """The snapshot (None: no label file) and the params, at the copy's paths (relative to it
    as given), then the data DVC tracks from the shared cache (what the cache lacks the run
    makes, or names in its log)."""
    label_file = copy / label_file
    if labels is None:
        label_file.unlink(missing_ok=True)
    else:
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_bytes(labels)
    (copy / params_file).write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["dvc", "checkout", "-q"], copy, nice=True, check=False, capture=False)


def add_warm_start(copy: Path, weights: Path, sh: Sh) -> None:
    """The weights the run starts from, tracked, so the experiment records where it started."""
    target = copy / default.WARM_START / default.WARM_START_FILE
    shutil.copyfile(weights, target)
    sh(["dvc", "add", "-q", str(target.relative_to(copy))], copy, nice=True, capture=False)
    sh(["git", "add", default.WARM_START], copy)  # its .dvc file, whatever autostage says


def run_experiment(copy: Path, name: str, sh: Sh) -> None:
    """`dvc exp run -n NAME` (the page goes first: nice), then its ref pushed into the main
    repository, so `dvc exp show` there lists it."""
    sh(["dvc", "exp", "run", "-n", name], copy, nice=True, capture=False)
    refs = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], copy).split()
    ref = next((r for r in refs if r.endswith(f"/{name}")), None)
    if ref is None:
        raise UserError(f"dvc exp run left no ref for {name}")
    sh(["git", "push", "-q", "origin", f"{ref}:{ref}"], copy)

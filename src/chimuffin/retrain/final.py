"""The final step: the sitting's last background model, finished into the final model.

`chimuffin final`, the review page's "final model" action and the end of `chimuffin loop` run
it. It
1. finds the last background model: the latest `review-<UTC time>-<N>-labels[-warm]`
   experiment among the repository's refs (each background run pushes its own) and its weights,
   the train stage's models/best.pth, in the DVC cache by the md5 its dvc.lock records (the
   runs' copies share the repository's cache, so the weights outlive the page and the sitting);
2. snapshots the label file and makes a throwaway copy of the repository (retrain/copy.py);
3. in the copy: params.yaml's `train` group becomes the finishing recipe (review.final_recipe),
   the weights go into models/warm_start/, `dvc add`ed (the train stage's dep: the experiment
   records what it started from), and `dvc exp run -n final-<UTC time>-<N>-labels` runs the
   pipeline on every label of the snapshot with params.yaml's own 3LC, evaluation and runtime
   settings (the final model is the pipeline's, not a proposer);
4. pushes the experiment's ref into the repository, reads its validation accuracy with the 95%
   interval, and removes the copy.
The workspace is never written: a failed run keeps its log and leaves no experiment. `dvc exp
apply NAME` and one commit keep the model; `dvc repro` of that commit reproduces it from the
label file, the DVC-tracked start weights and params.yaml.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from chimuffin import paths as default
from chimuffin.config import load_yaml, parse_params, read_recipe
from chimuffin.errors import UserError
from chimuffin.labels import locked
from chimuffin.labels.rows import person_decided
from chimuffin.labels.validation import validation_file
from chimuffin.retrain import copy as workspace_copy
from chimuffin.retrain.retrainer import (
    STOPPED,
    Shell,
    Stopped,
    log_tail,
)
from chimuffin.retrain.run_log import Step, step_of

BACKGROUND = re.compile(r"^review-(\d{8}-\d{6})-(\d+)-labels(-warm)?$")


# --- the weights it starts from ---------------------------------------------------------------

@dataclass(frozen=True)
class StartModel:
    """A finished background model: its experiment and its weights in the DVC cache."""
    name: str
    md5: str
    path: Path


def background_refs(refs: list[str]) -> list[tuple[str, str]]:
    """(name, ref) of the background runs' experiments among `refs`, oldest first: by the UTC
    start time in the name, then the label count (one run at a time, so the last started is
    the last finished; a failed run leaves no ref)."""
    found = []
    for ref in refs:
        m = BACKGROUND.match(ref.rsplit("/", 1)[-1])
        if m and ref.startswith("refs/exps/"):
            found.append((m.group(1), int(m.group(2)), m.group(0), ref))
    return [(name, ref) for *_, name, ref in sorted(found)]


def pick_background(refs: list[tuple[str, str]], name: str | None) -> tuple[str, str]:
    """The last background experiment, or the one named."""
    if not refs:
        raise UserError("no background model to start from: this repository has no "
                        "`review-...-labels` experiment (background retrains of the review "
                        "page and of `chimuffin loop` leave them)")
    if name is None:
        return refs[-1]
    for found in refs:
        if found[0] == name:
            return found
    raise UserError(f"--from {name}: no background experiment of that name; the last ones: "
                    f"{', '.join(n for n, _ in refs[-3:])}")


def model_md5(lock_text: str, where: str) -> str:
    """The md5 dvc.lock records for the train stage's model."""
    try:
        outs = yaml.safe_load(lock_text)["stages"]["train"]["outs"]
        return next(o["md5"] for o in outs if o["path"] == default.MODEL)
    except (yaml.YAMLError, KeyError, TypeError, StopIteration) as e:
        raise UserError(f"{where}: no md5 of {default.MODEL} among the train stage's outs "
                        f"({type(e).__name__})") from e


def cache_file(cache_dir: Path, md5: str) -> Path:
    """Where DVC 3 keeps a file of this md5."""
    return cache_dir / "files" / "md5" / md5[:2] / md5[2:]


def start_model(sh: workspace_copy.Sh, root: Path, name: str | None = None) -> StartModel:
    """The last background model's weights (or the named experiment's), in the DVC cache."""
    refs = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], root).split()
    exp, ref = pick_background(background_refs(refs), name)
    md5 = model_md5(sh(["git", "show", f"{ref}:dvc.lock"], root), f"{exp}: dvc.lock")
    path = cache_file(Path(sh(["dvc", "cache", "dir"], root)), md5)
    if not path.is_file():
        raise UserError(f"{exp}: its {default.MODEL} (md5 {md5}) is not in the DVC cache "
                        f"({path}); `dvc pull` it, or name another experiment with --from")
    return StartModel(exp, md5, path)


# --- the run's params and result --------------------------------------------------------------

def final_params(params_text: str, params_name: str, recipe_file: Path) -> dict:
    """The copy's params: the workspace's, with the finishing recipe as the `train` group,
    checked strictly (a bad recipe stops here, before any run)."""
    params = load_yaml(params_text, params_name)
    params["train"] = read_recipe(recipe_file)
    try:
        parse_params(params)
    except UserError as e:
        raise UserError(f"{params_name} with {recipe_file}: {e}") from e
    return params


def final_name(labels: int, when: float) -> str:
    return f"final-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(when))}-{labels}-labels"


def val_result(path: Path) -> dict:
    """The evaluate stage's validation numbers: accuracy, its 95% interval, images."""
    try:
        val = json.loads(path.read_text(encoding="utf-8"))["val"]
        return {"accuracy": float(val["accuracy"]), "n": int(val["n"]),
                "ci95": [float(val["accuracy_ci95_low"]), float(val["accuracy_ci95_high"])]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: no validation accuracy in the evaluate stage's metrics "
                        f"({type(e).__name__}: {e}); the final model needs validation images"
                        ) from e


def keep_commands(name: str, decisions: str, params_file: str, labels: int) -> list[str]:
    """What keeps the model: the experiment into the workspace, then one commit."""
    kept = " ".join([decisions, default.VALIDATION, params_file, "dvc.lock",
                     default.WARM_START])
    return [f"dvc exp apply {name}",
            f"git add {kept} && git commit -m 'The final model: {labels} labels, {name}'"]


@dataclass(frozen=True)
class Where:
    """The repository and the files the final step reads (absolute paths)."""
    root: Path
    params: Path
    decisions: Path
    classes: list[str]
    recipe: Path

    def rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()


@dataclass
class Final:
    """One final run: while it runs, then finished or failed."""
    started: float = field(default_factory=time.time)
    name: str = ""
    start: str = ""             # the background experiment it starts from
    start_md5: str = ""         # its weights' md5 (models/warm_start/weights.pth.dvc holds it)
    labels: int = 0             # person decisions in the snapshot
    finished: float | None = None
    ok: bool | None = None      # None while it runs
    error: str = ""
    log_file: Path | None = None  # while it runs; kept after only when it failed
    log_tail: str = ""
    val: dict | None = None     # accuracy, n, ci95
    commands: list[str] = field(default_factory=list)
    labels_changed: bool = False  # the label file changed after the snapshot

    def step(self) -> Step:
        return step_of(self.log_file) if self.ok is None and self.log_file else Step()

    def public(self) -> dict:
        return {"name": self.name, "start": self.start, "start_md5": self.start_md5,
                "labels": self.labels, "started": round(self.started, 1),
                "finished": None if self.finished is None else round(self.finished, 1),
                "step": self.step().public(), "ok": self.ok, "error": self.error,
                "log": str(self.log_file or "") if self.ok is False else "",
                "log_tail": self.log_tail, "val": self.val, "commands": self.commands,
                "labels_changed": self.labels_changed}


# --- one run ----------------------------------------------------------------------------------

def finish(final: Final, where: Where, copy: Path, sh: workspace_copy.Sh,
           start: str | None = None) -> None:
    """The run (the module's docstring), filling in `final`; raises on failure."""
    workspace_copy.check_top_folder(where.root, sh)
    model = start_model(sh, where.root, start)
    final.start, final.start_md5 = model.name, model.md5
    snapshot, validation = read_labels(where)
    final.labels = len(person_decided(snapshot.decisions))
    final.name = final_name(final.labels, final.started)
    params = final_params(where.params.read_text(encoding="utf-8"), str(where.params),
                          where.recipe)
    workspace_copy.clone_workspace(where.root, copy, sh)
    workspace_copy.write_inputs(copy, Path(where.rel(where.decisions)), snapshot.data,
                                Path(where.rel(where.params)), params, sh)
    if validation is not None:  # as the page left it: answers not committed yet too
        (copy / where.rel(validation_file(where.decisions))).write_bytes(validation)
    workspace_copy.add_warm_start(copy, model.path, sh)
    workspace_copy.run_experiment(copy, final.name, sh)
    final.val = val_result(copy / default.EVAL / default.METRICS_FILE)
    final.commands = keep_commands(final.name, where.rel(where.decisions),
                                   where.rel(where.params), final.labels)
    now, now_validation = read_labels(where)
    final.labels_changed = (now.data, now_validation) != (snapshot.data, validation)


def read_labels(where: Where) -> tuple[locked.Snapshot, bytes | None]:
    """The label file and validation.csv as they are now, read under the label file's lock
    (validation.csv's writers hold it too)."""
    val_file = validation_file(where.decisions)
    with locked.holding_lock(where.decisions):
        snapshot = locked.read(where.decisions, where.classes)
        return snapshot, val_file.read_bytes() if val_file.is_file() else None


def run_final(final: Final, where: Where, shell: Shell, start: str | None = None) -> Final:
    """finish() in a temporary folder: ok, or the error with the log kept (a Ctrl-C or stop()
    removes the folder and raises or says STOPPED)."""
    tmp = Path(tempfile.mkdtemp(prefix="chimuffin-final-"))
    final.log_file = tmp / "final.log"
    try:
        with open(final.log_file, "w") as out:
            finish(final, where, tmp / "repo", functools.partial(shell, out=out), start)
        final.ok = True
    except Stopped:
        final.ok, final.error = False, STOPPED
    except KeyboardInterrupt:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:  # shown with its log; the workspace is untouched
        final.ok = False
        final.error = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
    final.finished = time.time()
    final.log_tail = log_tail(final.log_file)
    if final.ok or final.error == STOPPED:
        shutil.rmtree(tmp, ignore_errors=True)
        final.log_file = None
    return final


# --- the page's final run ---------------------------------------------------------------------

class Finisher:
    """The review page's final model: one run at a time, in its own thread. `before` is called
    in that thread first (the page stops its background retraining there: the final run takes
    the cores)."""

    def __init__(self, where: Where, before: Callable[[], None] | None = None):
        self.where, self.before = where, before
        self.lock = threading.Lock()
        self.run: Final | None = None
        self.shell = Shell()
        self.thread: threading.Thread | None = None

    def request(self) -> dict:
        with self.lock:
            if self.shell.stopping:
                return {"ok": False, "message": "the server is stopping"}
            if self.run is not None and self.run.ok is None:
                return {"ok": False, "message": "the final model is already training"}
            self.run = Final()
            self.thread = threading.Thread(target=self._go, args=(self.run,), daemon=True,
                                           name="final-model")
            self.thread.start()
        return {"ok": True, "message": "started: background retraining stops, the final "
                "model trains from the last background model"}

    def _go(self, final: Final) -> None:
        if self.before is not None:
            self.before()
        run_final(final, self.where, self.shell)

    def status(self) -> dict:
        with self.lock:
            run = self.run
        return {"enabled": True, "recipe": self.where.rel(self.where.recipe),
                "run": None if run is None else run.public()}

    def stop(self, wait_s: float = 90.0) -> None:
        self.shell.stop()
        if self.thread is not None:
            self.thread.join(wait_s)


# --- on a terminal (`chimuffin final`, the end of `chimuffin loop`) ---------------------------

STEP_EVERY_S = 2.0
say_line = functools.partial(print, flush=True)


def report_lines(final: Final) -> list[str]:
    """What a finished run says: its accuracy, where it started and the commands that keep it;
    or that it failed, with its log's tail."""
    if not final.ok:
        return [f"final: {final.name or 'the run'} failed; nothing in the workspace changed",
                *(f"  {line}" for line in final.log_tail.splitlines())]
    v = final.val
    lines = [f"final: {final.name}: validation accuracy {v['accuracy']:.4f} (95% CI "
             f"{v['ci95'][0]:.4f}-{v['ci95'][1]:.4f}, {v['n']} images), trained on "
             f"{final.labels} person decisions from {final.start} (md5 {final.start_md5})",
             "final: to keep it (`dvc repro` of that commit reproduces it):",
             *(f"  {c}" for c in final.commands)]
    if final.labels_changed:
        lines.append("final: the label file changed after this run read it: `dvc exp apply` "
                     "puts back the labels the model trained on")
    return lines


def show_steps(final: Final, done: threading.Event, say: Callable[[str], None]) -> None:
    """A line each time the run's stage or epoch changes, until `done`."""
    shown = None
    while not done.wait(STEP_EVERY_S):
        step = final.step()
        if step != shown and final.ok is None:
            say(f"final: {step.text()}")
            shown = step


def run_and_report(where: Where, start: str | None = None,
                   say: Callable[[str], None] = say_line) -> Final:
    """The final step with its progress and result printed; UserError when it failed."""
    final, done = Final(), threading.Event()
    watcher = threading.Thread(target=show_steps, args=(final, done, say), daemon=True)
    watcher.start()
    say(f"final: finishing the last background model with {where.rel(where.recipe)} "
        "(a DVC experiment on a copy; the workspace is not changed)")
    try:
        run_final(final, where, Shell(), start)
    finally:
        done.set()
        watcher.join()
    for line in report_lines(final):
        say(line)
    if not final.ok:
        log = f" (log: {final.log_file})" if final.log_file else ""
        raise UserError(f"the final run failed: {final.error}{log}")
    return final

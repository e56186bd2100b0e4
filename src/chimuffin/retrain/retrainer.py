"""Background retraining for the review page: a DVC experiment on a copy of the workspace.

A run never writes the workspace. It
1. snapshots the label file (read under its inter-process lock, so never half a write);
2. makes a throwaway copy of the repository in a temporary folder: `git clone --shared` (the
   objects are borrowed, not copied) at HEAD, with the workspace's tracked changes (`git stash
   create`, which touches neither the files nor the stash list) read into it, the snapshot
   written as its label file, and the main repository's DVC cache as its cache;
3. in the copy, sets the round recipe (params.yaml `review.round_recipe`) as its `train` group
   and `runtime.threads` to every core, then review.background_set's params (DVC's `-S`
   form: what the page never reads, such as 3LC, need not be made), checks the result as
   strictly as any params file, and runs `dvc exp run -n NAME` at a lower CPU priority (`nice
   -n 10`: the page goes first). With a warm recipe (`review.warm_recipe`), a background model
   already finished and at least review.warm_after person decisions, the run starts from that
   model's weights instead: they are put in the copy's
   models/warm_start/ and `dvc add`ed (the train stage's dep records them), the warm recipe is
   the `train` group, and NAME ends in `-warm`;
4. pushes the experiment's ref (refs/exps/...) into the main repository, so `dvc exp show`
   there lists it; NAME holds the label count (`review-<UTC time>-<N>-labels`);
5. reads the copy's review pages (the suggest stage's outputs) and removes the copy. A failed
   run keeps the copy and its log (the page shows the log's tail and where it is).

One run at a time; a request while one runs is queued (one at most) and starts when it ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from chimuffin import atomic
from chimuffin import paths as default
from chimuffin.config import load_yaml, parse_override, parse_params, recipe_group, set_override
from chimuffin.curate.simulated_review import person_decided
from chimuffin.errors import UserError
from chimuffin.labels import locked
from chimuffin.labels.rows import Decision

NICE = 10
LOG_TAIL_LINES = 30
STOP_GRACE_S = 30.0  # dvc releases its locks on SIGINT; SIGKILL after this
STOPPED = "stopped with the server"  # a run's error when stop() ended it: not a failure


def person_decisions(decisions: list[Decision]) -> int:
    """The labels a person gave (what `retrain_every` counts)."""
    return len(person_decided(decisions))


def due(labels_now: int, labels_of_model: int, every: int, busy: bool) -> bool:
    """Start a retrain on its own: every > 0, nothing running or queued, and at least `every`
    person decisions more than the model the page shows was trained on."""
    return every > 0 and not busy and labels_now - labels_of_model >= every


def threads_for_run(cpus: int | None) -> int:
    """Every core: at nice 10 the page's requests still go first. Measured on 2 cores
    (benchmarks/page_latency.py): two threads trained 1.5-1.8x faster than one, and the real
    pool's /api/state took 112 ms (p50) beside them against 105 idle."""
    return max(1, cpus or 1)


def round_params(params_text: str, recipe_text: str | None, threads: int,
                 params_name: str, recipe_name: str, overrides: list[str] = ()) -> dict:
    """The copy's params: the workspace's, with the recipe's `train` group (None: keep it),
    runtime.threads, then `overrides` (review.background_set); checked strictly (a bad
    recipe or override stops here, before any run)."""
    params = load_yaml(params_text, params_name)
    if recipe_text is not None:
        # merged onto its base: the copy's params.yaml holds the complete group (dvc exp show)
        params["train"] = recipe_group(load_yaml(recipe_text, recipe_name), Path(recipe_name))
    params["runtime"]["threads"] = threads
    try:
        parse_params(params)
    except UserError as e:
        raise UserError(f"{recipe_name}: {e}") from e
    where = f"{params_name}: review.background_set"
    for item in overrides:
        set_override(params, *parse_override(item, where))
    try:
        parse_params(params)
    except UserError as e:
        raise UserError(f"{where}: {e}") from e
    return params


def warm_start_due(labels: int, warm_after: int, last_weights: Path | None) -> Path | None:
    """The weights a run starts from: the last background model's once the snapshot holds
    warm_after person decisions (None: from scratch)."""
    return last_weights if labels >= warm_after else None


def experiment_name(labels: int, when: float, warm: bool = False) -> str:
    return (f"review-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(when))}-{labels}-labels"
            + ("-warm" if warm else ""))


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass
class Run:
    """One background run: while running, then finished or failed."""
    name: str
    labels: int                 # person decisions in its snapshot
    reason: str                 # "on demand" or "N new decisions"
    started: float
    finished: float | None = None
    ok: bool | None = None      # None while it runs
    error: str = ""
    log: str = ""               # the log file (kept only when the run failed)
    log_tail: str = ""
    pages: pd.DataFrame | None = field(default=None, repr=False)
    suggestions: pd.DataFrame | None = field(default=None, repr=False)
    neighbours: pd.DataFrame | None = field(default=None, repr=False)
    val_accuracy: float | None = None
    val_n: int | None = None    # validation images behind val_accuracy
    warm: bool = False          # started from the last background model's weights

    def public(self) -> dict:
        return {"name": self.name, "labels": self.labels, "reason": self.reason,
                "warm": self.warm,
                "started": round(self.started, 1),
                "finished": None if self.finished is None else round(self.finished, 1),
                "ok": self.ok, "error": self.error, "log": self.log, "log_tail": self.log_tail,
                "val_accuracy": self.val_accuracy, "val_n": self.val_n}


class Stopped(Exception):
    """The server is stopping: the run is abandoned."""


class Retrainer:
    """Starts background runs and keeps what they gave. `on_done(run)` is called (from the
    run's thread) when a run finished well, with its pages read."""

    def __init__(self, root: Path, params_file: Path, decisions: Path, classes: list[str],
                 every: int, recipe: str, labels_of_model: int,
                 on_done: Callable[[Run], None] | None = None, cpus: int | None = None,
                 warm_recipe: str = ""):
        self.root, self.params_file, self.decisions = root.resolve(), params_file, decisions
        self.warm_recipe = warm_recipe
        # the last finished run's weights (a copy outside the workspace), when warm_recipe
        self.weights_dir: Path | None = None
        self.classes, self.every, self.recipe = classes, every, recipe
        self.labels_of_model, self.on_done = labels_of_model, on_done
        self.threads = threads_for_run(cpus if cpus is not None else len(os.sched_getaffinity(0)))
        self.lock = threading.Lock()
        self.running: Run | None = None
        self.queued: str | None = None
        self.runs: list[Run] = []
        self.child: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None
        self.stopping = False

    # --- asking for a run ---

    def request(self, reason: str = "on demand") -> dict:
        with self.lock:
            if self.stopping:
                return {"ok": False, "message": "the server is stopping"}
            if self.running is not None:
                self.queued = reason
                return {"ok": True, "message": f"queued: starts when {self.running.name} ends"}
            self._start(reason)
            return {"ok": True, "message": "started"}

    def note(self, labels_now: int) -> bool:
        """After each write: start a run when enough decisions accumulated; whether it did."""
        with self.lock:
            busy = self.running is not None or self.queued is not None or self.stopping
            if not due(labels_now, self.labels_of_model, self.every, busy):
                return False
            self._start(f"{labels_now - self.labels_of_model} new decisions")
            return True

    def _start(self, reason: str) -> None:
        now = time.time()
        self.running = Run("", 0, reason, now)
        self.thread = threading.Thread(target=self._run, args=(self.running,), daemon=True,
                                       name="background-retrain")
        self.thread.start()

    def status(self) -> dict:
        with self.lock:
            return {"every": self.every, "recipe": self.recipe or "params.yaml train group",
                    "labels_of_model": self.labels_of_model,
                    "running": None if self.running is None else self.running.public(),
                    "queued": self.queued, "runs": [r.public() for r in self.runs]}

    def stop(self, wait_s: float = STOP_GRACE_S + 10) -> None:
        """Stop a run (the server is stopping): the child gets SIGINT, then SIGKILL; the copy
        is removed."""
        with self.lock:
            self.stopping, self.queued = True, None
            child = self.child
        if child is not None:
            _signal_group(child, signal.SIGINT)
            try:
                child.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
        if self.thread is not None:
            self.thread.join(wait_s)
        if self.weights_dir is not None:
            shutil.rmtree(self.weights_dir, ignore_errors=True)

    # --- one run (its own thread) ---

    def _run(self, run: Run) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="chimuffin-retrain-"))
        log = tmp / "retrain.log"
        try:
            with open(log, "w") as out:
                self._retrain(run, tmp / "repo", out)
            run.ok = True
        except Stopped:
            run.ok, run.error = False, STOPPED
        except Exception as e:  # any failure is shown on the page; the workspace is untouched
            run.ok = False
            run.error = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        run.finished = time.time()
        run.log_tail = log_tail(log)
        if run.ok or self.stopping:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            run.log = str(log)
        if run.ok and self.on_done is not None:
            try:
                self.on_done(run)
            except Exception as e:  # its pages did not fit: shown, nothing swapped
                run.ok, run.error = False, f"its pages were not used: {e}"
        with self.lock:
            self.child = None
            if run.ok:
                self.labels_of_model = run.labels
            # handed over; not kept twice
            run.pages = run.suggestions = run.neighbours = None
            self.runs.append(run)
            self.running, queued = None, self.queued
            self.queued = None
            if queued is not None and not self.stopping:
                self._start(queued)

    def _retrain(self, run: Run, copy: Path, out) -> None:
        def sh(cmd: list[str], cwd: Path, nice: bool = False, check: bool = True) -> str:
            if self.stopping:
                raise Stopped
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                   f"{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
            env.pop("PYTHONPATH", None)  # the stages import the copy's src/ (src/stage.py)
            p = subprocess.Popen((["nice", "-n", str(NICE)] if nice else []) + cmd, cwd=cwd,
                                 stdout=subprocess.PIPE, stderr=out, text=True, env=env,
                                 start_new_session=True)  # a terminal Ctrl-C is ours to pass
            with self.lock:
                self.child = p
            stdout, _ = p.communicate()
            with self.lock:
                self.child = None
            out.write(stdout)
            out.flush()
            if self.stopping:
                raise Stopped
            if p.returncode != 0 and check:
                raise UserError(f"`{' '.join(cmd[:3])}` failed (exit {p.returncode}); see the "
                                "log")
            return stdout.strip()

        top = Path(sh(["git", "rev-parse", "--show-toplevel"], self.root)).resolve()
        if top != self.root:  # the copy is of the repository: it must be this folder's own
            raise UserError(f"{self.root}: not the top folder of a git repository (that is "
                            f"{top}); run `chimuffin review` there")
        with locked.holding_lock(self.decisions):
            snapshot = locked.read(self.decisions, self.classes)
        run.labels = person_decisions(snapshot.decisions)
        params_text = _read_text(self.params_file)  # the workspace's, as the run starts
        review = parse_params(load_yaml(params_text, str(self.params_file))).review
        start_from = warm_start_due(run.labels, review.warm_after, self.last_weights())
        run.warm = start_from is not None
        run.name = experiment_name(run.labels, run.started, run.warm)
        recipe = self.warm_recipe if run.warm else self.recipe
        recipe_file = self.root / recipe if recipe else None
        recipe_text = None if recipe_file is None else _read_text(recipe_file)
        params = round_params(params_text, recipe_text, self.threads, str(self.params_file),
                              str(recipe_file or self.params_file), review.background_set)
        head = sh(["git", "rev-parse", "HEAD"], self.root)
        changes = sh(["git", "stash", "create"], self.root)  # "" when nothing is changed
        cache = sh(["dvc", "cache", "dir"], self.root)
        sh(["git", "clone", "-q", "--shared", "--no-checkout", str(self.root), str(copy)],
           self.root)
        sh(["git", "checkout", "-q", "--detach", head], copy)
        if changes:
            sh(["git", "read-tree", "-u", "--reset", changes], copy)
        sh(["dvc", "cache", "dir", "--local", cache], copy)
        label_file = copy / self.decisions.resolve().relative_to(self.root)
        if snapshot.data is None:
            label_file.unlink(missing_ok=True)
        else:
            label_file.parent.mkdir(parents=True, exist_ok=True)
            label_file.write_bytes(snapshot.data)
        (copy / self.params_file.resolve().relative_to(self.root)).write_text(
            yaml.safe_dump(params, sort_keys=False))
        # the data DVC tracks (`dvc add`ed datasets, the outputs), from the shared cache; what
        # the cache lacks the run makes (or names in its log)
        sh(["dvc", "checkout", "-q"], copy, nice=True, check=False)
        if start_from is not None:  # tracked, so the experiment records where it started
            weights = copy / default.WARM_START / default.WARM_START_FILE
            shutil.copyfile(start_from, weights)
            sh(["dvc", "add", "-q", str(weights.relative_to(copy))], copy, nice=True)
            sh(["git", "add", default.WARM_START], copy)  # its .dvc file, whatever autostage
        sh(["dvc", "exp", "run", "-n", run.name], copy, nice=True)
        refs = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], copy).split()
        ref = next((r for r in refs if r.endswith(f"/{run.name}")), None)
        if ref is None:
            raise UserError(f"dvc exp run left no ref for {run.name}")
        sh(["git", "push", "-q", "origin", f"{ref}:{ref}"], copy)
        run.pages = read_copy_pages(copy)
        run.suggestions = read_copy_suggestions(copy)
        run.neighbours = read_copy_neighbours(copy)
        run.val_accuracy, run.val_n = val_metrics(copy / default.EVAL / default.METRICS_FILE)
        if self.warm_recipe:
            self.keep_weights(copy / default.MODEL)

    def last_weights(self) -> Path | None:
        """The last finished run's weights, when warm starts are on and one finished."""
        if not self.warm_recipe or self.weights_dir is None:
            return None
        path = self.weights_dir / default.WARM_START_FILE
        return path if path.is_file() else None

    def keep_weights(self, model: Path) -> None:
        """Keep a finished run's model for the next run to start from (its copy is removed)."""
        if self.weights_dir is None:
            self.weights_dir = Path(tempfile.mkdtemp(prefix="chimuffin-warm-start-"))
        with atomic.atomic_path(self.weights_dir / default.WARM_START_FILE) as tmp:
            shutil.copyfile(model, tmp)


def read_copy_pages(copy: Path) -> pd.DataFrame:
    from chimuffin.curate.pages import read_pages

    return read_pages(copy / default.SUGGEST / default.PAGES_FILE)


def read_copy_suggestions(copy: Path) -> pd.DataFrame:
    """The copy's suggestions, with the columns the enlarged view's evidence needs."""
    from chimuffin.curate.scoring import read_suggestions
    from chimuffin.review.verify import EVIDENCE_COLUMNS

    return read_suggestions(copy / default.SUGGEST / default.SUGGESTIONS_FILE, EVIDENCE_COLUMNS)


def read_copy_neighbours(copy: Path) -> pd.DataFrame:
    """The copy's voting neighbours (the enlarged view lists them)."""
    from chimuffin.curate.scoring import read_neighbours

    return read_neighbours(copy / default.SUGGEST / default.NEIGHBOURS_FILE)


def val_metrics(path: Path) -> tuple[float | None, int | None]:
    """(validation accuracy, images) from the evaluate stage's metrics; (None, None) when there
    are none (no file yet, or no validation set). A file that is there but not such metrics is
    an error (a failed run), not "no validation accuracy"."""
    import json

    if not path.is_file():
        return None, None
    try:
        val = json.loads(_read_text(path)).get("val")
        return (None, None) if not val else (float(val["accuracy"]), int(val["n"]))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not the evaluate stage's metrics (a 'val' object with "
                        f"'accuracy' and 'n'): {type(e).__name__}: {e}") from e


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from e


def _signal_group(child: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except ProcessLookupError:
        pass


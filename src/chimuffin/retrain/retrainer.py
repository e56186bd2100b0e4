"""Background retraining: a DVC experiment on a throwaway copy of the workspace.

A run never writes the workspace. It
1. snapshots the label file (read under its inter-process lock, so never half a write);
2. makes the copy (retrain/copy.py) in a temporary folder, with the snapshot as its label file;
3. in the copy, sets the round recipe (params.yaml `review.round_recipe`) as its `train` group
   and `runtime.threads` to every core, then review.background_set's params (DVC's `-S`
   form: what the page never reads, such as 3LC, need not be made), checks the result as
   strictly as any params file, and runs `dvc exp run -n NAME` at a lower CPU priority (`nice
   -n 10`: the page goes first). With a warm recipe (`review.warm_recipe`), a background model
   already finished and at least review.warm_after person decisions, the run starts from that
   model's weights instead: they are put in the copy's models/warm_start/ and `dvc add`ed (the
   train stage's dep records them), the warm recipe is the `train` group, and NAME ends in
   `-warm`;
4. pushes the experiment's ref (refs/exps/...) into the main repository, so `dvc exp show`
   there lists it; NAME holds the label count (`review-<UTC time>-<N>-labels`);
5. reads the copy's outputs (retrain/outputs.py) and removes the copy. A failed run keeps the
   copy and its log (the page shows the log's tail and where it is).

One run at a time; a request while one runs is queued (one at most) and starts when it ends.
"""

from __future__ import annotations

import functools
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
from typing import TextIO

from chimuffin import atomic, proc
from chimuffin import paths as default
from chimuffin.config import load_yaml, parse_params
from chimuffin.errors import UserError
from chimuffin.labels import locked
from chimuffin.labels.rows import person_decided
from chimuffin.labels.validation import validation_file
from chimuffin.retrain import copy as workspace_copy
from chimuffin.retrain.outputs import RunOutputs
from chimuffin.retrain.params import (
    due,
    experiment_name,
    round_params,
    threads_for_run,
    warm_start_due,
)

NICE = 10
LOG_TAIL_LINES = 30
STOP_GRACE_S = 30.0  # dvc releases its locks on SIGINT; SIGKILL after this
STOPPED = "stopped with the server"  # a run's error when stop() ended it: not a failure


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
    log_file: str = ""          # its log while it runs (where the page reads its step)
    log_tail: str = ""
    outputs: RunOutputs | None = field(default=None, repr=False)  # once it finished well
    val_accuracy: float | None = None  # kept from its outputs (they are handed over)
    val_n: int | None = None
    warm: bool = False          # started from the last background model's weights

    def public(self) -> dict:
        return {"name": self.name, "labels": self.labels, "reason": self.reason,
                "warm": self.warm,
                "started": round(self.started, 1),
                "finished": None if self.finished is None else round(self.finished, 1),
                "ok": self.ok, "error": self.error, "log": self.log, "log_tail": self.log_tail,
                "val_accuracy": self.val_accuracy, "val_n": self.val_n,
                "log_file": self.log_file if self.ok is None else ""}


class Stopped(Exception):
    """The server is stopping: the run is abandoned."""


def child_env() -> dict:
    """This interpreter's tools (dvc) first; the stages import the copy's src/ (src/stage.py),
    not PYTHONPATH's."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    env.pop("PYTHONPATH", None)
    return env


class Shell:
    """The commands of background runs and the final step, logged (retrain/copy.py's `sh`),
    each one's stdout returned; stop() ends the one running (SIGINT to its process group,
    SIGKILL after STOP_GRACE_S) and refuses the next."""

    def __init__(self):
        self.lock = threading.Lock()
        self.child: subprocess.Popen | None = None
        self.stopping = False

    def __call__(self, cmd: list[str], cwd: Path, out: TextIO, nice: bool = False,
                 check: bool = True, capture: bool = True) -> str:
        if self.stopping:
            raise Stopped
        done = proc.run(cmd, cwd, capture=capture, log=out, nice=NICE if nice else 0,
                        env=child_env(), started=self._track)
        self._track(None)
        if self.stopping:
            raise Stopped
        if done.returncode != 0 and check:
            raise UserError(f"`{' '.join(cmd[:3])}` failed (exit {done.returncode}); see the "
                            "log")
        return done.stdout.strip()

    def _track(self, child: subprocess.Popen | None) -> None:
        with self.lock:
            self.child = child

    def stop(self) -> None:
        with self.lock:
            self.stopping, child = True, self.child
        if child is None:
            return
        _signal_group(child, signal.SIGINT)  # dvc releases its locks on SIGINT
        try:
            child.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(child, signal.SIGKILL)


class Retrainer:
    """Starts background runs and keeps what they gave. `on_done(run)` is called (from the
    run's thread) when a run finished well, with its outputs read."""

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
        self.shell = Shell()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.stopped_why = ""  # why it stopped (stop())

    # --- asking for a run ---

    def request(self, reason: str = "on demand") -> dict:
        with self.lock:
            if self.stopping:
                return {"ok": False, "message": f"background retraining stopped: "
                        f"{self.stopped_why}"}
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
                    "queued": self.queued, "runs": [r.public() for r in self.runs],
                    "stopped": self.stopped_why if self.stopping else None}

    def stop(self, wait_s: float = STOP_GRACE_S + 10,
             why: str = "the server is stopping") -> None:
        """Stop a run (the server is stopping): the child gets SIGINT, then SIGKILL; the copy
        is removed."""
        with self.lock:
            self.stopping, self.queued, self.stopped_why = True, None, why
        self.shell.stop()
        if self.thread is not None:
            self.thread.join(wait_s)
        if self.weights_dir is not None:
            shutil.rmtree(self.weights_dir, ignore_errors=True)

    # --- one run (its own thread) ---

    def _run(self, run: Run) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="chimuffin-retrain-"))
        log = tmp / "retrain.log"
        run.log_file = str(log)
        try:
            with open(log, "w") as out:
                self._retrain(run, tmp / "repo", functools.partial(self.shell, out=out))
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
            if run.ok:
                self.labels_of_model = run.labels
            run.outputs = None  # handed over; not kept twice
            self.runs.append(run)
            self.running, queued = None, self.queued
            self.queued = None
            if queued is not None and not self.stopping:
                self._start(queued)

    def _retrain(self, run: Run, copy: Path, sh: workspace_copy.Sh) -> None:
        workspace_copy.check_top_folder(self.root, sh)
        val_file = validation_file(self.decisions)
        with locked.holding_lock(self.decisions):  # validation.csv's writers hold it too
            snapshot = locked.read(self.decisions, self.classes)
            validation = val_file.read_bytes() if val_file.is_file() else None
        run.labels = len(person_decided(snapshot.decisions))
        params, start_from = self._run_params(run)
        workspace_copy.clone_workspace(self.root, copy, sh)
        workspace_copy.write_inputs(
            copy, self.decisions.resolve().relative_to(self.root), snapshot.data,
            self.params_file.resolve().relative_to(self.root), params, sh)
        if validation is not None:  # as the page left it: answers not committed yet too
            (copy / val_file.resolve().relative_to(self.root)).write_bytes(validation)
        if start_from is not None:
            workspace_copy.add_warm_start(copy, start_from, sh)
        workspace_copy.run_experiment(copy, run.name, sh)
        run.outputs = RunOutputs.of_repository(copy)
        run.val_accuracy, run.val_n = run.outputs.val_accuracy, run.outputs.val_n
        if self.warm_recipe:
            self.keep_weights(copy / default.MODEL)

    def _run_params(self, run: Run) -> tuple[dict, Path | None]:
        """The copy's params (the workspace's as the run starts, with the round or warm
        recipe) and the weights it starts from; names the run."""
        params_text = _read_text(self.params_file)
        review = parse_params(load_yaml(params_text, str(self.params_file))).review
        start_from = warm_start_due(run.labels, review.warm_after, self.last_weights())
        run.warm = start_from is not None
        run.name = experiment_name(run.labels, run.started, run.warm)
        recipe = self.warm_recipe if run.warm else self.recipe
        recipe_file = self.root / recipe if recipe else None
        recipe_text = None if recipe_file is None else _read_text(recipe_file)
        return round_params(params_text, recipe_text, self.threads, str(self.params_file),
                            str(recipe_file or self.params_file),
                            review.background_set), start_from

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

"""The repository under test: its paths and params, subprocesses, temporary git + DVC repos.

The one harness for tests and benchmarks (benchmarks/*.py import it too): `run` is how both run
a command (the environment's bin first on PATH, DVC analytics off), `init_repo` how both turn a
folder into a git + DVC repository."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REAL_DATA = Path(os.environ.get("CHIMUFFIN_REAL_DATA",
                                REPO.parent / "shared" / "data" / "chihuahua-muffin"))

# Small enough that a whole pipeline runs in seconds on 2 CPU cores.
TINY = {
    "base": {"image_size": 64},
    "sample": {"labeled_per_class": 6, "pool": 10, "test_per_class": 4, "val_per_class": 0},
    "prepare": {"val_fraction": 0.34},
    "train": {"epochs": 1, "batch_size": 4},
    "tlc": {"enabled": False},  # tests/test_tlc_pipeline.py runs the 3LC-enabled pipeline
}


def deep_update(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


def default_params_dict() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int | None = 900,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command and capture its output; `env` adds to this process's environment. With
    check, a non-zero exit fails with the command's output; timeout None waits as long as it
    takes."""
    e = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
         "DVC_NO_ANALYTICS": "1", **(env or {})}
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


REPO_FILES = ["dvc.yaml", "params.yaml", "recipes/reference.yaml", "recipes/round.yaml",
              "recipes/round_warm.yaml", "models/warm_start/README.md",
              "data/labels/decisions.csv", "data/labels/validation.csv", ".gitignore",
              ".dvcignore", "tlc-config.yaml"]


def init_repo(dest: Path, user: str = "test", email: str = "t@example.com",
              message: str = "init", dvc_cache: Path | None = None, dvc: bool = True) -> Path:
    """git init + dvc init in `dest` (analytics off; optionally a DVC cache shared between
    repositories; dvc=False: git only), with everything in it committed."""
    cache = [["dvc", "config", "cache.dir", str(dvc_cache)]] if dvc_cache else []
    dvc_init = [["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"], *cache]
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", email],
                ["git", "config", "user.name", user], *(dvc_init if dvc else []),
                ["git", "add", "-A"], ["git", "commit", "-qm", message]):
        run(cmd, dest)
    return dest


def make_repo(dest: Path, params: dict, **init) -> Path:
    """A temporary git + DVC repo holding this project's pipeline files and the given params
    (`init`: init_repo's committer, message or shared DVC cache)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in REPO_FILES:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / f, dest / f)
    # the stages run this copy of the code (src/stage.py): the files dvc.yaml's deps hash
    shutil.copytree(REPO / "src", dest / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return init_repo(dest, **init)


GUARDS = REPO / "tests" / "guards"


def guarded_env(tmp_path: Path, **extra: str) -> tuple[dict, Path]:
    """Env that loads tests/guards/sitecustomize.py into every Python subprocess: DNS lookups
    and outbound connections are refused and recorded in the returned log (which must stay
    empty); CHIMUFFIN_FORBID_TLC=<file> in `extra` also refuses and records `import tlc`."""
    log = tmp_path / "network.log"
    path = [str(GUARDS), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(path), "CHIMUFFIN_NETGUARD_LOG": str(log),
            "PYTHONUNBUFFERED": "1", **extra}, log

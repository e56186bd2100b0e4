"""docs/real-data.md, run as written on the embedded sample: every ```bash block in order, in a
temporary git + DVC repository after `make setup && make repro`, so that a change of the guide
that breaks one of its commands fails here. The guide's own markers say where the sample
differs: a block opening with a comment that says "the real data only" is skipped, and a line
ending in `# on the sample: X` runs X instead. Each block runs with `bash -euo pipefail`, the
environment's bin first on PATH (as after `source .venv/bin/activate`)."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers.net import free_port
from tests.helpers.repo import BIN, REPO, TINY, deep_update, default_params_dict, make_repo, run

pytestmark = pytest.mark.slow

GUIDE = REPO / "docs" / "real-data.md"
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
REAL_DATA_ONLY = "the real data only"
ON_THE_SAMPLE = re.compile(r"^(?P<indent>\s*).*#\s*on the sample:\s*(?P<sample>.*?)\s*$")
POOL_TRUTH = "data/raw/sample/pool_labels.csv"
THE_PERSON = "<the test, as the person on the review page>"

# Commands a test cannot run as written, and what stands in for each (None: nothing).
STAND_INS = {
    # the page waits for a person: the test starts it and answers its first page through the
    # page's own API (person_on_the_page); the guide's commit after it needs a changed label file
    "make review": THE_PERSON,
    # a temporary repository has no DVC remote
    "dvc push": None,
}


def stand_in(line: str) -> str | None:
    """The line itself, what stands in for it (STAND_INS), or None to drop it."""
    for command, replacement in STAND_INS.items():
        if re.fullmatch(rf"\s*{re.escape(command)}\s*(#.*)?", line):
            return replacement
    return line


def on_the_sample(line: str) -> str:
    m = ON_THE_SAMPLE.match(line)
    return m["indent"] + m["sample"] if m else line


def sample_block(block: str) -> str | None:
    """The block as it runs on the sample, or None when it is for the real data only."""
    first = block.lstrip().splitlines()[0] if block.strip() else ""
    if first.startswith("#") and REAL_DATA_ONLY in first:
        return None
    lines = [stand_in(on_the_sample(line)) for line in block.splitlines()]
    kept = "\n".join(line for line in lines if line is not None)
    return kept if kept.strip() else None


def guide_blocks(text: str) -> list[str]:
    return [b for b in map(sample_block, BASH_BLOCK.findall(text)) if b is not None]


# --- the parsing itself, on a guide of its own ---------------------------------------------------


def test_blocks_take_the_samples_lines_and_skip_what_the_sample_cannot_run():
    text = ("```bash\n# the real data only: copy it\ncp -r /x data/raw/x\n```\n"
            "```yaml\nprepare: {}\n```\n"
            "```bash\nN=500   # on the sample: N=30\nN=$N python - <<'EOF'\nprint(1)\nEOF\n```\n"
            "```bash\nmake review    # the page\n```\n"
            "```bash\ngit commit -m x\ndvc push   # with a remote\n```\n")
    assert guide_blocks(text) == [
        "N=30\nN=$N python - <<'EOF'\nprint(1)\nEOF",
        STAND_INS["make review"],
        "git commit -m x"]


def test_the_guide_has_blocks_to_run():
    blocks = guide_blocks(GUIDE.read_text())
    assert len(blocks) >= 5, blocks
    assert all(REAL_DATA_ONLY not in b for b in blocks)


# --- the guide, end to end -----------------------------------------------------------------------


TINY_FINISH = "recipes/tiny_finish.yaml"


def guide_params() -> dict:
    """TINY's training sizes on the sample as shipped (the guide's "on the sample" values, such
    as its validation size, are for that shape). Background retrains and the final step train
    TINY's one epoch: the round recipe's 300 steps of 64 images and the finishing recipe's 15
    epochs take minutes on 2 cores (and the round recipe's 80 px start exceeds TINY's 64 px
    images). A retrain starts once half a page of decisions is in."""
    params = deep_update(default_params_dict(), TINY)
    params["sample"] = default_params_dict()["sample"]
    params["review"].update(retrain_every=24, round_recipe="", warm_recipe="",
                            final_recipe=TINY_FINISH)
    return params


def guide_repo(root: Path) -> Path:
    """A fresh clone after `make setup && make repro`: the pipeline's files, the Makefile with
    `.venv` (this environment, kept out of git as the project's .gitignore keeps the folder),
    the pipeline run once and its lock committed."""
    params = guide_params()
    (root / TINY_FINISH).parent.mkdir(parents=True)
    (root / TINY_FINISH).write_text(yaml.safe_dump({"train": params["train"]}))
    make_repo(root, params)
    shutil.copy(REPO / "Makefile", root / "Makefile")
    (root / ".venv").symlink_to(BIN.parent, target_is_directory=True)
    with (root / ".git" / "info" / "exclude").open("a") as exclude:
        exclude.write("/.venv\n")
    run(["dvc", "repro", "-q"], root)
    run(["git", "add", "Makefile", "dvc.lock"], root)
    run(["git", "commit", "-qm", "make setup && make repro"], root)
    return root


def rows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str)


def block_env(tmp_path: Path) -> dict:
    # background retrains' throwaway copies go to the test's folder
    return {"TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}


def run_bash(block: str, root: Path, env: dict) -> str:
    p = run(["bash", "-euo", "pipefail", "-c", block], root, check=False, timeout=600, env=env)
    assert p.returncode == 0, f"docs/real-data.md block failed ({p.returncode}):\n{block}\n" \
                              f"--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"
    return p.stdout + p.stderr


def api(port: int, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def page_state(port: int, server: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            return api(port, "/api/state")
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise AssertionError(f"the review page never answered:\n{server.communicate()[0]}")


def a_model_finished(port: int, server: subprocess.Popen) -> None:
    """Until a background retrain the answers started has finished (the final step starts from
    the last background model; a person at the page goes on reviewing meanwhile)."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and server.poll() is None:
        runs = api(port, "/api/retrain")["runs"]
        assert not [r for r in runs if r["ok"] is False], runs
        if [r for r in runs if r["ok"]]:
            return
        time.sleep(2)
    raise AssertionError(f"no background model finished: {api(port, '/api/retrain')}")


def person_on_the_page(root: Path, env: dict) -> str:
    """`make review` with the test as the person: the page's server (`chimuffin review`, which
    make runs, on a free port rather than 8765), its first page verified with the true labels
    as exceptions, the background model it starts waited for, then Ctrl-C."""
    truth = rows(root / POOL_TRUTH).set_index("relative_path")["label"]
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "chimuffin"), "review", "--port", str(port)], cwd=root, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
             "DVC_NO_ANALYTICS": "1", **env})
    try:
        page = page_state(port, server)["pages"]["list"][0]
        exceptions = {im["path"]: truth[im["path"]] for im in page["images"]
                      if truth[im["path"]] != page["label"]}
        api(port, "/api/verify", {"page": page["page"], "exceptions": exceptions})
        a_model_finished(port, server)
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C when done
        out = server.communicate(timeout=120)[0]
    assert server.returncode == 0, out
    return out


def run_block(block: str, root: Path, env: dict) -> str:
    """The block's commands in one shell; where the person sits at the page, the test does."""
    parts = re.split(rf"^{re.escape(THE_PERSON)}$", block, flags=re.M)
    out = run_bash(parts[0], root, env) if parts[0].strip() else ""
    for rest in parts[1:]:
        out += person_on_the_page(root, env)
        out += run_bash(rest, root, env) if rest.strip() else ""
    return out


def sample_size(text: str, name: str) -> int | None:
    """The value the guide gives `name` on the sample (`... # on the sample: N=30`)."""
    m = re.search(rf"#\s*on the sample:\s*{name}=(\d+)\s*$", text, re.M)
    return int(m[1]) if m else None


def test_the_guide_runs_as_written_on_the_sample(tmp_path):
    started = time.monotonic()
    root = guide_repo(tmp_path / "repo")
    text = GUIDE.read_text()
    env = block_env(tmp_path)
    decisions = root / "data/labels/decisions.csv"
    sittings = 0
    for block in guide_blocks(text):
        before = len(rows(decisions))
        begun = time.monotonic()
        out = run_block(block, root, env)
        print(f"{time.monotonic() - begun:5.0f} s  {block.splitlines()[0]}")
        if re.search(r"^\s*chimuffin loop\b", block, re.M):
            sittings += 1  # the guide's sitting: it verified pages while a model retrained
            assert len(rows(decisions)) > before, out
            assert "a background retrain started" in out, out
    assert sittings >= 1, "the guide runs no `chimuffin loop` sitting"

    truth = rows(root / POOL_TRUTH).set_index("relative_path")["label"]
    validation = rows(root / "data/labels/validation.csv")
    n = sample_size(text, "N")
    assert n is not None and len(validation) == n, (n, validation)
    assert (validation["label"] == validation["path"].map(truth)).all(), validation
    verified = rows(decisions)
    assert len(verified) > 0 and (verified["label"] == verified["path"].map(truth)).all()
    assert not set(verified["path"]) & set(validation["path"])  # never verified twice
    # every label the guide made is committed: nothing it changed is left behind
    assert run(["git", "status", "--porcelain", "data/labels", "dvc.lock"], root).stdout == ""

    names = re.findall(r"dvc exp run\b.*?(?:-n|--name)[ =](\S+)", text)
    assert names, "the guide names no experiment (`dvc exp run -n NAME`)"
    # on every commit: the guide commits after its experiments
    shown = run(["dvc", "exp", "show", "--all-commits", "--csv"], root).stdout
    assert all(name in shown for name in names), (names, shown)

    outputs = re.findall(r"^chimuffin (?:predict|export)\b.*?-o (\S+)", text, re.M)
    assert {"predictions.csv", "models/model.int8.onnx"} <= set(outputs), outputs
    assert all((root / o).stat().st_size > 0 for o in outputs)
    tests = list((root / "data/raw/sample/test128").rglob("*.jpg"))
    assert len(rows(root / "predictions.csv")) == len(tests) > 0
    print(f"the guide ran in {time.monotonic() - started:.0f} s")

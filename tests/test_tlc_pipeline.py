"""3LC end to end, offline: the real dvc.yaml in a temporary git + DVC repo on tiny data, with
every Python process (dvc, stages, tools, the Object Service) under tests/guards/sitecustomize.py,
which refuses and records any DNS lookup or connection that leaves the machine."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.helpers.repo import BIN, deep_update, guarded_env, make_repo, run

TABLES = "data/3lc/chimuffin/datasets/chimuffin/tables"
RUN = "data/3lc/chimuffin/runs/train"
PY = str(BIN / "python")


def assert_offline(log: Path) -> None:
    assert not log.exists() or log.read_text() == "", f"network attempts:\n{log.read_text()}"


PROBE = """
import socket, urllib.request
def attempt(f):
    try:
        f()
    except OSError:
        pass
attempt(lambda: socket.getaddrinfo("example.com", 443))
attempt(lambda: socket.socket().connect(("192.0.2.1", 80)))
attempt(lambda: urllib.request.urlopen("https://pypi.org/simple/", timeout=5))
attempt(lambda: socket.create_connection(("127.0.0.1", 9), timeout=2))  # loopback: allowed
"""


def test_guards_record_network_attempts_and_tlc_imports(tmp_path):
    env, log = guarded_env(tmp_path, CHIMUFFIN_FORBID_TLC=str(tmp_path / "tlc.log"))
    run([PY, "-c", PROBE], tmp_path, env=env)
    lines = log.read_text().splitlines()
    assert len(lines) == 3, lines
    assert "example.com" in lines[0] and "192.0.2.1" in lines[1] and "pypi.org" in lines[2]
    p = run([PY, "-c", "import tlc"], tmp_path, check=False, env=env)
    assert p.returncode != 0 and "import tlc" in (tmp_path / "tlc.log").read_text()


def md5_files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def lock_outs(repo: Path, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]
    return {o["path"]: o["md5"] for o in lock["outs"]}


# A Dashboard commit, simulated: a sparse EditedTable revision beside the pipeline's table.
# It relabels a chihuahua, labels two pool images, deletes a third and sets a muffin's weight
# to 0 (so training gains one image: +2 pool labels, -1 unlabeled). It also prints where the
# table's first image resolves to, to check the alias after the repository moved.
EDIT = """
import json
from pathlib import Path
from chimuffin import tlcio
tlc = tlcio.load()
base = tlc.Table.from_url(str(Path("TABLES/train").resolve()))
paths = base.get_column("path").to_pylist()
row = {p: i for i, p in enumerate(paths)}
pool = [p for p in paths if "/undefined/" in p]
chihuahua = [p for p in paths if "/chihuahua/" in p][0]
muffin = [p for p in paths if "/muffin/" in p][0]
edits = {"label": {"runs_and_values": [[row[chihuahua], row[pool[0]]], 1, [row[pool[1]]], 0]},
         "weight": {"runs_and_values": [[row[muffin]], 0.0]},
         "SHOULD_DELETE": {"runs_and_values": [[row[pool[2]]], True]}}
revision = tlc.EditedTable(url=base.url.create_unique(), input_table_url=base, edits=edits)
revision.write_to_url()
print(json.dumps({"revision": str(revision.url), "image0": base[0]["image"],
                  "relabeled": chihuahua, "labeled": pool[:2], "deleted": pool[2],
                  "unlabeled": muffin}))
""".replace("TABLES", TABLES)


@pytest.mark.slow
def test_3lc_pipeline_offline_tables_run_dashboard_edit_pull_and_retrain(tmp_path,
                                                                         tiny_params_dict):
    params = deep_update(tiny_params_dict, {"tlc": {"enabled": True, "collect_every": 1}})
    repo = make_repo(tmp_path / "repo", params)
    env, log = guarded_env(tmp_path)
    run(["dvc", "repro", "train"], repo, env=env)

    # Tables: the pool is in train as `undefined` at weight 0; images under the data alias.
    clean = pd.read_parquet(repo / "data/clean/manifest.parquet")
    train = pd.read_parquet(repo / TABLES / "train/train.parquet")
    assert list(train.columns) == ["image", "label", "weight", "path"]
    assert len(train) == (clean["split"] == "train").sum() == 18
    pool = train["label"] == 2
    assert pool.sum() == 10 and (train.loc[pool, "weight"] == 0).all()
    assert (train.loc[~pool, "weight"] == 1).all()
    assert train["image"].str.startswith("<CHIMUFFIN_DATA>/sample/train128/").all()
    assert [len(pd.read_parquet(repo / TABLES / f"{s}/{s}.parquet")) for s in ("val", "test")] \
        == [4, 8]

    # The run: params, per-epoch scalars, and per-sample metrics with 3-D embeddings for
    # epoch 1 (collect_every 1) and the best model, on every table; empty loss for the pool.
    run_obj = json.loads((repo / RUN / "object.3lc.json").read_text())
    assert run_obj["constants"]["parameters"]["tlc"] == {"enabled": True, "collect_every": 1}
    assert run_obj["constants"]["outputs"][0]["epoch"] == 1
    assert {"train_loss", "val_accuracy", "lr"} <= set(run_obj["constants"]["outputs"][0])
    metrics = [pd.read_parquet(p) for p in sorted((repo / RUN).glob("reduced_*/*.parquet"))]
    assert len(metrics) == len(run_obj["metrics"]) == 6  # 2 collections x 3 tables
    for m in metrics:
        assert {"loss", "predicted", "confidence", "correct", "epoch", "best"} <= set(m.columns)
        assert all(len(v) == 3 and np.isfinite(v).all() for v in m["embedding_pacmap"])
    train_metrics = [m for m in metrics if len(m) == 18]
    assert sorted(m["best"].all() for m in train_metrics) == [False, True]
    for m in train_metrics:  # rows follow the table: NaN exactly where the label is undefined
        assert (m["loss"].isna() == pool).all() and (m["correct"].isna() == pool).all()

    # Reruns keep every table byte (object.3lc.json included), so DVC hashes do not move.
    before, outs = md5_files(repo / TABLES), lock_outs(repo, "tables")
    run(["dvc", "repro", "-f", "-s", "tables"], repo, env=env)
    assert md5_files(repo / TABLES) == before and lock_outs(repo, "tables") == outs
    assert "up to date" in run(["dvc", "status", "train"], repo, env=env).stdout
    images_before = json.loads((repo / "metrics/train/metrics.json").read_text())["train_images"]
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "pipeline with 3LC"], repo)

    # Move the repository: the tables resolve their images under the new location.
    moved = tmp_path / "moved"
    shutil.move(repo, moved)
    edit = json.loads(run([PY, "-c", EDIT], moved, env=env).stdout.strip().splitlines()[-1])
    assert edit["image0"].startswith(str(moved / "data/raw/sample/train128/"))
    assert Path(edit["image0"]).is_file()

    pulled = run([PY, "-m", "chimuffin.cli", "pull-3lc"], moved, env=env).stdout
    assert "5 decision(s) added or changed" in pulled, pulled
    decisions = pd.read_csv(moved / "data/labels/decisions.csv").set_index("path")
    assert (decisions["source"] == "3lc").all()
    assert decisions.loc[edit["relabeled"], "label"] == "muffin"
    assert decisions.loc[edit["labeled"], "label"].tolist() == ["muffin", "chihuahua"]
    assert decisions.loc[edit["deleted"], "label"] == "remove"
    assert decisions.loc[edit["unlabeled"], "label"] == "undefined"
    assert not Path(edit["revision"]).exists()  # moved to data/3lc-pulled

    # dvc repro: clean, tables and train rerun; the retrained model saw the fixed labels.
    out = run(["dvc", "repro", "train"], moved, env=env).stdout
    assert all(f"Running stage '{s}'" in out for s in ("clean", "tables", "train")), out
    clean = pd.read_parquet(moved / "data/clean/manifest.parquet").set_index("path")
    assert clean.loc[edit["relabeled"], "label"] == "muffin"
    assert edit["deleted"] not in clean.index
    images_after = json.loads((moved / "metrics/train/metrics.json").read_text())["train_images"]
    assert images_after == images_before + 1
    assert "nothing to pull" in run([PY, "-m", "chimuffin.cli", "pull-3lc"], moved, env=env).stdout
    assert_offline(log)


FAILING_REDUCTION = """
import numpy as np, pandas as pd, torch
from chimuffin import tlcio
from chimuffin.errors import UserError
from chimuffin.model import build_model
n = 12
df = pd.DataFrame({"path": [f"train128/undefined/u{i:02d}.jpg" for i in range(n)],
                   "split": "train", "label": ["chihuahua", "muffin", "undefined"] * 4,
                   "label_source": "folder", "idx": range(n)})
tables_dir = "data/3lc/chimuffin/datasets/chimuffin/tables"
tlcio.write_tables(df, tables_dir, ["chihuahua", "muffin"], "data/raw/x")
run = tlcio.TrainingRun("data/3lc/chimuffin/runs/train", tlcio.open_tables(tables_dir, df),
                        {}, ["chihuahua", "muffin"], seed=0, collect_every=0, n_neighbors=10,
                        batch_size=8, description="a diverged model")
model = build_model(2, [8], 0.0)
with torch.no_grad():
    model.layer4[1].bn2.bias.fill_(float("nan"))  # every embedding is NaN, as after divergence
try:
    run.finish(model, 1, np.zeros((n, 3, 32, 32), np.uint8), torch.device("cpu"))
except UserError as e:
    print("USERERROR", e)
"""


@pytest.mark.slow
def test_failed_reduction_stops_with_the_reason(tmp_path):
    shutil.copy(Path(__file__).parents[1] / "tlc-config.yaml", tmp_path)
    env, log = guarded_env(tmp_path)
    out = run([PY, "-c", FAILING_REDUCTION], tmp_path, env=env).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("USERERROR")]
    assert line and "PaCMAP reduction of the run's embeddings failed (0 of 1" in line[0]
    assert "Input X contains NaN" in line[0]  # the reason tlc only logged
    assert_offline(log)


def listening_addresses(port: int) -> set[str]:
    """Local addresses listening on `port` (from /proc/net/tcp*, hex encoded)."""
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(name).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                found.add(addr)
    return found


@pytest.mark.slow
def test_dashboard_serves_on_loopback_and_stops_on_ctrl_c(tmp_path, free_port):
    shutil.copy(Path(__file__).parents[1] / "tlc-config.yaml", tmp_path)
    env, log = guarded_env(tmp_path)
    port = free_port
    proc = subprocess.Popen([PY, "-m", "chimuffin.cli", "dashboard", "--port", str(port)],
                            cwd=tmp_path, env={**os.environ, **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        page, deadline = None, time.time() + 180
        while page is None and time.time() < deadline and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
            except OSError:
                time.sleep(1)
        assert page is not None and b"3LC Object Service is running" in page
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert "3LC Object Service stopped" in out and "Traceback" not in err
    assert not listening_addresses(port)
    assert_offline(log)

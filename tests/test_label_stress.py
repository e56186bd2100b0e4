"""The label file under every writer at once, with kill -9: the review server (answering
label actions over 127.0.0.1), `pull-3lc`, the pages of `chimuffin loop`'s sitting and hand
appends (`echo ... >> decisions.csv`), each in its own process; the server and two of the
tools are killed with SIGKILL halfway and started again. Afterwards every acknowledged row is
in the file, the file parses, and undo works. Bounded: a fixed number of writes, 127.0.0.1.

Prints the reliability line that docs/bad-input.md quotes:
    .venv/bin/python -m pytest -q -s -m slow tests/test_label_stress.py
"""

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chimuffin import atomic
from chimuffin.labels.rows import format_decisions, read_decisions
from tests.helpers.repo import REPO

CLASSES = ["chihuahua", "muffin"]
POOL = [f"train128/undefined/p{i:03d}.jpg" for i in range(40)]
DECISIONS = "data/labels/decisions.csv"
PAUSE = "0.1"  # seconds between a tool's writes


def build(root: Path) -> None:
    """What the review server reads (a manifest, plot and predictions; no image files are
    needed to label), params.yaml and an empty label file."""
    seeds = [f"train128/{c}/s{i}.jpg" for c in CLASSES for i in range(2)]
    paths = POOL + seeds
    manifest = pd.DataFrame({
        "path": paths, "split": "train",
        "label": ["undefined"] * len(POOL) + [p.split("/")[1] for p in seeds],
        "label_source": "folder", "idx": range(len(paths)),
        "content_hash": [f"h{i}" for i in range(len(paths))], "width": 64, "height": 64})
    atomic.write_parquet(root / "data/prepared/manifest.parquet", manifest)
    xy = np.arange(len(paths), dtype=float)
    atomic.write_parquet(root / "data/embed/pacmap.parquet",
                         manifest[["path", "split", "label"]].assign(x=xy, y=xy))
    atomic.write_parquet(root / "metrics/eval/predictions.parquet",
                         manifest[["path"]].assign(prediction="muffin", confidence=0.7))
    (root / "dataset").mkdir()
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (root / DECISIONS).parent.mkdir(parents=True)
    (root / DECISIONS).write_text(format_decisions([]))


class Writer:
    """One writer process; its acknowledged rows are collected from its output."""

    def __init__(self, mode: str, root: Path, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.label_writers", mode, str(root), *args],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        self.acked: list[tuple[str, str, str]] = []
        self.port: int | None = None
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("ACK "):
                self.acked.append(tuple(line[4:].strip().split(",")))
            elif self.port is None and line.strip().isdigit():
                self.port = int(line)
                self.ready.set()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)

    def finish(self, timeout: float) -> None:
        assert self.proc.wait(timeout=timeout) == 0
        self.reader.join(timeout=30)


def post(port: int, action: str, body: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", f"/api/{action}", json.dumps(body),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    out = r.status, json.loads(r.read())
    conn.close()
    return out


def start_server(root: Path) -> Writer:
    server = Writer("server", root)
    assert server.ready.wait(60), "the review server did not start"
    return server


@pytest.mark.slow
def test_every_acknowledged_row_survives_all_writers_and_kills(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    build(root)
    rng = random.Random(0)
    acked: list[tuple[str, str, str]] = []
    kills = 0

    # hand appends, every ~10 ms, for as long as the others write
    stop = threading.Event()

    def hand() -> None:
        i = 0
        while not stop.is_set() and i < 300:
            row = (f"train128/undefined/hand-{i}.jpg", "chihuahua", "human")
            with open(root / DECISIONS, "a") as f:
                f.write(",".join(row) + ",by hand\n")
            acked.append(row)
            i += 1
            time.sleep(0.01)

    appender = threading.Thread(target=hand)
    appender.start()
    # the pull tool and a sitting write until they are killed (kill -9 after a few writes, then
    # started again for 4 more); one more sitting is not killed
    victims = [Writer("sitting", root, "sit-a", "100", PAUSE),
               Writer("pull", root, "pull-a", "100", PAUSE)]
    tools = [Writer("sitting", root, "sit-b", "6", PAUSE)]
    server = start_server(root)
    processes = len(victims) + len(tools) + 1

    def wait_for_a_few_writes(victim: Writer) -> None:
        deadline = time.monotonic() + 60
        while len(victim.acked) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside a later write

    try:
        for i, path in enumerate(POOL[:36]):
            if i in (12, 24):  # kill -9 the server mid-burst, and a tool mid-write
                server.kill()
                acked += server.acked
                server = start_server(root)
                victim = victims[i // 12 - 1]
                wait_for_a_few_writes(victim)
                assert victim.proc.poll() is None, "the tool finished before its kill"
                victim.kill()
                kills += 2
                acked += victim.acked
                mode, prefix = victim.proc.args[3], victim.proc.args[5]
                tools.append(Writer(mode, root, f"{prefix}-again", "4", PAUSE))
                processes += 2
            time.sleep(0.05)
            label = rng.choice(CLASSES)
            status, _ = post(server.port, "label", {"paths": [path], "label": label})
            if status == 200:
                acked.append((path, label, "human"))
        for t in tools:
            t.finish(timeout=300)
            acked += t.acked
    finally:
        stop.set()
        appender.join(timeout=30)
        for t in victims + tools:
            if t.proc.poll() is None:
                t.kill()

    try:
        decisions = read_decisions(root / DECISIONS, CLASSES)  # the file parses
        have = {d.path: (d.path, d.label, d.source) for d in decisions}
        lost = [row for row in acked if have.get(row[0]) != row]
        writers = 4  # server, pull-3lc, the sitting's pages, hand appends
        print(f"\nlabel-file stress: {writers} kinds of writer, {processes} processes, "
              f"{kills} kill -9, {len(acked)} acknowledged rows, {len(lost)} lost")
        assert lost == []
        # undo works after all this: a new action, then undo puts the file back byte for byte
        before = (root / DECISIONS).read_bytes()
        status, got = post(server.port, "label", {"paths": [POOL[39]], "label": "muffin"})
        assert status == 200 and got["changed"] == 1
        status, got = post(server.port, "undo", {})
        assert status == 200, got
        assert (root / DECISIONS).read_bytes() == before
    finally:
        server.kill()

"""Writers of one label file, each in its own process, for the label-file stress test:
`python -m tests.helpers.label_writers MODE ROOT PREFIX N PAUSE` (from the repository root).

MODE is `server` (the review page's server; prints its port), or `pull`, `sitting`: N writes
through `chimuffin pull-3lc` (3LC's revision reader stood in for: no tlc) or as the sitting of
`chimuffin loop` writes a page, each adding two rows of its own (paths under PREFIX), PAUSE
seconds apart. After each write returns, the rows it acknowledged are printed as
`ACK path,label,source`: whatever was printed must be in the file at the end.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

CLASSES = ["chihuahua", "muffin"]
DECISIONS = "data/labels/decisions.csv"


def ack(rows) -> None:
    for path, label, source in rows:
        print(f"ACK {path},{label},{source}", flush=True)


def serve(root: Path) -> None:
    from chimuffin.review.data import Paths, ReviewData
    from chimuffin.review.server import make_server

    server = make_server(ReviewData(Paths.under(root), CLASSES, root / "dataset"), port=0)
    print(server.server_address[1], flush=True)
    server.serve_forever(poll_interval=0.05)


def pull(root: Path, prefix: str, n: int, pause: float) -> None:
    from chimuffin import tlcio
    from chimuffin.cli import main

    for k in range(n):
        time.sleep(pause)
        paths = [f"train128/undefined/{prefix}-{k}-{j}.jpg" for j in range(2)]
        base = pd.DataFrame({"path": paths, "label": "undefined", "weight": 0.0})
        latest = base.assign(label="chihuahua")
        rev = tlcio.Revision("tables/train", "tables/train_0001", [root / "rev"], [], base,
                             latest)
        tlcio.read_latest_revision = lambda table, config, rev=rev: rev
        assert main(["pull-3lc", "--decisions", str(root / DECISIONS), "--params",
                     str(root / "params.yaml"), "--keep-revisions"]) == 0
        ack((p, "chihuahua", "3lc") for p in paths)


def sitting(root: Path, prefix: str, n: int, pause: float) -> None:
    """Pages written as `chimuffin loop`'s sitting writes them (simulate/sitting.py)."""
    from chimuffin.labels import locked
    from chimuffin.labels.rows import Decision, merge_decisions

    for k in range(n):
        time.sleep(pause)
        new = [Decision(f"train128/undefined/{prefix}-{k}-{j}.jpg", "muffin", "oracle", "")
               for j in range(2)]
        locked.update(root / DECISIONS, CLASSES, lambda cur, new=new: merge_decisions(cur, new)[0])
        ack((d.path, d.label, d.source) for d in new)


if __name__ == "__main__":
    mode, root = sys.argv[1], Path(sys.argv[2])
    if mode == "server":
        serve(root)
    else:
        {"pull": pull, "sitting": sitting}[mode](root, sys.argv[3], int(sys.argv[4]),
                                                float(sys.argv[5]))

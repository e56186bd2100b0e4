"""What 3LC adds to a training run, at the real dataset's size, without training a model.

Times each 3LC step of the pipeline on synthetic rows shaped like the hackathon data (a train
table of 4,693 images = 160 labeled + 4,533 pool, a val table of 40): `import tlc`, writing the
tables, one metrics collection (per-sample columns + 512-d embeddings for every table row; the
model's forward pass is left out, it costs what `evaluate` costs), and the final 3-D PaCMAP
reduction of all collections. Prints seconds per step, and the collection and reduction cost as
a ratio of one training epoch over 4,733 images on 2 CPU cores, taken as 150-200 s (24-32 img/s;
benchmarks/README.md, training throughput, has the measured rates).

    python benchmarks/tlc_overhead.py [--train-rows 4693] [--val-rows 40] [--collections 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
EPOCH_SECONDS = (150.0, 200.0)  # one epoch over 4,733 images at 24-32 img/s on 2 CPU cores


def synthetic_manifest(train_rows: int, val_rows: int, labeled: int) -> pd.DataFrame:
    rows = []
    for i in range(train_rows):
        label = ("chihuahua", "muffin")[i % 2] if i < labeled else "undefined"
        folder = "undefined" if label == "undefined" else label
        rows.append((f"train128/{folder}/img_{i:05d}.jpg", "train", label))
    for i in range(val_rows):
        rows.append((f"train128/{('chihuahua', 'muffin')[i % 2]}/val_{i:05d}.jpg", "val",
                     ("chihuahua", "muffin")[i % 2]))
    df = pd.DataFrame(rows, columns=["path", "split", "label"])
    return df.assign(label_source="folder", idx=np.arange(len(df)))


def fake_predictions(frame: pd.DataFrame,
                     rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    n = len(frame)
    p = rng.random(n)
    known = frame["label"] != "undefined"
    pred = pd.DataFrame({"prediction": np.where(p > 0.5, "muffin", "chihuahua"),
                         "confidence": np.maximum(p, 1 - p),
                         "loss": np.where(known, rng.random(n), np.nan),
                         "correct": np.where(known, (rng.random(n) > 0.3).astype(float), np.nan)})
    return pred, rng.normal(size=(n, 512)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-rows", type=int, default=4693)
    ap.add_argument("--val-rows", type=int, default=40)
    ap.add_argument("--labeled", type=int, default=160)
    ap.add_argument("--collections", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="tlc-overhead-") as tmp:
        root = Path(tmp)
        shutil.copy(REPO / "tlc-config.yaml", root / "tlc-config.yaml")
        config = root / "tlc-config.yaml"
        from chimuffin import tlcio

        times: dict[str, float] = {}
        t = time.perf_counter()
        tlcio.load(config)
        times["import tlc"] = time.perf_counter() - t

        df = synthetic_manifest(args.train_rows, args.val_rows, args.labeled)
        tables_dir = root / "data/3lc/chimuffin/datasets/chimuffin/tables"
        t = time.perf_counter()
        tlcio.write_tables(df, tables_dir, ["chihuahua", "muffin"], root / "data/raw/x", config)
        times["write tables"] = time.perf_counter() - t

        t = time.perf_counter()
        run = tlcio.TrainingRun(root / "data/3lc/chimuffin/runs/train",
                                tlcio.open_tables(tables_dir, df, config), {"benchmark": True},
                                ["chihuahua", "muffin"], seed=42, collect_every=1,
                                n_neighbors=10, batch_size=128, description="benchmark",
                                config=config)
        times["open tables + start run"] = time.perf_counter() - t

        rng = np.random.default_rng(0)
        t = time.perf_counter()
        for epoch in range(1, args.collections + 1):
            for table in run.tables:  # what TrainingRun.collect writes, minus the forward pass
                pred, emb = fake_predictions(table.frame, rng)
                run.run.add_metrics(tlcio.metrics_columns(pred, emb, run.classes, epoch, False),
                                    column_schemas=run.schemas, foreign_table_url=table.url)
            run.collected.append((epoch, False))
        per_collection = (time.perf_counter() - t) / args.collections
        times["one collection (write metrics)"] = per_collection

        t = time.perf_counter()
        run.reduce()
        reduce_seconds = time.perf_counter() - t
        times[f"PaCMAP 3-D reduction of {args.collections} collections"] = reduce_seconds

    rows = args.train_rows + args.val_rows
    print(f"3LC overhead, {rows} rows ({args.train_rows} train + {args.val_rows} val), "
          f"{args.collections} collections")
    for name, seconds in times.items():
        print(f"  {name:45s} {seconds:8.1f} s")
    per_reduced = reduce_seconds / args.collections
    lo, hi = EPOCH_SECONDS
    print(f"  per collection incl. its share of the reduction: {per_collection + per_reduced:.1f} s"
          f" = {(per_collection + per_reduced) / hi:.2f}-{(per_collection + per_reduced) / lo:.2f}"
          f" of one training epoch ({lo:.0f}-{hi:.0f} s), plus the forward pass over {rows} "
          "images (about one `evaluate`)")


if __name__ == "__main__":
    main()

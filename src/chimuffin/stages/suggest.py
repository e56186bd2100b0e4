"""Stage `suggest`: label suggestions for the pool, label-issue scores, and the review queue."""

from pathlib import Path

import pandas as pd

from chimuffin import atomic
from chimuffin.data.manifest import open_cache, read_manifest
from chimuffin.embeddings import read_embeddings
from chimuffin.errors import UserError
from chimuffin.stages import common
from chimuffin.suggest import align, build_tables, pixel_signatures, summarize


def main(args, params) -> None:
    classes, cfg = params.base.classes, params.suggest
    df = read_manifest(Path(args.clean) / "manifest.parquet")
    pred_path = Path(args.predictions)
    if not pred_path.is_file():
        raise UserError(f"{pred_path}: predictions not found (run `dvc repro evaluate`)")
    pred = pd.read_parquet(pred_path)
    missing = [f"p_{c}" for c in classes if f"p_{c}" not in pred.columns]
    if missing:
        raise UserError(f"{pred_path}: lacks column(s) {', '.join(missing)} for base.classes")
    p_model = pred[[f"p_{c}" for c in classes]].to_numpy()[align(df, pred["path"], str(pred_path))]
    emb_paths, emb = read_embeddings(Path(args.embed) / "embeddings.parquet")
    emb = emb[align(df, emb_paths, "embeddings.parquet")]
    images = open_cache(Path(args.prepared) / "images.npy")
    signatures = pixel_signatures(images, df["idx"].to_numpy())

    tables = build_tables(df, p_model, emb, signatures, classes, cfg)
    summary = summarize(tables, classes, cfg)
    with atomic.atomic_dir(args.out) as tmp:
        for name, table in tables.items():
            atomic.write_parquet(tmp / f"{name}.parquet", table)
        atomic.write_json(tmp / "summary.json", summary)
    print(f"suggest: {summary['pool']} pool images ({summary['agree']} where model and "
          f"neighbours agree); proposed at score >= 0.9: {summary['proposed_by_min_score']['0.9']}"
          f"; {summary['label_issues_over_threshold']} of {summary['labeled']} labeled images "
          f"look mislabeled; {summary['near_duplicates']} near duplicates; review queue "
          f"{summary['review_queue']} images in {summary['review_clusters']} clusters")


if __name__ == "__main__":
    p = common.parser(__doc__)
    p.add_argument("--clean", required=True)
    p.add_argument("--prepared", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--embed", required=True)
    p.add_argument("--out", required=True)
    common.run(main, p.parse_args())

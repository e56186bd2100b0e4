"""Stage `suggest`: label suggestions for the pool, label-issue scores, the review queue, and
the review pages."""

from pathlib import Path

from chimuffin import atomic, paths
from chimuffin.curate.pages import build_pages, summarize_pages
from chimuffin.curate.scoring import build_tables, pixel_signatures, summarize
from chimuffin.data.manifest import align, open_cache, read_manifest
from chimuffin.infer.embeddings import read_embeddings
from chimuffin.infer.prediction_table import read_predictions
from chimuffin.stages import common

TABLE_FILES = {"suggestions": paths.SUGGESTIONS_FILE, "neighbours": paths.NEIGHBOURS_FILE,
               "label_issues": paths.LABEL_ISSUES_FILE, "review_queue": paths.QUEUE_FILE,
               "pages": paths.PAGES_FILE}


def main(args, params) -> None:
    classes, cfg = params.base.classes, params.suggest
    df = read_manifest(Path(args.clean) / paths.MANIFEST_FILE)
    pred_path = Path(args.predictions)
    pred = read_predictions(pred_path, classes)
    at = align(df, pred["path"], str(pred_path), "suggest")
    p_model = pred[[f"p_{c}" for c in classes]].to_numpy()[at]
    emb_paths, emb = read_embeddings(args.embeddings)
    emb = emb[align(df, emb_paths, args.embeddings, "suggest")]
    images = open_cache(Path(args.prepared) / paths.IMAGES_FILE)
    signatures = pixel_signatures(images, df["idx"].to_numpy())

    tables = build_tables(df, p_model, emb, signatures, classes, cfg)
    pool_emb = emb[align(tables["suggestions"], df["path"], "the clean manifest", "suggest")]
    tables["pages"] = build_pages(tables["suggestions"], pool_emb, cfg.page_size)
    summary = {**summarize(tables, classes, cfg),
               **summarize_pages(tables["pages"], classes, cfg.page_size)}
    with atomic.atomic_dir(args.out) as tmp:
        for name, table in tables.items():
            atomic.write_parquet(tmp / TABLE_FILES[name], table)
        atomic.write_json(tmp / paths.SUMMARY_FILE, summary)
    print(f"suggest: {summary['pool']} pool images ({summary['agree']} where model and "
          f"neighbours agree); proposed at score >= 0.9: {summary['proposed_by_min_score']['0.9']}"
          f"; {summary['label_issues_over_threshold']} of {summary['labeled']} labeled images "
          f"look mislabeled; {summary['near_duplicates']} near duplicates; review queue "
          f"{summary['review_queue']} images in {summary['review_clusters']} clusters; "
          f"{summary['pages']} review pages of up to {cfg.page_size}, the most confident first")


if __name__ == "__main__":
    p = common.parser(__doc__)
    p.add_argument("--clean", required=True)
    p.add_argument("--prepared", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--embeddings", required=True)
    p.add_argument("--out", required=True)
    common.run(main, p.parse_args())

"""Stage `embed`: the evaluate stage's 512-d embeddings mapped by PaCMAP to 2-D and 3-D, and a
scatter plot. No model runs here: evaluate's one pass over every image made the embeddings."""

from pathlib import Path

import pandas as pd

from chimuffin import atomic, paths
from chimuffin.data.manifest import align, read_manifest
from chimuffin.infer.embeddings import (
    PACMAP_NEIGHBORS,
    pacmap_reduce,
    read_embeddings,
    scatter_png,
)
from chimuffin.progress import timed
from chimuffin.stages import common


def main(args, params) -> None:
    df = read_manifest(Path(args.clean) / paths.MANIFEST_FILE)
    emb_paths, emb = read_embeddings(args.embeddings)
    emb = emb[align(df, emb_paths, args.embeddings, "embed")]
    seed, k = params.base.seed, PACMAP_NEIGHBORS
    # PaCMAP reports no progress; its first call in a fresh environment also compiles numba code
    with timed(f"embed: PaCMAP 2-D of {len(df)} embeddings"):
        xy = pacmap_reduce(emb, 2, k, seed)
    with timed(f"embed: PaCMAP 3-D of {len(df)} embeddings"):
        xyz = pacmap_reduce(emb, 3, k, seed)
    coords = pd.DataFrame({"path": df["path"].to_numpy(), "split": df["split"].to_numpy(),
                           "label": df["label"].to_numpy(), "x": xy[:, 0], "y": xy[:, 1],
                           "x3": xyz[:, 0], "y3": xyz[:, 1], "z3": xyz[:, 2]})
    atomic.write_parquet(args.out, coords)
    with atomic.atomic_path(args.plot, suffix=".png") as tmp_png:
        scatter_png(xy, df["label"], tmp_png, f"PaCMAP of {len(df)} images (by label)")
    print(f"embed: {len(df)} embeddings -> PaCMAP 2-D/3-D in {args.out}, {args.plot}")


if __name__ == "__main__":
    p = common.parser(__doc__)
    p.add_argument("--clean", required=True)
    p.add_argument("--embeddings", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--plot", required=True)
    common.run(main, p.parse_args())

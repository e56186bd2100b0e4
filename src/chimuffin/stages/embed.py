"""Stage `embed`: 512-d embeddings of every image, PaCMAP 2-D and 3-D, and a scatter plot."""

from pathlib import Path

import pandas as pd

from chimuffin import atomic, paths, runtime
from chimuffin.data.manifest import open_cache, read_manifest
from chimuffin.infer.embeddings import embeddings_frame, pacmap_reduce, scatter_png
from chimuffin.infer.manifest_predictions import predict_manifest
from chimuffin.model import load_checkpoint
from chimuffin.progress import Progress, timed
from chimuffin.stages import common


def main(args, params) -> None:
    runtime.setup(params.base.seed, params.runtime.threads)
    device = runtime.pick_device(params.runtime.device)
    df = read_manifest(Path(args.clean) / paths.MANIFEST_FILE)
    images = open_cache(Path(args.prepared) / paths.IMAGES_FILE)
    model, _ = load_checkpoint(args.model, device=str(device), classes=params.base.classes)
    with Progress("embed", len(df)) as bar:
        _, emb = predict_manifest(model, images, df, params.base.classes,
                                  params.embed.batch_size, device, with_embeddings=True,
                                  progress=bar.update)
    seed, k = params.base.seed, params.embed.n_neighbors
    # PaCMAP reports no progress; its first call in a fresh environment also compiles numba code
    with timed(f"embed: PaCMAP 2-D of {len(df)} embeddings"):
        xy = pacmap_reduce(emb, 2, k, seed)
    with timed(f"embed: PaCMAP 3-D of {len(df)} embeddings"):
        xyz = pacmap_reduce(emb, 3, k, seed)
    coords = pd.DataFrame({"path": df["path"].to_numpy(), "split": df["split"].to_numpy(),
                           "label": df["label"].to_numpy(), "x": xy[:, 0], "y": xy[:, 1],
                           "x3": xyz[:, 0], "y3": xyz[:, 1], "z3": xyz[:, 2]})
    with atomic.atomic_dir(args.out) as tmp:
        atomic.write_parquet(tmp / paths.EMBEDDINGS_FILE, embeddings_frame(df["path"], emb))
        atomic.write_parquet(tmp / paths.PACMAP_FILE, coords)
    with atomic.atomic_path(args.plot, suffix=".png") as tmp_png:
        scatter_png(xy, df["label"], tmp_png, f"PaCMAP of {len(df)} images (by label)")
    print(f"embed: {len(df)} images -> {emb.shape[1]}-d embeddings, PaCMAP 2-D/3-D, {args.plot}")


if __name__ == "__main__":
    p = common.parser(__doc__)
    p.add_argument("--clean", required=True)
    p.add_argument("--prepared", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--plot", required=True)
    common.run(main, p.parse_args())

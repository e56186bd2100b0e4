"""`chimuffin predict PATH...`: classify image files or folders with a trained model.

Exit codes: 0 when at least one image was classified (unreadable files are reported, per file,
on stderr and as rows with an `error` in CSV/JSON output); 1 when nothing could be classified
(every file failed or was missing); 2 for a usage error (bad option, folders without any image,
missing or unloadable model); 130 on Ctrl-C.
"""

from __future__ import annotations

import sys

from chimuffin import atomic, paths

FORMATS = ("table", "csv", "json")


def register(sub) -> None:
    p = sub.add_parser("predict", help="classify image files or folders with a trained model",
                       description=__doc__)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="image files and/or folders (searched recursively)")
    p.add_argument("--model", default=paths.MODEL,
                   help="checkpoint written by the train stage (default %(default)s)")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table (aligned text), csv or json (default %(default)s)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write the results to FILE, atomically (default: stdout)")
    p.add_argument("--tta-flip", action="store_true",
                   help="average the logits of the image and its mirror image (default: off)")
    p.add_argument("--heatmaps", metavar="DIR",
                   help="also write one PNG per image into DIR: the image, its class-activation "
                   "heatmap overlay (Grad-CAM, for the class shown), the class and its score "
                   "(default: no heatmaps)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="images per forward pass (default %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto uses CUDA when present (default %(default)s)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads; 0 = every core this process may use (default %(default)s)")
    p.set_defaults(func=run)


def no_images_message(paths_given: list[str], skipped: int) -> str:
    """The error for folders that hold no image at all."""
    from chimuffin.data.images import IMAGE_SUFFIXES

    common = [".jpg", ".jpeg", ".png"]
    suffixes = "/".join(common + sorted(IMAGE_SUFFIXES - set(common)))
    other = f"; {skipped} other file(s) skipped" if skipped else ""
    return (f"no images found in {', '.join(paths_given)} (looked for {suffixes} files in "
            f"every subfolder, hidden files skipped{other})")


def run(args) -> int:
    import pandas as pd
    from tqdm import tqdm

    from chimuffin import runtime
    from chimuffin.errors import UserError
    from chimuffin.infer.predict_files import classify, collect_inputs, missing_rows, render
    from chimuffin.model import load_checkpoint

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0, got {args.threads}")
    if args.output:
        atomic.check_target(args.output)
    if args.heatmaps:
        from chimuffin.infer.heatmap_files import check_heatmap_dir

        check_heatmap_dir(args.heatmaps)
    found = collect_inputs(args.paths)
    if not found.items and not found.missing:  # only folders, and no image in any of them
        raise UserError(no_images_message(args.paths, found.skipped))
    runtime.setup(0, args.threads)  # deterministic kernels; the seed is unused
    device = runtime.pick_device(args.device)
    model, meta = load_checkpoint(args.model, device=str(device))
    classes = list(meta["classes"])
    with tqdm(total=len(found.items), unit="img", desc="predict", file=sys.stderr,
              disable=None if len(found.items) > 1 else True) as bar:
        df = classify(model, meta, found.items, args.batch_size, device, args.tta_flip,
                      progress=bar.update)
    if args.heatmaps:  # before the results: a folder that fails leaves nothing written
        from chimuffin.infer.heatmap_files import write_heatmaps

        n_maps = write_heatmaps(model, meta, found.items, df, args.heatmaps, args.batch_size,
                                device)
    df = pd.concat([missing_rows(found.missing, classes), df], ignore_index=True)

    text = render(df, args.format, classes)
    if args.output:
        with atomic.cannot_write_as_user_error(args.output):
            atomic.write_text(args.output, text)
    else:
        sys.stdout.write(text)
    failed = df[df["error"] != ""]
    for path, reason in zip(failed["path"], failed["error"], strict=True):
        print(f"chimuffin predict: {path}: {reason}", file=sys.stderr)
    n_ok = len(df) - len(failed)
    summary = f"chimuffin predict: classified {n_ok} image(s), {len(failed)} failed"
    if found.skipped:
        summary += f", {found.skipped} non-image file(s) in folders skipped"
    summary += f"; {n_maps} heatmaps in {args.heatmaps}" if args.heatmaps else ""
    print(summary + (f"; results in {args.output}" if args.output else ""), file=sys.stderr)
    return 0 if n_ok else 1

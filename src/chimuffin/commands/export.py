"""`chimuffin export`: the trained model as ONNX (the only format; `--onnx` is optional),
preprocessing inside the graph.

The ONNX input is `image`: uint8 RGB NCHW at the checkpoint's image_size (0-255); scaling and
mean/std normalisation run inside the model. Its metadata_props (keys chimuffin.*) record the
image size, mean/std, class names, channel order and how to decode and resize an image.

--quantize static writes an int8 model whose activation ranges are calibrated on training
images: by default up to 256 non-test images of the pipeline's cache (data/prepared/images.npy
rows listed in data/clean/manifest.parquet), or the image files/folders given with
--calibration. benchmarks/onnx_quantization.py measures it against float32.
"""

from __future__ import annotations

from chimuffin import paths

CALIBRATION_IMAGES = 256
QUANTIZE_MODES = ("static",)  # as infer/onnx_export.py's; not imported: it loads torch


def register(sub) -> None:
    p = sub.add_parser("export", help="export the trained model as ONNX", description=__doc__)
    p.add_argument("--onnx", action="store_true",
                   help="ONNX: the default and, so far, the only format (optional)")
    p.add_argument("--model", default=paths.MODEL,
                   help="checkpoint written by the train stage (default %(default)s)")
    p.add_argument("--output", "-o", default=paths.ONNX,
                   help="ONNX file to write (default %(default)s)")
    p.add_argument("--quantize", choices=QUANTIZE_MODES,
                   help="int8 quantisation with onnxruntime: static (weights and activations, "
                        "calibrated; 2x float32's speed on CPU: benchmarks/README.md) "
                        "(default: none, float32)")
    p.add_argument("--calibration", nargs="+", metavar="PATH",
                   help="image files/folders to calibrate static quantisation on (default: "
                        f"up to {CALIBRATION_IMAGES} of the pipeline's non-test images)")
    p.add_argument("--prepared", default=paths.PREPARED,
                   help="the pipeline's prepared folder, for the default calibration images "
                        "(default %(default)s)")
    p.add_argument("--clean", default=paths.CLEAN,
                   help="the pipeline's clean folder: which cached images are not test "
                        "(default %(default)s)")
    p.set_defaults(func=run)


def pipeline_calibration(prepared: str, clean: str, size: int, n: int, seed: int = 0):
    """A seeded sample of the cached non-test images (test images never tune anything)."""
    from pathlib import Path

    import numpy as np

    from chimuffin.data.manifest import open_cache, read_manifest
    from chimuffin.errors import UserError

    df = read_manifest(Path(clean) / paths.MANIFEST_FILE)
    cache = open_cache(Path(prepared) / paths.IMAGES_FILE)
    if cache.shape[-1] != size:
        raise UserError(f"{prepared}/images.npy holds {cache.shape[-1]} px images but the "
                        f"model expects {size} px: pass --calibration with image folders")
    rows = df.loc[df["split"] != "test", "idx"].to_numpy()
    pick = np.sort(np.random.default_rng(seed).permutation(rows)[:n])
    return np.asarray(cache[pick])


def files_calibration(paths: list[str], size: int, n: int):
    from chimuffin.errors import UserError
    from chimuffin.infer.predict_files import collect_inputs, decode_chunk

    found = collect_inputs(paths)
    images, _, _ = decode_chunk(found.items[:n], size)
    if not len(images):
        raise UserError(f"--calibration {' '.join(paths)}: no decodable images")
    return images


def run(args) -> int:
    from chimuffin.atomic import cannot_write_as_user_error, check_target
    from chimuffin.errors import UserError
    from chimuffin.infer.onnx_export import FP32_TOLERANCE, export_onnx, read_metadata
    from chimuffin.model import load_checkpoint

    if args.calibration and args.quantize != "static":
        raise UserError("--calibration is only used with --quantize static")
    check_target(args.output)
    model, meta = load_checkpoint(args.model)
    size = int(meta["image_size"])
    calib = None
    if args.quantize == "static":
        calib = (files_calibration(args.calibration, size, CALIBRATION_IMAGES) if args.calibration
                 else pipeline_calibration(args.prepared, args.clean, size, CALIBRATION_IMAGES))
    with cannot_write_as_user_error(args.output):
        out, diff = export_onnx(model, meta, args.output, quantize=args.quantize or "",
                                calibration=calib)
    kind = f"{args.quantize} int8" if args.quantize else "float32"
    check = "" if args.quantize else f" (tolerance {FP32_TOLERANCE:g})"
    print(f"export: {args.model} -> {out} ({kind}, input uint8 RGB NCHW {size}x{size}, "
          f"classes {', '.join(meta['classes'])}); max |p_onnx - p_torch| on 8 random images: "
          f"{diff:.2e}{check}")
    if args.quantize:
        print(f"export: {read_metadata(out)['chimuffin.quantization']}")
    return 0

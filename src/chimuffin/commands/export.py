"""`chimuffin export --onnx`: the trained model as ONNX, preprocessing inside the graph.

The ONNX input is `image`: uint8 RGB NCHW at the checkpoint's image_size (0-255); scaling and
mean/std normalisation run inside the model. Its metadata_props (keys chimuffin.*) record the
image size, mean/std, class names, channel order and how to decode and resize an image.
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="export the trained model (ONNX)", description=__doc__)
    p.add_argument("--onnx", action="store_true", required=True,
                   help="export to ONNX (the only format so far)")
    p.add_argument("--model", default="models/best.pth", help="checkpoint (default %(default)s)")
    p.add_argument("--output", "-o", default="models/model.onnx",
                   help="ONNX file to write (default %(default)s)")
    p.add_argument("--quantize", action="store_true",
                   help="dynamic int8 quantisation (onnxruntime quantize_dynamic: int8 weights, "
                        "activations quantised at run time); see benchmarks/onnx_quantization.py "
                        "for its measured speed and accuracy change")
    p.set_defaults(func=run)


def run(args) -> int:
    from chimuffin.model import load_checkpoint
    from chimuffin.onnx_export import FP32_TOLERANCE, export_onnx

    model, meta = load_checkpoint(args.model)
    out, diff = export_onnx(model, meta, args.output, quantize=args.quantize)
    kind = "dynamic int8" if args.quantize else "float32"
    check = "" if args.quantize else f" (tolerance {FP32_TOLERANCE:g})"
    print(f"export: {args.model} -> {out} ({kind}, input uint8 RGB NCHW "
          f"{meta['image_size']}x{meta['image_size']}, classes {', '.join(meta['classes'])}); "
          f"max |p_onnx - p_torch| on 8 random images: {diff:.2e}{check}")
    if args.quantize:
        from chimuffin.onnx_export import read_metadata

        print(f"export: {read_metadata(out)['chimuffin.quantization']}")
    return 0

"""Export a checkpoint to ONNX with the preprocessing inside the graph.

Input choice: the ONNX model takes what an image decoder gives, `image`: uint8 RGB, NCHW,
(batch, 3, S, S) with S = the checkpoint's image_size, values 0-255. Scaling to [0,1] and the
ImageNet mean/std normalisation run inside the graph (the same `preprocess.preprocess` the
evaluate stage uses), so a caller cannot get them wrong; only decoding and resizing to S x S
stay outside, and the model's metadata_props say how (decode_image: EXIF orientation applied,
RGB, alpha composited on white, bilinear resize). Outputs: `probabilities` (softmax) and `logits`,
both (batch, n_classes) float32.

The exporter is torch's TorchScript-based one (`dynamo=False`): it needs no extra package
(the dynamo exporter needs onnxscript) and handles this plain convolutional network exactly.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from chimuffin import atomic
from chimuffin.errors import UserError
from chimuffin.infer.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess

OPSET = 17
INPUT, OUTPUTS = "image", ("probabilities", "logits")


class Packaged(nn.Module):
    """uint8 RGB NCHW in, (probabilities, logits) out: the deployable model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(preprocess(image))
        return torch.softmax(logits, dim=1), logits


def metadata(meta: dict, quantized: str = "") -> dict[str, str]:
    """What a consumer needs to feed the model, as ONNX metadata_props (strings)."""
    s = int(meta["image_size"])
    return {
        "chimuffin.input": f"{INPUT}: uint8, NCHW, shape (batch, 3, {s}, {s}), RGB, values 0-255",
        "chimuffin.image_size": str(s),
        "chimuffin.channel_order": "RGB",
        "chimuffin.layout": "NCHW",
        "chimuffin.decode": ("before the model: apply EXIF orientation, convert to RGB "
                             "(transparency composited on white), resize to image_size x "
                             "image_size with bilinear filtering (PIL)"),
        "chimuffin.preprocess_in_graph": "x = image / 255; x = (x - mean) / std (per channel)",
        "chimuffin.mean": json.dumps(list(IMAGENET_MEAN)),
        "chimuffin.std": json.dumps(list(IMAGENET_STD)),
        "chimuffin.classes": json.dumps(list(meta["classes"])),
        "chimuffin.outputs": "probabilities: softmax (batch, n_classes); logits: (batch, "
                             "n_classes); column i is classes[i]",
        "chimuffin.quantization": quantized or "none (float32)",
        "chimuffin.source_epoch": str(meta.get("epoch")),
        "chimuffin.source_val_accuracy": str(meta.get("val_accuracy")),
    }


def _export_fp32(model: nn.Module, image_size: int, path: Path) -> None:
    packaged = Packaged(model).eval()
    dummy = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo (which needs onnxscript);
        # the tracer warns that the mean/std tensors become constants, which is what we want.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(packaged, (dummy,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=list(OUTPUTS),
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUTS[0]: {0: "batch"},
                                        OUTPUTS[1]: {0: "batch"}})
    model.eval()  # export restores the wrapper's train flag onto the shared submodule


QUANTIZE_MODES = ("static",)


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over uint8 images, 16 per batch."""

    def __init__(self, images_u8: np.ndarray):
        self._batches = iter([{INPUT: np.ascontiguousarray(images_u8[i:i + 16])}
                              for i in range(0, len(images_u8), 16)])

    def get_next(self):
        return next(self._batches, None)


def _quantize(src: Path, dst: Path, calibration: np.ndarray | None) -> None:
    """static (the one mode: dynamic quantisation was measured 4x slower than float32 on CPU):
    int8 weights and activations, activation ranges calibrated on `calibration` images (QDQ
    format, per-channel weights), which onnxruntime fuses into int8 kernels."""
    import logging

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(dst.name + ".pre.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs harmless per-tensor notes as warnings
    try:
        quant_pre_process(str(src), str(pre))  # shape inference + graph cleanup, as recommended
        if calibration is None or not len(calibration):
            raise UserError("static quantisation needs calibration images")
        quantize_static(str(pre), str(dst), _Calibration(calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=output_nodes(pre))
    finally:
        root.setLevel(level)
        pre.unlink(missing_ok=True)


def output_nodes(path: Path) -> list[str]:
    """The nodes that produce the graph outputs (the last Gemm and the Softmax): kept float32,
    or `logits` would come out in uint8 steps and `probabilities` would sum to 1 only within
    1/255."""
    import onnx

    proto = onnx.load(str(path))
    outputs = {o.name for o in proto.graph.output}
    return [n.name for n in proto.graph.node if outputs & set(n.output)]


def describe_quantization(proto, n_calibration: int) -> str:
    """What the quantiser actually did, read from the graph (not assumed)."""
    from collections import Counter

    ops = Counter(n.op_type for n in proto.graph.node)

    def listed(names):
        return ", ".join(f"{ops[op]} {op}" for op in names if ops[op]) or "none"

    return (f"static int8 (onnxruntime quantize_static, QDQ, per-channel weights, activations "
            f"calibrated on {n_calibration} images): {listed(('QuantizeLinear',))} and "
            f"{listed(('DequantizeLinear',))} nodes, which onnxruntime fuses into int8 kernels "
            "for the convolutions and hidden layers; the output layer and softmax stay float32")


# A float32 export must match PyTorch to this (max abs difference of probabilities).
FP32_TOLERANCE = 1e-4


def max_prob_diff(model: nn.Module, onnx_path: Path, images_u8: np.ndarray) -> float:
    """Max abs difference of probabilities, ONNX vs the PyTorch inference path (batches.predict)."""
    from chimuffin.infer.batches import predict, softmax

    logits, _ = predict(model, images_u8, np.arange(len(images_u8)), 64, torch.device("cpu"))
    sess = session(onnx_path, threads=1)  # 8 images: threads would only add overhead
    return float(np.abs(run_onnx(sess, images_u8) - softmax(logits)).max())


def self_check_images(image_size: int, n: int = 8, seed: int = 0) -> np.ndarray:
    """Random uint8 images: enough to catch an export that computes something else."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3, image_size, image_size),
                                                dtype=np.uint8)


def export_onnx(model: nn.Module, meta: dict, out: str | Path, quantize: str = "",
                calibration: np.ndarray | None = None) -> tuple[Path, float]:
    """Write the ONNX model (atomically) with its metadata; return (path, max abs difference of
    probabilities vs PyTorch on random images). A float32 export that disagrees by more than
    FP32_TOLERANCE is a bug: it raises and writes nothing. quantize: "" or "static"
    (static needs calibration: uint8 N,3,S,S images like the ones it will see)."""
    import onnx

    if quantize not in ("", *QUANTIZE_MODES):
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    model = model.cpu().eval()

    out = Path(out)
    with atomic.atomic_path(out, suffix=".onnx") as tmp:
        _export_fp32(model, int(meta["image_size"]), tmp)
        if quantize:
            fp32 = tmp.with_name(tmp.name + ".fp32.onnx")
            tmp.replace(fp32)
            try:
                _quantize(fp32, tmp, calibration)
            finally:
                fp32.unlink(missing_ok=True)
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        how = describe_quantization(proto, len(calibration)) if quantize else ""
        for k, v in metadata(meta, how).items():
            proto.metadata_props.add(key=k, value=v)
        proto.doc_string = "chimuffin ResNet-18 classifier; see metadata_props chimuffin.*"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        diff = max_prob_diff(model, tmp, self_check_images(int(meta["image_size"])))
        if not quantize and not diff < FP32_TOLERANCE:
            raise RuntimeError(f"ONNX export disagrees with PyTorch: max abs difference of "
                               f"probabilities {diff:.2e} >= {FP32_TOLERANCE}")
    return out, diff


def session(path: str | Path, threads: int = 0):
    """An onnxruntime CPU session (threads=0: onnxruntime's default, one per core)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: ONNX model not found (run `chimuffin export --onnx`)")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(sess, images_u8: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities (N, C) float32 for uint8 NCHW images."""
    out = [sess.run([OUTPUTS[0]], {INPUT: np.ascontiguousarray(images_u8[i:i + batch_size])})[0]
           for i in range(0, len(images_u8), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def read_metadata(path: str | Path) -> dict[str, str]:
    return dict(session(path).get_modelmeta().custom_metadata_map)

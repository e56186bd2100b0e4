"""`chimuffin export --onnx`: onnxruntime agrees with PyTorch; metadata documents the input."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from chimuffin.cli import main
from chimuffin.config import load_params
from chimuffin.data.images import decode_image
from chimuffin.data.sample import write_sample
from chimuffin.infer.batches import predict, softmax
from chimuffin.infer.onnx_export import read_metadata, run_onnx, session
from chimuffin.model import build_model, load_checkpoint, save_checkpoint
from chimuffin.train.engine import train_one_epoch
from tests.helpers.repo import REPO

# each export traces and writes a ResNet-18 (seconds)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

CLASSES = ["chihuahua", "muffin"]


def briefly_trained(images: np.ndarray, labels: np.ndarray, size: int, path) -> None:
    """Two quick epochs, so weights and BatchNorm statistics are not the initial ones."""
    torch.manual_seed(0)
    model = build_model(2, [16], 0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = replace(load_params(REPO / "params.yaml").train, batch_size=8)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        train_one_epoch(model, images, np.arange(len(images)), labels, cfg, opt, g,
                        torch.device("cpu"))
    save_checkpoint(path, model, {"classes": CLASSES, "head": [16], "dropout": 0.1,
                                  "image_size": size, "epoch": 2, "val_accuracy": 0.75})


def decode_all(paths, size: int) -> np.ndarray:
    return np.stack([decode_image(p, size).pixels.transpose(2, 0, 1) for p in paths])


def torch_probs(ckpt, images: np.ndarray) -> np.ndarray:
    model, _ = load_checkpoint(ckpt)
    logits, _ = predict(model, images, np.arange(len(images)), 16, torch.device("cpu"))
    return softmax(logits.astype(np.float64))


def check_agreement(tmp_path, paths, labels, size: int, capsys) -> np.ndarray:
    """Train briefly on the labeled images (label >= 0), export, compare on all of them."""
    images = decode_all(paths, size)
    ckpt = tmp_path / "best.pth"
    y = np.asarray(labels)
    briefly_trained(images[y >= 0], y[y >= 0], size, ckpt)
    out = tmp_path / "model.onnx"
    assert main(["export", "--onnx", "--model", str(ckpt), "--output", str(out)]) == 0
    assert "float32" in capsys.readouterr().out
    onnx_p = run_onnx(session(out, 1), images, batch_size=5)  # several batches: dynamic batch axis
    ref = torch_probs(ckpt, images)
    assert onnx_p.shape == ref.shape == (len(paths), 2)
    assert np.abs(onnx_p - ref).max() < 1e-4
    assert ref.max() - ref.min() > 0.01  # a model that says something, not constant 0.5
    return images


def test_onnx_agrees_with_pytorch_on_sample_images_and_documents_input(tmp_path, capsys):
    counts = write_sample(tmp_path / "s", 4, 0, 2, seed=3)
    assert counts["labeled"] == 8
    paths = sorted((tmp_path / "s").rglob("*.jpg"))
    labels = [0 if "chihuahua" in p.parts else 1 for p in paths]
    check_agreement(tmp_path, paths, labels, 64, capsys)

    meta = read_metadata(tmp_path / "model.onnx")
    assert json.loads(meta["chimuffin.classes"]) == CLASSES
    assert meta["chimuffin.image_size"] == "64"
    assert meta["chimuffin.channel_order"] == "RGB" and meta["chimuffin.layout"] == "NCHW"
    assert json.loads(meta["chimuffin.mean"]) == [0.485, 0.456, 0.406]
    assert json.loads(meta["chimuffin.std"]) == [0.229, 0.224, 0.225]
    assert "uint8" in meta["chimuffin.input"] and meta["chimuffin.quantization"] == "none (float32)"
    inputs = session(tmp_path / "model.onnx").get_inputs()
    assert [(i.name, i.type, i.shape[1:]) for i in inputs] == [("image", "tensor(uint8)",
                                                               [3, 64, 64])]

    # static int8: smaller, still probabilities, close to float32, and the metadata says what
    # the quantiser did.
    images = decode_all(paths, 64)
    fp = run_onnx(session(tmp_path / "model.onnx", 1), images)
    q = tmp_path / "model.static.onnx"
    assert main(["export", "--onnx", "--model", str(tmp_path / "best.pth"), "--output", str(q),
                 "--quantize", "static", "--calibration", str(tmp_path / "s" / "train128")]) == 0
    assert "static int8" in capsys.readouterr().out
    assert "QuantizeLinear" in read_metadata(q)["chimuffin.quantization"]
    assert q.stat().st_size < 0.5 * (tmp_path / "model.onnx").stat().st_size
    qp = run_onnx(session(q, 1), images)
    np.testing.assert_allclose(qp.sum(1), 1, atol=1e-5)
    assert np.abs(qp - fp).max() < 0.2


@pytest.mark.realdata
def test_onnx_agrees_with_pytorch_on_real_images(tmp_path, real_data, capsys):
    train = real_data / "train128"
    paths = (sorted((train / "chihuahua").glob("*.jpg"))[:6]
             + sorted((train / "muffin").glob("*.jpg"))[:6]
             + sorted((train / "undefined").glob("*.jpg"))[:4])
    labels = [0] * 6 + [1] * 6 + [-1] * 4  # pool images: predicted, not trained on
    check_agreement(tmp_path, paths, labels, 128, capsys)


def test_export_refuses_a_missing_model(tmp_path, capsys):
    assert main(["export", "--onnx", "--model", str(tmp_path / "none.pth"),
                 "--output", str(tmp_path / "m.onnx")]) == 2
    assert "model file not found" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_quantize_needs_a_mode_and_dynamic_is_gone(tmp_path, capsys):
    """A bare --quantize once meant dynamic int8, measured 4x slower than float32 on CPU: the
    mode is named, and static is the one there is."""
    from chimuffin.commands import export
    from chimuffin.infer import onnx_export

    assert export.QUANTIZE_MODES == onnx_export.QUANTIZE_MODES == ("static",)
    for argv in (["--quantize"], ["--quantize", "dynamic"]):
        with pytest.raises(SystemExit) as e:
            main(["export", "--model", str(tmp_path / "m.pth"), *argv])
        assert e.value.code == 2
    assert "invalid choice: 'dynamic'" in capsys.readouterr().err

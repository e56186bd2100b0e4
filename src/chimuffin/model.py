"""ResNet-18 from scratch (no pretrained weights: nothing is ever downloaded) with the
reference head."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from chimuffin.config import IMAGE_SIZES
from chimuffin.errors import UserError

EMBED_DIM = 512  # ResNet-18's pooled features: the penultimate embedding


def build_model(n_classes: int, head: list[int], dropout: float) -> nn.Module:
    """torchvision's ResNet-18 (the same layers, weights and initialisation as
    `resnet18(weights=None)`) with fc -> [Linear+BatchNorm1d+ReLU+Dropout] per hidden size ->
    Linear(n_classes)."""
    model = ResNet(BasicBlock, [2, 2, 2, 2])
    layers: list[nn.Module] = []
    width = EMBED_DIM
    for h in head:
        layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True),
                   nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, n_classes))
    model.fc = nn.Sequential(*layers)
    return model


def forward_with_embedding(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, 512-d penultimate embedding) in one pass."""
    m = model
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
    emb = torch.flatten(m.avgpool(x), 1)
    return m.fc(emb), emb


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict) -> None:
    """State dict plus plain metadata (classes, head): loadable with weights_only=True."""
    from chimuffin import atomic

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic.write_torch(path, {"state_dict": state, "meta": meta})


# torch.save writes a zip archive; its legacy format and a bare pickle start with protocol 2-5.
CHECKPOINT_HEADERS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def not_a_checkpoint(head: bytes) -> str | None:
    """Why a file starting with `head` cannot be a PyTorch checkpoint, or None if it may be
    one (an empty file is left to torch.load, which calls it truncated)."""
    if not head or head.startswith(CHECKPOINT_HEADERS):
        return None
    text = head.decode("utf-8", errors="replace")
    if b"\x00" not in head and text.count("\ufffd") <= 1 and all(
            c.isprintable() or c in "\t\r\n\ufffd" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"a text file (it starts with {first!r})"
    return f"neither a zip archive nor a pickle (it starts with {head[:8]!r})"


def _read_checkpoint(path: Path, device: str):
    """torch.load with weights_only=True: tensors and plain containers only, never code."""
    with path.open("rb") as f:
        why = not_a_checkpoint(f.read(64))
    if why:
        raise UserError(f"{path}: not a PyTorch checkpoint: {why}; use a model file written "
                        "by chimuffin's train stage")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on foreign pickle protocols
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise UserError(f"{path}: not a readable model file (corrupt: {e})") from e
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"a reference to {found.group(1)}" if found else "objects other than weights"
        raise UserError(
            f"{path}: refused: the file contains {what}; loading it could run code, so "
            "chimuffin never does. Use a model file written by chimuffin's train stage") from e
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError... on bad bytes
        detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else "no details"
        raise UserError(f"{path}: not a readable model file: truncated, corrupt or not a "
                        f"PyTorch checkpoint ({type(e).__name__}: {detail})") from e


def _check_meta(path: Path, meta) -> None:
    ok = (isinstance(meta, dict) and isinstance(meta.get("classes"), list)
          and all(isinstance(c, str) for c in meta["classes"]) and len(meta["classes"]) >= 2
          and isinstance(meta.get("head"), list)
          and all(isinstance(h, int) and 0 < h <= 65536 for h in meta["head"])
          and isinstance(meta.get("dropout"), int | float) and 0 <= meta["dropout"] < 1)
    if not ok:
        raise UserError(f"{path}: checkpoint metadata is incomplete or invalid (needs classes, "
                        "head and dropout, as written by chimuffin's train stage)")
    # train.upsample was removed: older checkpoints record 1.0 (no upsampling, loadable as is)
    if meta.get("upsample", 1.0) != 1.0:
        raise UserError(f"{path}: the model upsamples its input by {meta['upsample']!r} "
                        "(train.upsample, which was removed); retrain it")
    # checked before anything is allocated at this size (60000 px would be a MemoryError)
    size = meta.get("image_size")
    if size is None:
        raise UserError(f"{path}: checkpoint metadata has no image_size (the input size the "
                        "model was trained at); use a model file written by chimuffin's train "
                        "stage")
    if not isinstance(size, int) or isinstance(size, bool) or not (
            IMAGE_SIZES[0] <= size <= IMAGE_SIZES[1]):
        raise UserError(f"{path}: checkpoint metadata image_size must be an integer from "
                        f"{IMAGE_SIZES[0]} to {IMAGE_SIZES[1]} (as base.image_size), got "
                        f"{size!r}")


def _check_fits(path: Path, model: nn.Module, state, head: list[int]) -> None:
    """Explain which weights do not fit instead of torch's page-long load_state_dict error."""
    want = model.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in
                                              state.values()):
        raise UserError(f"{path}: state_dict is not a mapping of names to tensors")
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shape = [k for k in want if k in state and state[k].shape != want[k].shape]
    if missing or unexpected or shape:
        example = (missing or unexpected or shape)[0]
        raise UserError(
            f"{path}: weights do not fit chimuffin's ResNet-18 with head {head}: "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shape)} of another "
            f"shape (e.g. {example}); is it a model of another architecture?")


def load_checkpoint(path: str | Path, device: str = "cpu",
                    classes: list[str] | None = None) -> tuple[nn.Module, dict]:
    """Load a checkpoint safely (no pickled code runs) and rebuild the model it describes.

    With `classes`, also check the model was trained for those classes in that order."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found (run `dvc repro train`)")
    ckpt = _read_checkpoint(path, device)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "meta" not in ckpt:
        bare = isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor)
                                                        for v in ckpt.values())
        what = "a bare state_dict without chimuffin's metadata" if bare else \
            "not a chimuffin checkpoint"
        raise UserError(f"{path}: {what} (expected a dict with keys state_dict, meta, as "
                        "written by chimuffin's train stage)")
    meta = ckpt["meta"]
    _check_meta(path, meta)
    if classes is not None and list(meta["classes"]) != list(classes):
        raise UserError(f"{path}: model was trained for classes {meta['classes']}, but "
                        f"base.classes is {list(classes)}")
    model = build_model(len(meta["classes"]), list(meta["head"]), float(meta["dropout"]))
    _check_fits(path, model, ckpt["state_dict"], meta["head"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), meta

"""ResNet-18 from scratch (weights=None: nothing is ever downloaded) with the reference head."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18

from chimuffin.errors import UserError

EMBED_DIM = 512  # ResNet-18's pooled features: the penultimate embedding


def build_model(n_classes: int, head: list[int], dropout: float) -> nn.Module:
    """fc -> [Linear+BatchNorm1d+ReLU+Dropout] per hidden size -> Linear(n_classes)."""
    model = resnet18(weights=None)
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


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Load a checkpoint safely (no pickled code runs) and rebuild the model it describes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found (run `dvc repro train`)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a loadable chimuffin model (refused by the safe loader or "
                        f"truncated: {first})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "meta" not in ckpt:
        raise UserError(f"{path}: not a chimuffin checkpoint (expected keys state_dict, meta)")
    meta = ckpt["meta"]
    try:
        model = build_model(len(meta["classes"]), list(meta["head"]), float(meta["dropout"]))
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not fit chimuffin's ResNet-18 ({first})") from e
    return model.to(device).eval(), meta

"""The model: torchvision's ResNet-18 (same weights and initialisation) with the reference
head, and its checkpoints."""

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from chimuffin.errors import UserError
from chimuffin.infer.batches import predict
from chimuffin.model import build_model, forward_with_embedding, load_checkpoint
from tests.helpers.models import write_tiny_checkpoint


def test_it_is_torchvisions_resnet18_initialised_alike():
    torch.manual_seed(0)
    ours = build_model(2, [8], 0.1).state_dict()
    torch.manual_seed(0)
    theirs = resnet18(weights=None)
    theirs.fc = nn.Sequential(nn.Linear(512, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=True),
                              nn.Dropout(0.1), nn.Linear(8, 2))
    theirs = theirs.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_checkpoints_round_trip_and_predict(tmp_path):
    model, meta = load_checkpoint(write_tiny_checkpoint(tmp_path / "m.pth"))
    assert meta["head"] == [8] and "upsample" not in meta
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8).numpy()
    logits, _ = predict(model, images, torch.arange(4).numpy(), 4, torch.device("cpu"))
    logits2, emb = forward_with_embedding(model, torch.rand(3, 3, 32, 32))
    assert logits.shape == (4, 2) and logits2.shape == (3, 2) and emb.shape == (3, 512)


def test_checkpoints_from_before_upsample_was_removed(tmp_path):
    """train.upsample was removed: a checkpoint that recorded 1.0 (no upsampling) loads as it
    is; one trained with another factor is refused, naming the removed key."""
    ckpt = torch.load(write_tiny_checkpoint(tmp_path / "a.pth"), weights_only=True)
    ckpt["meta"]["upsample"] = 1.0
    torch.save(ckpt, tmp_path / "one.pth")
    model, _ = load_checkpoint(tmp_path / "one.pth")
    assert not hasattr(model, "upsample")
    ckpt["meta"]["upsample"] = 1.5
    torch.save(ckpt, tmp_path / "up.pth")
    with pytest.raises(UserError, match=r"upsamples its input by 1.5 \(train.upsample, which "
                                        r"was removed\); retrain it"):
        load_checkpoint(tmp_path / "up.pth")

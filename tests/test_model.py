"""The model: torchvision's ResNet-18 (same weights and initialisation) with an optional
upsampling of its input that every use of the model applies, checkpoints included."""

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from chimuffin.errors import UserError
from chimuffin.infer.batches import predict
from chimuffin.model import build_model, forward_with_embedding, load_checkpoint, save_checkpoint
from tests.helpers.models import write_tiny_checkpoint


def test_without_upsampling_it_is_torchvisions_resnet18_initialised_alike():
    torch.manual_seed(0)
    ours = build_model(2, [8], 0.1).state_dict()
    torch.manual_seed(0)
    theirs = resnet18(weights=None)
    theirs.fc = nn.Sequential(nn.Linear(512, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=True),
                              nn.Dropout(0.1), nn.Linear(8, 2))
    theirs = theirs.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_upsampling_enlarges_what_the_stem_sees_in_every_forward_path():
    torch.manual_seed(0)
    model = build_model(2, [8], 0.0, upsample=1.5).eval()
    seen = []
    model.conv1.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[-1]))
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        logits = model(x)
        logits2, emb = forward_with_embedding(model, x)
    assert seen == [96, 96]
    assert torch.allclose(logits, logits2) and emb.shape == (3, 512)


def test_checkpoints_keep_the_upsampling(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "up.pth", upsample=1.5)
    model, meta = load_checkpoint(path)
    assert model.upsample == meta["upsample"] == 1.5
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8).numpy()
    logits, _ = predict(model, images, torch.arange(4).numpy(), 4, torch.device("cpu"))
    assert logits.shape == (4, 2)


def test_a_checkpoint_without_the_key_has_no_upsampling(tmp_path):
    ckpt = torch.load(write_tiny_checkpoint(tmp_path / "a.pth"), weights_only=True)
    del ckpt["meta"]["upsample"]
    torch.save(ckpt, tmp_path / "old.pth")
    model, _ = load_checkpoint(tmp_path / "old.pth")
    assert model.upsample == 1.0


def test_an_upsampling_out_of_range_is_refused(tmp_path):
    model = build_model(2, [8], 0.0)
    save_checkpoint(tmp_path / "bad.pth", model, {"classes": ["a", "b"], "head": [8],
                                                  "dropout": 0.0, "upsample": 9})
    with pytest.raises(UserError, match="an upsample factor of 1-4"):
        load_checkpoint(tmp_path / "bad.pth")

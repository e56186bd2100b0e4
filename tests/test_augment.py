import torch

from chimuffin.config import load_params
from chimuffin.infer.preprocess import preprocess
from chimuffin.train.augment import augment_batch, draw, erase_boxes
from tests.helpers.repo import REPO

AUG = load_params(REPO / "params.yaml").train.augment


def test_draws_stay_in_reference_ranges():
    d = draw(4000, AUG, 128, torch.Generator().manual_seed(0))
    assert d.angle.abs().max() <= 10 and d.angle.abs().max() > 9.5
    assert d.shear.abs().max() <= 8
    assert 0.85 <= d.scale.min() and d.scale.max() <= 1.15
    crop_slack = 1 - 128 / 136
    assert d.shift.abs().max() <= crop_slack + 1e-6
    assert ((0.85 <= d.jitter) & (d.jitter <= 1.15)).all()
    assert abs(d.flip.float().mean() - 0.5) < 0.05
    assert abs(d.erase.float().mean() - 0.05) < 0.015


def test_augment_is_seeded_per_sample_and_shaped():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    a = augment_batch(x, AUG, torch.Generator().manual_seed(1))
    b = augment_batch(x, AUG, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    same = x[:1].repeat(6, 1, 1, 1)  # one image, six different augmentations
    out = augment_batch(same, AUG, torch.Generator().manual_seed(2))
    assert not torch.allclose(out[0], out[1])
    assert augment_batch(x, AUG, torch.Generator().manual_seed(1), out_size=16).shape[-1] == 16


def test_identity_settings_give_the_plain_preprocessed_image():
    ident = AUG.__class__(resize=32, flip_p=0.0, rotation_deg=0, shear_deg=0, scale_min=1.0,
                          scale_max=1.0, jitter=0.0, erase_p=0.0)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    out = augment_batch(x, ident, torch.Generator().manual_seed(0))
    assert torch.allclose(out, preprocess(x), atol=1e-4)


def test_flip_only_mirrors():
    flip = AUG.__class__(resize=32, flip_p=1.0, rotation_deg=0, shear_deg=0, scale_min=1.0,
                         scale_max=1.0, jitter=0.0, erase_p=0.0)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = augment_batch(x, flip, torch.Generator().manual_seed(0))
    assert torch.allclose(out, preprocess(torch.flip(x, dims=[3])), atol=1e-4)


def test_erase_boxes_area_bounds():
    boxes = erase_boxes(torch.ones(500, dtype=torch.bool), 64, torch.Generator().manual_seed(0))
    frac = boxes.float().mean(dim=(1, 2, 3))
    assert frac.min() >= 0.01 and frac.max() <= 0.34

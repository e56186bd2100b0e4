"""The recipe options: schedule, resolution, mixup/cutmix, EMA, optimizer kernels, and the
reference recipe kept reproducible by params."""

import copy
import math

import numpy as np
import pytest
import torch

from chimuffin.config import load_params, load_yaml, parse_params, read_recipe
from chimuffin.errors import UserError
from chimuffin.train.engine import (
    LabeledSet,
    fit,
    make_optimizer,
    steps_per_epoch,
    with_min_steps,
)
from chimuffin.train.regularize import (
    Mix,
    WeightEMA,
    cutmix_box,
    ema_decay_at,
    ema_update_,
    mix_batch,
)
from chimuffin.train.schedules import lr_factor, resolution_at
from tests.helpers.repo import REPO, default_params_dict

RECIPES = ["reference", "round", "round_warm"]


def recipe_group(name: str) -> dict:
    """The recipe's complete train group, merged onto its base."""
    return read_recipe(REPO / "recipes" / f"{name}.yaml")


def recipe_doc(name: str) -> dict:
    """The recipe file as written (a key given twice is refused)."""
    path = REPO / "recipes" / f"{name}.yaml"
    return load_yaml(path.read_text(), str(path))


# The default's promotion (benchmarks/README.md, the default recipe): the reference recipe
# stopped at 70 epochs (the third cosine-restart cycle's end) with the last weights and flip
# TTA, validated every 10 epochs (which changes no weight).
PROMOTED = {"epochs": 70, "keep": "last", "val_every": 10, "val_tta_flip": True}


def test_default_params_are_the_reference_recipe_with_the_promoted_keys():
    default, reference = default_params_dict(), recipe_group("reference")
    assert default["train"] == {**reference, **PROMOTED}
    assert {k: reference[k] for k in PROMOTED} == {"epochs": 100, "keep": "best",
                                                   "val_every": 1, "val_tta_flip": False}
    # measured with bf16 autocast where the CPU has it, and scored with flip TTA
    assert default["runtime"]["cpu_bf16"] == "auto" and default["evaluate"]["tta_flip"] is True


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_files_merge_to_complete_valid_train_groups(name):
    raw = copy.deepcopy(default_params_dict())
    raw["train"] = recipe_group(name)
    parse_params(raw)  # strict: a missing or unknown key would raise


def flat(group: dict, prefix: str = "") -> dict:
    return {k2: v2 for k, v in group.items() for k2, v2 in
            (flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) else [(prefix + k, v)])}


@pytest.mark.parametrize("name", [n for n in RECIPES if n != "reference"])
def test_recipes_name_their_base_and_only_the_keys_they_change(name):
    doc = recipe_doc(name)
    assert set(doc) == {"base", "train"}
    base, own = flat(recipe_group(doc["base"])), flat(doc["train"])
    assert own and all(own[k] != base[k] for k in own), "a key equal to the base's is noise"
    assert flat(recipe_group(name)) == {**base, **own}
    assert set(recipe_doc("reference")) == {"train"}  # the one complete group


def write_recipe(path, text: str):
    path.write_text(text)
    return path


def test_a_recipe_merges_onto_its_base_key_by_key(tmp_path):
    ref = recipe_group("reference")
    write_recipe(tmp_path / "reference.yaml", (REPO / "recipes/reference.yaml").read_text())
    write_recipe(tmp_path / "a.yaml",
                 "base: reference\ntrain: {lr: 0.01, augment: {jitter: 0.5}}\n")
    write_recipe(tmp_path / "b.yaml", "base: a\ntrain: {epochs: 3}\n")
    b = read_recipe(tmp_path / "b.yaml")
    assert b["epochs"] == 3 and b["lr"] == 0.01 and b["augment"]["jitter"] == 0.5
    assert {k: v for k, v in b["augment"].items() if k != "jitter"} == \
        {k: v for k, v in ref["augment"].items() if k != "jitter"}
    assert recipe_group("reference") == ref  # the base is not changed by a merge


@pytest.mark.parametrize("text,message", [
    ("base: reference\ntrain: {lrr: 0.01}\n", r"bad.yaml: params: unknown key train.lrr"),
    ("base: reference\ntrain: {augment: {jiter: 1}}\n",
     r"bad.yaml: params: unknown key train.augment.jiter"),
    ("base: reference\ntrain: {refit: true}\n", r"bad.yaml: params: train.refit was removed"),
    ("base: reference\ntrain: {epochs: 0}\n", r"bad.yaml: params: train.epochs must be >= 1"),
    ("base: nowhere\ntrain: {}\n", r"nowhere.yaml: cannot read the base recipe of .*bad.yaml"),
    ("base: recipes/reference.yaml\ntrain: {}\n", r"bad.yaml: base must name a recipe beside"),
    ("base: bad\ntrain: {}\n", r"bad.yaml: base bad leads back to .*: recipes form a circle"),
    ("train: {epochs: 3}\n", r"bad.yaml: params: missing key train"),
    ("base: reference\nruntime: {threads: 1}\ntrain: {}\n",
     r"bad.yaml: a recipe holds one group, `train`, and optionally `base"),
])
def test_bad_recipe_files_are_refused_naming_file_and_key(tmp_path, text, message):
    write_recipe(tmp_path / "reference.yaml", (REPO / "recipes/reference.yaml").read_text())
    with pytest.raises(UserError, match=message):
        read_recipe(write_recipe(tmp_path / "bad.yaml", text))


def test_cosine_restarts_factor_matches_torch_stepped_per_epoch():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=10, T_mult=2)
    spe = 7
    for epoch in range(100):
        expected = opt.param_groups[0]["lr"]
        for k in range(spe):  # constant within an epoch
            got = lr_factor(epoch * spe + k, spe, "cosine_restarts", 100, 0.0, 10, 2)
            assert got == pytest.approx(expected, abs=1e-12)
        sched.step()


def test_where_the_reference_stops():
    # the reference's 100 epochs stop 29 epochs into an 80-epoch cycle: lr is still 71% of peak
    last = lr_factor(99, 1, "cosine_restarts", 100, 0.0, 10, 2)
    assert last == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 80)))
    assert 0.70 < last < 0.72


def test_cosine_with_warmup_rises_linearly_then_decays_to_about_zero():
    spe, epochs = 10, 20
    f = [lr_factor(s, spe, "cosine", epochs, warmup_epochs=2) for s in range(epochs * spe)]
    assert f[:20] == pytest.approx([(s + 1) / 20 for s in range(20)])
    tail = f[20:]
    assert tail[0] == 1.0 and all(a >= b for a, b in zip(tail, tail[1:], strict=False))
    assert f[-1] < 1e-3


def test_cosine_restarts_after_warmup_start_a_fresh_cycle():
    spe = 4
    assert lr_factor(3, spe, "cosine_restarts", 50, 1.0, 10, 2) == 1.0  # end of warm-up
    assert lr_factor(4, spe, "cosine_restarts", 50, 1.0, 10, 2) == 1.0  # first cycle epoch 0
    assert lr_factor(4 + 10 * spe, spe, "cosine_restarts", 50, 1.0, 10, 2) == 1.0  # restart


def test_resolution_schedule_maps_epochs_to_sizes():
    sizes = [resolution_at(e, 20, 128, 64, 0.25, 0.75) for e in range(20)]
    assert sizes[:5] == [64] * 5  # before the ramp
    assert sizes[15:] == [128] * 5  # after it
    assert all(a <= b for a, b in zip(sizes, sizes[1:], strict=False))
    assert all(s % 16 == 0 and 64 <= s <= 128 for s in sizes)
    assert len(set(sizes[5:15])) > 2  # really ramps
    # a step: 96 px for the first half; the last epoch is full size even inside the low phase
    assert [resolution_at(e, 4, 128, 96, 0.5, 0.5) for e in range(4)] == [96, 96, 128, 128]
    assert resolution_at(0, 1, 128, 64, 1.0, 1.0) == 128
    assert [resolution_at(e, 5, 128, 0, 0.0, 0.75) for e in range(5)] == [128] * 5  # off


def test_mixup_targets_sum_to_one_and_mix_the_pair():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    y = torch.tensor([0, 1] * 4)
    xm, t = mix_batch(x, y, 2, Mix(0.4, 0.0, 1.0), g)
    assert xm.shape == x.shape and t.shape == (8, 2)
    assert torch.allclose(t.sum(1), torch.ones(8)) and ((t >= 0) & (t <= 1)).all()
    mixed = [i for i in range(8) if t[i].max() < 1]
    assert mixed, "prob 1: some row must pair two classes"
    lam = t[mixed[0], y[mixed[0]]].item()
    for i in range(8):  # each image = lam * itself + (1-lam) * a partner with the other weight
        partner = (xm[i] - lam * x[i]) / (1 - lam)
        j = int(torch.cdist(partner.flatten()[None], x.flatten(1)).argmin())
        assert torch.allclose(partner, x[j], atol=1e-4)
        expected = lam * torch.eye(2)[y[i]] + (1 - lam) * torch.eye(2)[y[j]]
        assert torch.allclose(t[i], expected, atol=1e-6)


def test_cutmix_label_weight_equals_pasted_area():
    g = torch.Generator().manual_seed(3)
    x = torch.zeros(6, 3, 32, 32)
    x[:3] = 1.0  # first three images white, the rest black
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    for _ in range(20):
        xm, t = mix_batch(x, y, 2, Mix(0.0, 1.0, 1.0), g)
        white = xm[:, 0].mean(dim=(1, 2))  # share of white pixels in each mixed image
        # class 0 = white images, so the class-0 target is the share of white pixels
        assert torch.allclose(t[:, 0], white, atol=1e-6)
        assert torch.allclose(t.sum(1), torch.ones(6))


def test_cutmix_box_stays_inside_and_has_the_asked_area():
    rng = np.random.default_rng(0)
    for lam in (0.1, 0.5, 0.9):
        top, bottom, left, right = cutmix_box(64, lam, rng)
        assert 0 <= top <= bottom <= 64 and 0 <= left <= right <= 64
        assert (bottom - top) * (right - left) <= (1 - lam) * 64 * 64 + 1e-9


def test_mix_prob_zero_and_off_switch():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    xm, t = mix_batch(x, y, 2, Mix(0.4, 1.0, 0.0), g)
    assert torch.equal(xm, x) and torch.equal(t, torch.nn.functional.one_hot(y, 2).float())
    assert not Mix(0.0, 0.0, 1.0).on and not Mix(1.0, 0.0, 0.0).on and Mix(0.0, 1.0, 0.5).on


def test_ema_update_math_and_integer_buffers():
    avg = [torch.tensor([1.0, 2.0]), torch.tensor(3)]
    val = [torch.tensor([3.0, 6.0]), torch.tensor(7)]
    ema_update_(avg, val, 0.75)
    assert torch.allclose(avg[0], torch.tensor([1.5, 3.0]))  # 0.75*a + 0.25*v
    assert avg[1].item() == 7
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(10_000, 0.999) == 0.999


def test_weight_ema_tracks_parameters_and_batchnorm_statistics():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = WeightEMA(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()
    model(torch.randn(16, 3) * 5 + 2)  # moves BatchNorm's running statistics
    before = ema.model[0].weight.clone()
    ema.update(model)  # first update: decay min(0.5, 2/11)
    d = ema_decay_at(1, 0.5)
    assert torch.allclose(ema.model[0].weight, d * before + (1 - d) * model[0].weight)
    assert not torch.equal(ema.model[1].running_mean, torch.zeros(4))
    assert ema.model[1].num_batches_tracked.item() == model[1].num_batches_tracked.item()
    assert not any(p.requires_grad for p in ema.model.parameters())


@pytest.mark.parametrize("impl", ["default", "fused"])
def test_optimizer_kernels_give_the_same_step(impl):
    torch.manual_seed(0)
    ref = torch.nn.Linear(5, 3)
    m = copy.deepcopy(ref)
    x = torch.randn(4, 5)
    for net, kind in ((ref, "default"), (m, impl)):
        opt = make_optimizer(net, 1e-2, 0.01, kind)
        for _ in range(3):
            opt.zero_grad()
            net(x).pow(2).sum().backward()
            opt.step()
    assert torch.allclose(ref.weight, m.weight, atol=1e-6)


@pytest.mark.parametrize("changes,message", [
    ({"scheduler": "onecycle", "warmup_epochs": 2}, "warmup_epochs must be 0"),
    ({"res_min": 16}, "res_min (16) must be 0 (off) or between 32"),
    ({"res_min": 256}, "res_min (256) must be 0 (off) or between 32"),
    ({"res_ramp_start": 0.8}, "res_ramp_start (0.8) must be <= 0.75"),
    ({"ema_decay": 1.0}, "train.ema_decay must be < 1.0"),
    ({"mix_prob": 1.5}, "train.mix_prob must be <= 1.0"),
    ({"optimizer_impl": "apex"}, "train.optimizer_impl must be one of"),
    ({"optimizer_impl": "foreach"}, "train.optimizer_impl must be one of 'default', 'fused'"),
    ({"scheduler": "cosine_annealing"}, "train.scheduler must be one of"),
    ({"scheduler": "constant"},
     "train.scheduler must be one of 'cosine_restarts', 'cosine', 'onecycle'"),
])
def test_bad_recipe_params_name_the_key(changes, message):
    raw = copy.deepcopy(default_params_dict())
    raw["train"].update(changes)
    with pytest.raises(UserError) as e:
        parse_params(raw)
    assert message in str(e.value)


def test_fit_with_every_option_on_returns_the_ema_weights():
    """2 epochs on 8 random 48 px images: low resolution first, mixing, EMA, flip-TTA
    selection, fused AdamW, warmed-up cosine; the validated model is the EMA copy."""
    from chimuffin.model import build_model

    p = load_params(REPO / "params.yaml")
    t = p.train.__class__(**{**p.train.__dict__, "epochs": 2, "batch_size": 4,
                             "scheduler": "cosine", "warmup_epochs": 0.5,
                             "optimizer_impl": "fused", "res_min": 32, "res_ramp_start": 0.5,
                             "mixup_alpha": 0.2, "cutmix_alpha": 1.0,
                             "mix_prob": 0.5, "ema_decay": 0.9, "val_tta_flip": True,
                             "augment": p.train.augment.__class__(
                                 **{**p.train.augment.__dict__, "resize": 52})})
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (16, 3, 48, 48), dtype=np.uint8)
    labels = np.array([0, 1] * 8)
    model = build_model(2, [8], 0.1)
    seen = []
    best = fit(model, LabeledSet(images, np.arange(8), labels[:8]),
               LabeledSet(images, np.arange(12, 16), labels[12:]), recipe=t,
               seed=1, device=torch.device("cpu"), eval_batch_size=8,
               on_epoch=lambda r, is_best: seen.append(r))
    assert [r.image_size for r in seen] == [32, 48]
    assert all(r.model is not model and r.model is seen[0].model for r in seen)
    assert best.epoch in (1, 2) and 0.0 <= best.val_acc <= 1.0
    assert all(math.isfinite(r.train.loss) and r.train.images == 8 for r in seen)


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["best", "last"])
def test_train_stage_saves_the_weights_train_keep_names(tmp_path, keep):
    """3 epochs; `last` saves the final epoch's weights whatever validation says, `best` the
    epoch DVCLive's summary reports as best."""
    import json

    from chimuffin.model import load_checkpoint
    from tests.helpers.badinput import stage, tiny_params, tiny_prepared, write_params

    tiny_prepared(tmp_path, pool=2, seed=5)
    write_params(tmp_path / "params.yaml", tiny_params(train={"epochs": 3, "keep": keep}))
    p = stage("train", "--params", "params.yaml", "--clean", "clean", "--prepared", "prepared",
              "--model", "models/best.pth", "--live", "metrics/train", "--tables", "tables",
              "--run", "run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "metrics/train/metrics.json").read_text())
    _, meta = load_checkpoint(tmp_path / "models/best.pth")
    expected = 3 if keep == "last" else summary["best/epoch"]
    assert meta["epoch"] == summary["kept/epoch"] == expected


def test_fit_validates_every_n_epochs_and_after_the_last():
    """val_every 2 over 3 epochs: epochs 2 and 3 are validated, epoch 1 is not (NaN) and can
    never be the best."""
    from chimuffin.model import build_model

    p = load_params(REPO / "params.yaml")
    t = p.train.__class__(**{**p.train.__dict__, "epochs": 3, "batch_size": 4, "val_every": 2})
    images = np.random.default_rng(0).integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)
    labels = np.array([0, 1] * 6)
    torch.manual_seed(0)
    seen = []
    best = fit(build_model(2, [8], 0.1), LabeledSet(images, np.arange(8), labels[:8]),
               LabeledSet(images, np.arange(8, 12), labels[8:]), recipe=t, seed=1,
               device=torch.device("cpu"), eval_batch_size=8,
               on_epoch=lambda r, is_best: seen.append((r, is_best)))
    assert [math.isnan(r.val_acc) for r, _ in seen] == [True, False, False]
    assert not seen[0][1] and best.epoch in (2, 3)


def test_min_steps_grows_the_epochs_only_while_the_images_are_few():
    default = load_params(REPO / "params.yaml").train
    t = default.__class__(**{**default.__dict__, "epochs": 12, "batch_size": 64,
                             "min_steps": 400})
    assert steps_per_epoch(344, 64) == 6 and steps_per_epoch(65, 64) == 1  # a tail of 1 dropped
    assert with_min_steps(t, 344).epochs == 67                  # ceil(400 / 6)
    assert with_min_steps(t, 2_200).epochs == 12                # 35 steps x 12 = 420 >= 400
    assert with_min_steps(t, 2_200) is t
    off = t.__class__(**{**t.__dict__, "min_steps": 0})
    assert with_min_steps(off, 10) is off
    grown = with_min_steps(t, 344)
    assert {k for k in t.__dict__ if t.__dict__[k] != grown.__dict__[k]} == {"epochs"}


@pytest.mark.slow
def test_train_stage_trains_the_grown_epochs_and_says_so(tmp_path):
    """min_steps on a training set of a few images: the stage prints why it trains more epochs
    than train.epochs, trains them, and keeps the last of them."""
    import json
    import re

    from chimuffin.data.manifest import read_manifest
    from chimuffin.data.views import labeled
    from chimuffin.model import load_checkpoint
    from tests.helpers.badinput import stage, tiny_params, tiny_prepared, write_params

    tiny_prepared(tmp_path, pool=2, seed=5)
    n_train = len(labeled(read_manifest(tmp_path / "clean/manifest.parquet"), "train"))
    per_epoch = steps_per_epoch(n_train, 4)
    write_params(tmp_path / "params.yaml", tiny_params(
        train={"epochs": 1, "min_steps": 3 * per_epoch, "keep": "last", "val_every": 100}))
    p = stage("train", "--params", "params.yaml", "--clean", "clean", "--prepared", "prepared",
              "--model", "models/best.pth", "--live", "metrics/train", "--tables", "tables",
              "--run", "run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    line = f"{n_train} images make {per_epoch} steps an epoch; train.min_steps " \
           f"{3 * per_epoch} grows 1 epochs to 3"
    assert line in p.stdout
    assert re.search(r"train: \d+ images, 3 epochs on", p.stdout)
    summary = json.loads((tmp_path / "metrics/train/metrics.json").read_text())
    _, meta = load_checkpoint(tmp_path / "models/best.pth")
    assert meta["epoch"] == summary["kept/epoch"] == summary["best/epoch"] == 3


def test_a_background_retrains_params_hold_the_complete_merged_group():
    """A background retrain writes round_params into its copy's params.yaml: the recipe merged
    onto its base, every key present, so `dvc exp show` shows every value."""
    import yaml

    from chimuffin.retrain.params import round_params

    params = yaml.safe_dump(default_params_dict())
    out = round_params(params, "base: round\ntrain: {epochs: 3}\n", 1, "params.yaml",
                       str(REPO / "recipes" / "mine.yaml"))
    assert out["train"] == {**recipe_group("round"), "epochs": 3}
    assert set(out["train"]) == set(default_params_dict()["train"])
    parse_params(out)

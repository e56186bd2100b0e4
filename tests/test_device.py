"""Device selection, and what runs where: fp32 and repeatable on CPU, bf16 training on CUDA."""

import argparse
import contextlib
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from chimuffin import runtime
from chimuffin.config import parse_params
from chimuffin.data.prepare import prepare_dataset
from chimuffin.data.sample import write_sample
from chimuffin.errors import UserError
from chimuffin.infer import batches
from chimuffin.model import build_model
from chimuffin.stages import evaluate, train
from chimuffin.train import engine
from tests.helpers.repo import default_params_dict

CLASSES = ["chihuahua", "muffin"]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_and_cpu_pick_the_cpu_without_cuda(no_cuda):
    assert runtime.pick_device("auto") == torch.device("cpu")
    assert runtime.pick_device("cpu") == torch.device("cpu")


def test_auto_picks_cuda_when_present_and_cpu_stays_cpu(fake_cuda):
    assert runtime.pick_device("auto") == torch.device("cuda")
    assert runtime.pick_device("cuda") == torch.device("cuda")
    assert runtime.pick_device("cpu") == torch.device("cpu")


def test_cuda_without_cuda_is_a_user_error_naming_the_key(no_cuda):
    with pytest.raises(UserError, match=r"runtime\.device is 'cuda' but no CUDA device"):
        runtime.pick_device("cuda")


@pytest.fixture
def tiny_dataset(tmp_path):
    """A prepared and a 'clean' folder (the prepared manifest, no decisions) at 32 px."""
    write_sample(tmp_path / "raw", labeled_per_class=3, pool=2, test_per_class=0, seed=1)
    (tmp_path / "prepared").mkdir()
    prepare_dataset(tmp_path / "raw", CLASSES, 32, 0.34, 1, {}, "validation.csv",
                    tmp_path / "prepared")
    (tmp_path / "clean").mkdir()
    shutil.copy(tmp_path / "prepared/manifest.parquet", tmp_path / "clean/manifest.parquet")
    return tmp_path


STAGE_OUTPUTS = ("model.pth", "live", "out", "embeddings.parquet")


def _stage_args(d) -> argparse.Namespace:
    """A model stage's arguments, every output under d (STAGE_OUTPUTS)."""
    return argparse.Namespace(clean=str(d / "clean"), prepared=str(d / "prepared"),
                              model=str(d / "model.pth"), live=str(d / "live"),
                              out=str(d / "out"), embeddings=str(d / "embeddings.parquet"))


@pytest.mark.parametrize("stage", [train, evaluate], ids=["train", "evaluate"])
def test_every_model_stage_refuses_cuda_without_cuda(stage, tiny_dataset, tiny_params_dict,
                                                     no_cuda):
    """Each stage goes through runtime.pick_device with runtime.device, before writing
    anything."""
    d = tiny_dataset
    params = parse_params({**tiny_params_dict, "runtime": {**tiny_params_dict["runtime"],
                                                           "device": "cuda"}})
    args = _stage_args(d)
    with pytest.raises(UserError, match=r"runtime\.device is 'cuda'"):
        stage.main(args, params)
    assert not any((d / name).exists() for name in STAGE_OUTPUTS)


def _train_once(seed: int, cpu_bf16: bool = False) -> dict:
    cfg = replace(parse_params(default_params_dict()).train, batch_size=4)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8)
    torch.manual_seed(seed)
    model = build_model(2, [16], 0.3)
    opt = engine.make_optimizer(model, 1e-3, 1e-4)
    g = torch.Generator().manual_seed(seed)
    cpu = torch.device("cpu")
    engine.train_one_epoch(model, images, np.arange(8), np.array([0, 1] * 4), cfg, opt, g, cpu,
                           cpu_bf16=cpu_bf16)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_cpu_training_is_fp32_and_bit_for_bit_repeatable(one_thread):
    assert isinstance(engine.autocast(torch.device("cpu")), contextlib.nullcontext)
    a, b = _train_once(3), _train_once(3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype in (torch.float32, torch.int64) for v in a.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_trains_in_bf16_and_predicts_in_fp32_close_to_cpu():
    cfg = replace(parse_params(default_params_dict()).train, batch_size=8)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    rows, labels = np.arange(16), np.array([0, 1] * 8)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    model = build_model(2, [16], 0.3).to(cuda)
    opt = engine.make_optimizer(model, 1e-3, 1e-4)
    stats = engine.train_one_epoch(model, images, rows, labels, cfg, opt,
                                   torch.Generator().manual_seed(0), cuda)
    assert np.isfinite(stats.loss) and stats.images == 16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    logits_gpu, emb_gpu = batches.predict(model, images, rows, 8, cuda, with_embeddings=True)
    logits_cpu, emb_cpu = batches.predict(model.to(cpu), images, rows, 8, cpu,
                                         with_embeddings=True)
    assert logits_gpu.dtype == np.float32
    # TF32 convolutions (PyTorch's default on Ampere+) keep ~3 decimal digits
    np.testing.assert_allclose(logits_gpu, logits_cpu, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(emb_gpu, emb_cpu, rtol=1e-2, atol=1e-2)


def test_cgroup_quota_caps_the_thread_count(tmp_path):
    """A container limited to 1.5 CPUs gets 2 threads at most, never the host's core count."""
    assert runtime.cgroup_cpu_limit("150000 100000\n") == 2
    assert runtime.cgroup_cpu_limit("100000 100000") == 1
    assert runtime.cgroup_cpu_limit("max 100000") is None
    assert runtime.cgroup_cpu_limit("") is None
    limited = tmp_path / "cpu.max"
    limited.write_text("100000 100000\n")
    assert runtime.available_cores(str(limited)) == 1
    unlimited = tmp_path / "unlimited"
    unlimited.write_text("max 100000\n")
    assert runtime.available_cores(str(unlimited)) == len(os.sched_getaffinity(0))
    assert runtime.available_cores(str(tmp_path / "absent")) == len(os.sched_getaffinity(0))


def test_the_cpu_model_and_flags_come_from_the_first_processor(tmp_path):
    cpuinfo = ("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f "
               "avx512_bf16\n\nprocessor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    assert runtime.cpu_model_and_flags(cpuinfo) == ("AMD EPYC 9R14",
                                                   {"fpu", "avx2", "avx512f", "avx512_bf16"})
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    assert runtime.has_native_bf16(str(tmp_path / "cpuinfo"))
    assert runtime.read_cpu(str(tmp_path / "absent")) == ("unknown CPU", set())


def test_cpu_bf16_is_refused_without_native_bf16():
    """runtime.cpu_bf16 on a CPU that would emulate bf16 (slower than fp32) is an error naming
    the key, not a silent slowdown; on CUDA the key changes nothing."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with pytest.raises(UserError, match="runtime.cpu_bf16 is true but this CPU has no native bf16"):
        engine.check_cpu_bf16(True, cpu, native=False)
    engine.check_cpu_bf16(True, cpu, native=True)
    engine.check_cpu_bf16(True, cuda, native=False)
    engine.check_cpu_bf16(False, cpu, native=False)
    engine.check_cpu_bf16("auto", cpu, native=False)  # auto falls back to fp32 instead


@pytest.mark.parametrize("setting,native,expected", [
    (True, True, True), (True, False, True), (False, True, False), (False, False, False),
    ("auto", True, True), ("auto", False, False)])
def test_cpu_bf16_auto_follows_the_cpu(setting, native, expected):
    assert engine.uses_cpu_bf16(setting, native) is expected


@pytest.mark.parametrize("value,ok", [(True, True), (False, True), ("auto", True),
                                      ("yes", False), (1, False), (None, False)])
def test_cpu_bf16_accepts_true_false_or_auto(value, ok):
    raw = default_params_dict()
    raw["runtime"]["cpu_bf16"] = value
    if ok:
        assert parse_params(raw).runtime.cpu_bf16 == value
    else:
        with pytest.raises(UserError, match="runtime.cpu_bf16 must be true or false or one of "
                                            "'auto'"):
            parse_params(raw)


def test_cpu_bf16_trains_under_autocast_repeatably_with_fp32_weights(one_thread):
    ctx = engine.autocast(torch.device("cpu"), cpu_bf16=True)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    a, b, fp32 = _train_once(3, cpu_bf16=True), _train_once(3, cpu_bf16=True), _train_once(3)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same machine: same hashes
    assert all(v.dtype in (torch.float32, torch.int64) for v in a.values())
    # bf16 really ran: the weights differ from the fp32 run's
    assert not all(torch.equal(a[k], fp32[k]) for k in a if a[k].is_floating_point())


def test_train_stage_refuses_cpu_bf16_without_native_bf16(tiny_dataset, tiny_params_dict,
                                                          no_cuda, monkeypatch):
    """The stage stops before writing anything, with the key in the message."""
    monkeypatch.setattr(runtime, "has_native_bf16", lambda *a: False)
    d = tiny_dataset
    params = parse_params({**tiny_params_dict, "runtime": {**tiny_params_dict["runtime"],
                                                           "cpu_bf16": True}})
    args = _stage_args(d)
    with pytest.raises(UserError, match=r"runtime\.cpu_bf16 is true but this CPU has no native"):
        train.main(args, params)
    assert not any((d / name).exists() for name in STAGE_OUTPUTS)

"""Model files from elsewhere: nothing in them runs, and each bad one is a clear error, both from
load_checkpoint and from the evaluate stage (exit 2, one line), with the file left as it was."""

from __future__ import annotations

import io
import os
import pickle
import shutil

import pytest
import torch
from torchvision.models import resnet34

from chimuffin.errors import UserError
from chimuffin.model import load_checkpoint
from tests.helpers.badinput import (
    CLASSES,
    error_line,
    file_hash,
    stage,
    tiny_params,
    tiny_prepared,
    tree_hashes,
    write_params,
)


class _RunsCode:
    """Unpickling this calls func(*args): what a malicious checkpoint does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_checkpoint):
    """name -> (path, marker file the payload would create, or None)."""
    d = tmp_path_factory.mktemp("models")
    good = tiny_checkpoint.read_bytes()
    model, meta = load_checkpoint(tiny_checkpoint)
    out = {}

    def add(name, data, marker=None):
        (d / name).write_bytes(data)
        out[name] = (d / name, marker)

    # torch's zip format with a payload inside, and a bare pickle calling os.system
    add("code_in_zip.pth", _bytes({"state_dict": _RunsCode(open, str(d / "PWNED_zip"), "w"),
                                   "meta": meta}), d / "PWNED_zip")
    add("code_raw_pickle.pth", pickle.dumps(_RunsCode(os.system, f"touch {d / 'PWNED_raw'}"),
                                            protocol=2), d / "PWNED_raw")
    add("resnet34.pth", _bytes({"state_dict": resnet34(weights=None).state_dict(),
                                "meta": meta}))
    add("plain_state_dict.pth", _bytes(model.state_dict()))
    add("truncated.pth", good[: len(good) // 2])
    add("empty.pth", b"")
    add("text.pth", b"these are not weights\n")
    add("other_classes.pth", _bytes({"state_dict": model.state_dict(),
                                     "meta": {**meta, "classes": ["cat", "dog"]}}))
    add("bad_meta.pth", _bytes({"state_dict": model.state_dict(), "meta": {"head": "x"}}))
    no_size = {k: v for k, v in meta.items() if k != "image_size"}
    add("no_image_size.pth", _bytes({"state_dict": model.state_dict(), "meta": no_size}))
    for name, size in (("negative", -5), ("huge", 60000), ("text", "128")):
        add(f"{name}_image_size.pth", _bytes({"state_dict": model.state_dict(),
                                              "meta": {**meta, "image_size": size}}))
    return out


MESSAGES = {
    "code_in_zip.pth": "refused: the file contains a reference to io.open; loading it "
                       "could run code, so chimuffin never does",
    "code_raw_pickle.pth": "refused: the file contains a reference to posix.system",
    "resnet34.pth": "weights do not fit chimuffin's ResNet-18 with head [8]:",
    "plain_state_dict.pth": "a bare state_dict without chimuffin's metadata",
    "truncated.pth": "not a readable model file: truncated, corrupt or not a PyTorch checkpoint",
    "empty.pth": "not a readable model file: truncated, corrupt",
    "text.pth": "not a PyTorch checkpoint: a text file (it starts with 'these are not "
                "weights')",
    "other_classes.pth": "model was trained for classes ['cat', 'dog'], but base.classes is "
                         "['chihuahua', 'muffin']",
    "bad_meta.pth": "checkpoint metadata is incomplete or invalid",
    "no_image_size.pth": "checkpoint metadata has no image_size",
    "negative_image_size.pth": "checkpoint metadata image_size must be an integer from 32 to "
                               "512 (as base.image_size), got -5",
    "huge_image_size.pth": "image_size must be an integer from 32 to 512 (as base.image_size), "
                           "got 60000",
    "text_image_size.pth": "got '128'",
}


@pytest.mark.parametrize("name", list(MESSAGES))
def test_load_checkpoint_refuses_with_a_clear_message(models, name):
    path, marker = models[name]
    before = file_hash(path)
    with pytest.raises(UserError) as e:
        load_checkpoint(path, classes=CLASSES)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and MESSAGES[name] in msg, msg
    assert "\n" not in msg and "\x1b" not in msg  # one plain line, no terminal escapes
    assert file_hash(path) == before
    if marker:
        assert not marker.exists(), "the payload ran"


def test_the_payloads_are_real(models, tmp_path):
    """Proof the refused files are dangerous: the unsafe loader runs them (into tmp only)."""
    for name, unsafe_load in (("code_in_zip.pth", lambda p: torch.load(p, weights_only=False)),
                              ("code_raw_pickle.pth", lambda p: pickle.loads(p.read_bytes()))):
        path, marker = models[name]
        unsafe_load(path)
        assert marker.exists()
        marker.unlink()


def test_resnet34_report_counts_the_mismatch(models):
    with pytest.raises(UserError, match=r"\d+ missing, \d+ unexpected, \d+ of another shape"):
        load_checkpoint(models["resnet34.pth"][0])


@pytest.fixture(scope="module")
def evaluate_inputs(tmp_path_factory):
    d = tiny_prepared(tmp_path_factory.mktemp("eval"), pool=2, seed=4)
    write_params(d / "params.yaml", tiny_params())
    return d


@pytest.mark.slow
@pytest.mark.parametrize("name", ["code_in_zip.pth", "resnet34.pth", "plain_state_dict.pth",
                                  "truncated.pth"])
def test_evaluate_stage_refuses_bad_model_files(models, evaluate_inputs, tmp_path, name):
    path, marker = models[name]
    for sub in ("prepared", "clean"):
        shutil.copytree(evaluate_inputs / sub, tmp_path / sub)
    shutil.copy(evaluate_inputs / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(path, tmp_path / "best.pth")
    before = tree_hashes(tmp_path)

    p = stage("evaluate", "--params", "params.yaml", "--clean", "clean", "--prepared",
              "prepared", "--model", "best.pth", "--out", "eval", "--embeddings",
              "embeddings.parquet", cwd=tmp_path)

    assert p.returncode == 2
    line = error_line(p)
    assert line.startswith("chimuffin evaluate: error: best.pth: "), line
    assert MESSAGES[name] in line, line
    assert tree_hashes(tmp_path) == before  # model untouched, no eval output
    if marker:
        assert not marker.exists()

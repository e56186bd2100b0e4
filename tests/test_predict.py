"""`chimuffin predict`: folders, odd formats, unreadable files, table/CSV/JSON, exit codes."""

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from chimuffin.cli import main
from chimuffin.data.prepare import decode_into_cache
from chimuffin.data.scan import Candidate
from chimuffin.infer.batches import predict, softmax
from chimuffin.infer.predict_files import collect_inputs
from tests.helpers.models import CLASSES, SIZE


def _rgb(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def folder(tmp_path) -> Path:
    """Good images in several formats (one nested), plus broken, empty, hidden and text files."""
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    _rgb(1).save(d / "a.jpg")
    _rgb(2).convert("RGBA").save(d / "b.png")
    _rgb(3).convert("L").save(d / "c.webp")
    _rgb(4).convert("CMYK").save(d / "sub" / "d.JPEG")
    frames = [_rgb(5), _rgb(6)]
    frames[0].save(d / "sub" / "e.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50).save(d / "f.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "empty.png").write_bytes(b"")
    _rgb(7).save(d / ".hidden.jpg")
    (d / "notes.txt").write_text("not an image")
    return d


def predict_cli(*args) -> int:
    """`chimuffin predict ARGS` in-process, on one thread (the test machine's cores are shared)."""
    return main(["predict", *map(str, args), "--threads", "1"])


GOOD = ["a.jpg", "b.png", "c.webp", "f.png", "sub/d.JPEG", "sub/e.gif"]


def test_collect_inputs_walks_folders_in_order_and_skips_hidden(folder):
    found = collect_inputs([folder, folder / "notes.txt", folder / "nope.jpg"])
    names = [Path(i.shown).relative_to(folder).as_posix() for i in found.items]
    # folder contents sorted (files before subfolders), then the explicitly named text file
    assert names == ["a.jpg", "b.png", "broken.jpg", "c.webp", "empty.png", "f.png",
                     "sub/d.JPEG", "sub/e.gif", "notes.txt"]
    assert [m.shown for m in found.missing] == [str(folder / "nope.jpg")]
    assert found.skipped == 1  # notes.txt inside the folder


def test_predict_csv_reports_errors_and_matches_prepare_decoding(folder, tiny_checkpoint, capsys):
    rc = predict_cli(str(folder), "--model", str(tiny_checkpoint), "--format", "csv",
               "--batch-size", "4")
    out, err = capsys.readouterr()
    assert rc == 0
    df = pd.read_csv(io.StringIO(out), keep_default_na=False)
    assert list(df.columns) == ["path", "label", "confidence", "p_chihuahua", "p_muffin", "error"]
    by_name = {Path(p).relative_to(folder).as_posix(): r for p, r in zip(df["path"],
               df.to_dict("records"), strict=True)}
    assert set(by_name) == {*GOOD, "broken.jpg", "empty.png"}
    assert by_name["empty.png"]["error"] == "empty file (0 bytes)"
    assert by_name["broken.jpg"]["error"].startswith("cannot decode")
    for name in ("broken.jpg", "empty.png"):
        assert by_name[name]["label"] == "" and f"{name}: " in err
    assert "classified 6 image(s), 2 failed, 1 non-image file(s) in folders skipped" in err

    # Same decoding and inference as the pipeline: prepare's cache -> infer.batches.predict
    rows, excluded, _ = decode_into_cache(folder, [Candidate(n, "train", "undefined")
                                                   for n in GOOD], SIZE, folder.parent / "c.npy")
    assert not excluded
    from chimuffin.model import load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint)
    cache = np.load(folder.parent / "c.npy")
    expected = softmax(predict(model, cache, np.arange(len(GOOD)), 2, torch.device("cpu"))[0])
    got = np.array([[by_name[n]["p_chihuahua"], by_name[n]["p_muffin"]] for n in GOOD], float)
    np.testing.assert_allclose(got, expected, atol=2e-6)  # CSV keeps 6 decimals
    assert [by_name[n]["label"] for n in GOOD] == [CLASSES[i] for i in expected.argmax(1)]
    assert len(set(np.round(got[:, 0], 4))) > 1  # the images really got different predictions


def test_predict_table_json_output_file_and_tta(folder, tiny_checkpoint, capsys, tmp_path):
    assert predict_cli(str(folder / "a.jpg"), str(folder / "b.png"), "--model",
                 str(tiny_checkpoint)) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["path", "label", "confidence"]
    assert [line.split()[0] for line in table[1:]] == [str(folder / "a.jpg"),
                                                       str(folder / "b.png")]

    out = tmp_path / "res" / "out.json"
    assert predict_cli(str(folder / "a.jpg"), str(folder / "broken.jpg"), "--model",
                 str(tiny_checkpoint), "--format", "json", "--output", str(out)) == 0
    assert capsys.readouterr().out == ""
    plain = json.loads(out.read_text())
    assert [r["error"] is None for r in plain] == [True, False]
    assert plain[1]["label"] is None and "cannot decode" in plain[1]["error"]
    assert abs(sum(plain[0]["probabilities"].values()) - 1) < 1e-5
    assert plain[0]["confidence"] == max(plain[0]["probabilities"].values())

    # Flip TTA averages the logits of the image and its mirror image.
    assert predict_cli(str(folder / "a.jpg"), "--model", str(tiny_checkpoint), "--format", "json",
                 "--tta-flip", "-o", str(out)) == 0
    tta = json.loads(out.read_text())[0]["probabilities"]["chihuahua"]
    mirrored = folder / "mirror.png"
    Image.open(folder / "a.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    assert predict_cli(str(folder / "a.jpg"), str(mirrored), "--model", str(tiny_checkpoint),
                 "--format", "csv") == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    logit_gap = np.log(df["p_chihuahua"] / df["p_muffin"]).mean()  # mean logit difference
    assert tta == pytest.approx(1 / (1 + np.exp(-logit_gap)), abs=5e-3)
    assert tta != pytest.approx(plain[0]["probabilities"]["chihuahua"], abs=1e-6)


def test_predict_exit_codes(folder, tiny_checkpoint, tmp_path, capsys):
    # nothing classifiable -> 1, with every reason on stderr
    assert predict_cli(str(folder / "broken.jpg"), str(tmp_path / "gone"), "--model",
                 str(tiny_checkpoint)) == 1
    err = capsys.readouterr().err
    assert "gone: no such file or folder" in err and "classified 0 image(s), 2 failed" in err
    # folders without any image: a usage error, one line (before the model is even loaded)
    empty = tmp_path / "nothing"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no images here")
    assert predict_cli(str(empty), "--model", str(tmp_path / "no.pth")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"chimuffin predict: error: no images found in {empty} (looked for .jpg/"
                   ".jpeg/.png/.bmp/.gif/.tif/.tiff/.webp files in every subfolder, hidden "
                   "files skipped; 1 other file(s) skipped)")
    # a missing or broken model is a usage error -> 2
    assert predict_cli(str(folder), "--model", str(tmp_path / "no.pth")) == 2
    assert "model file not found" in capsys.readouterr().err
    (tmp_path / "bad.pth").write_bytes(b"junk")
    assert predict_cli(str(folder), "--model", str(tmp_path / "bad.pth")) == 2
    assert predict_cli(str(folder), "--model", str(tiny_checkpoint), "--batch-size", "0") == 2


def test_an_output_that_cannot_be_written_is_one_line_naming_it(folder, tiny_checkpoint,
                                                                  tmp_path, capsys, monkeypatch):
    a_dir = tmp_path / "out"
    a_dir.mkdir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, message in ((a_dir, "is a folder; give the output file's name"),
                         (a_file / "res.csv", f"cannot write: {a_file} is a file, not a folder")):
        assert predict_cli(folder / "a.jpg", "--model", tiny_checkpoint, "-o", out) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"chimuffin predict: error: {out}: {message}"
        assert main(["export", "--model", str(tiny_checkpoint), "--output", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"chimuffin export: error: {out}: {message}"
    # an immutable file (chattr +i): the rename onto it is refused by the system
    import os

    def refused(src, dst):
        raise PermissionError(1, "Operation not permitted", str(dst))
    monkeypatch.setattr(os, "replace", refused)
    target = tmp_path / "locked.csv"
    target.write_text("old")
    assert predict_cli(folder / "a.jpg", "--model", tiny_checkpoint, "-o", target) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"chimuffin predict: error: {target}: cannot write (Operation not permitted)"
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".locked")] == []


@pytest.mark.parametrize("name", ["no_image_size", "negative_image_size", "huge_image_size"])
def test_predict_and_export_check_the_image_size_before_allocating(folder, tiny_checkpoint,
                                                                   tmp_path, capsys, name):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    size = {"no_image_size": None, "negative_image_size": -5, "huge_image_size": 60000}[name]
    meta = {k: v for k, v in ckpt["meta"].items() if k != "image_size"}
    if size is not None:
        meta["image_size"] = size
    bad = tmp_path / f"{name}.pth"
    torch.save({"state_dict": ckpt["state_dict"], "meta": meta}, bad)
    want = ("checkpoint metadata has no image_size" if size is None else
            f"image_size must be an integer from 32 to 512 (as base.image_size), got {size}")
    assert predict_cli(folder / "a.jpg", "--model", bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"chimuffin predict: error: {bad}: ") and want in err
    assert main(["export", "--model", str(bad), "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"chimuffin export: error: {bad}: ") and want in err
    assert not (tmp_path / "m.onnx").exists()

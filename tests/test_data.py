import os
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chimuffin.data.images import ImageDecodeError, decode_image
from chimuffin.data.manifest import stratified_val
from chimuffin.data.prepare import prepare_dataset
from chimuffin.data.sample import write_sample
from chimuffin.data.scan import scan_dataset
from chimuffin.errors import UserError
from chimuffin.labels.rows import parse_path_labels

CLASSES = ["chihuahua", "muffin"]


def test_sample_is_deterministic_and_in_hackathon_layout(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_sample(a, 3, 5, 2, seed=7)
    write_sample(b, 3, 5, 2, seed=7)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    assert len(list((a / "train128/undefined").glob("u_*.jpg"))) == 5
    assert len(list((a / "test128/muffin").glob("*.jpg"))) == 2
    labels = pd.read_csv(a / "pool_labels.csv")
    assert list(labels.columns) == ["relative_path", "label"] and len(labels) == 5
    img = Image.open(next((a / "train128/chihuahua").glob("*.jpg")))
    assert img.size == (128, 128) and img.mode == "RGB"


def test_decode_converts_odd_images(tmp_path):
    Image.new("L", (50, 30), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(tmp_path / "rgba.png")
    Image.new("CMYK", (40, 40)).save(tmp_path / "cmyk.jpg")
    d = decode_image(tmp_path / "gray.png", 32)
    assert d.pixels.shape == (32, 32, 3) and d.resized and d.converted_from == "L"
    assert decode_image(tmp_path / "rgba.png", 32).pixels[0, 0].tolist() == [255, 255, 255]
    assert decode_image(tmp_path / "cmyk.jpg", 32).converted_from == "CMYK"


def _truncated_jpeg() -> bytes:
    import io

    buf = io.BytesIO()
    Image.effect_mandelbrot((64, 64), (-2, -1.5, 1, 1.5), 50).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"), (b"hello", "not an image"), (_truncated_jpeg(), "cannot decode")])
def test_decode_reports_reason(tmp_path, content, reason):
    f = tmp_path / "x.jpg"
    f.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(f, 32)


def test_scan_excludes_with_reasons(tmp_path):
    write_sample(tmp_path, 2, 2, 0, seed=1, bad_files=True)
    (tmp_path / "train128/dogs").mkdir()
    (tmp_path / "train128/undefined/notes.txt").write_text("x")
    keep, excluded = scan_dataset(tmp_path, CLASSES)
    reasons = {e.path: e.reason for e in excluded}
    assert "unknown class folder 'dogs'" in reasons["train128/dogs/"]
    assert reasons["train128/undefined/.DS_Store"] == "hidden or system file"
    assert "unsupported file type" in reasons["train128/undefined/notes.txt"]
    assert len(keep) == 2 + 2 + 2 + 2  # broken.jpg and empty.jpg fail later, at decode


def test_scan_requires_train_folder(tmp_path):
    with pytest.raises(UserError, match="no train128/ folder"):
        scan_dataset(tmp_path, CLASSES)


def test_stratified_val_is_seeded_and_keeps_classes():
    labels = pd.Series(["a"] * 10 + ["b"] * 4)
    m1, m2 = stratified_val(labels, 0.25, 3), stratified_val(labels, 0.25, 3)
    assert m1.equals(m2)
    assert m1[labels == "a"].sum() == 2 and m1[labels == "b"].sum() == 1
    with pytest.raises(UserError, match="leaves class 'c'"):
        stratified_val(pd.Series(["a", "a", "c"]), 0.5, 0)


def test_prepare_writes_cache_manifest_and_report(tmp_path):
    root, out = tmp_path / "data", tmp_path / "out"
    out.mkdir()
    write_sample(root, 4, 3, 2, seed=5, bad_files=True)
    report = prepare_dataset(root, CLASSES, 64, 0.25, 5, {}, "validation.csv", out)
    df = pd.read_parquet(out / "manifest.parquet")
    cache = np.load(out / "images.npy", mmap_mode="r")
    assert cache.shape == (len(df), 3, 64, 64) and cache.dtype == np.uint8
    assert report["counts"] == {"test/chihuahua": 2, "test/muffin": 2, "train/chihuahua": 3,
                                "train/muffin": 3, "train/undefined": 3, "val/chihuahua": 1,
                                "val/muffin": 1}
    assert {e["path"] for e in report["excluded"]} == {
        "train128/undefined/broken.jpg", "train128/undefined/empty.jpg",
        "train128/undefined/.DS_Store"}
    # the cache row of each manifest entry really is that image
    first = df.iloc[0]
    again = decode_image(root / first["path"], 64).pixels.transpose(2, 0, 1)
    assert np.array_equal(cache[first["idx"]], again)


def test_prepare_validation_file_moves_pool_images_to_val(tmp_path):
    root, out = tmp_path / "data", tmp_path / "out"
    out.mkdir()
    write_sample(root, 4, 3, 0, seed=5)
    pool = pd.read_csv(root / "pool_labels.csv")
    validation = dict(zip(pool["relative_path"], pool["label"], strict=True))
    prepare_dataset(root, CLASSES, 32, 0.0, 5, validation, "validation.csv", out)
    df = pd.read_parquet(out / "manifest.parquet").set_index("path")
    for path, label in validation.items():
        assert df.loc[path, "split"] == "val" and df.loc[path, "label"] == label
    assert not (df["split"] == "test").any()


@pytest.mark.parametrize("which,message", [
    ("train128/chihuahua", "is not a pool image (train128/undefined/): its folder already "
     "labels it"),
    ("test128/muffin", "is a test image; validation images must come from train128/"),
])
def test_validation_file_takes_pool_images_only_naming_the_row(tmp_path, which, message):
    root, out = tmp_path / "data", tmp_path / "out"
    out.mkdir()
    write_sample(root, 4, 3, 1, seed=5)
    pool = pd.read_csv(root / "pool_labels.csv")["relative_path"]
    other = sorted(p.relative_to(root).as_posix() for p in (root / which).glob("*.jpg"))[0]
    text = f"path,label\n{pool[0]},muffin\n{other},muffin\n"
    validation = parse_path_labels(text, CLASSES, "validation.csv")
    with pytest.raises(UserError, match=re.escape(f"validation.csv: row 3: {other} {message}")):
        prepare_dataset(root, CLASSES, 32, 0.0, 5, validation, "validation.csv", out)
    assert not (out / "manifest.parquet").exists()


def test_a_shipped_val128_split_is_validation_only(tmp_path):
    root, out = tmp_path / "data", tmp_path / "out"
    out.mkdir()
    write_sample(root, 5, 2, 1, seed=5, val_per_class=3)
    assert len(list((root / "val128/chihuahua").glob("*.jpg"))) == 3
    report = prepare_dataset(root, CLASSES, 32, 0.2, 5, {}, "validation.csv", out)
    # val_fraction still draws 1 of 5 per class from train128/; val128/ adds 3 per class
    assert report["counts"] == {"test/chihuahua": 1, "test/muffin": 1, "train/chihuahua": 4,
                                "train/muffin": 4, "train/undefined": 2, "val/chihuahua": 4,
                                "val/muffin": 4}
    df = pd.read_parquet(out / "manifest.parquet")
    shipped = df[df["path"].str.startswith("val128/")]
    assert len(shipped) == 6 and (shipped["split"] == "val").all()
    assert (shipped["label"] == shipped["path"].str.split("/").str[1]).all()


def test_prepare_fails_on_empty_class(tmp_path):
    root = tmp_path / "data"
    write_sample(root, 3, 0, 0, seed=5)
    for f in (root / "train128/muffin").iterdir():
        os.remove(f)
    with pytest.raises(UserError, match="train128/muffin/ has no usable images"):
        prepare_dataset(root, CLASSES, 32, 0.3, 5, {}, "v.csv", tmp_path)

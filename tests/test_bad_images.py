"""Scraped folders: odd, broken and unsafe files go through the prepare stage as a user runs it.

Policy: decodable images are converted (RGB, base.image_size, EXIF orientation applied) and
counted; undecodable or unsafe files are excluded with a reason in data/prepared/report.json;
the stage fails (exit 2, one line) only when nothing usable remains or a required class or
split is missing. The dataset itself is never modified.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from chimuffin.data.images import ImageDecodeError, decode_image
from chimuffin.data.scan import scan_dataset
from tests.helpers.badinput import (
    CLASSES,
    bomb_png,
    error_line,
    exif_rotated_jpeg,
    jpeg_bytes,
    photo,
    png_bytes,
    rgb16_png,
    stage,
    tiny_params,
    tree_hashes,
    truncated_jpeg,
    write_params,
)
from tests.helpers.repo import deep_update

NON_UTF8 = b"caf\xe9.jpg"  # Latin-1, as old Windows/FTP tools write names


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def odd_but_usable() -> dict[str, bytes]:
    """name -> bytes of images that must be converted and kept."""
    palette = Image.new("P", (30, 30))
    palette.putpalette([0, 120, 0] * 256)
    frames = [photo(5, (64, 64)).convert("P"), photo(6, (64, 64)).convert("P")]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    return {
        "photo.png": _save(photo(1), "PNG"),
        "animated.gif": gif.getvalue(),
        "photo.webp": _save(photo(2), "WEBP"),
        "photo.bmp": _save(photo(4), "BMP"),
        "gray.jpg": jpeg_bytes(photo(7).convert("L")),
        "rgba.png": _save(Image.new("RGBA", (40, 40), (255, 0, 0, 0)), "PNG"),
        "palette.png": _save(palette, "PNG"),
        "palette_transparent.png": _save(palette, "PNG", transparency=0),
        "cmyk.jpg": jpeg_bytes(photo(8).convert("CMYK")),
        "gray16.png": _save(Image.fromarray(np.full((16, 16), 128 * 257, np.uint16)), "PNG"),
        "rgb16.png": rgb16_png(16, (200 * 257, 10 * 257, 65535)),
        "exif_rotated.jpg": exif_rotated_jpeg(),
        "big.jpg": jpeg_bytes(photo(9, (300, 200))),
        "small.png": _save(photo(10, (20, 20)), "PNG"),
        "with space.jpg": jpeg_bytes(photo(11)),
    }


# name -> (bytes, reason substring) of files that must be excluded with that reason
def broken() -> dict[str, tuple[bytes, str]]:
    return {
        "truncated.jpg": (truncated_jpeg(), "cannot decode"),
        "zero.jpg": (b"", "empty file (0 bytes)"),
        "notes.jpg": (b"these are my notes, not a picture\n", "not an image"),
        "bomb.png": (bomb_png(20_000), "decompression bomb"),
        # Below Pillow's own limit, above ours: refused before any pixel is decoded.
        "huge.png": (png_bytes(8000, 6000, 1, 0, b"\x00" + bytes(1000)), "too large (8000x6000"),
        ".hidden.jpg": (jpeg_bytes(photo(12)), "hidden or system file"),
        ".DS_Store": (b"\x00\x00\x00\x01Bud1", "hidden or system file"),
        "Thumbs.db": (b"\xd0\xcf\x11\xe0", "hidden or system file"),
        "readme.txt": (b"hi", "unsupported file type '.txt'"),
    }


def scraped_dataset(root, outside):
    """The crafted dataset: every oddity in train128/chihuahua, plain images in muffin, an
    empty pool folder, a misnamed class folder, links out of the dataset, no test128/."""
    chi, muf = root / "train128/chihuahua", root / "train128/muffin"
    for d in (chi, muf, root / "train128/undefined", root / "train128/Muffins", outside):
        d.mkdir(parents=True)
    for i in range(3):
        (chi / f"good_{i}.jpg").write_bytes(jpeg_bytes(photo(20 + i)))
        (muf / f"good_{i}.jpg").write_bytes(jpeg_bytes(photo(30 + i)))
    (root / "train128/Muffins/m.jpg").write_bytes(jpeg_bytes(photo(40)))
    for name, data in odd_but_usable().items():
        (chi / name).write_bytes(data)
    for name, (data, _) in broken().items():
        (chi / name).write_bytes(data)
    with open(os.path.join(os.fsencode(chi), NON_UTF8), "wb") as f:
        f.write(jpeg_bytes(photo(13)))
    (outside / "secret.jpg").write_bytes(jpeg_bytes(photo(14)))
    (chi / "link_out.jpg").symlink_to(outside / "secret.jpg")
    (muf / "linked_folder").symlink_to(outside, target_is_directory=True)


def params_for(tmp_path, data_dir, **groups) -> dict:
    return deep_update(tiny_params(prepare={"data_dir": str(data_dir), "val_fraction": 0.34}),
                       groups)


def prepare(tmp_path, params: dict | None = None, out="prepared"):
    pfile = tmp_path / "params.yaml"
    if params is not None:
        write_params(pfile, params)
    return stage("prepare", "--params", pfile, "--validation", tmp_path / "validation.csv",
                 "--out", tmp_path / out, cwd=tmp_path)


@pytest.mark.slow
def test_prepare_converts_odd_images_and_reports_every_excluded_file(tmp_path):
    root, outside = tmp_path / "ds", tmp_path / "elsewhere"
    scraped_dataset(root, outside)
    before = tree_hashes(tmp_path)

    p = prepare(tmp_path, params_for(tmp_path, root))
    assert p.returncode == 0, p.stderr

    report = json.loads((tmp_path / "prepared/report.json").read_text())
    reasons = {e["path"]: e["reason"] for e in report["excluded"]}
    expected = {f"train128/chihuahua/{n}": why for n, (_, why) in broken().items()}
    expected |= {
        "train128/chihuahua/caf\\xe9.jpg": "not valid UTF-8",
        "train128/chihuahua/link_out.jpg": "symlink pointing outside the dataset",
        "train128/muffin/linked_folder": "symlink pointing outside the dataset",
        "train128/Muffins/": "unknown class folder 'Muffins'",
    }
    assert set(reasons) == set(expected)
    for path, why in expected.items():
        assert why in reasons[path], (path, reasons[path])

    # 3 good + 15 odd chihuahuas, 3 muffins; val = round(0.34 n) per class; no test128/
    assert report["images"] == 21 and report["has_test"] is False
    assert report["counts"] == {"train/chihuahua": 12, "val/chihuahua": 6,
                                "train/muffin": 2, "val/muffin": 1}
    assert report["conversions"] == {
        "converted_from_CMYK": 1, "converted_from_I;16": 1, "converted_from_L": 1,
        "converted_from_P": 3, "converted_from_RGBA": 1, "resized": 21}
    # the summary the user sees lists the exclusions too
    assert "excluded train128/chihuahua/bomb.png: possible decompression bomb" in p.stdout

    # converted pixels are what a viewer shows
    df = pd.read_parquet(tmp_path / "prepared/manifest.parquet").set_index("path")
    cache = np.load(tmp_path / "prepared/images.npy", mmap_mode="r")
    assert cache.shape == (21, 3, 32, 32)

    def pixels(name):
        return cache[df.loc[f"train128/chihuahua/{name}", "idx"]].transpose(1, 2, 0)

    rotated = pixels("exif_rotated.jpg").astype(int)
    assert (rotated[:12, :, 0] > 200).all() and (rotated[:12, :, 2] < 60).all()  # red on top
    assert (rotated[-12:, :, 2] > 200).all() and (rotated[-12:, :, 0] < 60).all()  # blue below
    assert df.loc["train128/chihuahua/exif_rotated.jpg", ["width", "height"]].tolist() == [20, 40]
    assert (pixels("gray16.png") == 128).all()  # 16-bit scaled, not clipped to white
    assert (pixels("rgb16.png") == [200, 10, 255]).all()
    assert (pixels("rgba.png") == 255).all()  # transparent over white
    assert (pixels("palette_transparent.png") == 255).all()
    assert (pixels("palette.png") == [0, 120, 0]).all()
    assert df.loc["train128/chihuahua/big.jpg", ["width", "height"]].tolist() == [300, 200]
    assert "train128/chihuahua/with space.jpg" in df.index

    assert tree_hashes(root) == {k[len("ds/"):]: v for k, v in before.items()
                                 if k.startswith("ds/")}
    assert tree_hashes(outside) == {k[len("elsewhere/"):]: v for k, v in before.items()
                                    if k.startswith("elsewhere/")}


def fatal_cases():
    """name -> (build(root), params overrides, message)."""
    def only_broken(root):
        for cls in CLASSES:
            d = root / "train128" / cls
            d.mkdir(parents=True)
            (d / "zero.jpg").write_bytes(b"")
            (d / "notes.jpg").write_text("not a picture")

    def muffin_empty(root):
        for cls in CLASSES:
            (root / "train128" / cls).mkdir(parents=True)
        for i in range(4):
            (root / f"train128/chihuahua/{i}.jpg").write_bytes(jpeg_bytes(photo(i)))
        (root / "train128/muffin/zero.jpg").write_bytes(b"")

    def plain(root, n_muffin=4):
        for cls in CLASSES:
            (root / "train128" / cls).mkdir(parents=True)
        for i in range(4):
            (root / f"train128/chihuahua/{i}.jpg").write_bytes(jpeg_bytes(photo(i)))
        for i in range(n_muffin):
            (root / f"train128/muffin/{i}.jpg").write_bytes(jpeg_bytes(photo(10 + i)))

    def no_train(root):
        (root / "test128/muffin").mkdir(parents=True)
        (root / "test128/muffin/a.jpg").write_bytes(jpeg_bytes(photo(1)))

    return {
        "nothing usable": (only_broken, {}, "no usable images (excluded 4 files)"),
        "empty class folder": (muffin_empty, {},
                               "train128/muffin/ has no usable images: every class needs"),
        "class names differ from params": (
            plain, {"base": {"classes": ["cat", "dog"]}},
            "no folder for class cat, dog (base.classes is cat, dog; found folders: "
            "chihuahua, muffin)"),
        "missing train128": (no_train, {}, "no train128/ folder"),
        "val fraction leaves a class empty": (
            lambda root: plain(root, n_muffin=1), {},
            "prepare.val_fraction=0.34 leaves class 'muffin' with 1 labeled image(s)"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", list(fatal_cases()))
def test_prepare_fails_clearly_and_keeps_previous_output(tmp_path, case):
    build, overrides, message = fatal_cases()[case]
    root = tmp_path / "ds"
    root.mkdir()
    build(root)
    # the previous run's output must survive a failed run untouched
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared/report.json").write_text('{"images": 1}\n')
    write_params(tmp_path / "params.yaml", params_for(tmp_path, root, **overrides))
    before = tree_hashes(tmp_path)

    p = prepare(tmp_path)

    assert p.returncode == 2
    line = error_line(p)
    assert line.startswith("chimuffin prepare: error: ") and message in line, line
    assert tree_hashes(tmp_path) == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".prepared.")]


# --- in-process checks of the same policy (fast) ----------------------------------------

def test_nested_non_utf8_folder_and_linked_class_folder_are_excluded(tmp_path):
    root, outside = tmp_path / "ds", tmp_path / "elsewhere"
    for cls in CLASSES:
        (root / "train128" / cls).mkdir(parents=True)
    outside.mkdir()
    (outside / "x.jpg").write_bytes(jpeg_bytes(photo(1)))
    bad_dir = os.path.join(os.fsencode(root / "train128/muffin"), b"d\xe9j\xe0")
    os.mkdir(bad_dir)
    with open(os.path.join(bad_dir, b"ok.jpg"), "wb") as f:
        f.write(jpeg_bytes(photo(2)))
    # a class folder that is itself a link out of the dataset: its files are outside too
    (root / "train128/undefined").symlink_to(outside, target_is_directory=True)
    keep, excluded = scan_dataset(root, CLASSES)
    assert keep == []
    reasons = {e.path: e.reason for e in excluded}
    assert "not valid UTF-8" in reasons["train128/muffin/d\\xe9j\\xe0/ok.jpg"]
    assert "symlink pointing outside" in reasons["train128/undefined/x.jpg"]


def test_exif_orientation_is_applied(tmp_path):
    f = tmp_path / "r.jpg"
    f.write_bytes(exif_rotated_jpeg())
    d = decode_image(f, 40)
    assert d.orig_size == (20, 40)  # as displayed: portrait
    px = d.pixels.astype(int)
    assert px[5, 20, 0] > 200 and px[5, 20, 2] < 60  # top is red
    assert px[35, 20, 2] > 200 and px[35, 20, 0] < 60  # bottom is blue


def _valid_files() -> list[bytes]:
    img = photo(1, (24, 24))
    return [jpeg_bytes(img), _save(img, "PNG"), _save(img.convert("P"), "GIF"),
            _save(img, "BMP"), _save(img, "WEBP"), exif_rotated_jpeg()]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 5), cuts=st.lists(st.tuples(st.integers(0, 10_000),
                                                       st.integers(0, 255)), max_size=6),
       keep=st.floats(0.0, 1.0))
def test_corrupted_images_are_decoded_or_refused_never_crash(tmp_path_factory, which, cuts,
                                                              keep):
    """Random byte flips and truncations of valid files of every format: the decoder either
    returns a 32x32 RGB image or raises ImageDecodeError (the file is excluded), never
    another exception that would stop the whole dataset."""
    data = bytearray(_valid_files()[which])
    for pos, value in cuts:
        data[pos % len(data)] = value
    data = bytes(data[: max(0, int(len(data) * keep))])
    f = tmp_path_factory.mktemp("fuzz") / "x.img"
    f.write_bytes(data)
    try:
        d = decode_image(f, 32)
    except ImageDecodeError as e:
        assert str(e)
    else:
        assert d.pixels.shape == (32, 32, 3) and d.pixels.dtype == np.uint8

"""Helpers for the bad-input tests: crafted files, stage subprocesses, tree hashes."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import yaml
from PIL import Image

from tests.helpers.repo import TINY, deep_update, default_params_dict, run

CLASSES = ["chihuahua", "muffin"]


def tree_hashes(root: Path) -> dict[str, str]:
    """Every entry under root (files by content, links by target, folders by name), without
    following links: to show a stage left its inputs exactly as they were."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            key = os.path.relpath(p, os.fsencode(root)).decode("utf-8", "backslashreplace")
            if os.path.islink(p):
                out[key] = "link:" + os.fsdecode(os.readlink(p))
            elif os.path.isdir(p):
                out[key] = "dir"
            else:
                with open(p, "rb") as f:
                    out[key] = hashlib.sha256(f.read()).hexdigest()
    return out


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def stage(name: str, *args: str, cwd: Path, timeout: int = 300):
    """Run `python -m chimuffin.stages.<name> ...` as a user would; never raises on failure."""
    return run([sys.executable, "-m", f"chimuffin.stages.{name}", *map(str, args)], cwd,
               check=False, timeout=timeout)


def error_line(p) -> str:
    """The single line a failed stage prints; asserts there is exactly one and no traceback."""
    lines = p.stderr.strip().splitlines()
    assert "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 1, p.stderr
    return lines[0]


def tiny_params(**groups) -> dict:
    """The repo's params with the tiny-test overrides, at 32 px, plus `groups`."""
    return deep_update(deep_update(default_params_dict(), TINY),
                       deep_update({"base": {"image_size": 32}}, groups))


def tiny_prepared(d: Path, pool: int, seed: int) -> Path:
    """d/prepared and d/clean (no decisions) for a small synthetic dataset, in-process."""
    from chimuffin.data.prepare import prepare_dataset
    from chimuffin.data.sample import write_sample

    write_sample(d / "ds", 3, pool, 0, seed=seed)
    for sub in ("prepared", "clean"):
        (d / sub).mkdir()
    prepare_dataset(d / "ds", CLASSES, 32, 0.34, seed, {}, "validation.csv", d / "prepared")
    shutil.copy(d / "prepared/manifest.parquet", d / "clean/manifest.parquet")
    return d


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# --- images ---------------------------------------------------------------------------------

def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def photo(seed: int, size=(128, 128)) -> Image.Image:
    """A distinct, compressible test picture."""
    return Image.effect_mandelbrot(size, (-2 + (seed % 40) * 0.05, -1.5, 1, 1.5), 30).convert("RGB")


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, row: bytes) -> bytes:
    """A valid PNG whose every row is `row` (filter byte included), written by hand and
    streamed through zlib so that huge images cost almost no memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    z = zlib.compressobj(9)
    block = 512  # rows per zlib call
    parts = [z.compress(row * min(block, height - i)) for i in range(0, height, block)]
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def bomb_png(side: int = 20_000) -> bytes:
    """A 1-bit single-colour PNG of side x side pixels: about 40 KB on disk, 400 MP decoded."""
    return png_bytes(side, side, 1, 0, b"\x00" + bytes((side + 7) // 8))


def rgb16_png(side: int, rgb16: tuple[int, int, int]) -> bytes:
    return png_bytes(side, side, 16, 2, b"\x00" + struct.pack(">HHH", *rgb16) * side)


def exif_rotated_jpeg() -> bytes:
    """Stored 40x20, left half red and right half blue, tagged Orientation=6 (rotate 90 degrees
    clockwise to display): shown upright it is 20x40 with red on top, blue below."""
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(img, exif=exif.tobytes())


def truncated_jpeg() -> bytes:
    data = jpeg_bytes(photo(3))
    return data[: len(data) // 2]

"""Image decoding with an explicit policy for every kind of bad or odd file.

Decodable images are converted to RGB at the target size with their EXIF orientation applied;
anything else is reported with a reason instead of crashing the stage.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
# Larger images are refused as possible decompression bombs (a 20000x20000 image is 400 MP).
MAX_PIXELS = 40_000_000


class ImageDecodeError(Exception):
    """The file is not a usable image; the message is the reason shown to the user."""


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # HxWx3 uint8 at the target size
    orig_size: tuple[int, int]  # (width, height) before resizing
    resized: bool
    converted_from: str  # original PIL mode, e.g. "RGB", "L", "CMYK"


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit) grayscale: map the 16-bit range onto 8 bits instead of clipping
        # everything above 255 to white. A fixed scale keeps dark images dark.
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr / 257.0, 0, 255).round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no details"


def decode_image(path: str | Path, size: int) -> Decoded:
    """Decode one image file to RGB size x size, or raise ImageDecodeError with the reason."""
    path = Path(path)
    try:
        if os.path.getsize(path) == 0:
            raise ImageDecodeError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data" and the like
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageDecodeError(
                        f"too large ({w}x{h} pixels, limit {MAX_PIXELS}): possible "
                        "decompression bomb")
                mode = img.mode
                img.seek(0)  # first frame of animated GIF/WebP
                img = ImageOps.exif_transpose(img)  # as a camera or browser would show it
                img.load()
                w, h = img.size  # after rotation
                rgb = _to_rgb(img)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"possible decompression bomb ({e})") from e
    except Image.UnidentifiedImageError as e:
        raise ImageDecodeError("not an image (unrecognised format)") from e
    except Exception as e:
        # Files are untrusted: a corrupt one makes Pillow's decoders raise OSError, ValueError,
        # SyntaxError, struct.error, IndexError... Any of them excludes this file (with the
        # reason in the report) rather than stopping the whole dataset.
        raise ImageDecodeError(f"cannot decode ({type(e).__name__}: {_first_line(e)})") from e
    resized = rgb.size != (size, size)
    if resized:
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return Decoded(np.asarray(rgb, dtype=np.uint8).copy(), (w, h), resized, mode)

"""The embedded default dataset: procedurally drawn chihuahuas and muffins.

Deterministic for a given seed (same bytes every run), in the hackathon layout plus a shipped
validation split (val128/), so `dvc repro` works on a fresh clone with no download.

Drawn so that the reference recipe learns it from its 20 training images within minutes on a
2-core CPU: the classes differ in shape (ears and eyes; a pleated cup under a dome) and, on
clear images, in colour (bright paper cups), and the labeled training images are all clear.
The pool, validation and test also hold hard images (HARD_SHARE of them: small, blurred, noisy,
the cup brown like a dog's fur), where a first model errs: labeling the pool still helps.
Backgrounds, clutter and noise are shared by both classes. The pool's true labels are written
to `pool_labels.csv` (relative_path,label), the same format as the real data's
`reviewed_labels.csv`, to simulate a person answering review requests.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 128
HARD_SHARE = 0.15  # of the pool, validation and test images (the labeled training ones: none)
WARM = [(196, 148, 96), (160, 110, 60), (222, 184, 135), (120, 80, 45), (90, 60, 40),
        (230, 210, 180)]
# Paper cups: bright on clear muffins, brown like a dog's fur on hard ones.
CUPS = [(200, 60, 60), (150, 90, 200), (70, 110, 200), (230, 150, 190), (90, 170, 90),
        (235, 205, 70)]
CAKE = [(150, 95, 45), (120, 70, 35), (175, 120, 60), (95, 60, 30)]


def _jitter(rgb, rng: random.Random, amount: int = 30):
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _background(rng: random.Random) -> Image.Image:
    top = (rng.randint(60, 250), rng.randint(60, 250), rng.randint(60, 250))
    bottom = _jitter(top, rng, 60)
    img = Image.new("RGB", (SIZE, SIZE))
    d = ImageDraw.Draw(img)
    for y in range(SIZE):
        t = y / (SIZE - 1)
        color = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        d.line([(0, y), (SIZE, y)], fill=color)
    for _ in range(rng.randint(0, 2)):  # clutter shared by both classes
        x, y, r = rng.randint(0, SIZE), rng.randint(0, SIZE), rng.randint(4, 14)
        d.ellipse([x - r, y - r, x + r, y + r], fill=_jitter(top, rng, 80))
    return img


def _draw_chihuahua(d: ImageDraw.ImageDraw, rng: random.Random, cx: float, cy: float, s: float):
    fur = _jitter(rng.choice(WARM), rng)
    ear = _jitter(fur, rng, 25)
    inner = _jitter((225, 160, 150), rng, 20)
    for side in (-1, 1):  # big triangular ears: the chihuahua's signature
        bx, tip = cx + side * 0.45 * s, (cx + side * 0.8 * s, cy - 1.0 * s)
        d.polygon([(bx - 0.24 * s, cy - 0.15 * s), (bx + 0.24 * s, cy - 0.2 * s), tip], fill=ear)
        d.polygon([(bx - 0.1 * s, cy - 0.25 * s), (bx + 0.12 * s, cy - 0.28 * s),
                   (cx + side * 0.72 * s, cy - 0.8 * s)], fill=inner)
    d.ellipse([cx - 0.55 * s, cy - 0.5 * s, cx + 0.55 * s, cy + 0.55 * s], fill=fur)
    snout = _jitter(fur, rng, 20)
    d.ellipse([cx - 0.25 * s, cy + 0.05 * s, cx + 0.25 * s, cy + 0.45 * s], fill=snout)
    eye = (rng.randint(0, 40),) * 3
    er = 0.12 * s * rng.uniform(0.85, 1.2)
    for side in (-1, 1):  # big dark eyes with a highlight
        ex, ey = cx + side * 0.22 * s, cy - 0.08 * s
        d.ellipse([ex - er, ey - er, ex + er, ey + er], fill=eye)
        d.ellipse([ex - 0.3 * er, ey - 0.6 * er, ex + 0.1 * er, ey - 0.2 * er],
                  fill=(245, 245, 245))
    d.ellipse([cx - 0.09 * s, cy + 0.12 * s, cx + 0.09 * s, cy + 0.25 * s], fill=(20, 15, 15))


def _draw_muffin(d: ImageDraw.ImageDraw, rng: random.Random, cx: float, cy: float, s: float,
                 hard: bool):
    paper = rng.choice(WARM if hard else CUPS)
    wrapper = _jitter(paper, rng)
    top_y, bot_y = cy, cy + 0.7 * s
    d.polygon([(cx - 0.6 * s, top_y), (cx + 0.6 * s, top_y), (cx + 0.42 * s, bot_y),
               (cx - 0.42 * s, bot_y)], fill=wrapper)
    stripe = _jitter(tuple(int(c * 0.6) for c in wrapper), rng, 20)
    for k in range(-4, 5):  # pleats of the paper cup
        x = cx + k * 0.13 * s
        d.line([(x, top_y), (cx + k * 0.09 * s, bot_y)], fill=stripe, width=max(1, int(s / 25)))
    cake = _jitter(rng.choice(CAKE), rng, 20)
    d.ellipse([cx - 0.72 * s, cy - 0.65 * s, cx + 0.72 * s, cy + 0.2 * s], fill=cake)
    dot = (rng.randint(20, 90), rng.randint(10, 50), rng.randint(10, 90))
    for _ in range(rng.randint(4, 12)):  # blueberries / chocolate chips look a bit like eyes
        a, r = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.55) * s
        x, y = cx + r * math.cos(a), cy - 0.22 * s + 0.55 * r * math.sin(a)
        rr = rng.uniform(0.04, 0.1) * s
        d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=dot)


def draw_image(label: str, seed: int, hard_share: float = HARD_SHARE) -> Image.Image:
    """One image; with probability hard_share a hard one: small, off-centre, tilted, blurred
    and noisy, its cup brown like the dogs' fur."""
    rng = random.Random(seed)
    hard = rng.random() < hard_share
    img = _background(rng)
    layer = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    s = rng.uniform(28, 38) if hard else rng.uniform(40, 56)
    spread = (0.3, 0.7) if hard else (0.4, 0.6)
    cx, cy = rng.uniform(*spread) * SIZE, rng.uniform(*spread) * SIZE
    if label == "chihuahua":
        _draw_chihuahua(d, rng, cx, cy, s)
    else:
        _draw_muffin(d, rng, cx, cy, s, hard)
    tilt = 30 if hard else 15
    layer = layer.rotate(rng.uniform(-tilt, tilt), resample=Image.Resampling.BILINEAR,
                         center=(cx, cy))
    img.paste(layer, (0, 0), layer)
    if hard or rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 1.6) if hard
                                                  else rng.uniform(0.3, 1.0)))
    # numpy noise seeded from rng (PIL's effect_noise has its own unseeded generator)
    noise_rng = np.random.default_rng(rng.getrandbits(32))
    noise = noise_rng.normal(128, rng.uniform(5, 25), (SIZE, SIZE, 1)).clip(0, 255)
    noise_img = Image.fromarray(np.repeat(noise, 3, axis=2).astype(np.uint8), mode="RGB")
    return Image.blend(img, noise_img, rng.uniform(0.15, 0.25) if hard else rng.uniform(0.03, 0.12))


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, optimize=False)
    return buf.getvalue()


def plan(labeled_per_class: int, pool: int, test_per_class: int, seed: int,
         classes: tuple[str, str] = ("chihuahua", "muffin"), val_per_class: int = 0):
    """Yield (relative folder, true label, image seed, is_pool) for every image to draw."""
    rng = random.Random(seed)
    for split, n in (("train128", labeled_per_class), ("test128", test_per_class),
                     ("val128", val_per_class)):
        for label in classes:
            for _ in range(n):
                yield f"{split}/{label}", label, rng.getrandbits(48), False
    for _ in range(pool):  # the pool is about 54% chihuahua, like the real one
        label = classes[0] if rng.random() < 0.54 else classes[1]
        yield "train128/undefined", label, rng.getrandbits(48), True


def write_sample(out_dir: str | Path, labeled_per_class: int, pool: int, test_per_class: int,
                 seed: int, bad_files: bool = False,
                 classes: tuple[str, str] = ("chihuahua", "muffin"),
                 val_per_class: int = 0) -> dict:
    """Write the synthetic dataset into out_dir (which must be empty or absent).

    val_per_class images per class go to val128/, the validation split a dataset may ship:
    they are only evaluated, so a validation large enough to rank experiments costs no
    training time."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counters: dict[str, int] = {}
    pool_rows = []
    for folder, label, img_seed, is_pool in plan(labeled_per_class, pool, test_per_class, seed,
                                                 classes, val_per_class):
        # The first class is drawn as a dog and the second as a muffin, whatever their names.
        # The labeled training images are all clear ones, the images a person labels first;
        # the pool, validation and test also hold hard ones, where a first model errs and
        # labeling the pool helps.
        hard_share = 0.0 if folder.startswith("train128/") and not is_pool else HARD_SHARE
        data = jpeg_bytes(draw_image("chihuahua" if label == classes[0] else "muffin", img_seed,
                                     hard_share))
        if is_pool:
            name = f"u_{hashlib.sha1(data).hexdigest()[:12]}.jpg"
            pool_rows.append((f"{folder}/{name}", label))
        else:
            counters[folder] = counters.get(folder, 0) + 1
            name = f"img_{counters[folder]:05d}.jpg"
        (out / folder).mkdir(parents=True, exist_ok=True)
        (out / folder / name).write_bytes(data)
    if bad_files:  # what scraped folders contain: prepare must report these, not crash
        (out / "train128/undefined").mkdir(parents=True, exist_ok=True)  # also when pool is 0
        (out / "train128/undefined/broken.jpg").write_bytes(b"not really a jpeg\n")
        (out / "train128/undefined/empty.jpg").write_bytes(b"")
        (out / "train128/undefined/.DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with open(out / "pool_labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["relative_path", "label"])
        w.writerows(sorted(pool_rows))
    return {"labeled": 2 * labeled_per_class, "val": 2 * val_per_class, "pool": pool,
            "test": 2 * test_per_class}

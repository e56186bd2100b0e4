"""Class-activation heatmaps: they point at what decides the class; the report's heatmap figure;
`chimuffin predict --heatmaps DIR`."""

import re
import shutil
from argparse import Namespace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from chimuffin.cli import main as cli_main
from chimuffin.config import load_params
from chimuffin.errors import UserError
from chimuffin.infer.heatmap_files import heatmap_names
from chimuffin.infer.heatmaps import heatmaps, normalise, overlay
from chimuffin.infer.preprocess import preprocess
from chimuffin.report.eval_report import build_report, mistakes_section
from chimuffin.report.mistake_heatmaps import mistakes_heatmaps_png
from tests.helpers.repo import REPO, TINY, deep_update, default_params_dict

SIZE, SQUARE = 32, 8


# --- the heatmap points at the region that decides the class ----------------------------------

class TinyCam(nn.Module):
    """Two strided conv blocks (the second named layer4, where Grad-CAM looks: an 8x8 map of a
    32 px image), global average pooling, a linear layer: the shape of ResNet-18 in small."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.layer4(self.stem(x)).mean(dim=(2, 3)))


QUADRANTS = [(0, 0), (0, 16), (16, 0), (16, 16)]


def squares(rng, n: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Grey noise images, each with a blue square (a distractor) in one quadrant; class 1 ones
    also have a red square in another quadrant: only the red square decides the class."""
    x = rng.integers(60, 120, (n, 3, SIZE, SIZE), dtype=np.uint8)
    y = rng.integers(0, 2, n)
    where = []
    for i in range(n):
        blue_q, red_q = rng.choice(4, 2, replace=False)
        for q, colour in ((blue_q, (20, 20, 250)), (red_q, (250, 20, 20))):
            if colour[0] == 250 and not y[i]:
                continue
            r, c = QUADRANTS[q]
            r, c = r + rng.integers(0, 16 - SQUARE + 1), c + rng.integers(0, 16 - SQUARE + 1)
            x[i, :, r:r + SQUARE, c:c + SQUARE] = np.array(colour, np.uint8)[:, None, None]
        where.append((QUADRANTS[red_q], QUADRANTS[blue_q]))
    return x, y, where


def trained_tiny_cam() -> nn.Module:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = TinyCam()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        x, y, _ = squares(rng, 32)
        loss = nn.functional.cross_entropy(model(preprocess(torch.from_numpy(x))),
                                           torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def quadrant_mass(heat: np.ndarray, corner: tuple[int, int]) -> float:
    r, c = corner
    return float(heat[r:r + 16, c:c + 16].sum() / max(heat.sum(), 1e-9))


def test_the_heatmap_peaks_in_the_region_that_decides_the_class(one_thread):
    model = trained_tiny_cam()
    x, y, where = squares(np.random.default_rng(1), 64)
    with torch.no_grad():
        accuracy = (model(preprocess(torch.from_numpy(x))).argmax(1).numpy() == y).mean()
    assert accuracy > 0.95  # the model learned the rule (else the maps mean nothing)
    red = np.flatnonzero(y == 1)
    maps, explained = heatmaps(model, x[red], np.ones(len(red), np.int64), batch_size=16)
    assert maps.shape == (len(red), SIZE, SIZE) and (explained == 1).all()
    assert maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1)
    for heat, i in zip(maps, red, strict=True):
        red_q, blue_q = where[i]
        peak = np.unravel_index(heat.argmax(), heat.shape)
        assert (peak[0] // 16 * 16, peak[1] // 16 * 16) == red_q
        # a uniform or random map would put about a quarter of its mass in each quadrant
        assert quadrant_mass(heat, red_q) > 0.6 > 3 * quadrant_mass(heat, blue_q)
    # the prediction is the default target: for these images, the same class and maps
    same, predicted = heatmaps(model, x[red], batch_size=64)
    assert (predicted == 1).all() and np.allclose(same, maps, atol=1e-5)


def test_normalise_keeps_zero_maps_and_overlay_checks_sizes():
    maps = normalise(np.array([[[0.0, 2.0], [-1.0, 1.0]], [[-1.0, -1.0], [0.0, 0.0]]]))
    assert np.allclose(maps[0], [[0, 1], [0, 0.5]]) and (maps[1] == 0).all()
    image = np.zeros((2, 2, 3), np.uint8)
    assert overlay(image, maps[0]).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, np.zeros((3, 3)))


# --- the report -------------------------------------------------------------------------------

def images_in(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


@pytest.fixture
def evaluated(tmp_path, monkeypatch, tiny_checkpoint, one_thread):
    """The sample, prepare, clean and evaluate stages run in-process on a tiny dataset, with
    the untrained 32 px checkpoint as the model (it makes mistakes)."""
    from chimuffin.stages import clean, evaluate, prepare, sample

    monkeypatch.chdir(tmp_path)
    params_dict = deep_update(default_params_dict(), {**TINY, "base": {"image_size": 32}})
    Path("params.yaml").write_text(yaml.safe_dump(params_dict, sort_keys=False))
    for f in ("data/labels/validation.csv", "data/labels/decisions.csv",
              "recipes/reference.yaml"):
        Path(f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / f, f)
    params = load_params("params.yaml")
    sample.main(Namespace(out="data/raw/sample"), params)
    prepare.main(Namespace(validation="data/labels/validation.csv", out="data/prepared"), params)
    clean.main(Namespace(prepared="data/prepared", decisions="data/labels/decisions.csv",
                         out="data/clean"), params)
    evaluate.main(Namespace(clean="data/clean", prepared="data/prepared",
                            model=str(tiny_checkpoint), out="metrics/eval",
                            embeddings="data/embed/embeddings.parquet",
                            reference="recipes/reference.yaml"), params)
    return tmp_path / "metrics/eval"


def test_the_report_references_heatmaps_that_exist(evaluated):
    text = (evaluated / "report.md").read_text()
    shown = images_in(text)
    assert shown == ["mistakes.png", "mistakes_heatmaps.png"]
    for name in shown:
        with Image.open(evaluated / name) as im:
            assert im.format == "PNG" and im.size[0] > 300
    assert re.search(r"\| 1 \| `train128/", text)  # the untrained model makes mistakes


def test_no_mistakes_still_writes_the_figure_and_says_none(tmp_path):
    none = pd.DataFrame(columns=["path", "split", "label", "label_source", "prediction",
                                 "confidence"])
    out = tmp_path / "h.png"
    mistakes_heatmaps_png(none, np.zeros((0, 3, 8, 8), np.uint8), [], out)
    with Image.open(out) as im:
        assert im.format == "PNG"
    lines = mistakes_section(none, "m.png", "h.png")
    assert "None." in lines and "![heatmaps of the most confident mistakes](h.png)" in lines
    report = build_report(meta={}, summary={"images": 0, "decisions": 0, "duplicates_dropped": 0,
                                            "label_conflicts": [], "by_split_label": {},
                                            "by_label_source": {}},
                          fingerprint="x", classes=["a", "b"], diff=[], reference_name="r",
                          reports={}, mistakes=none, png_name="m.png")
    assert images_in(report) == ["m.png"]  # no heatmap figure named: none referenced


def test_the_heatmap_figure_is_byte_stable(tmp_path):
    rng = np.random.default_rng(0)
    mistakes = pd.DataFrame({"path": ["a", "b"], "split": "train", "label": "muffin",
                             "label_source": "folder", "prediction": "chihuahua",
                             "confidence": [0.9, 0.8]})
    pixels = rng.integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    overlays = [overlay(p.transpose(1, 2, 0), m)
                for p, m in zip(pixels, rng.random((2, 16, 16)).astype(np.float32), strict=True)]
    mistakes_heatmaps_png(mistakes, pixels, overlays, tmp_path / "a.png")
    mistakes_heatmaps_png(mistakes, pixels, overlays, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


# --- chimuffin predict --heatmaps DIR ---------------------------------------------------------

@pytest.fixture
def photos(tmp_path) -> Path:
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for name in ("a.jpg", "a.png", "sub/b.jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(d / name)
    (d / "broken.jpg").write_bytes(b"not an image")
    return d


def predict_cli(*args) -> int:
    return cli_main(["predict", *map(str, args), "--threads", "1"])


def test_predict_heatmaps_writes_one_png_per_image(photos, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "maps" / "new"
    csv = tmp_path / "res.csv"
    assert predict_cli(photos, "--model", tiny_checkpoint, "--heatmaps", out, "-o", csv,
                       "--format", "csv") == 0
    res = pd.read_csv(csv, keep_default_na=False)
    good = res[res["error"] == ""]
    assert len(good) == 3  # the broken file is a row with its error, and gets no heatmap
    # named by the path below the folder they share, flattened
    names = {"a.jpg": "a.jpg.png", "a.png": "a.png.png", "sub/b.jpg": "sub__b.jpg.png"}
    assert sorted(p.name for p in out.iterdir()) == sorted(names.values())
    for p, label in zip(good["path"], good["label"], strict=True):
        with Image.open(out / names[Path(p).relative_to(photos).as_posix()]) as im:
            assert im.format == "PNG" and im.size[0] > 2 * im.size[1] - 50  # image | overlay
        assert label in ("chihuahua", "muffin")
    assert f"heatmaps in {out}" in capsys.readouterr().err
    assert heatmap_names(["x/a.jpg"]) == ["a.jpg.png"]
    with pytest.raises(UserError, match="would both be written as a__b.jpg.png"):
        heatmap_names(["p/a/b.jpg", "p/a__b.jpg"])


def test_an_unwritable_heatmaps_folder_is_refused_before_anything_is_written(
        photos, tiny_checkpoint, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    csv = tmp_path / "res.csv"
    cases = [(a_file, "--heatmaps needs a folder, and this is a file"),
             (a_file / "maps", f"cannot write: {a_file} is a file, not a folder")]
    for folder, message in cases:
        assert predict_cli(photos, "--model", tiny_checkpoint, "--heatmaps", folder,
                           "-o", csv) == 2
        assert capsys.readouterr().err.strip() == (f"chimuffin predict: error: {folder}: "
                                                   f"{message}")
    # a folder no one may create in (/proc), found only when writing: still one line, and the
    # results file is not written either
    proc = Path("/proc/chimuffin-heatmaps")
    assert predict_cli(photos, "--model", tiny_checkpoint, "--heatmaps", proc, "-o", csv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"chimuffin predict: error: {proc}: cannot write") and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "photos"]

"""benchmarks/review_session.py --validation N: the wall-clock arm's person builds its own
validation set first (reviewed_labels.csv held out of everything), and the final model is
scored on both, so the two estimates can be compared; the validation set's cost is reported
in simulated minutes."""

import json
import tempfile

import pytest
import yaml

from chimuffin.errors import UserError
from tests.helpers.repo import REPO
from tests.test_benchmarks import load


def test_the_arm_keeps_the_seeds_validation_split_and_holds_the_reviewed_images_out(tmp_path):
    rs = load("review_session")
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    p = rs.arm_params(base, base["train"], [], tmp_path, rs.WALL_ARM, smoke=False,
                      validation=500)
    assert p["prepare"]["val_fraction"] == base["prepare"]["val_fraction"] > 0
    assert p["review"]["validation_size"] == 500
    assert rs.arm_params(base, base["train"], [], tmp_path, rs.WALL_ARM,
                         smoke=False)["prepare"]["val_fraction"] == 0.0
    out = rs.held_out({"b.jpg": "muffin", "a.jpg": "chihuahua"})
    assert [(d.path, d.label, d.source) for d in out] == [("a.jpg", "remove", "rule"),
                                                         ("b.jpg", "remove", "rule")]
    with pytest.raises(UserError, match="--arms wall-clock only"):
        rs.main(["--smoke", "--arms", "wall-clock", "ceiling", "--validation", "5", "--workdir",
                 str(tmp_path / "w")])


@pytest.mark.slow
def test_review_session_builds_its_own_validation_set_and_scores_the_final_model(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rs = load("review_session")
    out = tmp_path / "out"
    assert rs.main(["--smoke", "--arms", "wall-clock", "--wall-schedule", "0",
                    "--validation", "6", "--workdir", str(tmp_path / "w"),
                    "--out", str(out)]) == 0
    result = json.loads((out / "review_session.json").read_text())
    built, final = result["validation"]["built"], result["validation"]["final"]
    # the smoke pool: 36 images, a third held out (reviewed); 6 <= a quarter of 36
    assert (built["target"], built["answered"], built["passed_over"]) == (6, 6, 0)
    assert built["minutes"] == pytest.approx(
        (built["pages"] * 1.0 + 6 * 0.4 + 2.0 * built["exceptions"]) / 60)
    own, held = final
    assert own["n"] == 6 and held["n"] == result["validation_images"] == 12
    assert all(r["lo"] <= r["accuracy"] <= r["hi"] for r in final)
    # the sitting verified what is left of the pool: neither the validation set nor held-out
    end = result["wall_clock"]["checkpoints"][-1]
    assert end["verified"] == result["pool_images"] - 6
    printed = capsys.readouterr().out
    assert "validation set built first: 6 images" in printed
    assert "held out: reviewed_labels.csv" in printed

"""The benchmark scripts: their protocol helpers, and tiny smoke runs (slow)."""

import importlib
import json
import tempfile

import numpy as np
import pytest

from chimuffin.errors import UserError
from tests.helpers.repo import REPO

CLASSES = ["chihuahua", "muffin"]


def load(name: str):
    """benchmarks/NAME.py, imported as the module benchmarks.NAME."""
    return importlib.import_module(f"benchmarks.{name}")


def test_reviewed_rows_split_into_disjoint_oracle_and_validation(tmp_path):
    tta = load("time_to_accuracy")
    f = tmp_path / "reviewed_labels.csv"
    rows = [(f"train128/undefined/u_{i:012x}.jpg", "chihuahua" if i % 3 else "muffin")
            for i in range(30)]
    # a BOM, as spreadsheet tools write: read through the one path,label parser
    f.write_text("\ufeffrelative_path,label\n" + "".join(f"{p},{lbl}\n" for p, lbl in rows))
    decisions, validation = tta.split_reviewed(f, 12, None, 0, CLASSES)
    assert len(decisions) == 12 and len(validation) == 18
    assert {d.path for d in decisions}.isdisjoint(validation)
    assert {d.path for d in decisions} | set(validation) == {p for p, _ in rows}
    truth = dict(rows)
    assert all(d.source == "oracle" and d.label == truth[d.path] for d in decisions)
    assert all(truth[p] == lbl for p, lbl in validation.items())
    _, capped = tta.split_reviewed(f, 12, 5, 0, CLASSES)
    assert len(capped) == 5 and set(capped) <= set(validation)
    assert tta.split_reviewed(f, 12, None, 0, CLASSES)[0] == decisions  # seeded
    with pytest.raises(UserError, match="leaves no validation rows"):
        tta.split_reviewed(f, 30, None, 0, CLASSES)
    f.write_text("relative_path,label\na.jpg,cat\n")
    with pytest.raises(UserError, match="reviewed_labels.csv: row 2: unknown label 'cat'"):
        tta.split_reviewed(f, 1, None, 0, CLASSES)


def test_recipes_are_named_by_name_or_yaml_path():
    tta = load("time_to_accuracy")
    assert tta.recipe_path("round") == REPO / "recipes" / "round.yaml"
    assert tta.recipe_label("round") == "round"
    assert tta.recipe_label("/tmp/tuning/fast_res112.yaml") == "fast_res112"


def test_recipes_are_compared_pairwise_on_the_same_images():
    tta = load("time_to_accuracy")
    a = saved_result("reference", [1, 1, 1, 1, 1, 1, 0, 1])
    b = saved_result("fast", [0, 0, 0, 0, 0, 0, 0, 1])
    c = saved_result("fast.yaml", [1, 1, 1, 1, 1, 1, 1, 1])
    lines = tta.paired_lines([a, b, c])
    assert lines[::2] == [
        "paired, final weights: reference alone right on 6, fast alone right on 0; "
        "exact McNemar p = 0.0312",
        "paired, final weights: reference alone right on 0, fast.yaml alone right on 1; "
        "exact McNemar p = 1",
        "paired, final weights: fast alone right on 0, fast.yaml alone right on 7; "
        "exact McNemar p = 0.0156",
    ]
    # each pair's second line: is the less accurate one non-inferior to the other?
    assert lines[1].startswith("  non-inferiority: reference - fast is at most +")
    assert lines[3].startswith("  non-inferiority: fast.yaml - reference is at most +")
    assert all("is NOT non-inferior at a 1-point margin" in line for line in lines[1::2])
    assert tta.paired_lines([a]) == []


def discordant(n: int, only_best: int, only_other: int, wrong_both: int) -> tuple[list, list]:
    """Per-image correctness of two runs on n images with the given discordant counts."""
    best = [1] * only_best + [0] * only_other + [0] * wrong_both
    other = [0] * only_best + [1] * only_other + [0] * wrong_both
    rest = n - len(best)
    return best + [1] * rest, other + [1] * rest


def test_the_default_is_the_cheapest_run_not_measurably_worse_than_the_best():
    tta = load("time_to_accuracy")
    best_c, close_c = discordant(1000, 6, 5, 30)    # one image behind, 11 discordant
    _, worse_c = discordant(1000, 20, 5, 30)        # 1.5 points below the best
    best = saved_result("best", best_c) | {"wall_s": 3000.0}
    close = saved_result("close", close_c) | {"wall_s": 900.0}
    worse = saved_result("worse", worse_c) | {"wall_s": 600.0}
    # Tango bounds: best - close <= 0.72 points (6 vs 5), best - worse <= 2.42 (20 vs 5)
    assert tta.non_inferior(best, close, 0.01, 0.05) == (True, pytest.approx(0.007165, abs=1e-6))
    assert tta.non_inferior(best, worse, 0.01, 0.05)[0] is False
    top, kept, cheapest = tta.cheapest_not_worse([best, worse, close], 0.01, 0.05)
    assert top is best and [r["recipe"] for r in kept] == ["close", "best"]
    assert cheapest is close
    # a tighter margin leaves only the best itself
    assert tta.cheapest_not_worse([best, worse, close], 0.005, 0.05)[2] is best
    lines = tta.rule_lines([best, worse, close], 0.01, 0.05)
    assert lines[-2] == "  cheapest not measurably worse: close"
    assert "close (0.9640, 15.0 min, 10 image-steps); best (0.9650, 50.0 min" in lines[2]


def test_the_rule_over_the_saved_pool_results(capsys):
    """The saved pool-protocol runs compared without training: every pair named, and the rule."""
    tta = load("time_to_accuracy")
    names = ["oc16", "candA", "candD", "candE", "reference45"]
    files = [str(REPO / "benchmarks" / "results" / "pool" / f"{n}.json") for n in names]
    assert tta.main(["--recipes", *[a for f in files for a in ("--paired-with", f)]]) == 0
    out = capsys.readouterr().out
    recipes = ["oc16", "candA", "candD", "candE", "reference"]
    for i, a in enumerate(recipes):
        for b in recipes[i + 1:]:
            assert f"paired, final weights: {a} (saved) alone right on" in out
            assert f", {b} (saved) alone right on" in out
    assert out.count("non-inferiority: ") == 10
    # the counts benchmarks/README.md quotes for this pair
    assert "candA (saved) alone right on 17, reference (saved) alone right on 29" in out
    assert "best measured: reference (saved) (0.9580, 46.1 min, 111,990 image-steps)" in out
    # candE, the closest, is 0.3 points behind on 47 discordant images: bound above 1 point
    assert "candE (saved) is NOT non-inferior at a 1-point margin" in out
    assert "cheapest not measurably worse: reference (saved)" in out


def test_overrides_are_checked_and_validated_strictly():
    import yaml

    tta = load("time_to_accuracy")
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    ov = [tta.parse_override("round:augment.resize=144", ["reference", "round"]),
          tta.parse_override("all:epochs=3", ["reference", "round"])]
    rnd = tta.recipe_params(base, "round", None, ov)
    ref = tta.recipe_params(base, "reference", None, ov)
    assert rnd.train.augment.resize == 144 and rnd.train.epochs == 3
    assert rnd.train.batch_size == 64  # round.yaml's own, merged onto the reference
    assert ref.train.augment.resize == 136 and ref.train.epochs == 3
    with pytest.raises(UserError, match="RECIPE one of"):
        tta.parse_override("rnd:lr=1", ["reference", "round"])
    with pytest.raises(UserError, match="unknown key train.lrr"):
        tta.recipe_params(base, "round", None, [("round", "lrr", 1.0)])
    # where a recipe runs is the runtime group: runtime.KEY sets it, a train key does not exist
    fp32 = tta.recipe_params(base, "round", None, [("round", "runtime.cpu_bf16", False)])
    assert fp32.runtime.cpu_bf16 is False and ref.runtime.cpu_bf16 == "auto"  # params.yaml's
    with pytest.raises(UserError, match="train.cpu_bf16 moved to runtime.cpu_bf16"):
        tta.recipe_params(base, "round", None, [("round", "cpu_bf16", True)])


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.update(lrr=t.pop("lr")), "unknown key train.lrr"),        # mistyped key
    (lambda t: t.pop("keep"), "missing key train.keep"),
    (lambda t: t.update(epochs="30"), "train.epochs must be an integer, got '30'"),
    (lambda t: t.update(val_every=0), "train.val_every must be >= 1"),
    (lambda t: t.update(cpu_bf16=True), "train.cpu_bf16 moved to runtime.cpu_bf16"),
])
def test_recipe_files_load_strictly(tmp_path, edit, message):
    import yaml

    tta = load("time_to_accuracy")
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    group = yaml.safe_load((REPO / "recipes" / "reference.yaml").read_text())
    edit(group["train"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(group))
    with pytest.raises(UserError, match=message):
        tta.recipe_params(base, str(bad), None, [])


def test_a_recipe_file_with_a_key_given_twice_is_refused(tmp_path):
    import yaml

    tta = load("time_to_accuracy")
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    text = (REPO / "recipes" / "round.yaml").read_text()
    bad = tmp_path / "twice.yaml"
    bad.write_text(text.replace("  epochs: 12\n", "  epochs: 12\n  epochs: 30\n"))
    with pytest.raises(UserError, match="duplicate key train.epochs"):
        tta.recipe_params(base, str(bad), None, [])
    with pytest.raises(UserError, match="none.yaml: cannot read recipe"):
        tta.recipe_params(base, str(tmp_path / "none.yaml"), None, [])


def test_a_spent_budget_stops_training_after_that_epoch(one_thread):
    """--budget-minutes 0: the first epoch spends it; the run stops there, its only epoch is
    the best, and the table shows the schedule did not finish."""
    import pandas as pd
    import yaml

    tta = load("time_to_accuracy")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["base"]["image_size"] = 32
    raw["train"].update(epochs=5, batch_size=4)
    raw["train"]["augment"]["resize"] = 36
    params = tta.parse_params(raw)
    images = np.random.default_rng(0).integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)
    df = pd.DataFrame({"idx": range(12), "path": [f"p{i}" for i in range(12)],
                       "split": ["train"] * 8 + ["val"] * 4,
                       "label": ["chihuahua", "muffin"] * 6})
    r = tta.train_recipe("tiny", params, df, images, None, budget_s=0.0)
    assert (r["epochs"], r["planned_epochs"], r["best_epoch"]) == (1, 5, 1)
    assert r["image_steps"] == 8 and len(r["final_correct"]) == 4


def saved_result(recipe: str, correct: list[int], digest: str = "abc") -> dict:
    return {"recipe": recipe, "validation_digest": digest, "epochs": 1, "planned_epochs": 1,
            "wall_s": 60.0, "train_images": 10, "val_images": len(correct),
            "val_tta_flip": False, "final_acc": sum(correct) / len(correct),
            "final_k": sum(correct), "image_steps": 10, "best_epoch": 1,
            "best_acc": sum(correct) / len(correct), "final_correct": correct}


def test_time_to_accuracy_pairs_saved_results(tmp_path, capsys):
    tta = load("time_to_accuracy")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([saved_result("one", [1] * 10)]))
    b.write_text(json.dumps([saved_result("two", [0] * 8 + [1, 1]),
                             saved_result("three", [0] * 3 + [1] * 7)]))
    assert tta.main(["--recipes", "--paired-with", str(a), "--paired-with", str(b)]) == 0
    out = capsys.readouterr().out
    assert "one (saved) alone right on 8, two (saved) alone right on 0" in out
    assert "exact McNemar p = 0.00781" in out  # 2 * 0.5**8
    assert "one (saved) alone right on 3, three (saved) alone right on 0" in out
    assert "wrong for every recipe (final weights): 0 of 10 validation images" in out


@pytest.mark.parametrize("other,message", [
    ([saved_result("two", [1] * 10, digest="xyz")], "validated on other images"),
    ([saved_result("two", [1] * 9)], "has 9 validation results, this run 10"),
    ({"recipe": "two"}, "not a time_to_accuracy --json result list"),
    ([{"recipe": "two"}], "recipe two lacks best_acc, best_epoch, epochs"),
])
def test_time_to_accuracy_refuses_saved_results_of_another_protocol(tmp_path, other, message):
    tta = load("time_to_accuracy")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([saved_result("one", [1] * 10)]))
    b.write_text(json.dumps(other))
    with pytest.raises(UserError, match=message):
        tta.main(["--recipes", "--paired-with", str(a), "--paired-with", str(b)])
    with pytest.raises(UserError, match="not found"):
        tta.main(["--recipes", "--paired-with", str(tmp_path / "none.json")])
    with pytest.raises(UserError, match="--recipes is empty"):
        tta.main(["--recipes"])


@pytest.mark.slow
@pytest.mark.realdata
def test_time_to_accuracy_smoke(real_data, tmp_path, capsys):
    tta = load("time_to_accuracy")
    out = tmp_path / "results.json"
    assert tta.main(["--data", str(real_data), "--epochs", "1", "--max-train", "8",
                     "--max-val", "8", "--train-reviewed", "20", "--set", "all:batch_size=4",
                     "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [r["recipe"] for r in results] == ["reference"]  # the default: the reference alone
    assert all(r["epochs"] == 1 and r["train_images"] == 8 and r["val_images"] == 8
               for r in results)
    assert all(r["final_k"] == sum(r["final_correct"]) == round(r["final_acc"] * 8)
               for r in results)
    out_text = capsys.readouterr().out
    assert "final val acc [95% CI]" in out_text
    # its final weights scored again with flip TTA, paired with the same run
    assert "reference +flip" in out_text
    assert "paired, final weights: reference alone" in out_text
    # the saved results compare again without training, checked by their validation digest
    assert len({r["validation_digest"] for r in results}) == 1
    assert tta.main(["--recipes", "--paired-with", str(out)]) == 0
    assert "paired, final weights: reference (saved) alone" in capsys.readouterr().out


@pytest.mark.slow
def test_train_throughput_smoke(capsys):
    tp = load("train_throughput")
    assert tp.main(["--rounds", "1", "--steps", "1", "--max-images", "16", "--eval-images",
                    "16", "--image-size", "64", "--configs", "16:fused:48,16:fused::bf16",
                    "--peak-seconds", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "reference (PIL, NCHW, b16)" in out
    assert "chimuffin (cache, CL, b16, fused, 48px, fp32)" in out
    assert "chimuffin (cache, CL, b16, fused, 64px, bf16)" in out
    assert "cpu: " in out
    assert "fp32 peak measured" in out and "evaluation (batch 128" in out


def test_model_step_smoke(capsys):
    ms = load("model_step")
    assert ms.main(["--variants", "nchw", "cl", "cl+bf16", "--steps", "1", "--batch-size", "4",
                    "--image-size", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("cpu: ")
    assert [line.split()[0] for line in lines[2:]] == ["nchw", "cl", "cl+bf16"]
    assert all(float(line.split()[1]) > 0 for line in lines[2:])


def test_train_throughput_refuses_an_unknown_precision():
    """A mistyped precision must not silently measure fp32."""
    tp = load("train_throughput")
    with pytest.raises(SystemExit, match=r"'64:fused:96:bf61'.*bf16 or fp32, not 'bf61'"):
        tp.ChimuffinPath(np.zeros((1, 3, 8, 8), np.uint8), [0], None, "64:fused:96:bf61", 2,
                         [16], 0.3)


def test_review_session_params_keep_the_protocol_whatever_the_overrides(tmp_path):
    import yaml

    rs = load("review_session")
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    sets = [rs.parse_set("train.epochs=3"), rs.parse_set("prepare.val_fraction=0.5"),
            rs.parse_set("train.augment.resize=144")]
    fast = rs.recipe_train("round", base)
    p = rs.arm_params(base, fast, sets, tmp_path, rs.WALL_ARM, smoke=False)
    assert p["train"]["epochs"] == 3 and p["train"]["augment"]["resize"] == 144
    assert p["train"]["batch_size"] == fast["batch_size"]
    assert p["prepare"] == {"data_dir": str(tmp_path), "val_fraction": 0.0}  # protocol wins
    assert p["train"]["keep"] == "last" and p["tlc"]["enabled"] is False
    assert p["suggest"] == base["suggest"]
    # background retrains train with the arm's own train group, not params.yaml's round recipe
    assert p["review"]["round_recipe"] == "" and base["review"]["round_recipe"]
    c = rs.arm_params(base, base["train"], [], tmp_path, "ceiling", smoke=False)
    assert c["train"] == {**base["train"], "keep": "last"}
    with pytest.raises(UserError, match="unknown key train.epoch"):
        rs.arm_params(base, fast, [rs.parse_set("train.epoch=3")], tmp_path, "ceiling", False)
    with pytest.raises(UserError, match="GROUP.KEY=VALUE"):
        rs.parse_set("epochs=3")
    with pytest.raises(UserError, match="nope.yaml: cannot read recipe"):
        rs.recipe_train("nope", base)


def test_review_session_names_missing_data(tmp_path, capsys):
    rs = load("review_session")
    (tmp_path / "data/train128").mkdir(parents=True)
    with pytest.raises(UserError, match=f"{tmp_path / 'data' / 'reviewed_labels.csv'} not found"):
        rs.main(["--data", str(tmp_path / "data"), "--workdir", str(tmp_path / "w")])
    with pytest.raises(UserError, match="nowhere/train128 not found"):
        rs.main(["--data", str(tmp_path / "nowhere"), "--workdir", str(tmp_path / "w")])


@pytest.mark.slow
def test_review_session_smoke(tmp_path, capsys, monkeypatch):
    """The default arms on the sample generator: one sitting at the cost model's pace with
    retrains behind it, sampled at wall-clock checkpoints, never idle; then the ceiling."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # a failed run's copy stays here
    rs = load("review_session")
    out = tmp_path / "out"
    assert rs.main(["--smoke", "--wall-schedule", "0", "0.1", "--workdir", str(tmp_path / "w"),
                    "--out", str(out)]) == 0
    result = json.loads((out / "review_session.json").read_text())
    assert (out / "review_session.png").stat().st_size > 0
    pool = result["pool_images"]
    wall = result["wall_clock"]["checkpoints"]
    assert [r["minutes"] for r in wall[:-1]] == [0, 0.1][:len(wall) - 1]
    assert all(r["idle_s"] == 0 for r in wall)
    assert [r["verified"] for r in wall] == sorted(r["verified"] for r in wall)
    end = wall[-1]
    # the whole pool verified by the end (the smoke pool is a few pages)
    assert end["verified"] == pool and end["models_started"] >= 1
    assert end["accuracy"] is not None and end["n"] == result["validation_images"]
    assert end["lo"] <= end["accuracy"] <= end["hi"]
    pages = result["wall_clock"]["pages"]  # the page log adds up to the sitting's totals
    assert (len(pages), sum(p["images"] for p in pages), sum(p["wrong"] for p in pages)) == (
        end["pages"], end["verified"], end["exceptions"])
    assert all(0 < p["images"] <= p["built"] for p in pages)
    # the ceiling: every pool label from the truth, one `dvc repro`, the same validation images
    (ceiling,) = result["checkpoints"]
    assert ceiling["arm"] == "ceiling" and ceiling["minutes"] is None
    assert ceiling["verified"] == pool and ceiling["sources"] == {"oracle": pool}
    assert ceiling["train_images"] >= pool and ceiling["n"] == result["validation_images"]
    assert ceiling["lo"] <= ceiling["accuracy"] <= ceiling["hi"]
    printed = capsys.readouterr().out
    assert "wall-clock arm" in printed and ", 0 failed" in printed and "cpu: " in printed


def test_review_session_runs_no_round_based_arm():
    """The round-based loop is gone: its arm is refused; only saved runs of it are read."""
    rs = load("review_session")
    assert rs.ARMS == (rs.WALL_ARM, "ceiling")
    with pytest.raises(SystemExit):
        rs.main(["--smoke", "--arms", "pages-confident"])


def _round_checkpoints():
    """A round-based arm as review_session saves it: sessions of 2, 3 and 5 simulated minutes,
    `dvc repro`s of 60, 120, 180 and 240 s (the first before the first page)."""
    rows = [(0, 0, 0, 0, 60, 0.70), (2, 4, 200, 10, 120, 0.80), (5, 10, 500, 40, 180, 0.85),
            (10, 20, 1000, 90, 240, 0.90)]
    return [{"arm": "pages-confident", "minutes": m, "pages": p, "verified": v, "exceptions": e,
             "repro_s": r, "accuracy": a, "lo": a - 0.02, "hi": a + 0.02, "n": 1000}
            for m, p, v, e, r, a in rows]


def test_round_based_arm_on_the_wall_clock_waits_for_each_repro_but_the_first_and_last():
    rs = load("review_session")
    cps = _round_checkpoints()
    rows = rs.round_based_on_wall_clock(cps, [0, 1, 3, 5, 30])
    # sessions end at 2 min, then wait 2 (repro 1), 3 more min (7), wait 3 (repro 2), 5 more
    # (15, the end: the last repro is not waited for)
    assert [r.minutes for r in rows] == [0, 1, 3, 5, 15]
    start, mid_session, waiting, second, end = rows
    assert (start.verified, start.idle_s, start.model) == (0, 0, "repro 0 (0 verified)")
    assert (mid_session.verified, mid_session.exceptions, mid_session.idle_s) == (100, 5, 0)
    assert mid_session.accuracy == 0.70  # still the first model's pages
    assert (waiting.verified, waiting.idle_s, waiting.models_finished) == (200, 60, 0)
    assert (second.verified, second.idle_s, second.accuracy) == (300, 120, 0.80)
    assert (end.verified, end.exceptions, end.idle_s, end.models_finished) == (1000, 90, 300, 2)
    assert end.accuracy == 0.85 and end.lo == pytest.approx(0.83)


def test_wall_clock_run_compared_at_the_same_number_of_verified_images(tmp_path):
    rs = load("review_session")
    rounds = tmp_path / "rounds.json"
    rounds.write_text(json.dumps({"cpu": "cpu A", "checkpoints": _round_checkpoints()
                                  + [{"arm": "ceiling"}]}))
    wall = tmp_path / "wall.json"
    wall.write_text(json.dumps({"cpu": "cpu A", "wall_clock": {"checkpoints": [
        {"minutes": 0.0, "verified": 0, "exceptions": 0},
        {"minutes": 12.5, "verified": 750, "exceptions": 50}]}}))
    assert rs.exceptions_at(_round_checkpoints(), 750) == 65  # halfway from 40 to 90
    text = rs.compare_on_wall_clock(rounds, wall, [0, 10])
    assert "pages-confident:" in text and "repro 2 (500 verified)" in text
    assert text.splitlines()[-1].split() == ["12.5", "750", "50", "65"]
    assert "cut pages" not in text  # a run saved before the page log: no split
    # with the page log: pages split at the checkpoints' counts into whole and cut ones
    saved = json.loads(wall.read_text())
    saved["wall_clock"]["pages"] = [
        {"verified_before": 0, "images": 500, "built": 500, "wrong": 20, "model": "first"},
        {"verified_before": 500, "images": 100, "built": 300, "wrong": 10, "model": "second"},
        {"verified_before": 600, "images": 150, "built": 150, "wrong": 20, "model": "second"}]
    wall.write_text(json.dumps(saved))
    lines = rs.compare_on_wall_clock(rounds, wall, [0, 10]).splitlines()
    assert lines[-1].split() == ["12.5", "750", "2,", "650", "(40)", "1,", "100", "(10)"]
    assert rs.page_split(saved["wall_clock"]["pages"], 600, 500)["cut"] == [1, 100, 10]
    # per proposing model, beside the round-based arm over the same counts (40 at 500, 65 at 750)
    assert rs.pages_by_model(saved["wall_clock"]["pages"])[1] == {
        "model": "second", "pages": 2, "images": 250, "wrong": 30, "first": 500, "last": 750}
    assert "second 500-750 2 250 30 25" in " ".join(" ".join(lines).split())
    with pytest.raises(UserError, match="no wall-clock arm"):
        rs.compare_on_wall_clock(rounds, rounds, [0])
    rounds.write_text(json.dumps({"cpu": "cpu A", "checkpoints": [{"arm": "ceiling"}]}))
    with pytest.raises(UserError, match="no round-based pages arm"):
        rs.compare_on_wall_clock(rounds, None, [0])


def test_sittings_pooled_against_the_round_based_loop_of_their_seed(tmp_path):
    rs = load("review_session")
    rounds = tmp_path / "rounds.json"
    rounds.write_text(json.dumps({"cpu": "cpu A", "checkpoints": _round_checkpoints()}))
    walls = []
    for name, (v10, e10), (v_end, e_end) in [("one", (750, 50), (1000, 80)),
                                            ("two", (500, 45), (1000, 95))]:
        (tmp_path / name).mkdir()
        walls.append(tmp_path / name / "review_session.json")
        walls[-1].write_text(json.dumps({"cpu": "cpu B, 2 cores", "wall_clock": {"checkpoints": [
            {"minutes": 0.0, "verified": 0, "exceptions": 0},
            {"minutes": 10.0, "verified": v10, "exceptions": e10},
            {"minutes": 14.0, "verified": v_end, "exceptions": e_end}]}}))
    text = rs.pooled_comparison([(rounds, walls[0]), (rounds, walls[1])], [0, 10, 20])
    rows = {line.split()[0]: line.split() for line in text.splitlines()[4:]}
    assert set(rows) == {"10", "end"}  # 0 says nothing; no sitting reached 20 minutes
    # at 10 minutes: 50 against 65 (750 verified), 45 against 40 (500): 95 against 105
    assert rows["10"][1:5] == ["750:", "50/65", "500:", "45/40"]
    # per sitting -15 and +5: mean -5, sample sd 14.1
    assert rows["10"][5:] == ["95", "105", "-10", "(-9.5%)", "1", "of", "2", "-5.0", "(14.1)"]
    assert rows["end"][5:12] == ["175", "180", "-5", "(-2.8%)", "1", "of", "2"]
    assert "one (cpu B) against " in text
    with pytest.raises(UserError, match="no wall-clock arm"):
        rs.pooled_comparison([(rounds, rounds)], [10])
    walls[0].write_text(json.dumps({"cpu": "cpu B", "checkpoints": [{"arm": "ceiling"}],
                                    "wall_clock": None}))
    with pytest.raises(UserError, match="no pages-confident arm"):
        rs.pooled_comparison([(walls[0], walls[1])], [10])


def test_flip_rows_score_the_same_weights_with_flip_tta():
    tta = load("time_to_accuracy")
    run = {"recipe": "b64", "wall_s": 60.0, "val_tta_flip": False, "final_k": 2,
           "final_acc": 0.5, "final_correct": [1, 0, 1, 0], "flip_correct": [1, 1, 1, 0]}
    older = {"recipe": "old (saved)", "wall_s": 30.0, "val_tta_flip": False, "final_k": 1,
             "final_acc": 0.25, "final_correct": [1, 0, 0, 0]}  # saved before flips were kept
    rows = tta.with_flip_rows([run, older])
    assert [r["recipe"] for r in rows] == ["b64", "b64 +flip", "old (saved)"]
    flip = rows[1]
    assert (flip["final_k"], flip["final_acc"], flip["val_tta_flip"]) == (3, 0.75, True)
    assert flip["wall_s"] == run["wall_s"] and flip["final_correct"] == [1, 1, 1, 0]
    assert rows[0] is run and run["final_correct"] == [1, 0, 1, 0]  # the run is unchanged


@pytest.mark.slow
def test_page_latency_smoke(capsys):
    """Times the review page idle and beside a nice-10 training stand-in, on a tiny sample."""
    assert load("page_latency").main(["--threads", "1", "--requests", "3", "--gap", "0"]) == 0
    out = capsys.readouterr().out
    assert "cpu: " in out and "idle" in out
    line = next(x for x in out.splitlines() if x.startswith("training, nice 10, 1 thread"))
    assert "/api/state" in line and float(line.rsplit("training ", 1)[1].split()[0]) > 0


@pytest.mark.slow
def test_stage_times_smoke(tmp_path, capsys):
    """Where a retrain's time goes, on the sample generator: the stages a label change reruns,
    each timed, and one background retrain of the review page end to end."""
    st = load("stage_times")
    out = tmp_path / "times.json"
    assert st.main(["--smoke", "--background", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    # a label change reruns clean and everything after it, never the data preparation
    assert list(result["stages_s"]) == ["clean", "tables", "train", "evaluate", "embed",
                                        "suggest"]
    assert all(s > 0 for s in result["stages_s"].values())
    assert result["background_s"] > 0 and result["labels"] > result["step"] > 0
    printed = capsys.readouterr().out
    assert "background retrain review-" in printed and "cpu: " in printed

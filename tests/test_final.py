"""The final step (retrain/final.py): the last background model finished into the final model as
a named DVC experiment on a throwaway copy; its start weights tracked, its report naming them,
`dvc repro` of the applied experiment reproducing it, a failed run changing nothing; and no model
of the chain ever training on a validation image."""

import hashlib
import importlib
import io
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from chimuffin import paths
from chimuffin.config import parse_params, read_recipe
from chimuffin.data.views import labeled
from chimuffin.errors import UserError
from chimuffin.labels.rows import Decision, format_decisions
from chimuffin.model import build_model
from chimuffin.retrain.final import (
    Final,
    Finisher,
    Shell,
    Where,
    background_refs,
    cache_file,
    final_name,
    final_params,
    keep_commands,
    model_md5,
    pick_background,
    run_final,
    val_result,
)
from chimuffin.retrain.retrainer import Retrainer
from chimuffin.retrain.run_log import Step, step_from_log
from chimuffin.review.data import Paths, ReviewData
from chimuffin.stages.train import warm_start
from tests.helpers.repo import REPO, TINY, deep_update, default_params_dict, make_repo, run
from tests.test_retrain import fingerprint
from tests.test_review import CLASSES, browser_page, serving

EXP = "refs/exps/ab/abcdef0123"


def test_the_last_background_model_is_the_latest_by_its_start_time():
    refs = [f"{EXP}/review-20261207-101500-900-labels",
            f"{EXP}/review-20261207-102000-1200-labels-warm",
            f"{EXP}/final-20261207-110000-3000-labels",  # not a background model
            "refs/exps/exec/EXEC_HEAD",
            f"{EXP}/review-20261207-100000-480-labels"]
    names = [n for n, _ in background_refs(refs)]
    assert names == ["review-20261207-100000-480-labels", "review-20261207-101500-900-labels",
                     "review-20261207-102000-1200-labels-warm"]
    assert pick_background(background_refs(refs), None)[0] == names[-1]
    assert pick_background(background_refs(refs), names[0]) == (names[0], f"{EXP}/{names[0]}")


def test_no_background_model_is_an_error_that_says_where_they_come_from():
    with pytest.raises(UserError, match="no background model to start from.*review-"):
        pick_background([], None)
    with pytest.raises(UserError, match="--from review-x: no background experiment"):
        pick_background([("review-20261207-100000-480-labels", "r")], "review-x")


def test_the_model_md5_is_read_from_the_train_stages_outs_and_found_in_the_cache(tmp_path):
    lock = {"schema": "2.0", "stages": {"train": {"outs": [
        {"path": "metrics/train", "md5": "aaa.dir"},
        {"path": paths.MODEL, "md5": "0123456789abcdef"}]}}}
    assert model_md5(yaml.safe_dump(lock), "x") == "0123456789abcdef"
    assert cache_file(tmp_path, "0123456789abcdef") == \
        tmp_path / "files/md5/01/23456789abcdef"
    with pytest.raises(UserError, match="exp: dvc.lock: no md5 of models/best.pth"):
        model_md5(yaml.safe_dump({"stages": {"evaluate": {}}}), "exp: dvc.lock")


def test_progress_is_the_stage_and_the_train_stages_epoch():
    log = ("$ dvc exp run -n final-x\nRunning stage 'prepare':\n> python src/stage.py ...\n"
           "Running stage 'train':\ntrain: warm start from models/warm_start/weights.pth\n"
           "train: epoch 1/15: loss 0.3 acc 0.9, not validated, lr 0.0005; 40s elapsed\n"
           "train: epoch 2/15: loss 0.2 acc 0.9, not validated, lr 0.0005; 80s elapsed\n")
    assert step_from_log("$ git clone ...\n") == Step()
    assert step_from_log(log) == Step("train", 2, 15)
    assert step_from_log(log).text() == "stage train, epoch 2/15"
    evaluating = log + "Updating lock file 'dvc.lock'\n\nRunning stage 'evaluate':\n"
    assert step_from_log(evaluating) == Step("evaluate")
    # an earlier run's epochs never count for a train stage that has printed none yet
    assert step_from_log(evaluating + "Running stage 'train':\n") == Step("train")


def test_final_params_take_the_finishing_recipe_whole_and_check_it(tmp_path):
    text = (REPO / "params.yaml").read_text()
    params = final_params(text, "params.yaml", REPO / "recipes/finish.yaml")
    assert params["train"] == read_recipe(REPO / "recipes/finish.yaml")
    assert params["tlc"] == yaml.safe_load(text)["tlc"]  # the pipeline's own settings stay
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: reference\ntrain:\n  epochs: 0\n")
    (tmp_path / "reference.yaml").write_text((REPO / "recipes/reference.yaml").read_text())
    with pytest.raises(UserError, match="bad.yaml.*train.epochs"):
        final_params(text, "params.yaml", bad)


def test_the_finishing_recipe_is_the_reference_with_a_budgeted_schedule():
    finish = yaml.safe_load((REPO / "recipes/finish.yaml").read_text())
    assert finish["base"] == "reference"
    t = parse_params({**default_params_dict(),
                      "train": read_recipe(REPO / "recipes/finish.yaml")}).train
    # warmed up again, then one decay to ~0 at exactly the last step; the last weights kept
    assert (t.scheduler, t.keep, t.val_tta_flip) == ("cosine", "last", True)
    assert t.warmup_epochs >= 1 and t.val_every >= t.epochs
    assert set(finish["train"]) == {"epochs", "scheduler", "warmup_epochs", "keep",
                                    "val_every", "val_tta_flip"}
    assert default_params_dict()["review"]["final_recipe"] == "recipes/finish.yaml"


def test_names_results_and_the_commands_that_keep_it(tmp_path):
    assert final_name(3533, 0.0) == "final-19700101-000000-3533-labels"
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"val": {"n": 1000, "accuracy": 0.97, "loss": 0.1,
                                           "accuracy_ci95_low": 0.959,
                                           "accuracy_ci95_high": 0.978}}))
    assert val_result(metrics) == {"accuracy": 0.97, "n": 1000, "ci95": [0.959, 0.978]}
    metrics.write_text(json.dumps({"test": {}}))
    with pytest.raises(UserError, match="needs validation images"):
        val_result(metrics)
    apply, commit = keep_commands("final-x", paths.DECISIONS, "params.yaml", 12)
    assert apply == "dvc exp apply final-x"
    assert commit.startswith(f"git add {paths.DECISIONS} {paths.VALIDATION} params.yaml "
                             f"dvc.lock {paths.WARM_START} && git commit -m ")


def test_the_report_says_what_the_model_started_from():
    from chimuffin.report.eval_report import start_lines

    md5 = "0123456789abcdef0123456789abcdef"
    warm = {"file": f"{paths.WARM_START}/{paths.WARM_START_FILE}", "md5": md5}
    assert start_lines({"warm_start": warm})[0] == \
        f"Started from {warm['file']} (md5 {md5}): warm-started, not from scratch."
    assert start_lines({"warm_start": None})[0].startswith("Trained from scratch")
    assert start_lines({}) == []  # a checkpoint from before the record says nothing


def params_with(**train):
    raw = default_params_dict()
    raw["train"].update(train)
    return parse_params(raw)


def test_shrink_and_perturb_blends_the_weights_with_a_fresh_initialisation(tmp_path):
    from chimuffin.model import save_checkpoint
    from chimuffin.stages.train import checkpoint_meta

    plain = params_with()
    torch.manual_seed(1)
    earlier = build_model(2, plain.train.head, plain.train.dropout)
    save_checkpoint(tmp_path / paths.WARM_START_FILE, earlier, checkpoint_meta(plain, 3, 0.7))
    params = params_with(warm_shrink=0.5, warm_perturb=0.1)
    torch.manual_seed(2)
    model = build_model(2, params.train.head, params.train.dropout)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    said = warm_start(tmp_path / paths.WARM_START_FILE, model, params)
    assert said.endswith("; shrink 0.5, perturb 0.1")
    old, now = earlier.state_dict(), model.state_dict()
    weights = dict(model.named_parameters())
    for k, v in now.items():
        if k in weights:  # parameters: 0.5 * the earlier model's + 0.1 * the fresh init's
            assert torch.allclose(v, 0.5 * old[k] + 0.1 * fresh[k], atol=1e-6), k
        else:  # BatchNorm statistics: the earlier model's, as they were
            assert torch.equal(v, old[k]), k
    # the defaults keep the weights as they are
    model = build_model(2, plain.train.head, plain.train.dropout)
    assert "; shrink" not in warm_start(tmp_path / paths.WARM_START_FILE, model, plain)
    assert all(torch.equal(old[k], v) for k, v in model.state_dict().items())


# --- end to end on the embedded sample (slow) -------------------------------------------------

TINY_FINISH = {"base": "reference", "train": {
    "epochs": 2, "batch_size": 4, "scheduler": "cosine", "warmup_epochs": 1, "keep": "last",
    "val_every": 1000, "val_tta_flip": True}}
FAILING = {"base": "reference", "train": {"epochs": 1, "batch_size": 512}}  # > the images


def git_refs(root: Path, prefix: str) -> dict[str, str]:
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], root).stdout.split()
    return {r.rsplit("/", 1)[-1]: r for r in refs if r.rsplit("/", 1)[-1].startswith(prefix)}


def lock_out(root: Path, ref: str, stage: str, path: str) -> str:
    lock = yaml.safe_load(run(["git", "show", f"{ref}:dvc.lock"], root).stdout)
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


def cached(root: Path, md5: str) -> Path:
    return cache_file(Path(run(["dvc", "cache", "dir"], root).stdout.strip()), md5)


def where(root: Path, recipe: str) -> Where:
    return Where(root, root / "params.yaml", root / paths.DECISIONS, CLASSES, root / recipe)


def tiny_repo_with_recipes(tmp: Path) -> Path:
    """The embedded sample's pipeline at tiny sizes, reproduced and committed, with a tiny round
    recipe, a tiny finishing recipe and one that fails in the train stage."""
    params = deep_update(default_params_dict(), TINY)
    params["review"].update(retrain_every=0, round_recipe="recipes/tiny_round.yaml",
                            warm_recipe="", background_set=["evaluate.tta_flip=false"],
                            warm_after=0, final_recipe="recipes/tiny_finish.yaml")
    root = (tmp / "repo").resolve()
    (root / "recipes").mkdir(parents=True)
    for name, recipe in {"tiny_round": {"train": params["train"]}, "tiny_finish": TINY_FINISH,
                         "failing": FAILING}.items():
        (root / f"recipes/{name}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    make_repo(root, params)
    run(["dvc", "repro", "-q"], root, env={"PYTHONPATH": ""})
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "repro"], root)
    return root


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A tiny repository, reproduced and committed; one pool image added to validation.csv and
    labeled by a person too (as a label file may hold), both uncommitted; then one background
    run finished (the round recipe, from scratch)."""
    tmp = tmp_path_factory.mktemp("final")
    old_tmp = tempfile.tempdir
    tempfile.tempdir = str(tmp)  # the runs' copies and logs, where the tests can see them
    root = tiny_repo_with_recipes(tmp)
    pool = pd.read_csv(root / paths.SAMPLE / "pool_labels.csv")
    image, label = pool.iloc[0]["relative_path"], pool.iloc[0]["label"]
    (root / paths.VALIDATION).write_text(f"path,label\n{image},{label}\n")
    (root / paths.DECISIONS).write_text(format_decisions(
        [Decision(image, label, "human", "review page")]))
    r = Retrainer(root, root / "params.yaml", root / paths.DECISIONS, CLASSES, every=0,
                  recipe="recipes/tiny_round.yaml", labels_of_model=0, cpus=2)
    r.request()
    r.thread.join(300)
    assert r.runs and r.runs[0].ok, (r.runs[0].error, r.runs[0].log_tail)
    r.stop()
    yield root, image
    tempfile.tempdir = old_tmp


@pytest.mark.slow
def test_no_model_of_the_chain_trains_on_a_validation_image(chain):
    """Every background run's training manifest (its clean stage's output, read from the DVC
    cache by the md5 its dvc.lock records) holds the validation images in `val` only, even the
    one a person also labeled in the label file."""
    root, image = chain
    runs = git_refs(root, "review-")
    assert runs
    for name, ref in runs.items():
        listed = set(pd.read_csv(io.StringIO(
            run(["git", "show", f"{ref}:{paths.VALIDATION}"], root).stdout))["path"])
        assert image in listed
        assert image in run(["git", "show", f"{ref}:{paths.DECISIONS}"], root).stdout
        entries = json.loads(cached(root, lock_out(root, ref, "clean", paths.CLEAN))
                             .read_text())
        manifest = next(e["md5"] for e in entries if e["relpath"] == paths.MANIFEST_FILE)
        df = pd.read_parquet(cached(root, manifest))
        val = df[df["path"].isin(listed)]
        assert len(val) == len(listed) and (val["split"] == "val").all(), name
        assert not set(labeled(df, "train")["path"]) & listed, name


@pytest.mark.slow
def test_a_failed_final_run_keeps_its_log_and_changes_nothing(chain):
    root, _ = chain
    before, finals = fingerprint(root), set(git_refs(root, "final-"))
    final = run_final(Final(), where(root, "recipes/failing.yaml"), Shell())
    assert final.ok is False and "dvc exp run" in final.error
    assert "train.batch_size (512) is larger than the training set" in final.log_tail
    assert final.log_file.is_file() and final.public()["log"] == str(final.log_file)
    assert fingerprint(root) == before and set(git_refs(root, "final-")) == finals


@pytest.mark.slow
def test_the_final_step_leaves_an_experiment_that_dvc_repro_reproduces(chain):
    root, _ = chain
    before, background = fingerprint(root), git_refs(root, "review-")
    kept = set(Path(tempfile.gettempdir()).glob("chimuffin-final-*"))  # failed runs' logs
    final = run_final(Final(), where(root, "recipes/tiny_finish.yaml"), Shell())
    assert final.ok, (final.error, final.log_tail)
    assert fingerprint(root) == before  # the workspace is never written
    assert set(Path(tempfile.gettempdir()).glob("chimuffin-final-*")) == kept  # copy removed
    ref = git_refs(root, "final-")[final.name]
    # it started from the last background model, whose weights the experiment tracks
    last = sorted(background)[-1]
    tracked = yaml.safe_load(run(["git", "show", f"{ref}:{paths.WARM_START}/"
                                  f"{paths.WARM_START_FILE}.dvc"], root).stdout)
    assert final.start == last
    assert tracked["outs"][0]["md5"] == final.start_md5 == \
        lock_out(root, background[last], "train", paths.MODEL)
    shown = yaml.safe_load(run(["git", "show", f"{ref}:params.yaml"], root).stdout)
    assert shown["train"] == read_recipe(root / "recipes/tiny_finish.yaml")
    lo, hi = final.val["ci95"]
    assert final.val["n"] > 0 and lo <= final.val["accuracy"] <= hi
    # kept as it says, the model comes back from the label file, the weights and params.yaml
    for command in final.commands:
        run(["bash", "-c", command], root)
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], root).stdout == ""
    model = lock_out(root, ref, "train", paths.MODEL)
    report = (root / paths.EVAL / paths.REPORT_MD_FILE).read_text()
    assert f"{paths.WARM_START}/{paths.WARM_START_FILE} (md5 {final.start_md5})" in report
    (root / paths.MODEL).unlink()
    out = run(["dvc", "repro", "-f", "train"], root, env={"PYTHONPATH": ""}).stdout
    assert f"train: warm start from {paths.WARM_START}/{paths.WARM_START_FILE}" in out
    assert hashlib.md5((root / paths.MODEL).read_bytes()).hexdigest() == model


@pytest.mark.slow
def test_the_page_trains_the_final_model_and_shows_a_failed_one_with_its_log(chain):
    root, _ = chain
    data = ReviewData(Paths.under(root), CLASSES, root / paths.SAMPLE)
    finisher = Finisher(where(root, "recipes/tiny_finish.yaml"))
    before = fingerprint(root)
    with serving(data, finisher=finisher) as server, \
            browser_page(f"http://127.0.0.1:{server.server_address[1]}/") as (page, expect, seen):
        page.evaluate("""() => { const box = document.getElementById('final-info');
            window.finalTexts = [];
            new MutationObserver(() => window.finalTexts.push(box.textContent))
              .observe(box, {childList: true, characterData: true, subtree: true}); }""")
        page.keyboard.press("Shift+F")
        expect(page.locator("#status")).to_contain_text("final model: started")
        result = page.locator("#final-result")
        expect(result).to_contain_text("validation accuracy", timeout=300_000)
        expect(result).to_contain_text("95% CI")
        expect(page.locator("#final-keep")).to_contain_text(
            f"dvc exp apply {finisher.run.name}")
        texts = page.evaluate("window.finalTexts")
        # progress was on the page while it ran (which model it finishes; the tiny run's stages
        # can all pass between two polls, so a stage name need not be caught: reading the
        # stage from the log is tested on a log of its own)
        assert any(t.startswith("final model:") and "from review-" in t for t in texts), texts
        # a run that fails in the train stage: its error and log on the page, nothing changed
        finisher.where = replace(finisher.where, recipe=root / "recipes/failing.yaml")
        page.click("#final")
        expect(result).to_contain_text("failed (nothing changed)", timeout=300_000)
        expect(page.locator("#final-log")).to_contain_text("larger than the training set")
        assert seen["errors"] == []
    assert fingerprint(root) == before


def test_budgets_become_whole_epochs_with_the_last_validation():
    fb = importlib.import_module("benchmarks.finish_budget")
    assert fb.epochs_for(600, 40.0, 10.0) == 14  # (600 - 10) / 40
    assert fb.epochs_for(5, 40.0, 10.0) == 1     # never none


@pytest.mark.slow
def test_finish_budget_smoke_on_the_sample(tmp_path, capsys):
    """One measured epoch, then a budget that fits one epoch, with and without
    shrink-and-perturb, from given weights on a pool protocol made of the sample."""
    from chimuffin.data.sample import write_sample
    from chimuffin.model import save_checkpoint
    from chimuffin.stages.train import checkpoint_meta

    fb = importlib.import_module("benchmarks.finish_budget")
    data = tmp_path / "data"
    write_sample(data, labeled_per_class=4, pool=12, test_per_class=1, seed=3)
    rows = (data / "pool_labels.csv").read_text().splitlines()
    (data / "reviewed_labels.csv").write_text("\n".join(rows[:7]) + "\n")  # 6 validate
    raw = default_params_dict()
    raw["base"]["image_size"] = 64
    params = parse_params(raw)
    weights = tmp_path / "weights.pth"
    save_checkpoint(weights, build_model(2, params.train.head, params.train.dropout),
                    checkpoint_meta(params, 1, 0.5))
    out = tmp_path / "finish.json"
    assert fb.main(["--weights", str(weights), "--data", str(data), "--image-size", "64",
                    "--budgets", "0.05", "--shrink-perturb", "0.5", "0.1",
                    "--set", "batch_size=4", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [r["recipe"] for r in results] == ["finish 0.05 min", "finish s&p 0.5/0.1 0.05 min"]
    # the budget holds at least the one measured epoch (more on a faster machine)
    assert all(r["epochs"] >= 1 and r["val_images"] == 6 for r in results)
    text = capsys.readouterr().out
    assert "the caller vouches that it never trained on the validation images" in text
    assert "one epoch of finish:" in text and "final val acc [95% CI]" in text


def test_the_sitting_ends_with_the_final_step_unless_told_not_to(tmp_path, monkeypatch):
    from chimuffin.cli import build_parser

    raw = default_params_dict()
    raw["review"]["retrain_every"] = 0  # no background model for the final step to start from
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    run(["git", "init", "-q"], tmp_path)
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["loop", "--reviewer", "truth.csv", "--minutes", "1"])
    assert args.no_final is False
    with pytest.raises(UserError, match="retrain_every is 0.*pass --no-final"):
        args.func(args)

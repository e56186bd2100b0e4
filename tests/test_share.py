"""Sharing and scaling with DVC's own engines: an S3 remote (a real local S3-compatible server)
with the run cache, and a queue of experiments run by `dvc queue start`.

Both use the pipeline up to `evaluate` (what comes after adds minutes and nothing to check).
"""

import csv
import io
import shutil
import subprocess
import time
import urllib.request

import pytest
import yaml

from tests.helpers.repo import BIN, TINY, deep_update, default_params_dict, make_repo, run

pytestmark = pytest.mark.slow

STAGES = ("sample", "prepare", "clean", "tables", "train", "evaluate")
BUCKET = "chimuffin-remote"
# Outputs whose bytes a teammate must get back exactly (the DVCLive folder carries timestamps).
SHARED = ["data/prepared/images.npy", "data/prepared/manifest.parquet",
          "data/clean/manifest.parquet", "models/best.pth", "metrics/eval/metrics.json",
          "metrics/eval/predictions.parquet"]


@pytest.fixture
def s3_server(tmp_path, free_port):
    """A moto S3 server on 127.0.0.1 for this test only; yields (endpoint url, env)."""
    port = free_port
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "moto.log", "w")  # closed in the finally below
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: "
                                       f"{(tmp_path / 'moto.log').read_text()}") from None
                time.sleep(0.3)
        # Fake credentials; no ~/.aws file may leak in.
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
               "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}
        yield url, env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def s3_client(url: str, env: dict):
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """A committed repo whose pipeline (sample .. evaluate) ran, with lr 2e-3 so that neither
    queued experiment below equals the baseline."""
    params = deep_update(default_params_dict(), {**TINY, "train": {**TINY["train"], "lr": 0.002}})
    repo = make_repo(tmp_path_factory.mktemp("share") / "repo", params)
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    dvc_yaml["stages"] = {name: dvc_yaml["stages"][name] for name in STAGES}
    del dvc_yaml["plots"]  # some name outputs of the stages left out
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    return repo


def lock_md5(repo, path: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])
                if o["path"] == path)


def ran_stages(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Running stage")]


def test_push_then_a_fresh_clone_pulls_everything_and_retrains_nothing(baseline, s3_server,
                                                                      tmp_path):
    url, env = s3_server
    repo = baseline
    s3_client(url, env).create_bucket(Bucket=BUCKET)
    run(["dvc", "remote", "add", "-d", "store", f"s3://{BUCKET}/dvc"], repo)
    run(["dvc", "remote", "modify", "store", "endpointurl", url], repo)
    run(["git", "commit", "-qam", "remote"], repo)
    run(["dvc", "push", "--run-cache"], repo, env=env)
    keys = {o["Key"] for o in s3_client(url, env).list_objects_v2(Bucket=BUCKET)["Contents"]}
    md5 = lock_md5(repo, "models/best.pth")
    assert f"dvc/files/md5/{md5[:2]}/{md5[2:]}" in keys
    assert any(k.startswith("dvc/runs/") for k in keys), "the run cache was not pushed"

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "models/best.pth").exists()

    # Nothing changed since the lock: every stage is skipped, missing data or not.
    out = run(["dvc", "repro", "--pull", "--allow-missing"], clone, env=env).stdout
    assert ran_stages(out) == [] and "Stage 'train' didn't change, skipping" in out, out
    assert not (clone / "models/best.pth").exists()  # and nothing was downloaded

    # `dvc pull` brings back the data, the model and the metrics, byte for byte.
    run(["dvc", "pull"], clone, env=env)
    for f in SHARED:
        assert (clone / f).read_bytes() == (repo / f).read_bytes(), f
    assert "up to date" in run(["dvc", "status"], clone).stdout

    # The run cache: with no dvc.lock, no outputs and an empty local cache, every stage is
    # restored from the remote's run cache instead of running again, except `tables`: DVC
    # never run-caches a stage with `persist` outs (here it only rewrites its placeholders).
    (clone / "dvc.lock").unlink()
    for d in ("data/raw/sample", "data/prepared", "data/clean", "metrics"):
        shutil.rmtree(clone / d)
    (clone / "models/best.pth").unlink()  # models/warm_start/ is git's (the train stage's dep)
    shutil.rmtree(clone / ".dvc/cache")
    out = run(["dvc", "repro", "--pull"], clone, env=env).stdout
    assert ran_stages(out) == ["Running stage 'tables':"], out
    assert "Stage 'train' is cached - skipping run, checking out outputs" in out, out
    for f in SHARED:
        assert (clone / f).read_bytes() == (repo / f).read_bytes(), f


def queue_tasks(repo) -> dict[str, str]:
    """{experiment name: Queued|Running|Success|Failed} from `dvc queue status`."""
    out = run(["dvc", "queue", "status"], repo).stdout
    states = ("Queued", "Running", "Success", "Failed")
    return {w[1]: w[-1] for line in out.splitlines() if (w := line.split()) and w[-1] in states}


def test_queued_experiments_run_and_compare(baseline):
    repo = baseline
    baseline_model = lock_md5(repo, "models/best.pth")
    run(["dvc", "exp", "run", "--queue", "-S", "train.lr=1e-3,5e-4"], repo)
    assert list(queue_tasks(repo).values()) == ["Queued", "Queued"]
    run(["dvc", "queue", "start", "-j", "1"], repo)  # one worker: one training at a time
    try:
        deadline = time.monotonic() + 900
        while {"Queued", "Running"} & set((tasks := queue_tasks(repo)).values()):
            assert time.monotonic() < deadline, f"queue still busy: {tasks}"
            time.sleep(3)
    finally:
        run(["dvc", "queue", "stop"], repo, check=False)
    failed = [name for name, state in tasks.items() if state != "Success"]
    assert not failed, "\n".join(run(["dvc", "queue", "logs", n], repo, check=False).stdout
                                 for n in failed)

    rows = list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], repo).stdout)))
    base = next(r for r in rows if r["typ"] == "baseline" and r["rev"] != "workspace")
    exps = [r for r in rows if r["Experiment"] in tasks]
    assert sorted(float(r["train.lr"]) for r in exps) == [5e-4, 1e-3]
    assert all(r["State"] == "Success" for r in exps)
    # Each trained a model of its own: its validation loss is none of the others'.
    loss = "val.loss"  # the evaluated model's (training's own is last_epoch.val_loss)
    assert len({float(r[loss]) for r in [base, *exps]}) == 3, [r[loss] for r in rows]
    assert all(0 <= float(r["val.accuracy"]) <= 1 for r in exps)

    # README's comparison, then apply the best one and make it the new baseline.
    shown = run(["dvc", "exp", "show", "--only-changed", "--sort-by",
                 loss, "--sort-order", "asc", "--md"], repo).stdout
    best = min(exps, key=lambda r: float(r[loss]))
    names = [n for line in shown.splitlines() for n in tasks if f"[{n}]" in line]
    assert names[0] == best["Experiment"], shown
    run(["dvc", "exp", "apply", best["Experiment"]], repo)
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"] == \
        float(best["train.lr"])
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", f"best lr {best['train.lr']}"], repo)
    assert "up to date" in run(["dvc", "status"], repo).stdout
    assert lock_md5(repo, "models/best.pth") != baseline_model

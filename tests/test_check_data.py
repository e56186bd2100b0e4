"""`chimuffin check-data`: names DVC cannot hash (not valid UTF-8), found before `dvc repro`,
each with a suggested name and a rename command that works."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from chimuffin.cli import main
from chimuffin.data.names import (
    ansi_c_quote,
    escaped,
    find_bad_names,
    readable_name,
    unique_name,
)
from chimuffin.data.sample import write_sample
from tests.helpers.repo import REPO, run

LATIN1 = b"caf\xe9.jpg"  # 'café.jpg' written by a system using Latin-1


def hackathon_folder(root, bad: bytes = LATIN1):
    """train128/{chihuahua,muffin,undefined} with a few real images, plus one file named
    with Latin-1 bytes in the pool."""
    write_sample(root, labeled_per_class=4, pool=3, test_per_class=0, seed=3)
    bad_path = os.path.join(os.fsencode(root), b"train128", b"undefined", bad)
    with open(bad_path, "wb") as f:
        f.write(sorted((root / "train128" / "muffin").iterdir())[0].read_bytes())
    return bad_path


def test_readable_name_suggests_the_legacy_reading_and_avoids_collisions():
    assert readable_name(LATIN1) == "café.jpg"
    assert readable_name(b"\x93quoted\x94.png") == "\u201cquoted\u201d.png"  # Windows-1252
    assert readable_name(b"a\x81b.jpg") == "a_b.jpg"  # undefined in cp1252: a control char
    taken = {"café.jpg".encode(), "café_2.jpg".encode()}
    assert unique_name("café.jpg", taken) == "café_3.jpg"
    assert unique_name("other.jpg", taken) == "other.jpg"


def test_quoting_keeps_the_exact_bytes():
    assert escaped(b"train128/undefined/" + LATIN1) == "train128/undefined/caf\\xe9.jpg"
    assert ansi_c_quote(b"it's caf\xe9 \\ \xc3\xa9") == "$'it\\'s caf\\xe9 \\\\ \u00e9'"
    # bash turns the quoted form back into the same bytes
    out = subprocess.run(["bash", "-c", f"printf %s {ansi_c_quote(b'x' + LATIN1)}"],
                         capture_output=True, check=True).stdout
    assert out == b"x" + LATIN1


def test_find_bad_names_lists_files_and_folders_deepest_first(tmp_path):
    root = os.fsencode(tmp_path)
    os.makedirs(os.path.join(root, b"train128", b"M\xfcsli"))
    for name in (b"ok.jpg", b"\xe9t\xe9.jpg"):
        open(os.path.join(root, b"train128", b"M\xfcsli", name), "wb").close()
    bad = find_bad_names(tmp_path)
    assert [b.shown for b in bad] == ["train128/M\\xfcsli/\\xe9t\\xe9.jpg", "train128/M\\xfcsli"]
    assert [b.new_name for b in bad] == ["été.jpg", "Müsli"]


def test_check_data_names_the_file_and_its_mv_command_fixes_it(tmp_path, capsys):
    data = tmp_path / "chihuahua-muffin"
    bad_path = hackathon_folder(data)
    before = sorted(os.listdir(os.path.dirname(bad_path)))

    assert main(["check-data", str(data)]) == 2
    out, err = capsys.readouterr()
    assert "train128/undefined/caf\\xe9.jpg  ->  rename to 'café.jpg'" in out
    mv = [line.strip() for line in out.splitlines() if line.strip().startswith("mv ")]
    assert mv == [f"mv -n -- $'{data}/train128/undefined/caf\\xe9.jpg' "
                  f"'{data}/train128/undefined/café.jpg'"]
    assert err.strip() == (f"chimuffin check-data: error: {data}: 1 name(s) are not valid "
                           "UTF-8; DVC cannot hash the folder until they are renamed (commands "
                           "above)")
    assert sorted(os.listdir(os.path.dirname(bad_path))) == before  # nothing was touched

    subprocess.run(["bash", "-c", mv[0]], check=True)
    assert (data / "train128" / "undefined" / "café.jpg").is_file()
    assert main(["check-data", str(data)]) == 0
    assert "file and folder names are valid UTF-8" in capsys.readouterr().out


def test_check_data_defaults_to_params_data_dir(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data" / "raw" / "mine"
    hackathon_folder(data)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare"]["data_dir"] = "data/raw/mine"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert main(["check-data"]) == 2
    assert "train128/undefined/caf\\xe9.jpg" in capsys.readouterr().out
    assert main(["check-data", "nowhere"]) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err


@pytest.mark.slow
def test_dvc_repro_fails_on_the_name_and_check_data_names_it(tiny_repo):
    """What a user meets: DVC's own error, which names no file, then the check that does, and
    the pipeline running once its command was followed."""
    repo = tiny_repo
    hackathon_folder(repo / "data" / "raw" / "mine")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"]["data_dir"] = "data/raw/mine"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    failed = run(["dvc", "repro", "prepare"], repo, check=False)
    assert failed.returncode != 0
    assert "failed to reproduce 'prepare'" in failed.stderr
    assert "surrogates not allowed" in failed.stderr and "caf" not in failed.stderr

    check = run(["chimuffin", "check-data"], repo, check=False)
    assert check.returncode == 2
    assert "train128/undefined/caf\\xe9.jpg  ->  rename to 'café.jpg'" in check.stdout
    mv = next(line.strip() for line in check.stdout.splitlines()
              if line.strip().startswith("mv -n"))
    subprocess.run(["bash", "-c", mv], cwd=repo, check=True)
    run(["dvc", "repro", "prepare"], repo)
    assert run(["chimuffin", "check-data"], repo).returncode == 0

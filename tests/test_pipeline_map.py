"""dvc.yaml stays a true map: each stage runs through src/stage.py, its deps list exactly the
code it runs and name files that exist, and its command passes the paths named in
chimuffin.paths (which the stages' and tools' argument defaults use too).

Code deps are exact in both directions. A file dep must be a module the stage runs. A folder dep
(a package under src/) stands for every .py file in it, recursively, and is exact only when the
stage runs every one of them: then an edit anywhere in the folder reruns the stage, as it
should, and nothing else does. Such a package must be listed as the folder, not file by file;
any other package the stage uses is listed by its files."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml

from chimuffin import paths
from tests.helpers.imports import files_run, module_file
from tests.helpers.repo import REPO, default_params_dict

SRC = REPO / "src"
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
STAGES = list(PIPELINE)
PARAMS = default_params_dict()

# Which name in chimuffin.paths each command-line option passes.
OPTION_PATH = {"--clean": "CLEAN", "--prepared": "PREPARED", "--model": "MODEL",
               "--validation": "VALIDATION", "--decisions": "DECISIONS", "--tables": "TABLES",
               "--run": "RUN", "--live": "TRAIN_METRICS", "--predictions": "PREDICTIONS",
               "--embeddings": "EMBEDDINGS", "--plot": "EMBED_PLOT",
               "--reference": "REFERENCE_RECIPE", "--warm-start": "WARM_START"}
STAGE_OUT = {"sample": "SAMPLE", "prepare": "PREPARED", "clean": "CLEAN", "tables": "TABLES",
             "evaluate": "EVAL", "embed": "PACMAP", "suggest": "SUGGEST"}


def argv(stage: str) -> list[str]:
    return shlex.split(PIPELINE[stage]["cmd"])


def options(stage: str) -> dict[str, str]:
    args = argv(stage)[3:]
    assert len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2]), args
    return dict(zip(args[::2], args[1::2], strict=True))


def resolve(entry: str) -> str:
    """A dep with ${group.key} filled in from params.yaml."""
    def value(m: re.Match) -> str:
        node = PARAMS
        for key in m.group(1).split("."):
            node = node[key]
        return str(node)

    return re.sub(r"\$\{([\w.]+)\}", value, entry)


def entries(stage: str, key: str) -> list[str]:
    """The stage's deps or outs as paths (an out with options is a one-key mapping)."""
    return [resolve(next(iter(e)) if isinstance(e, dict) else e)
            for e in PIPELINE[stage].get(key, [])]


def covered(path: str, declared: list[str]) -> bool:
    """path is declared, or is a folder whose declared entries lie inside it."""
    return any(d == path or d.startswith(path.rstrip("/") + "/") for d in declared)


def package_files(folder: str) -> set[str]:
    """The .py files a folder dep stands for (every one under it, recursively)."""
    return {f.relative_to(REPO).as_posix() for f in (REPO / folder).rglob("*.py")}


def code_deps(stage: str) -> tuple[set[str], set[str]]:
    """The stage's code deps: (file deps, folder deps) under src/."""
    deps = [d.rstrip("/") for d in entries(stage, "deps") if d.startswith("src/")]
    folders = {d for d in deps if (REPO / d).is_dir()}
    return set(deps) - folders, folders


def listed(stage: str) -> set[str]:
    """The code files the stage's deps name, a folder dep standing for its .py files."""
    files, folders = code_deps(stage)
    return files.union(*(package_files(d) for d in folders))


def code_run(stage: str) -> set[str]:
    """Repository-relative files the stage's command runs: src/stage.py, the stage's module
    and every chimuffin module it imports, transitively, with the package __init__ files."""
    runner, name = argv(stage)[1:3]
    start = [REPO / runner, module_file(SRC, f"chimuffin.stages.{name}")]
    return {f.relative_to(REPO).as_posix() for f in files_run(SRC, start, "chimuffin")}


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_runs_its_own_module_through_the_runner(stage):
    assert argv(stage)[:3] == ["python", "src/stage.py", stage], PIPELINE[stage]["cmd"]
    assert (SRC / "chimuffin" / "stages" / f"{stage}.py").is_file()


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_stage_runs_is_among_its_deps(stage):
    missing = sorted(code_run(stage) - listed(stage))
    assert not missing, (f"dvc.yaml stage {stage!r} runs these files but does not list them in "
                         f"its deps: {', '.join(missing)}")


@pytest.mark.parametrize("stage", STAGES)
def test_every_code_dep_is_a_module_the_stage_runs(stage):
    """An extra code dep reruns the stage when an unrelated module changes."""
    run = code_run(stage)
    files, folders = code_deps(stage)
    extra = sorted(files - run)
    assert not extra, f"dvc.yaml stage {stage!r} depends on code it never runs: {extra}"
    for folder in sorted(folders):
        unused = sorted(package_files(folder) - run)
        assert not unused, (f"dvc.yaml stage {stage!r} depends on the folder {folder}, but never "
                            f"runs {', '.join(unused)}: list the files it runs instead")


@pytest.mark.parametrize("stage", STAGES)
def test_a_package_the_stage_runs_whole_is_one_folder_dep(stage):
    run = code_run(stage)
    files, _ = code_deps(stage)
    packages = {Path(f).parent.as_posix() for f in files if f.startswith("src/chimuffin/")}
    whole = sorted(p for p in packages if package_files(p) <= run)
    assert not whole, (f"dvc.yaml stage {stage!r} runs every module of {', '.join(whole)}: "
                       "list the folder instead of its files")


def test_folder_deps_hold_only_python_and_dvc_ignores_bytecode():
    """DVC hashes every file in a folder dep: __pycache__ (written when the stage runs) must be
    ignored, or the stage would look changed after every run."""
    folders = set().union(*(code_deps(s)[1] for s in STAGES))
    for folder in folders:
        other = [f for f in (REPO / folder).rglob("*")
                 if f.is_file() and f.suffix != ".py" and "__pycache__" not in f.parts]
        assert not other, f"{folder} holds files besides modules: {other}"
    if folders:
        ignored = (REPO / ".dvcignore").read_text().split()
        assert "__pycache__/" in ignored, ".dvcignore must ignore __pycache__/"


def test_deps_name_files_that_exist():
    outs = [o for s in STAGES for o in entries(s, "outs")]
    missing = [f"{stage}: {dep}" for stage in STAGES for dep in entries(stage, "deps")
               if not any(dep == o or dep.startswith(o + "/") for o in outs)
               and not (REPO / dep).exists()]
    assert not missing, f"dvc.yaml deps that name no file and no stage's output: {missing}"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_command_passes_the_paths_named_in_paths_py(stage):
    declared = entries(stage, "deps") + entries(stage, "outs")
    for option, value in options(stage).items():
        name = STAGE_OUT[stage] if option == "--out" else OPTION_PATH.get(option)
        assert name, f"{stage}: {option} has no name in chimuffin.paths (add one)"
        assert value == getattr(paths, name), f"{stage}: {option} {value} is not paths.{name}"
        assert covered(value, declared), f"{stage}: {option} {value} is not a dep or an out"


LOOKS_LIKE_A_PATH = re.compile(r"/|\.(yaml|csv|pth|onnx|parquet)$")


def path_literal_defaults(file: Path) -> list[str]:
    """`add_argument(..., default="some/path")` calls whose default is a string that looks like
    a file path (the name in chimuffin.paths belongs there)."""
    found = []
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            for kw in node.keywords:
                v = kw.value.value if isinstance(kw.value, ast.Constant) else None
                if kw.arg == "default" and isinstance(v, str) and LOOKS_LIKE_A_PATH.search(v):
                    found.append(f"{file}:{node.lineno}: {v!r}")
    return found


# The stage entry points and the tools whose defaults are pipeline paths.
DEFAULTS_CHECKED = [*sorted((SRC / "chimuffin" / "stages").glob("*.py")),
                    *(SRC / "chimuffin" / "commands" / f"{name}.py"
                      for name in ("export", "predict", "pull_3lc", "dashboard"))]


@pytest.mark.parametrize("file", DEFAULTS_CHECKED, ids=lambda f: f.stem)
def test_argument_defaults_use_the_names_in_paths_py(file):
    assert not path_literal_defaults(file)


def test_path_literal_check_sees_a_literal(tmp_path):
    f = tmp_path / "tool.py"
    f.write_text('p.add_argument("--model", default="models/best.pth")\n'
                 'p.add_argument("--params", default="params.yaml")\n'
                 'p.add_argument("--out", default=paths.EVAL)\n'
                 'p.add_argument("--host", default="127.0.0.1")\n')
    assert path_literal_defaults(f) == [f"{f}:1: 'models/best.pth'", f"{f}:2: 'params.yaml'"]


def test_import_walk_follows_every_kind_of_import(tmp_path):
    src = tmp_path / "src"
    pkg = src / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "pkg/__init__.py": "",
        "pkg/main.py": ("import os\nfrom pkg import a\nfrom pkg.sub import c\n"
                        "def f():\n    import pkg.d\n    from . import e\n"),
        "pkg/a.py": "from pkg.b import thing\n",
        "pkg/b.py": "thing = 1\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "",
        "pkg/d.py": "",
        "pkg/e.py": "",
        "pkg/unused.py": "",
    }
    for name, text in files.items():
        (src / name).write_text(text)
    run = files_run(src, [pkg / "main.py"], "pkg")
    assert {f.relative_to(src).as_posix() for f in run} == set(files) - {"pkg/unused.py"}

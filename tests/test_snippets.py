"""The Python in the benchmark shell scripts and in the docs' code blocks imports names that
exist: a module moved or a function renamed breaks them silently otherwise (they run only by
hand)."""

import importlib
import importlib.util
import re

import pytest

from tests.helpers.repo import REPO

IMPORT = re.compile(r"^\s*from (chimuffin[\w.]*) import ([\w, ]+)$", re.MULTILINE)
FILES = sorted([*REPO.glob("benchmarks/*.sh"), *REPO.glob("docs/*.md"), REPO / "README.md"])


def imports() -> list[tuple[str, str, str]]:
    return [(f.relative_to(REPO).as_posix(), module, name.strip())
            for f in FILES for module, names in IMPORT.findall(f.read_text())
            for name in names.split(",") if name.strip()]


def test_the_snippets_import_something():
    files = {f for f, _, _ in imports()}
    assert "benchmarks/one_iteration.sh" in files


@pytest.mark.parametrize("where, module, name", imports())
def test_each_imported_name_exists(where, module, name):
    found = hasattr(importlib.import_module(module), name) or \
        importlib.util.find_spec(f"{module}.{name}") is not None  # a submodule
    assert found, f"{where}: from {module} import {name}"

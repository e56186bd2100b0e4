"""Which files of a package a program runs: its imports, followed through the package's source.

Static, so it sees every import a run could take (inside functions and branches too), and no
import built at run time (importlib with a computed name).
"""

from __future__ import annotations

import ast
from pathlib import Path


def module_file(src: Path, name: str) -> Path | None:
    """src/a/b.py or src/a/b/__init__.py for module `a.b`; None when neither exists."""
    base = src.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def module_name(src: Path, file: Path) -> str:
    parts = file.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def with_parents(name: str) -> list[str]:
    """`a.b.c` -> a, a.b, a.b.c: importing a submodule runs every package __init__ above it."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imported_names(file: Path, src: Path, package: str) -> set[str]:
    """Modules of `package` that `file` imports anywhere in its body (functions included)."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    here = module_name(src, file).split(".")
    if file.name != "__init__.py":
        here = here[:-1]  # the package a relative import starts from
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            # `from a import b` imports the module a.b when b is one (not just a name in a)
            found.update(f"{mod}.{a.name}" for a in node.names
                         if module_file(src, f"{mod}.{a.name}"))
    return {n for n in found if n == package or n.startswith(package + ".")}


def files_run(src: Path, start: list[Path], package: str) -> set[Path]:
    """Every file of `package` (under src) that running the `start` files imports, with the
    start files themselves and each imported package's __init__.py."""
    todo, seen = list(start), set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        names = imported_names(f, src, package)
        me = module_name(src, f)
        if me == package or me.startswith(package + "."):
            names.add(me)  # its own packages' __init__ files run before it
        for name in names:
            for mod in with_parents(name):
                target = module_file(src, mod)
                if target is None:
                    raise AssertionError(f"{f}: imports {name}, which has no file under {src}")
                todo.append(target)
    return seen

"""README's Layout names every package and module of src/chimuffin, and the flat root holds only
the shared infrastructure (at most ten modules); the rest sits in one package per job."""

from __future__ import annotations

import re

from tests.helpers.repo import REPO

PACKAGE = REPO / "src" / "chimuffin"
MAX_FLAT = 10


def layout_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Layout")
    return text[start:text.index("\n## ", start + 1) if "\n## " in text[start + 1:] else None]


def test_readme_layout_names_every_package_and_module():
    layout = layout_section()
    words = set(re.findall(r"[\w.]+", layout))
    missing = []
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(PACKAGE)
        if f.name == "__init__.py" or rel.parts[0] in ("stages", "commands"):
            continue  # the stage and command folders are named as a whole
        if not ({f.stem, f.name} & words):
            missing.append(rel.as_posix())
    packages = [d.name for d in PACKAGE.iterdir() if (d / "__init__.py").is_file()]
    missing += [f"{p}/" for p in sorted(packages) if f"{p}/" not in layout]
    assert not missing, f"README.md's Layout does not name: {', '.join(missing)}"


def test_flat_root_holds_at_most_ten_modules():
    flat = sorted(f.name for f in PACKAGE.glob("*.py") if f.name != "__init__.py")
    assert len(flat) <= MAX_FLAT, f"{len(flat)} modules flat in src/chimuffin: {flat}"

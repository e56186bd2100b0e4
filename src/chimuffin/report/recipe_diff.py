"""The reference recipe (recipes/reference.yaml) and how a run's params differ from it."""

from __future__ import annotations

from pathlib import Path

from chimuffin.config import Train, _build, as_dict, read_recipe
from chimuffin.paths import REFERENCE_RECIPE


def load_reference(path: str | Path = REFERENCE_RECIPE) -> Train:
    """The reference `train` group (any recipe file), checked as strictly as params.yaml."""
    return _build(Train, read_recipe(path), "train")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def recipe_diff(train: Train, reference: Train) -> list[tuple[str, object, object]]:
    """(key, this run's value, reference value) for every recipe param that differs."""
    ours = flatten(as_dict(train), "train")
    ref = flatten(as_dict(reference), "train")
    return [(k, ours.get(k), ref.get(k)) for k in sorted(set(ours) | set(ref))
            if ours.get(k) != ref.get(k)]

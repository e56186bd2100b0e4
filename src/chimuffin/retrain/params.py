"""What a background run is: when it starts, with which params, from which weights, and its
name (`review-<UTC time>-<N>-labels`, `-warm` when it starts from the last model)."""

from __future__ import annotations

import time
from pathlib import Path

from chimuffin.config import load_yaml, parse_override, parse_params, recipe_group, set_override
from chimuffin.errors import UserError


def due(labels_now: int, labels_of_model: int, every: int, busy: bool) -> bool:
    """Start a retrain on its own: every > 0, nothing running or queued, and at least `every`
    person decisions more than the model the page shows was trained on."""
    return every > 0 and not busy and labels_now - labels_of_model >= every


def threads_for_run(cpus: int | None) -> int:
    """Every core: at nice 10 the page's requests still go first. Measured on 2 cores
    (benchmarks/page_latency.py): two threads trained 1.5-1.8x faster than one, and the real
    pool's /api/state took 112 ms (p50) beside them against 105 idle."""
    return max(1, cpus or 1)


def round_params(params_text: str, recipe_text: str | None, threads: int,
                 params_name: str, recipe_name: str, overrides: list[str] = ()) -> dict:
    """The copy's params: the workspace's, with the recipe's `train` group (None: keep it),
    runtime.threads, then `overrides` (review.background_set); checked strictly (a bad
    recipe or override stops here, before any run)."""
    params = load_yaml(params_text, params_name)
    if recipe_text is not None:
        # merged onto its base: the copy's params.yaml holds the complete group (dvc exp show)
        params["train"] = recipe_group(load_yaml(recipe_text, recipe_name), Path(recipe_name))
    params["runtime"]["threads"] = threads
    try:
        parse_params(params)
    except UserError as e:
        raise UserError(f"{recipe_name}: {e}") from e
    where = f"{params_name}: review.background_set"
    for item in overrides:
        set_override(params, *parse_override(item, where))
    try:
        parse_params(params)
    except UserError as e:
        raise UserError(f"{where}: {e}") from e
    return params


def warm_start_due(labels: int, warm_after: int, last_weights: Path | None) -> Path | None:
    """The weights a run starts from: the last background model's once the snapshot holds
    warm_after person decisions (None: from scratch)."""
    return last_weights if labels >= warm_after else None


def experiment_name(labels: int, when: float, warm: bool = False) -> str:
    return (f"review-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(when))}-{labels}-labels"
            + ("-warm" if warm else ""))

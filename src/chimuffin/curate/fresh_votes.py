"""Fresh votes: a model's review pages rebuilt with every label given since it was trained.

A background model lags behind the person: it is trained on the label file as it was when its
run started and proposes until the next one finishes, 300 to 1,000 images later on the real
pool (benchmarks/README.md, "One sitting in wall-clock time"). Half of each proposal needs no
training: the vote of the image's nearest labeled neighbours in the model's embedding space
(curate/scoring.py). So between two models, the pages of the images not verified yet are
rebuilt from the same model's probabilities and embeddings with the current label file's
labels voting: an answer a person gave a minute ago already counts for its neighbours.

Everything here is a pure function of a model's pipeline outputs (ModelOutputs: the clean
manifest its run saw, its predictions and embeddings, the near-duplicate columns of its
suggestions) and the decisions; building the pages is the suggest stage's own code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from chimuffin import paths as default
from chimuffin.curate.pages import build_pages
from chimuffin.curate.scoring import neighbour_table, pool_knn, pool_proposals
from chimuffin.data.manifest import align, read_manifest, read_parquet_output
from chimuffin.infer.embeddings import read_embeddings, unit_rows
from chimuffin.infer.prediction_table import read_predictions
from chimuffin.labels.rows import REMOVE, Decision

DUP_COLUMNS = ["dup_of", "dup_sim", "near_duplicate"]
MANIFEST_COLUMNS = ["path", "split", "label", "label_source"]


@dataclass(frozen=True)
class ModelOutputs:
    """What one pipeline run (the workspace's, or a background run's copy) gives the pages."""
    manifest: pd.DataFrame   # MANIFEST_COLUMNS of the clean manifest that run saw
    p_model: np.ndarray      # (N, C) the model's probabilities, row-aligned with manifest
    unit: np.ndarray         # (N, D) unit-length embeddings, row-aligned with manifest
    dups: pd.DataFrame       # DUP_COLUMNS by path (indexed), for the images the run scored


@dataclass(frozen=True)
class FreshPages:
    pages: pd.DataFrame        # curate/pages.py's table (PAGE_SCHEMA)
    suggestions: pd.DataFrame  # one row per undecided pool image, with the evidence columns
    neighbours: pd.DataFrame   # the voting neighbours (scoring.NEIGHBOUR_COLUMNS)


def read_model_outputs(root: Path, classes: list[str]) -> ModelOutputs:
    """A repository folder's pipeline outputs (clean, evaluate, embed, suggest); a missing,
    damaged or stale one stops with its path and the `dvc repro` that remakes it."""
    root = Path(root)
    df = read_manifest(root / default.CLEAN / default.MANIFEST_FILE)
    pred_file = root / default.EVAL / default.PREDICTIONS_FILE
    pred = read_predictions(pred_file, classes)
    p_model = pred[[f"p_{c}" for c in classes]].to_numpy()[
        align(df, pred["path"], str(pred_file), "suggest")]
    emb_file = root / default.EMBED / default.EMBEDDINGS_FILE
    emb_paths, emb = read_embeddings(emb_file)
    unit = unit_rows(emb[align(df, emb_paths, str(emb_file), "suggest")])
    suggest = root / default.SUGGEST
    scored = [read_parquet_output(suggest / name, what, "dvc repro suggest", ["path", *DUP_COLUMNS])
              for name, what in ((default.SUGGESTIONS_FILE, "suggestions"),
                                 (default.LABEL_ISSUES_FILE, "label issues"))]
    dups = pd.concat([t[["path", *DUP_COLUMNS]] for t in scored]).drop_duplicates("path")
    return ModelOutputs(df[MANIFEST_COLUMNS].reset_index(drop=True), p_model, unit,
                        dups.set_index("path"))


def relabel(manifest: pd.DataFrame, decisions: list[Decision]) -> pd.DataFrame:
    """The manifest with the decisions' labels and sources (as the clean stage applies them);
    decisions on images the manifest lacks (a duplicate the run dropped) change nothing.
    Removed images keep their row, labeled `remove`, so the rows stay aligned."""
    at = {p: i for i, p in enumerate(manifest["path"])}
    labels = manifest["label"].to_numpy(dtype=object).copy()
    sources = manifest["label_source"].to_numpy(dtype=object).copy()
    for d in decisions:
        i = at.get(d.path)
        if i is not None:
            labels[i], sources[i] = d.label, d.source
    return manifest.assign(label=labels, label_source=sources)


def fresh_pages(model: ModelOutputs, decisions: list[Decision], classes: list[str],
                cfg) -> FreshPages:
    """The model's pages for the images nobody decided yet, every decision's label voting.
    cfg: the `suggest` params (k, model_weight, page_size, page_order, uncertain_share)."""
    df = relabel(model.manifest, decisions)
    kept = (df["label"] != REMOVE).to_numpy()
    df = df[kept].reset_index(drop=True)
    p_model, unit = model.p_model[kept], model.unit[kept]
    knn = pool_knn(df, unit, classes, cfg.k)
    suggestions = pool_proposals(df, p_model, knn, classes, cfg.model_weight)
    suggestions = suggestions.join(model.dups, on="path")
    # an image the model's run did not score (a decision undone since): no duplicate known
    suggestions["dup_of"] = suggestions["dup_of"].fillna("")
    suggestions["near_duplicate"] = suggestions["near_duplicate"].fillna(False).astype(bool)
    pages = build_pages(suggestions, unit[knn[0]], cfg.page_size, cfg.page_order,
                        cfg.uncertain_share)
    return FreshPages(pages, suggestions, neighbour_table(df["path"].to_numpy(), *knn))

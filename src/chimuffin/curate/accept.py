"""Accepting the suggest stage's proposals as label decisions (source `auto`).

scoring.py scores; this module acts on the scores: it picks the suggestions to accept and merges
them into the label decisions, never over an image that already has a decision.
"""

from __future__ import annotations

import pandas as pd

from chimuffin.labels.rows import SOURCES, Decision, merge_decisions


def select_accepted(suggestions: pd.DataFrame, min_score: float, require_agreement: bool = False,
                    per_class_cap: int | None = None,
                    skip_paths: set[str] | frozenset[str] = frozenset()) -> pd.DataFrame:
    """The suggestions to accept: score >= min_score (and model/neighbours agreeing if asked),
    none in skip_paths, at most per_class_cap per class (the highest scores)."""
    s = suggestions[(suggestions["score"] >= min_score)
                    & ~suggestions["path"].isin(list(skip_paths))]
    if require_agreement:
        s = s[s["agree"]]
    s = s.sort_values(["score", "path"], ascending=[False, True], kind="stable")
    if per_class_cap is not None:
        s = s.groupby("label", sort=False).head(per_class_cap)
    return s.reset_index(drop=True)


def as_decisions(rows: pd.DataFrame, source: str = "auto") -> list[Decision]:
    return [Decision(r.path, r.label, source,
                     f"score {r.score:.3f}; model {r.model_label} {r.model_conf:.2f}; "
                     f"neighbours {r.knn_label} {r.knn_conf:.2f}")
            for r in rows.itertuples()]


def accept(decisions: list[Decision], suggestions: pd.DataFrame, min_score: float,
           require_agreement: bool = False, per_class_cap: int | None = None,
           source: str = "auto") -> tuple[list[Decision], pd.DataFrame]:
    """Merge accepted suggestions into the decisions. An accepted suggestion never changes an
    image that already has a decision (a person's, an oracle's or an earlier one).
    Returns (merged decisions, the accepted suggestion rows)."""
    decided = {d.path for d in decisions}
    rows = select_accepted(suggestions, min_score, require_agreement, per_class_cap, decided)
    merged, _ = merge_decisions(decisions, as_decisions(rows, source), protect_sources=SOURCES)
    return merged, rows

"""Each stage output has one checked reader: a missing file, a file that is not parquet and a
missing column each stop with the file's path, what is wrong and the `dvc repro` that rebuilds
it; a complete file is read back unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chimuffin import paths
from chimuffin.curate.pages import PAGE_SCHEMA, read_pages
from chimuffin.curate.scoring import (
    LABEL_ISSUE_COLUMNS,
    NEIGHBOUR_COLUMNS,
    QUEUE_COLUMNS,
    SUGGESTION_COLUMNS,
    read_label_issues,
    read_neighbours,
    read_queue,
    read_suggestions,
)
from chimuffin.data.manifest import COLUMNS as MANIFEST_COLUMNS
from chimuffin.data.manifest import read_manifest
from chimuffin.errors import UserError
from chimuffin.infer.embeddings import PACMAP_COLUMNS, read_embeddings, read_pacmap
from chimuffin.infer.prediction_table import COLUMNS as PREDICTION_COLUMNS
from chimuffin.infer.prediction_table import read_predictions
from chimuffin.review.verify import EVIDENCE_COLUMNS

CLASSES = ["chihuahua", "muffin"]

# reader, file name, the columns it requires, what its messages call it, the rebuild command
READERS = {
    "manifest": (read_manifest, paths.MANIFEST_FILE, MANIFEST_COLUMNS, "manifest", "dvc repro"),
    "predictions": (lambda p: read_predictions(p, CLASSES), paths.PREDICTIONS_FILE,
                    [*PREDICTION_COLUMNS, "p_chihuahua", "p_muffin"], "predictions",
                    "dvc repro evaluate"),
    "embeddings": (read_embeddings, paths.EMBEDDINGS_FILE, ["path", "embedding"], "embeddings",
                   "dvc repro evaluate"),
    "pacmap": (read_pacmap, paths.PACMAP_FILE, PACMAP_COLUMNS, "PaCMAP coordinates",
               "dvc repro embed"),
    "suggestions": (read_suggestions, paths.SUGGESTIONS_FILE, SUGGESTION_COLUMNS, "suggestions",
                    "dvc repro suggest"),
    "evidence": (lambda p: read_suggestions(p, EVIDENCE_COLUMNS), paths.SUGGESTIONS_FILE,
                 EVIDENCE_COLUMNS, "suggestions", "dvc repro suggest"),
    "queue": (read_queue, paths.QUEUE_FILE, QUEUE_COLUMNS, "review queue", "dvc repro suggest"),
    "label issues": (read_label_issues, paths.LABEL_ISSUES_FILE, LABEL_ISSUE_COLUMNS,
                     "label issues", "dvc repro suggest"),
    "neighbours": (read_neighbours, paths.NEIGHBOURS_FILE, NEIGHBOUR_COLUMNS, "voting neighbours",
                   "dvc repro suggest"),
    "pages": (read_pages, paths.PAGES_FILE, list(PAGE_SCHEMA), "review pages",
              "dvc repro suggest"),
}


def value(column: str):
    """A plausible one-row value for a column (the page schema's types where it has one)."""
    kind = PAGE_SCHEMA.get(column)
    if column == "embedding":
        return np.ones(4, dtype=np.float32)
    if kind == "int64" or column in ("idx", "rank", "cluster", "width", "height"):
        return 0
    if kind == "bool" or column in ("agree", "near_duplicate"):
        return True
    if kind == "float64" or column.startswith("p_") or column.endswith(("conf", "sim")) or \
            column in ("score", "confidence", "x", "y", "issue_score"):
        return 0.5
    return "chihuahua" if column.endswith("label") or column == "proposed" else "a/1.jpg"


def frame(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: [value(c)] for c in columns})


@pytest.mark.parametrize("name", READERS)
def test_a_missing_output_names_the_file_and_the_stage_that_makes_it(tmp_path, name):
    reader, file, _, what, rebuild = READERS[name]
    with pytest.raises(UserError) as e:
        reader(tmp_path / file)
    assert str(e.value) == f"{tmp_path / file}: {what} not found (run `{rebuild}`)"


@pytest.mark.parametrize("name", READERS)
def test_a_damaged_output_names_the_file_and_the_stage_that_rebuilds_it(tmp_path, name):
    reader, file, _, what, rebuild = READERS[name]
    (tmp_path / file).write_bytes(b"not parquet")
    with pytest.raises(UserError) as e:
        reader(tmp_path / file)
    assert str(e.value).startswith(f"{tmp_path / file}: {what} not readable")
    assert f"run `{rebuild}`" in str(e.value)


@pytest.mark.parametrize("name", READERS)
def test_each_column_a_reader_needs_is_named_when_missing(tmp_path, name):
    reader, file, columns, _, rebuild = READERS[name]
    for gone in columns:
        path = tmp_path / file
        frame([c for c in columns if c != gone]).to_parquet(path)
        with pytest.raises(UserError) as e:
            reader(path)
        message = str(e.value)
        assert message.startswith(f"{path}: ") and gone in message, message
        assert f"run `{rebuild}`" in message


@pytest.mark.parametrize("name", READERS)
def test_a_complete_output_is_read(tmp_path, name):
    reader, file, columns, _, _ = READERS[name]
    frame(columns).to_parquet(tmp_path / file)
    out = reader(tmp_path / file)
    if name == "embeddings":
        paths_read, emb = out
        assert list(paths_read) == ["a/1.jpg"] and emb.shape == (1, 4)
    else:
        assert list(out.columns) == columns and len(out) == 1


@pytest.mark.parametrize("content, problem", [
    (None, "clean stage's summary not found (run `dvc repro clean`)"),
    ('{"n": 1', "clean stage's summary not readable (JSONDecodeError); run `dvc repro clean`"),
    (b"\xff\xfe{}", "clean stage's summary not readable (UnicodeDecodeError)"),
    ("[1, 2]", "the clean stage's summary is not a JSON object; run `dvc repro clean`"),
])
def test_json_outputs_name_the_file_and_the_rebuild(tmp_path, content, problem):
    from chimuffin.data.manifest import read_json_output

    f = tmp_path / paths.SUMMARY_FILE
    if content is not None:
        (f.write_bytes if isinstance(content, bytes) else f.write_text)(content)
    with pytest.raises(UserError) as e:
        read_json_output(f, "clean stage's summary", "dvc repro clean")
    assert str(e.value).startswith(f"{f}: ") and problem in str(e.value)
    f.write_text('{"n": 1}')
    assert read_json_output(f, "clean stage's summary", "dvc repro clean") == {"n": 1}

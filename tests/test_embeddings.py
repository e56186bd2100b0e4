"""PaCMAP's notes about what chimuffin does on purpose are dropped; its other warnings are not."""

import logging

import pacmap

from chimuffin.infer.embeddings import expected_pacmap_notes_silenced


def test_only_the_expected_pacmap_notes_are_silenced(caplog):
    caplog.set_level(logging.WARNING)
    pacmap.PaCMAP(n_components=3, random_state=7)  # both notes, outside the block
    before = [r.getMessage() for r in caplog.records]
    assert any("random state is set to 7" in m for m in before)
    assert any("n_components != 2" in m for m in before)

    caplog.clear()
    with expected_pacmap_notes_silenced():
        pacmap.PaCMAP(n_components=3, random_state=7)
        logging.getLogger("pacmap.pacmap").warning("Sample size is smaller than n_neighbors.")
    assert [r.getMessage() for r in caplog.records] == ["Sample size is smaller than n_neighbors."]

    caplog.clear()  # the filter is gone after the block
    pacmap.PaCMAP(n_components=3, random_state=7)
    assert len(caplog.records) == 2

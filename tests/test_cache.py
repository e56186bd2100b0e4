"""The uint8 tensor cache: written with plain appends, read through short-lived maps, so memory
does not grow with the dataset."""

import sys

import numpy as np
import pytest

from chimuffin.data.manifest import CacheWriter, open_cache, read_rows
from chimuffin.infer.batches import load_batch


def rows(n: int, shape=(3, 4, 4), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def test_writer_makes_the_same_file_as_numpy_and_drops_the_unused_tail(tmp_path):
    data = rows(5)
    with CacheWriter(tmp_path / "c.npy", capacity=8, row_shape=(3, 4, 4)) as w:
        assert [w.append(r) for r in data] == [0, 1, 2, 3, 4]
    np.save(tmp_path / "ref.npy", data)
    assert (tmp_path / "c.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    assert np.array_equal(open_cache(tmp_path / "c.npy"), data)


def test_writer_moves_the_rows_when_the_header_shrinks(tmp_path):
    # A capacity this long makes numpy's header 64 bytes longer than the final one.
    data = rows(3)
    with CacheWriter(tmp_path / "c.npy", capacity=10**50, row_shape=(3, 4, 4)) as w:
        for r in data:
            w.append(r)
    assert np.array_equal(np.load(tmp_path / "c.npy"), data)
    assert not list(tmp_path.glob("*.resize.npy"))


def test_writer_refuses_a_row_of_the_wrong_shape_or_type(tmp_path):
    with CacheWriter(tmp_path / "c.npy", 2, (3, 4, 4)) as w:
        with pytest.raises(ValueError, match="uint8"):
            w.append(np.zeros((3, 4, 5), np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            w.append(np.zeros((3, 4, 4), np.float32))


def test_read_rows_and_load_batch_read_the_right_rows_in_order(tmp_path):
    data = rows(10)
    np.save(tmp_path / "c.npy", data)
    cache = open_cache(tmp_path / "c.npy")
    picked = np.array([7, 2, 2, 9])
    got = read_rows(cache, picked)
    assert type(got) is np.ndarray and np.array_equal(got, data[picked])
    assert np.array_equal(read_rows(data, picked), data[picked])  # plain arrays work too
    import torch

    assert np.array_equal(load_batch(cache, picked, torch.device("cpu")).numpy(), data[picked])


def rss_file_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_writing_and_reading_a_64mb_cache_keeps_it_out_of_rss(tmp_path):
    """Through a long-lived memory map both would add the whole file (64 MB) to the RSS."""
    shape, n = (3, 128, 128), 1365  # 64 MB
    row = rows(1, shape)[0]
    before = rss_file_mb()
    with CacheWriter(tmp_path / "c.npy", n, shape) as w:
        for _ in range(n):
            w.append(row)
    cache = open_cache(tmp_path / "c.npy")
    for start in range(0, n, 64):
        read_rows(cache, np.arange(start, min(start + 64, n)))
    assert rss_file_mb() - before < 24

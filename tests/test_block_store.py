"""The block store: rating blocks written once, read back by handle, kept per process."""

from __future__ import annotations

import os

import numpy as np
import pytest

from nnmf_tf.data import SparseRatings
from pipeline import block_store
from pipeline.blocks import HeldOut, RatingsBlock


def _block(side: str, block: int, seed: int) -> RatingsBlock:
    rng = np.random.default_rng(seed)
    values, mask = rng.uniform(1, 5, (6, 9)).astype(np.float32), rng.random((6, 9)) < 0.4
    heldout = None
    if side == "user":
        heldout = HeldOut(np.array([0, 5]), np.array([3, -1]), np.array([4.0, 2.0], np.float32), np.array([0, 1]))
    return RatingsBlock(side, block, np.arange(10, 16), SparseRatings.from_dense(values, mask), heldout)


def _assert_same_block(a: RatingsBlock, b: RatingsBlock) -> None:
    assert (a.side, a.block) == (b.side, b.block)
    np.testing.assert_array_equal(a.ids, b.ids)
    for field in ("rows", "cols", "values", "row_splits"):
        np.testing.assert_array_equal(getattr(a.ratings, field), getattr(b.ratings, field))
    assert a.ratings.shape == b.ratings.shape
    if a.heldout is None:
        assert b.heldout is None
    else:
        for field in ("rows", "cols", "values", "users"):
            np.testing.assert_array_equal(getattr(a.heldout, field), getattr(b.heldout, field))


@pytest.fixture
def folder(tmp_path):
    path = block_store.run_folder(str(tmp_path))
    yield path
    block_store.forget(path)


def test_a_stored_block_reads_back_from_its_file_in_another_process(folder):
    """After forget (as in a process that never stored it), the handle reads the file."""
    original = _block("user", 3, seed=0)
    stored = block_store.store_block(original, folder)
    assert os.path.exists(stored.path)
    block_store.forget(folder)
    loaded = block_store.load_block(stored)
    assert loaded is not original
    _assert_same_block(original, loaded)


def test_the_process_keeps_what_it_stored_or_loaded(folder):
    """A stored block is not read back here: its file can be gone and the handle still works."""
    original = _block("item", 1, seed=1)
    stored = block_store.store_block(original, folder)
    os.remove(stored.path)
    assert block_store.load_block(stored) is original


def test_forget_drops_one_run_only(tmp_path):
    first, second = block_store.run_folder(str(tmp_path)), block_store.run_folder(str(tmp_path))
    assert first != second
    try:
        kept = block_store.store_block(_block("user", 0, seed=2), first)
        dropped = block_store.store_block(_block("user", 0, seed=3), second)
        os.remove(kept.path)
        os.remove(dropped.path)
        block_store.forget(second)
        block_store.load_block(kept)  # still in the process
        with pytest.raises(FileNotFoundError):
            block_store.load_block(dropped)
    finally:
        block_store.forget(first)
        block_store.forget(second)


def test_a_derived_value_is_built_once_per_block_and_name_and_forgotten_with_the_run(folder):
    """What a stage derives from a block (the kernel layout) is built by the first stage that
    asks and shared by the later ones; another name or block builds its own; forget drops it."""
    first = block_store.store_block(_block("user", 0, seed=4), folder)
    second = block_store.store_block(_block("user", 1, seed=5), folder)
    built = []

    def build(block: RatingsBlock) -> tuple:
        built.append(block.block)
        return (block.block, block.ratings.nnz)

    value = block_store.derived(first, "nnz", build)
    assert value == (0, block_store.load_block(first).ratings.nnz)
    assert block_store.derived(first, "nnz", build) is value
    block_store.derived(second, "nnz", build)
    block_store.derived(first, "other", build)
    assert built == [0, 1, 0]
    block_store.forget(folder)
    block_store.derived(first, "nnz", build)  # read back from the file, derived again
    assert built == [0, 1, 0, 0]


def test_a_derived_value_is_built_once_when_asked_for_at_once(folder):
    """Two threads missing the value together: one builds it, the other waits and shares it."""
    import threading
    import time

    stored = block_store.store_block(_block("item", 2, seed=6), folder)
    built, results = [], []

    def build(block: RatingsBlock) -> object:
        built.append(block.block)
        time.sleep(0.2)
        return object()

    threads = [threading.Thread(target=lambda: results.append(block_store.derived(stored, "slow", build))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert built == [2] and results[0] is results[1]

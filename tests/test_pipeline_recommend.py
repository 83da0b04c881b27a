"""The popularity baseline's top-k against a per-row scan of the popularity order."""

from __future__ import annotations

import numpy as np
import pytest

from nnmf_tf.data import SparseRatings
from pipeline.recommend import popularity_top_n


def scanned_top_k(order: np.ndarray, k: int, excluded: list[set[int]]) -> np.ndarray:
    """Each row's first ``k`` items of ``order`` outside its excluded set, -1 padded."""
    out = np.full((len(excluded), k), -1, np.int64)
    for row, skip in enumerate(excluded):
        kept = [item for item in order if item not in skip][:k]
        out[row, : len(kept)] = kept
    return out


@pytest.mark.parametrize("k", [1, 5, 12, 30])
def test_popularity_top_n_skips_each_rows_excluded_items(k):
    rng = np.random.default_rng(k)
    n_rows, n_items = 40, 25
    order = rng.permutation(n_items)
    mask = rng.random((n_rows, n_items)) < 0.3
    mask[0] = True  # a row that excludes every item gets no candidate
    mask[1] = False  # and one that excludes nothing gets the plain order
    mask[2, order[:20]] = True  # and one that excludes the 20 most popular
    exclude = SparseRatings.from_dense(np.ones(mask.shape), mask)

    got = popularity_top_n(order, k, n_rows, exclude)

    expected = scanned_top_k(order, k, [set(np.flatnonzero(row)) for row in mask])
    np.testing.assert_array_equal(got, expected)


def test_popularity_top_n_without_exclusions_is_the_order_for_every_row():
    order = np.array([3, 0, 2, 1])
    np.testing.assert_array_equal(popularity_top_n(order, 6, 2), [[3, 0, 2, 1, -1, -1]] * 2)

"""Blockwise top-N against a NumPy ``argsort`` reference, and the accuracy metrics by hand.

Factors and biases are small multiples of 1/8, so every score is exact in float32 and in
float64: the reference and the TensorFlow kernel must agree bit for bit, ties included.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator

import numpy as np
import pytest

from nnmf_tf.data import SparseRatings
from nnmf_tf.metrics import mae, ranking_metrics, rmse
from nnmf_tf.model import Factors
from nnmf_tf.topn import _GROUP, _item_blocks, top_n


def dyadic(rng: np.random.Generator, shape: tuple[int, ...], high: int = 8) -> np.ndarray:
    """Random multiples of 1/8 in ``[0, high/8]``: sums and products stay exact in float32."""
    return (rng.integers(0, high + 1, shape) / 8.0).astype(np.float32)


def make_factors(rng: np.random.Generator, n_users: int, n_items: int, biased: bool, rank: int = 3) -> Factors:
    """Dyadic factors (with biases and μ = 0.5 when ``biased``); items 0 and 1 are duplicated
    further down the catalogue so that exact ties occur across item blocks."""
    w, h = dyadic(rng, (n_users, rank)), dyadic(rng, (n_items, rank))
    item_bias = dyadic(rng, (n_items,), 4) - np.float32(0.25)
    for source, copy in ((0, n_items - 1), (1, n_items // 2), (0, n_items // 3)):
        if copy > 1:
            h[copy], item_bias[copy] = h[source], item_bias[source]
    if not biased:
        return Factors(w, h)
    return Factors(w, h, dyadic(rng, (n_users,), 4) - np.float32(0.25), item_bias, 0.5)


def reference_top_n(factors: Factors, n: int, excluded: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Stable ``argsort`` of every user's scores, excluded pairs at -inf, padded with -1 / -inf."""
    w, h = factors.user_factors.astype(np.float64), factors.item_factors.astype(np.float64)
    scores = w @ h.T
    if factors.biased:
        scores = scores + factors.global_mean + factors.user_bias[:, None] + factors.item_bias[None, :]
    if excluded is not None:
        scores = np.where(excluded, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    best = np.take_along_axis(scores, order, axis=1)
    items = np.where(np.isfinite(best), order, -1)
    width = order.shape[1]
    items_out = np.full((w.shape[0], n), -1, np.int64)
    scores_out = np.full((w.shape[0], n), -np.inf)
    items_out[:, :width], scores_out[:, :width] = items, best
    return items_out, scores_out


def top_n_cases() -> Iterator[tuple[int, int, int, int, int, bool, bool]]:
    """The grid: (n_users, n_items, n, user_block_size, item_block_size, exclude, biased)."""
    sizes = [(1, 1), (7, 5), (13, 11), (9, 150)]
    ns = [1, 3, 30]
    blocks = [(1, 64), (3, 100), (2048, 8192)]
    for (n_users, n_items), n, (user_block, item_block), exclude, biased in itertools.product(
        sizes, ns, blocks, [False, True], [False, True]
    ):
        yield n_users, n_items, n, user_block, item_block, exclude, biased


@pytest.mark.parametrize("n_users, n_items, n, user_block, item_block, exclude, biased", list(top_n_cases()))
def test_top_n_matches_numpy_reference(rng, n_users, n_items, n, user_block, item_block, exclude, biased):
    factors = make_factors(rng, n_users, n_items, biased)
    excluded = exclusion_ratings = None
    if exclude:
        excluded = rng.random((n_users, n_items)) < 0.3
        excluded[0] = True
        exclusion_ratings = SparseRatings.from_dense(np.ones((n_users, n_items)), excluded)
    expected_items, expected_scores = reference_top_n(factors, n, excluded)

    items, scores = top_n(factors, n, exclude=exclusion_ratings, user_block_size=user_block, item_block_size=item_block)

    assert items.shape == scores.shape == (n_users, n)
    assert items.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(items, expected_items)
    np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))
    again = top_n(factors, n, exclude=exclusion_ratings, user_block_size=user_block, item_block_size=item_block)
    np.testing.assert_array_equal(again[0], items)
    np.testing.assert_array_equal(again[1], scores)


@pytest.mark.parametrize("biased", [False, True], ids=["plain", "biased"])
def test_exclusions_that_hold_the_group_maxima(rng, biased):
    """Each user's best items excluded, so the groups that hold them must be ranked by their
    best remaining entry: 30 users × 700 items (11 groups, the last padded), n = 3."""
    factors = make_factors(rng, 30, 700, biased)
    scores = factors.user_factors @ factors.item_factors.T + (factors.item_bias[None, :] if biased else 0.0)
    excluded = rng.random(scores.shape) < 0.2
    np.put_along_axis(excluded, np.argsort(-scores, axis=1, kind="stable")[:, :8], True, axis=1)
    exclusion_ratings = SparseRatings.from_dense(np.ones(scores.shape), excluded)
    expected_items, expected_scores = reference_top_n(factors, 3, excluded)

    items, got_scores = top_n(factors, 3, exclude=exclusion_ratings, user_block_size=7)

    np.testing.assert_array_equal(items, expected_items)
    np.testing.assert_array_equal(got_scores, expected_scores.astype(np.float32))


def test_grid_spans_padding_blocks_and_exclusions():
    cases = list(top_n_cases())
    assert any(n > n_items for _, n_items, n, *_ in cases)
    assert any(
        u_block < n_users and len(_item_blocks(n_items, i_block)) > 2 for n_users, n_items, _, u_block, i_block, *_ in cases
    )
    assert {exclude for *_, exclude, _ in cases} == {False, True}


@pytest.mark.parametrize("n_items", [0, 1, 63, 64, 65, 150, 20000])
@pytest.mark.parametrize("size", [1, 64, 100, 8192])
def test_item_blocks_cover_the_catalogue_in_whole_groups(n_items, size):
    """Consecutive ranges covering every item once; every range but a last one narrower than a
    group is a whole number of groups (so only that one is padded), none wider than needed."""
    blocks = _item_blocks(n_items, size)
    edges = [0] + [i1 for _, i1 in blocks]
    assert [i0 for i0, _ in blocks] == edges[:-1] and edges[-1] == n_items
    widths = [i1 - i0 for i0, i1 in blocks]
    assert all(0 < w <= max(size, _GROUP) for w in widths)
    assert all(w % _GROUP == 0 for w in widths[:-1])
    assert not widths or widths[-1] % _GROUP == 0 or widths[-1] < _GROUP


def test_ties_are_broken_by_ascending_item_index():
    """Items 2, 5, 7 and 9 are identical: they come out in index order, across blocks of 3."""
    h = np.array([[0.0], [1.0], [2.0], [3.0], [0.5], [2.0], [0.25], [2.0], [1.5], [2.0]], np.float32)
    factors = Factors(np.array([[1.0], [2.0]], np.float32), h)

    items, scores = top_n(factors, 6, item_block_size=3, user_block_size=1)

    np.testing.assert_array_equal(items, [[3, 2, 5, 7, 9, 8]] * 2)
    np.testing.assert_array_equal(scores[1], [6.0, 4.0, 4.0, 4.0, 4.0, 3.0])


def test_exclusion_and_padding_beyond_the_catalogue():
    factors = Factors(np.ones((2, 1), np.float32), np.array([[3.0], [1.0], [2.0]], np.float32))
    rated = SparseRatings(np.array([0, 1, 1]), np.array([0, 0, 2]), np.ones(3), (2, 3))

    items, scores = top_n(factors, 5, exclude=rated)

    np.testing.assert_array_equal(items, [[2, 1, -1, -1, -1], [1, -1, -1, -1, -1]])
    np.testing.assert_array_equal(scores, [[2.0, 1.0, -np.inf, -np.inf, -np.inf], [1.0] + [-np.inf] * 4])


def test_biased_scores_include_mean_and_both_biases():
    factors = Factors(
        np.array([[1.0]], np.float32),
        np.array([[1.0], [2.0]], np.float32),
        np.array([0.5], np.float32),
        np.array([1.5, 0.0], np.float32),
        3.0,
    )

    items, scores = top_n(factors, 2)

    np.testing.assert_array_equal(items, [[0, 1]])
    np.testing.assert_array_equal(scores, [[3.0 + 0.5 + 1.5 + 1.0, 3.0 + 0.5 + 0.0 + 2.0]])


def test_rmse_and_mae_by_hand():
    predicted, actual = np.array([1.0, 2.0, 3.0, 7.0]), np.array([1.0, 1.0, 1.0, 5.0])

    assert rmse(predicted, actual) == pytest.approx(math.sqrt((0 + 1 + 4 + 4) / 4))
    assert mae(predicted, actual) == pytest.approx((0 + 1 + 2 + 2) / 4)
    assert rmse(predicted, actual, clip=(1.0, 2.5)) == pytest.approx(math.sqrt((0 + 1 + 2.25 + 6.25) / 4))
    assert mae(predicted, actual, clip=(1.0, 2.5)) == pytest.approx((0 + 1 + 1.5 + 2.5) / 4)
    assert rmse(np.array([0.2, 6.0]), np.array([1.0, 5.0]), clip=(1.0, 5.0)) == 0.0
    assert math.isnan(rmse(np.array([]), np.array([])))


def test_metric_inputs_must_pair_up():
    with pytest.raises(ValueError, match=r"predicted must have shape \(3,\); got \(2,\)"):
        rmse(np.zeros(2), np.zeros(3))


def test_ranking_metrics_count_a_repeated_relevant_item_once_and_need_k_of_at_least_one():
    assert ranking_metrics(np.array([[1, 2]]), [np.array([1, 1])], 2) == ranking_metrics(np.array([[1, 2]]), [np.array([1])], 2)
    for k in (0, -1):
        with pytest.raises(ValueError, match="k must be"):
            ranking_metrics(np.array([[1, 2]]), [np.array([1])], k)


def test_top_n_refuses_non_finite_factors():
    """A NaN score never ranks, so such a user would silently get no recommendation."""
    factors = Factors(np.array([[1.0], [np.nan]], np.float32), np.ones((3, 1), np.float32))
    with pytest.raises(ValueError, match="user factors must be finite for top_n"):
        top_n(factors, 2)


def test_ranking_metrics_by_hand():
    recommended = np.array([[5, 2, 9, 1], [1, 2, 3, 4], [4, 8, -1, -1], [-1, -1, -1, -1]])
    relevant = [np.array([2, 7]), np.array([], int), np.array([4, 8, 11, 12]), np.array([0])]
    log3 = 1.0 / math.log2(3)

    got = ranking_metrics(recommended, relevant, k=3)

    precision = [1 / 3, 2 / 3, 0.0]
    recall = [1 / 2, 2 / 4, 0.0]
    ndcg = [log3 / (1 + log3), (1 + log3) / (1 + log3 + 0.5), 0.0]
    assert got["users"] == 3
    assert got["precision"] == pytest.approx(np.mean(precision))
    assert got["recall"] == pytest.approx(np.mean(recall))
    assert got["ndcg"] == pytest.approx(np.mean(ndcg))


def test_ranking_metrics_padding_never_matches_and_perfect_lists_score_one():
    recommended = np.array([[3, -1], [0, 1]])
    relevant = [np.array([3]), np.array([1, 0])]

    got = ranking_metrics(recommended, relevant, k=2)

    assert got == pytest.approx({"precision": (0.5 + 1.0) / 2, "recall": 1.0, "ndcg": 1.0, "users": 2})


def test_ranking_metrics_without_relevant_items_are_nan():
    got = ranking_metrics(np.array([[1, 2]]), [np.array([], int)], k=2)
    assert got["users"] == 0 and math.isnan(got["precision"]) and math.isnan(got["ndcg"])


def test_ranking_metrics_need_k_columns():
    with pytest.raises(ValueError, match=r"recommended must have at least k=3 columns; got 2"):
        ranking_metrics(np.zeros((1, 2), int), [np.array([1])], k=3)

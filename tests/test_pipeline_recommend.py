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


def test_ties_rank_by_ascending_item_id_whatever_the_item_blocks():
    """Items are indexed block by block (hash-assigned blocks), but the evaluation protocol
    breaks ties by ascending item id. A user whose scores all tie (zero factors), a held-out
    user unseen in training (the fallback row) and the popularity baseline on equal counts all
    rank the items in id order, whichever blocks hold them."""
    from nnmf_tf.params import SolverParams
    from pipeline.blocks import FactorBlock, HeldOut, RatingsBlock
    from pipeline.config import ComputeConfig
    from pipeline.recommend import EVALUATION, RecommendAndEvaluateFn
    from pipeline.tables import recommendation_schema

    rank = 2
    item_vocab = {0: np.array([1, 4, 5]), 1: np.array([0, 2, 3])}  # global order: ids 1 4 5 0 2 3
    item_factors = {b: FactorBlock(np.ones((3, rank), np.float32)) for b in item_vocab}
    counts = {b: np.full(3, 7) for b in item_vocab}
    # User 10 rated item id 2 (global index 4); user 11 rated nothing in training but holds out
    # item id 0 (global index 3) and id 4 (global index 1), both relevant.
    ratings = SparseRatings(np.array([0]), np.array([4]), np.array([4.0], np.float32), (1, 6))
    heldout = HeldOut(np.array([-1, -1]), np.array([3, 1]), np.array([5.0, 5.0], np.float32), np.array([0, 0]))
    block = RatingsBlock("user", 0, np.array([10]), ratings, heldout)
    user_factors = {0: FactorBlock(np.zeros((1, rank), np.float32))}
    fn = RecommendAndEvaluateFn(SolverParams(rank=rank, bias=False), ComputeConfig(), 3, True, 2, 4.0, (0.5, 5.0),
                                recommendation_schema("int", "int"))

    outputs = list(fn._process(block, user_factors, item_factors, item_vocab, counts, 3.0))

    table = outputs[0].to_pandas()
    assert table["item_id"].tolist() == [0, 1, 3]  # id order, the rated id 2 left out
    sums = outputs[1].value
    assert outputs[1].tag == EVALUATION
    # Unseen user 11: fallback ids 0, 1 (model) and popularity ids 0, 1 (equal counts): id 0 is
    # a hit at rank 1 of 2 relevant items.
    for which in ("model", "baseline"):
        assert sums[which]["ranked_users"] == 1
        assert sums[which]["precision_sum"] == pytest.approx(0.5)
        assert sums[which]["recall_sum"] == pytest.approx(0.5)


def test_a_model_without_items_recommends_nothing_and_still_evaluates():
    """Every training rating held out: no item has factors. The block gets an empty table and
    its held-out ratings are scored by the fallback (the global mean)."""
    from nnmf_tf.params import SolverParams
    from pipeline.blocks import FactorBlock, HeldOut, RatingsBlock
    from pipeline.config import ComputeConfig
    from pipeline.recommend import RecommendAndEvaluateFn
    from pipeline.tables import recommendation_schema

    ratings = SparseRatings(np.zeros(0, int), np.zeros(0, int), np.zeros(0, np.float32), (1, 0))
    heldout = HeldOut(np.array([0]), np.array([-1]), np.array([4.0], np.float32), np.array([0]))
    block = RatingsBlock("user", 0, np.array([10]), ratings, heldout)
    fn = RecommendAndEvaluateFn(SolverParams(rank=2, bias=False), ComputeConfig(), 3, True, 2, 4.0, (0.5, 5.0),
                                recommendation_schema("int", "int"))
    items = {0: FactorBlock(np.zeros((0, 2), np.float32))}
    outputs = list(fn._process(block, {0: FactorBlock(np.zeros((1, 2), np.float32))}, items, {0: np.zeros(0, np.int64)},
                               {0: np.zeros(0, np.int64)}, 3.0))
    assert outputs[0].num_rows == 0
    sums = outputs[1].value
    assert sums["model"]["n"] == 1 and sums["model"]["sse"] == pytest.approx(1.0)
    assert sums["model"]["ranked_users"] == 1 and sums["model"]["precision_sum"] == 0.0

"""RecommendAndEvaluate: top-N per user block, plus held-out metrics from the same scores.

Each user block is scored against every item, one item block at a time
(:func:`nnmf_tf.topn.top_n`); items the user rated in training are excluded. The same
ranking gives precision/recall/NDCG@K on the block's held-out ratings, and the factors give
RMSE/MAE. A popularity baseline (most-rated training items, the global mean as prediction)
is evaluated the same way, so every run shows the model's lift over it; its ranking is the
same for every user except exclusions, so it is read off one precomputed popularity order
(:func:`popularity_top_n`) instead of being scored. Per-block sums are combined into
run-level metrics.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam import pvalue

from pipeline.timing import timed
from pipeline.blocks import FactorBlock, RatingsBlock, concat_factors, concat_blocks

EVALUATION = "evaluation"
#: Score tile of top_n: users × items at a time, wide in items (fewer running-top-N merges per
#: user), at most 160 MB of float32 scores per tile. Measured on 2 cores with rank 20: 512 ×
#: 32768 was 5–25% faster than top_n's default 2048 × 8192 at 20k–80k items; 512 × 81920 is a
#: further 22% faster than 512 × 32768 at 80k items (one merge per user chunk instead of three:
#: 0.39 s against 0.50 s for 8192 users with 20 exclusions each).
TOPN_USERS, TOPN_ITEMS = 512, 81920


def _mapped(indices: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """``mapping[indices]`` where an index is set, -1 where it is -1 (also when ``mapping`` is empty)."""
    if len(mapping) == 0:
        return np.full(np.shape(indices), -1, np.int64)
    return np.where(indices >= 0, mapping[np.maximum(indices, 0)], -1)


def _fallback_scores(block: RatingsBlock, model, mean: float, position: np.ndarray) -> np.ndarray:
    """Predictions for held-out pairs: the model where both ids are known, else the fallback
    (global mean, plus any known bias). ``model`` holds the items at ``position[global index]``."""
    from nnmf_tf.model import predict

    rows, cols = block.heldout.rows, block.heldout.cols
    cols = _mapped(cols, position)
    known = (rows >= 0) & (cols >= 0)
    out = np.full(len(rows), mean, np.float64)
    if known.any():
        out[known] = predict(model, rows[known], cols[known])
    if model.biased:
        user_only = (rows >= 0) & (cols < 0)
        item_only = (rows < 0) & (cols >= 0)
        out[user_only] += model.user_bias[rows[user_only]]
        out[item_only] += model.item_bias[cols[item_only]]
    return out


@dataclass(frozen=True)
class _ItemSide:
    """Every item, and the orders that rank them: what each user block's top-N reads.

    Items are indexed globally in block order (item blocks are hash-assigned), but rankings
    break ties by ascending item id (the evaluation protocol's rule, and one that does not
    depend on the block layout). So top-N runs on the items laid out in id order.
    """

    by_id: FactorBlock
    """Factors (and biases) in id order."""
    ids: np.ndarray
    """Item ids in global order."""
    id_order: np.ndarray
    """Global indices in ascending id order: position → global index."""
    position: np.ndarray
    """The inverse: global index → position in id order."""
    popularity_order: np.ndarray
    """Positions, most-rated first, ties by ascending id."""

    @classmethod
    def of(cls, factors: FactorBlock, ids: np.ndarray, counts: np.ndarray) -> "_ItemSide":
        """The side of items with ``factors``, ``ids`` and training rating ``counts``, all in
        global order."""
        id_order = np.argsort(ids, kind="stable")
        position = np.empty(len(ids), np.int64)
        position[id_order] = np.arange(len(ids))
        popularity_order = np.argsort(-counts[id_order], kind="stable")
        by_id = FactorBlock(factors.factors[id_order], None if factors.bias is None else factors.bias[id_order])
        return cls(by_id, ids, id_order, position, popularity_order)


class RecommendAndEvaluateFn(beam.DoFn):
    """Recommendations table for one user block, and its evaluation sums."""

    def __init__(self, params, compute, top_n: int, exclude_rated: bool, k: int, threshold: float,
                 clip: tuple[float, float], schema):
        self._params, self._compute = params, compute
        self._top_n, self._exclude, self._k, self._threshold, self._clip = top_n, exclude_rated, k, threshold, clip
        self._schema = schema
        self._item_cache = None

    def setup(self) -> None:
        from pipeline.tf_worker import worker_strategy

        worker_strategy(self._compute)

    def process(self, block: RatingsBlock, *side_inputs):
        return timed("recommend", self._process(block, *side_inputs))

    def _item_side(self, item_factors: dict, item_vocab: dict, item_count_blocks: dict) -> _ItemSide:
        """The items in id order, concatenated once per set of side inputs (not once per user
        block): cached while Beam hands the same side-input objects to this DoFn instance,
        recomputed whenever they change."""
        cached = self._item_cache
        if cached is not None and cached[0] is item_factors and cached[1] is item_vocab and cached[2] is item_count_blocks:
            return cached[3]
        derived = _ItemSide.of(concat_factors(item_factors, self._params.rank), concat_blocks(item_vocab),
                               concat_blocks(item_count_blocks))
        self._item_cache = (item_factors, item_vocab, item_count_blocks, derived)
        return derived

    def _process(self, block: RatingsBlock, user_factors: dict, item_factors: dict, item_vocab: dict,
                 item_count_blocks: dict, mean: float):
        from nnmf_tf.data import SparseRatings
        from nnmf_tf.model import Factors
        from nnmf_tf.topn import top_n
        from pipeline.tables import recommendation_table

        side = self._item_side(item_factors, item_vocab, item_count_blocks)
        own = user_factors[block.block]
        # One extra all-zero user row scores the fallback ranking for held-out users unseen in training.
        w = np.vstack([own.factors, np.zeros((1, self._params.rank), np.float32)])
        ub = None if own.bias is None else np.append(own.bias, np.float32(0.0))
        h, item_bias = side.by_id.factors, side.by_id.bias
        model = Factors(w, h, ub, item_bias, mean) if self._params.bias else Factors(w, h)
        n_users = len(block.ids)
        exclude = None
        if self._exclude:
            r = block.ratings
            exclude = SparseRatings(r.rows, side.position[r.cols], r.values, (n_users + 1, r.shape[1]))
        n = max(self._top_n, self._k)
        if len(side.ids):
            # top_n breaks ties by ascending item index: on the items in id order, that is by id.
            by_position, scores = top_n(model, n, exclude=exclude, user_block_size=TOPN_USERS, item_block_size=TOPN_ITEMS)
            items = _mapped(by_position, side.id_order)
        else:
            items, scores = np.full((n_users + 1, n), -1, np.int64), np.full((n_users + 1, n), -np.inf, np.float32)
        yield recommendation_table(self._schema, block.ids, side.ids, items[:n_users, : self._top_n], scores[:n_users, : self._top_n])

        held = block.heldout
        if held is None or len(held.values) == 0:
            return
        # Popularity baseline: the most-rated training items, the same exclusions, the global mean.
        popular = popularity_top_n(side.popularity_order, self._k, n_users + 1, exclude)
        popular = _mapped(popular, side.id_order)
        sums = {
            "model": _evaluation_sums(held, _fallback_scores(block, model, mean, side.position), items, n_users, self._k, self._threshold, self._clip),
            "baseline": _evaluation_sums(held, np.full(len(held.values), mean), popular, n_users, self._k, self._threshold, self._clip),
        }
        yield pvalue.TaggedOutput(EVALUATION, sums)


def popularity_top_n(order: np.ndarray, k: int, n_rows: int, exclude=None) -> np.ndarray:
    """Each row's first ``k`` items of the global ``order`` that it does not exclude, -1 padded.

    The same items as :func:`nnmf_tf.topn.top_n` on constant-per-item scores whose stable
    descending order is ``order``, without scoring users × items: a row's ``j``-th candidate
    sits at position ``q_j = j + #{excluded positions p_i : p_i − i ≤ j}`` of ``order``
    (``p`` the row's excluded positions ascending, ``i`` their rank), since ``p_i − i``
    counts the candidates before ``p_i``. Cost O(nnz log nnz + rows·k).

    Parameters
    ----------
    order : np.ndarray of int, shape (n_items,)
        Item indices, best first.
    k : int
    n_rows : int
    exclude : SparseRatings of shape (n_rows, n_items), optional
    """
    n_items = len(order)
    slots = np.arange(k, dtype=np.int64)
    if exclude is None or exclude.nnz == 0:
        positions = np.broadcast_to(slots, (n_rows, k))
    else:
        rank_of = np.empty(n_items, np.int64)
        rank_of[order] = np.arange(n_items, dtype=np.int64)
        rows = exclude.rows.astype(np.int64)
        starts = exclude.row_splits[:-1].astype(np.int64)
        stride = np.int64(n_items + 1)
        # Entries are grouped by ascending row: one sort of row-major keys orders each row's
        # positions (3x faster than a lexsort of the two columns). Subtracting each entry's
        # place within its row turns a position into its gap (excluded items ranked above it
        # are not counted): keys = row * stride + gap, ascending, since gaps do not decrease
        # within a row.
        ranked = np.sort(rows * stride + rank_of[exclude.cols])
        keys = ranked - (np.arange(len(ranked), dtype=np.int64) - starts[rows])
        queries = np.arange(n_rows, dtype=np.int64)[:, None] * stride + slots[None, :]
        positions = slots[None, :] + (np.searchsorted(keys, queries, side="right") - starts[:, None])
    found = positions < n_items
    return np.where(found, np.asarray(order, np.int64)[np.minimum(positions, max(n_items - 1, 0))] if n_items else -1, -1)


def _evaluation_sums(held, predicted: np.ndarray, ranked: np.ndarray, n_users: int, k: int, threshold: float,
                     clip: tuple[float, float]) -> dict[str, float]:
    """One block's error and ranking sums; ``ranked`` has one row per block user plus the fallback row."""
    error = np.clip(predicted, *clip) - held.values
    relevant_mask = held.values >= threshold
    # Relevant held-out items grouped by user (users ascending, items in held-out order): one
    # stable sort instead of a scan of all held-out rows per user.
    relevant_users = held.users[relevant_mask]
    by_user = np.argsort(relevant_users, kind="stable")
    users, first, counts = np.unique(relevant_users[by_user], return_index=True, return_counts=True)
    rows = held.rows[relevant_mask][by_user][first]
    relevant_cols = held.cols[relevant_mask][by_user]
    ranking = _ranking_metrics(ranked[np.where(rows >= 0, rows, n_users)], relevant_cols, counts, k)
    count = ranking["users"]
    return {
        "sse": float(error @ error),
        "sae": float(np.abs(error).sum()),
        "n": int(len(error)),
        "precision_sum": ranking["precision"] * count if count else 0.0,
        "recall_sum": ranking["recall"] * count if count else 0.0,
        "ndcg_sum": ranking["ndcg"] * count if count else 0.0,
        "ranked_users": count,
    }


def _ranking_metrics(recommended: np.ndarray, relevant_cols: np.ndarray, counts: np.ndarray, k: int) -> dict[str, float]:
    """:func:`nnmf_tf.metrics.ranking_metrics` for users whose relevant items are
    ``relevant_cols`` split by ``counts`` (each count ≥ 1), vectorised over users.

    Bit for bit the same values: each user's precision, recall and NDCG are the same float
    operations (the NDCG numerator is ``discounts[hits].sum()`` evaluated once per distinct
    hit pattern), averaged by ``np.mean`` in the same user order.
    """
    n = len(counts)
    if n == 0:
        return {"precision": float("nan"), "recall": float("nan"), "ndcg": float("nan"), "users": 0}
    if recommended.shape[1] < k:
        raise ValueError(f"recommended must have at least k={k} columns; got {recommended.shape[1]}")
    top = recommended[:, :k].astype(np.int64)
    owner = np.repeat(np.arange(n, dtype=np.int64), counts)
    stride = np.int64(max(int(top.max(initial=-1)), int(relevant_cols.max(initial=-1)), 0) + 2)
    wanted = owner * stride + (relevant_cols.astype(np.int64) + 1)
    offered = np.arange(n, dtype=np.int64)[:, None] * stride + (top + 1)
    hits = np.isin(offered, wanted) & (top >= 0)
    n_hits = hits.sum(axis=1)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    patterns, which = np.unique(hits, axis=0, return_inverse=True)
    gains = np.array([discounts[pattern].sum() for pattern in patterns], np.float64)
    ideal = np.array([0.0] + [discounts[:m].sum() for m in range(1, k + 1)], np.float64)
    lengths = counts.astype(np.int64)
    ndcg = gains[which.reshape(-1)] / ideal[np.minimum(lengths, k)]
    return {
        "precision": float(np.mean(n_hits / k)),
        "recall": float(np.mean(n_hits / lengths)),
        "ndcg": float(np.mean(ndcg)),
        "users": n,
    }


def summarize_evaluation(parts: list[dict], k: int) -> dict[str, float]:
    """Run-level held-out metrics (``heldout_*``) and the popularity baseline's (``baseline_*``)."""
    summary = {}
    for which, prefix in (("model", "heldout"), ("baseline", "baseline")):
        keys = ("sse", "sae", "n", "precision_sum", "recall_sum", "ndcg_sum", "ranked_users")
        total = {key: sum(p[which][key] for p in parts) for key in keys}
        n, users = total["n"], total["ranked_users"]
        summary.update({
            f"{prefix}_rmse": float(np.sqrt(total["sse"] / n)) if n else float("nan"),
            f"{prefix}_mae": total["sae"] / n if n else float("nan"),
            f"{prefix}_precision_at_{k}": total["precision_sum"] / users if users else float("nan"),
            f"{prefix}_recall_at_{k}": total["recall_sum"] / users if users else float("nan"),
            f"{prefix}_ndcg_at_{k}": total["ndcg_sum"] / users if users else float("nan"),
        })
    summary["heldout_ranked_users"] = float(sum(p["model"]["ranked_users"] for p in parts))
    return summary


class RecommendAndEvaluate(beam.PTransform):
    """Top-N tables per user block (main output) and evaluation sums (``evaluation`` output)."""

    def __init__(self, config, schema):
        super().__init__()
        self._config, self._schema = config, schema

    def expand(self, inputs: dict):
        c = self._config
        fn = RecommendAndEvaluateFn(
            c.model, c.compute, c.recommend.top_n, c.recommend.exclude_rated, c.evaluation.k,
            c.evaluation.relevance_threshold, (c.validation.rating_min, c.validation.rating_max), self._schema,
        )
        return inputs["user_blocks"] | "RecommendTopN" >> beam.ParDo(
            fn,
            pvalue.AsDict(inputs["user_factors"]),
            pvalue.AsDict(inputs["item_factors"]),
            pvalue.AsDict(inputs["item_vocab"]),
            pvalue.AsDict(inputs["item_blocks"] | "CountItemRatings" >> beam.Map(
                lambda b: (b.block, b.ratings.row_counts())).with_output_types(typing.Any)),
            pvalue.AsSingleton(inputs["global_mean"]),
        ).with_output_types(typing.Any).with_outputs(EVALUATION, main="recommendations")

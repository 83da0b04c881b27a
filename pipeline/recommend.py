"""RecommendAndEvaluate: top-N per user block, plus held-out metrics from the same scores.

Each user block is scored against every item, one item block at a time
(:func:`nnmf_tf.topn.top_n`); items the user rated in training are excluded. The same
ranking gives precision/recall/NDCG@K on the block's held-out ratings, and the factors give
RMSE/MAE. A popularity baseline (most-rated training items, the global mean as prediction)
is evaluated the same way, so every run shows the model's lift over it. Per-block sums are
combined into run-level metrics.
"""

from __future__ import annotations

import typing

import apache_beam as beam
import numpy as np
from apache_beam import pvalue

from pipeline.timing import timed
from pipeline.blocks import RatingsBlock, concat_factors, concat_ids

EVALUATION = "evaluation"


def _fallback_scores(block: RatingsBlock, model, mean: float) -> np.ndarray:
    """Predictions for held-out pairs: the model where both ids are known, else the fallback
    (global mean, plus any known bias)."""
    from nnmf_tf.model import predict

    rows, cols = block.heldout.rows, block.heldout.cols
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


class RecommendAndEvaluateFn(beam.DoFn):
    """Recommendations table for one user block, and its evaluation sums."""

    def __init__(self, params, compute, top_n: int, exclude_rated: bool, k: int, threshold: float,
                 clip: tuple[float, float], schema):
        self._params, self._compute = params, compute
        self._top_n, self._exclude, self._k, self._threshold, self._clip = top_n, exclude_rated, k, threshold, clip
        self._schema = schema

    def setup(self) -> None:
        from pipeline.tf_worker import worker_strategy

        worker_strategy(self._compute)

    def process(self, block: RatingsBlock, *side_inputs):
        return timed("recommend", self._process(block, *side_inputs))

    def _process(self, block: RatingsBlock, user_factors: dict, item_factors: dict, item_vocab: dict,
                 item_count_blocks: dict, mean: float):
        from nnmf_tf.data import SparseRatings
        from nnmf_tf.model import Factors
        from nnmf_tf.topn import top_n
        from pipeline.tables import recommendation_table

        items_side = concat_factors(item_factors, self._params.rank)
        item_ids = concat_ids(item_vocab)
        item_counts = concat_ids(item_count_blocks).astype(np.float32)
        own = user_factors[block.block]
        # One extra all-zero user row scores the fallback ranking for held-out users unseen in training.
        w = np.vstack([own.factors, np.zeros((1, self._params.rank), np.float32)])
        ub = None if own.bias is None else np.append(own.bias, np.float32(0.0))
        model = Factors(w, items_side.factors, ub, items_side.bias, mean) if self._params.bias else Factors(w, items_side.factors)
        n_users = len(block.ids)
        exclude = None
        if self._exclude:
            r = block.ratings
            exclude = SparseRatings(r.rows, r.cols, r.values, (n_users + 1, r.shape[1]))
        n = max(self._top_n, self._k)
        items, scores = top_n(model, n, exclude=exclude) if len(item_ids) else (
            np.full((n_users + 1, n), -1, np.int64), np.full((n_users + 1, n), -np.inf, np.float32))
        yield recommendation_table(self._schema, block.ids, item_ids, items[:n_users, : self._top_n], scores[:n_users, : self._top_n])

        held = block.heldout
        if held is None or len(held.values) == 0:
            return
        # Popularity baseline: the most-rated training items, the same exclusions, the global mean.
        popular, _ = top_n(Factors(np.ones((n_users + 1, 1), np.float32), item_counts[:, None]), self._k, exclude=exclude) \
            if len(item_ids) else (items, scores)
        sums = {
            "model": _evaluation_sums(held, _fallback_scores(block, model, mean), items, n_users, self._k, self._threshold, self._clip),
            "baseline": _evaluation_sums(held, np.full(len(held.values), mean), popular, n_users, self._k, self._threshold, self._clip),
        }
        yield pvalue.TaggedOutput(EVALUATION, sums)


def _evaluation_sums(held, predicted: np.ndarray, ranked: np.ndarray, n_users: int, k: int, threshold: float,
                     clip: tuple[float, float]) -> dict[str, float]:
    """One block's error and ranking sums; ``ranked`` has one row per block user plus the fallback row."""
    from nnmf_tf.metrics import ranking_metrics

    error = np.clip(predicted, *clip) - held.values
    relevant_mask = held.values >= threshold
    users, first = np.unique(held.users[relevant_mask], return_index=True)
    rows = held.rows[relevant_mask][first]
    relevant = [held.cols[(held.users == u) & relevant_mask] for u in users]
    ranking = ranking_metrics(ranked[np.where(rows >= 0, rows, n_users)], relevant, k)
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

"""Factorize: alternating half-steps over blocks, iterations unrolled in the Beam graph.

::

    for t in 1..T:
        W_t = user blocks ─ ParDo(UserHalfStep) ◄─ side inputs: H_{t-1} (all blocks), W_{t-1} (warm start)
        H_t = item blocks ─ ParDo(ItemHalfStep) ◄─ side inputs: W_t, H_{t-1}

Each ParDo calls :func:`nnmf_tf.halfstep.half_step` on one block with the other side's
whole factor matrix, so the result is the same whatever the block layout. Only factors
move between iterations: the rating blocks, grouped once by :class:`BlockRatings`, are
stored once (:mod:`pipeline.block_store`) and each half-step receives its block's handle.
"""

from __future__ import annotations

import time
import typing
from typing import TYPE_CHECKING

import apache_beam as beam
import numpy as np
from apache_beam import pvalue

from nnmf_tf.init import initial_factors, initial_scale
from nnmf_tf.params import SolverParams
from pipeline.timing import timed
from pipeline.warm_start import warm_factors
from pipeline.block_store import StoredBlock, derived, load_block, store_block
from pipeline.blocks import FactorBlock, concat_factors, row_keys

if TYPE_CHECKING:
    import tensorflow as tf

STATS = "stats"
SIDE_SALT = {"user": 0, "item": 1}


def initial_block(
    side: str, block: int, ids: np.ndarray, params: SolverParams, global_mean: float, previous: dict | None = None
):
    """``(block, FactorBlock)`` of seeded initial factors (zero biases) for rows ``ids``; rows
    found in ``previous`` (an earlier run's tables by block: warm start) keep their values."""
    factors = initial_factors(row_keys(ids), params.rank, params.seed, initial_scale(params, global_mean), SIDE_SALT[side])
    bias = np.zeros(len(ids), np.float32) if params.bias else None
    fresh = FactorBlock(factors, bias)
    if previous is None:
        return block, fresh
    return block, warm_factors(side, fresh, ids, previous.get(block))


class HalfStepFn(beam.DoFn):
    """Update one block's factor rows given the other side's factors (one half-step)."""

    def __init__(self, params: SolverParams, compute, side: str, iteration: int):
        self._params, self._compute, self._side, self._iteration = params, compute, side, iteration
        self._strategy = None
        self._other_cache = None

    def _other_side(self, other: dict) -> tuple[FactorBlock, "tf.Tensor"]:
        """The other side's blocks concatenated in global order, and its factors as a tensor,
        once per side-input object: every block of this half-step reads the same matrix, so
        it is built (and converted for the kernel) once while Beam hands this DoFn instance
        the same (never mutated) side-input dict."""
        import tensorflow as tf

        cached = self._other_cache
        if cached is None or cached[0] is not other:
            joined = concat_factors(other, self._params.rank)
            cached = self._other_cache = (other, joined, tf.constant(joined.factors))
        return cached[1], cached[2]

    def setup(self) -> None:
        from pipeline.tf_worker import worker_strategy

        self._strategy = worker_strategy(self._compute)

    def process(self, stored: StoredBlock, other: dict, previous: dict, global_mean: float):
        return timed("factorize", self._process(stored, other, previous, global_mean))

    def _process(self, stored: StoredBlock, other: dict, previous: dict, global_mean: float):
        from nnmf_tf.errors import check_factors_finite, check_objective_finite
        from nnmf_tf.halfstep import half_step, sparse_layout

        started = time.perf_counter()
        block = load_block(stored)
        params = self._params
        # The kernel's layout depends on the block, the rank, the bias, the kernel and the
        # replicas only: built by the first half-step of this block in this process, reused by
        # the rest.
        layout = derived(
            stored,
            f"layout-{params.rank}-{params.bias}-{params.kernel}-{self._strategy.num_replicas_in_sync}",
            lambda block: sparse_layout(block.ratings, params, self._strategy),
        )
        other_side, other_factors = self._other_side(other)
        current = previous[block.block]
        result = half_step(
            block.ratings,
            other_factors,
            current.factors,
            params,
            other_bias=other_side.bias,
            current_bias=current.bias,
            global_mean=global_mean if params.bias else 0.0,
            strategy=self._strategy,
            layout=layout,
        )
        name = {"side": self._side, "iteration": self._iteration, "block": block.block}
        check_factors_finite(result.factors, bias=result.bias, **name)
        check_objective_finite(result.objective, **name)
        yield block.block, FactorBlock(result.factors, result.bias)
        yield pvalue.TaggedOutput(
            STATS,
            {
                "iteration": self._iteration,
                "side": self._side,
                "block": block.block,
                "objective": result.objective,
                "penalty": result.penalty,
                "pg_norm_sq": result.pg_norm_sq,
                "inner_iters": result.inner_iters,
                "rows": int(block.ratings.shape[0]),
                "nnz": block.ratings.nnz,
                "seconds": time.perf_counter() - started,
            },
        )


class Factorize(beam.PTransform):
    """Run ``params.max_iter`` alternating iterations over the blocks.

    Input: a dict with ``user_blocks``, ``item_blocks``, ``item_vocab`` and ``global_mean``
    (see :class:`~pipeline.block_ratings.BlockedRatings`), and for a warm start
    ``previous_user_factors`` / ``previous_item_factors`` (``(block, pa.Table)``). Output: a dict with
    ``user_factors`` and ``item_factors`` (``(block, FactorBlock)``) and ``stats`` (one dict
    per block and half-step). The rating blocks are stored under ``block_folder`` (see
    :mod:`pipeline.block_store`), which the caller deletes when the pipeline is done.
    """

    def __init__(self, params: SolverParams, compute, block_folder: str):
        super().__init__()
        self._params, self._compute, self._block_folder = params, compute, block_folder

    def expand(self, blocked: dict) -> dict:
        params = self._params
        mean = pvalue.AsSingleton(blocked["global_mean"])
        previous = {
            side: [pvalue.AsDict(blocked[f"previous_{side}_factors"])] if f"previous_{side}_factors" in blocked else []
            for side in ("user", "item")
        }
        item_factors = blocked["item_vocab"] | "InitItemFactors" >> beam.Map(
            lambda kv, m, *old: initial_block("item", kv[0], kv[1], params, m, *old), mean, *previous["item"]
        ).with_output_types(typing.Any)
        user_factors = blocked["user_blocks"] | "InitUserFactors" >> beam.Map(
            lambda b, m, *old: initial_block("user", b.block, b.ids, params, m, *old), mean, *previous["user"]
        ).with_output_types(typing.Any)
        stored = {
            side: blocked[f"{side}_blocks"]
            | f"Store{side.capitalize()}Blocks" >> beam.Map(store_block, self._block_folder)
            for side in ("user", "item")
        }
        stats = []
        for t in range(1, params.max_iter + 1):
            user_step = self._half_step(stored["user"], "user", t, item_factors, user_factors, mean)
            user_factors = user_step.factors
            item_step = self._half_step(stored["item"], "item", t, user_factors, item_factors, mean)
            item_factors = item_step.factors
            stats += [user_step[STATS], item_step[STATS]]
        all_stats = tuple(stats) | "FlattenStats" >> beam.Flatten()
        return {"user_factors": user_factors, "item_factors": item_factors, "stats": all_stats}

    def _half_step(self, rows, side: str, iteration: int, other, current, mean):
        return rows | f"{side.capitalize()}HalfStep{iteration}" >> beam.ParDo(
            HalfStepFn(self._params, self._compute, side, iteration),
            pvalue.AsDict(other),
            pvalue.AsDict(current),
            mean,
        ).with_output_types(typing.Any).with_outputs(STATS, main="factors")


def training_loss(stats: list[dict]) -> list[tuple[int, float]]:
    """The objective after each iteration: item-side objective plus user-side penalty."""
    totals: dict[int, float] = {}
    for row in stats:
        part = row["objective"] if row["side"] == "item" else row["penalty"]
        totals[row["iteration"]] = totals.get(row["iteration"], 0.0) + part
    return sorted(totals.items())

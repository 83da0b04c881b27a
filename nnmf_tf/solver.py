"""Alternating projected-gradient NNMF: the outer loop around :func:`~nnmf_tf.halfstep.half_step`."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tensorflow as tf

from nnmf_tf.data import Ratings, SparseRatings
from nnmf_tf.errors import ConvergenceWarning, check_factors_finite, check_finite, check_objective_finite
from nnmf_tf.halfstep import HalfStepResult, SparseLayout, half_step, sparse_layout
from nnmf_tf.halfstep_native import NativeLayout
from nnmf_tf.init import initial_factors, initial_scale
from nnmf_tf.model import Factors, objective
from nnmf_tf.params import SolverParams, check_int


@dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`fit`.

    Attributes
    ----------
    factors : Factors
    n_iter : int
        Outer iterations run.
    objective_history : list of float
        The objective after each outer iteration (its first entry is after iteration 1).
    initial_objective : float
        The objective at the initial factors.
    pg_norm_history : list of float
        Per iteration, the norm of the projected gradient of the objective as its two
        half-steps saw it: the user rows' part before the user update, the item rows' part
        before the item update (after the user update).
    converged : bool
        Whether the relative-decrease tolerance was met before ``max_iter``.
    seconds : float
        Wall time of the fit.
    """

    factors: Factors
    n_iter: int
    objective_history: list[float]
    initial_objective: float
    pg_norm_history: list[float] = field(default_factory=list)
    converged: bool = False
    seconds: float = 0.0


def _block_bounds(n: int, blocks: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, blocks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _row_blocks(
    ratings: Ratings, blocks: int, params: SolverParams, strategy: tf.distribute.Strategy | None
) -> list[tuple[int, int, Ratings, SparseLayout | NativeLayout | None]]:
    """``(start, stop, rows start:stop, their kernel layout)`` per block of rows, built once
    per fit: the blocks' sparsity patterns never change between iterations."""
    parts = []
    for start, stop in _block_bounds(ratings.shape[0], blocks):
        part = ratings if blocks == 1 else ratings.row_block(start, stop)
        layout = sparse_layout(part, params, strategy) if isinstance(part, SparseRatings) else None
        parts.append((start, stop, part, layout))
    return parts


def _blocked_half_step(
    blocks: list[tuple[int, int, Ratings, SparseLayout | NativeLayout | None]],
    other: np.ndarray,
    other_bias: np.ndarray | None,
    current: np.ndarray,
    current_bias: np.ndarray | None,
    params: SolverParams,
    global_mean: float,
    strategy: tf.distribute.Strategy | None,
    side: str,
    iteration: int,
) -> tuple[np.ndarray, np.ndarray | None, float, float, float]:
    """One half-step, block of rows by block of rows (see :func:`_row_blocks`), each block
    reading the whole other side."""
    factors, biases, totals = [], [], np.zeros(3)
    other = tf.constant(np.asarray(other, np.float32))  # every block reads it: converted once
    for block, (start, stop, ratings, layout) in enumerate(blocks):
        result: HalfStepResult = half_step(
            ratings,
            other,
            current[start:stop],
            params,
            other_bias=other_bias,
            current_bias=None if current_bias is None else current_bias[start:stop],
            global_mean=global_mean,
            strategy=strategy,
            layout=layout,
        )
        name = {"side": side, "iteration": iteration, "block": block if len(blocks) > 1 else None}
        check_factors_finite(result.factors, bias=result.bias, **name)
        check_objective_finite(result.objective, **name)
        factors.append(result.factors)
        biases.append(result.bias)
        totals += (result.objective, result.penalty, result.pg_norm_sq)
    bias = np.concatenate(biases) if params.bias else None
    return np.concatenate(factors), bias, *totals


def initial_model(ratings: Ratings, params: SolverParams, row_keys=None, col_keys=None) -> Factors:
    """The starting point of :func:`fit`: seeded factors from each row's key, zero biases.

    ``row_keys`` / ``col_keys`` (uint64 per row / column) default to the indices; the
    pipeline passes hashes of the external ids, so a row starts from the same values
    whatever its position.
    """
    n_rows, n_cols = ratings.shape
    mean = ratings.mean()
    scale = initial_scale(params, mean)
    rows = np.arange(n_rows) if row_keys is None else row_keys
    cols = np.arange(n_cols) if col_keys is None else col_keys
    w = initial_factors(rows, params.rank, params.seed, scale, salt=0)
    h = initial_factors(cols, params.rank, params.seed, scale, salt=1)
    if params.bias:
        return Factors(w, h, np.zeros(n_rows, np.float32), np.zeros(n_cols, np.float32), mean)
    return Factors(w, h)


def fit(
    ratings: Ratings,
    params: SolverParams,
    *,
    init: Factors | None = None,
    strategy: tf.distribute.Strategy | None = None,
    row_blocks: int = 1,
    col_blocks: int = 1,
    callback: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Fit non-negative factors by alternating projected gradient.

    Each outer iteration updates every user row given the item factors, then every item
    row given the new user factors (:func:`~nnmf_tf.halfstep.half_step` on the transposed
    problem). It stops after ``params.max_iter`` iterations, or earlier when the objective's
    relative decrease over an iteration falls below ``params.tol`` (when ``tol > 0``).

    Parameters
    ----------
    ratings : SparseRatings or MaskedDense of shape (n_users, n_items)
    params : SolverParams
    init : Factors, optional
        Warm start (e.g. yesterday's model); default :func:`initial_model`. Its factors must
        be finite and non-negative; with biases, its user and item biases are kept and the
        global mean becomes that of ``ratings``.
    strategy : tf.distribute.Strategy, optional
        Spreads each half-step's rows over its replicas.
    row_blocks, col_blocks : int, default=1
        Run each half-step block by block (contiguous ranges of rows / columns), as the
        pipeline does; the result does not depend on the layout.
    callback : callable(iteration, objective), optional
        Called after each outer iteration.

    Returns
    -------
    FitResult

    Raises
    ------
    NNMFFitError
        When a half-step produces non-finite or negative factors.
    """
    problems = check_int("row_blocks", row_blocks, 1, "fit") + check_int("col_blocks", col_blocks, 1, "fit")
    if problems:
        raise ValueError("; ".join(problems))
    started = time.perf_counter()
    model = init if init is not None else initial_model(ratings, params)
    n_users, n_items = ratings.shape
    if model.user_factors.shape != (n_users, params.rank) or model.item_factors.shape != (n_items, params.rank):
        raise ValueError(
            f"init factors must have shapes {(n_users, params.rank)} and {(n_items, params.rank)}; got "
            f"{model.user_factors.shape} and {model.item_factors.shape}"
        )
    for side, factors in (("user", model.user_factors), ("item", model.item_factors)):
        check_finite(np.asarray(factors), label=f"init {side} factors", non_negative=True)
    if model.biased:
        check_finite(np.asarray(model.user_bias), label="init user bias")
        check_finite(np.asarray(model.item_bias), label="init item bias")
    if not params.bias and model.biased:
        model = Factors(model.user_factors, model.item_factors)
    if params.bias and not model.biased:
        model = Factors(
            model.user_factors, model.item_factors, np.zeros(n_users, np.float32), np.zeros(n_items, np.float32),
            ratings.mean(),
        )
    elif params.bias and model.global_mean != ratings.mean():
        # μ is these ratings' mean (as in the pipeline's warm start), not the init's.
        model = Factors(model.user_factors, model.item_factors, model.user_bias, model.item_bias, ratings.mean())
    user_blocks = _row_blocks(ratings, row_blocks, params, strategy)
    item_blocks = _row_blocks(ratings.transpose(), col_blocks, params, strategy)
    w, h = model.user_factors.astype(np.float32), model.item_factors.astype(np.float32)
    bu, bi, mu = model.user_bias, model.item_bias, model.global_mean if params.bias else 0.0
    initial = objective(ratings, model, params)
    history: list[float] = []
    pg_history: list[float] = []
    converged = False
    previous = initial
    for iteration in range(1, params.max_iter + 1):
        w, bu, _, user_penalty, user_pg = _blocked_half_step(
            user_blocks, h, bi, w, bu, params, mu, strategy, "user", iteration
        )
        h, bi, item_objective, _, item_pg = _blocked_half_step(
            item_blocks, w, bu, h, bi, params, mu, strategy, "item", iteration
        )
        current = item_objective + user_penalty
        history.append(current)
        pg_history.append(float(np.sqrt(user_pg + item_pg)))
        if callback is not None:
            callback(iteration, current)
        if params.tol > 0 and (previous - current) <= params.tol * max(abs(previous), 1e-30):
            converged = True
            break
        previous = current
    if params.tol > 0 and not converged:
        warnings.warn(
            f"stopped at max_iter={params.max_iter} with relative objective decrease above tol={params.tol}; "
            "raise max_iter or tol",
            ConvergenceWarning,
            stacklevel=2,
        )
    factors = Factors(w, h, bu, bi, mu) if params.bias else Factors(w, h)
    return FitResult(
        factors=factors,
        n_iter=len(history),
        objective_history=history,
        initial_objective=initial,
        pg_norm_history=pg_history,
        converged=converged,
        seconds=time.perf_counter() - started,
    )

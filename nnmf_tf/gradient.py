"""The joint full-gradient method of the worked example, for masked dense matrices.

Plain gradient descent on the masked Frobenius cost ``‖M ⊙ (A − W Hᵀ)‖²`` over both factors
at once, clipping ``W`` and ``H`` at zero after every step. It is the textbook method the
product grew from: simple and slow (a fixed learning rate either crawls or diverges). The
alternating solver of :mod:`nnmf_tf.solver` is the one to use on real data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from nnmf_tf.data import MaskedDense
from nnmf_tf.errors import NNMFFitError
from nnmf_tf.init import default_scale, initial_factors
from nnmf_tf.model import Factors
from nnmf_tf.params import check_float, check_int


@dataclass(frozen=True)
class GradientFit:
    """Result of :func:`fit_joint_gradient`.

    Attributes
    ----------
    factors : Factors
        ``W`` (n_rows, rank) and ``H`` (n_cols, rank), non-negative.
    cost_history : list of (step, cost)
        The masked cost every ``log_every`` steps, and after the last step.
    """

    factors: Factors
    cost_history: list[tuple[int, float]]


@tf.function(
    input_signature=[
        tf.TensorSpec([None, None], tf.float32),
        tf.TensorSpec([None, None], tf.float32),
        tf.TensorSpec([None, None], tf.float32),
        tf.TensorSpec([None, None], tf.float32),
        tf.TensorSpec([], tf.float32),
        tf.TensorSpec([], tf.int32),
    ]
)
def _descend(values, mask, w, h, learning_rate, steps):
    """``steps`` projected gradient steps on both factors; returns them and the final cost."""

    def body(i, w, h):
        residual = mask * (tf.matmul(w, h, transpose_b=True) - values)
        grad_w = 2.0 * tf.matmul(residual, h)
        grad_h = 2.0 * tf.matmul(residual, w, transpose_a=True)
        return i + 1, tf.maximum(w - learning_rate * grad_w, 0.0), tf.maximum(h - learning_rate * grad_h, 0.0)

    _, w, h = tf.while_loop(lambda i, w, h: i < steps, body, (tf.constant(0), w, h))
    residual = mask * (tf.matmul(w, h, transpose_b=True) - values)
    return w, h, tf.reduce_sum(residual * residual)


def fit_joint_gradient(
    data: MaskedDense,
    rank: int,
    *,
    learning_rate: float = 0.001,
    steps: int = 1000,
    log_every: int = 100,
    seed: int = 42,
    init: Factors | None = None,
) -> GradientFit:
    """Minimise ``‖M ⊙ (A − W Hᵀ)‖²`` by joint projected gradient steps.

    Parameters
    ----------
    data : MaskedDense of shape (n_rows, n_cols)
    rank : int
    learning_rate : float, default=0.001
    steps : int, default=1000
    log_every : int, default=100
        Record the cost every this many steps.
    seed : int, default=42
        Seed of the initial factors (:func:`~nnmf_tf.init.initial_factors`), unless ``init``.
    init : Factors, optional

    Returns
    -------
    GradientFit

    Raises
    ------
    NNMFFitError
        When the cost becomes non-finite or the factors collapse to zero (the learning rate
        is too large).
    """
    problems = check_int("rank", rank, 1, "fit_joint_gradient")
    problems += check_float("learning_rate", learning_rate, 0.0, low_open=True, owner="fit_joint_gradient")
    problems += check_int("steps", steps, 1, "fit_joint_gradient")
    problems += check_int("log_every", log_every, 1, "fit_joint_gradient")
    if problems:
        raise ValueError("; ".join(problems))
    n_rows, n_cols = data.shape
    if init is None:
        scale = default_scale(data.mean(), rank)
        init = Factors(
            initial_factors(np.arange(n_rows), rank, seed, scale, salt=0),
            initial_factors(np.arange(n_cols), rank, seed, scale, salt=1),
        )
    values = tf.constant(data.values)
    mask = tf.constant(data.mask.astype(np.float32))
    w, h = tf.constant(init.user_factors, tf.float32), tf.constant(init.item_factors, tf.float32)
    lr = tf.constant(learning_rate, tf.float32)
    history: list[tuple[int, float]] = []
    done = 0
    while done < steps:
        chunk = min(log_every, steps - done)
        w, h, cost = _descend(values, mask, w, h, lr, tf.constant(chunk, tf.int32))
        done += chunk
        cost = float(cost.numpy())
        if not np.isfinite(cost):
            raise NNMFFitError(
                f"cost became non-finite by step {done} of the joint gradient method; "
                f"lower learning_rate (got {learning_rate})"
            )
        if data.nnz and np.any(data.values[data.mask] != 0) and (
            not np.any(w.numpy()) or not np.any(h.numpy())
        ):
            raise NNMFFitError(
                f"factors collapsed to zero by step {done} of the joint gradient method (overshooting "
                f"steps clipped at zero); lower learning_rate (got {learning_rate})"
            )
        history.append((done, cost))
    return GradientFit(Factors(w.numpy(), h.numpy()), history)

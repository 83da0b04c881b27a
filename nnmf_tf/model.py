"""A fitted model's factors, its predictions and its objective."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnmf_tf.data import MaskedDense, Ratings, SparseRatings
from nnmf_tf.errors import check_array
from nnmf_tf.params import SolverParams

_PREDICT_CHUNK = 1 << 20


@dataclass(frozen=True)
class Factors:
    """Non-negative factors, plus the biases and global mean of a biased model.

    Attributes
    ----------
    user_factors : np.ndarray of float32, shape (n_users, rank)
    item_factors : np.ndarray of float32, shape (n_items, rank)
    user_bias : np.ndarray of float32, shape (n_users,), or None
    item_bias : np.ndarray of float32, shape (n_items,), or None
    global_mean : float
        μ; 0 for an unbiased model.
    """

    user_factors: np.ndarray
    item_factors: np.ndarray
    user_bias: np.ndarray | None = None
    item_bias: np.ndarray | None = None
    global_mean: float = 0.0

    def __post_init__(self) -> None:
        w = check_array(self.user_factors, label="user_factors", ndim=2)
        h = check_array(self.item_factors, label="item_factors", ndim=2, shape=(None, w.shape[1]))
        if (self.user_bias is None) != (self.item_bias is None):
            raise ValueError("user_bias and item_bias must both be given or both be None")
        if self.user_bias is not None:
            check_array(self.user_bias, label="user_bias", ndim=1, shape=(w.shape[0],))
            check_array(self.item_bias, label="item_bias", ndim=1, shape=(h.shape[0],))

    @property
    def rank(self) -> int:
        """Number of latent factors."""
        return int(self.user_factors.shape[1])

    @property
    def biased(self) -> bool:
        """Whether the model has biases."""
        return self.user_bias is not None


def predict(factors: Factors, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Predicted values ``μ + b_u + b_i + w_u · h_i`` for given (user, item) index pairs.

    Parameters
    ----------
    factors : Factors
    users, items : np.ndarray of int, shape (n,)
        Row indices into the user and item factors.

    Returns
    -------
    np.ndarray of float32, shape (n,)
    """
    users = check_array(users, label="users", ndim=1)
    items = check_array(items, label="items", ndim=1, shape=users.shape)
    out = np.empty(users.shape[0], np.float32)
    for start in range(0, users.shape[0], _PREDICT_CHUNK):
        u, i = users[start : start + _PREDICT_CHUNK], items[start : start + _PREDICT_CHUNK]
        value = np.einsum("nk,nk->n", factors.user_factors[u], factors.item_factors[i])
        if factors.biased:
            value = value + factors.global_mean + factors.user_bias[u] + factors.item_bias[i]
        out[start : start + _PREDICT_CHUNK] = value
    return out


def _observed(ratings: Ratings) -> SparseRatings:
    if isinstance(ratings, MaskedDense):
        return SparseRatings.from_dense(ratings.values, ratings.mask)
    return ratings


def objective(ratings: Ratings, factors: Factors, params: SolverParams) -> float:
    """The objective of :class:`~nnmf_tf.params.SolverParams` at ``factors``, in float64.

    Only observed entries are visited (the all-pairs term of the ranking objective is
    computed through ``HᵀH``), so the users × items matrix is never formed.
    """
    observed = _observed(ratings)
    residual = observed.values.astype(np.float64) - predict(factors, observed.rows, observed.cols)
    loss = float(residual @ residual)
    if params.objective == "ranking":
        # Unobserved pairs are zeros of weight w0: add w0 · Σ_unobserved p², as all pairs minus observed.
        w = factors.user_factors.astype(np.float64)
        h = factors.item_factors.astype(np.float64)
        all_pairs = float(np.einsum("uk,kl,ul->", w, h.T @ h, w))
        observed_pred = predict(factors, observed.rows, observed.cols).astype(np.float64)
        loss += params.unobserved_weight * (all_pairs - float(observed_pred @ observed_pred))
    for counts, w, b in (
        (observed.row_counts(), factors.user_factors, factors.user_bias),
        (observed.col_counts(), factors.item_factors, factors.item_bias),
    ):
        loss += params.reg * float(_weights(counts, params.reg_exponent) @ _sq_dist(w, params.factor_center).sum(axis=1))
        if factors.biased:
            weights = _weights(counts, params.bias_reg_exponent)
            loss += params.effective_bias_reg * float(weights @ _sq_dist(b, params.bias_center))
    return loss


def _weights(counts: np.ndarray, exponent: float) -> np.ndarray:
    """Penalty weight ``n^exponent`` per row, 0 for rows without entries."""
    counts = counts.astype(np.float64)
    return np.power(counts, exponent, where=counts > 0, out=np.zeros_like(counts))


def _sq_dist(values: np.ndarray, center: float) -> np.ndarray:
    return np.square(values.astype(np.float64) - center)

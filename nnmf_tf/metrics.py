"""Accuracy metrics: rating error and top-K ranking quality.

Conventions follow the evaluation protocol our figures use: predictions are clipped to the
rating range before RMSE and MAE; ranking metrics average over users with at least one
relevant held-out item, and relevant items the model could not recommend (unseen in
training) still count in the denominators.
"""

from __future__ import annotations

import numpy as np

from nnmf_tf.errors import check_array
from nnmf_tf.params import check_int


def rmse(predicted: np.ndarray, actual: np.ndarray, clip: tuple[float, float] | None = None) -> float:
    """Root mean squared error, predictions first clipped to ``clip`` when given."""
    predicted, actual = _paired(predicted, actual, clip)
    return float(np.sqrt(np.mean(np.square(predicted - actual)))) if actual.size else float("nan")


def mae(predicted: np.ndarray, actual: np.ndarray, clip: tuple[float, float] | None = None) -> float:
    """Mean absolute error, predictions first clipped to ``clip`` when given."""
    predicted, actual = _paired(predicted, actual, clip)
    return float(np.mean(np.abs(predicted - actual))) if actual.size else float("nan")


def _paired(predicted: np.ndarray, actual: np.ndarray, clip: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    actual = check_array(actual, label="actual", ndim=1).astype(np.float64)
    predicted = check_array(predicted, label="predicted", ndim=1, shape=actual.shape).astype(np.float64)
    if clip is not None:
        predicted = np.clip(predicted, *clip)
    return predicted, actual


def ranking_metrics(recommended: np.ndarray, relevant: list[np.ndarray], k: int) -> dict[str, float]:
    """Precision@K, recall@K and NDCG@K averaged over users with a relevant item.

    Parameters
    ----------
    recommended : np.ndarray of int, shape (n_users, >= k)
        Each user's ranked item ids, best first; -1 pads.
    relevant : list of np.ndarray, length n_users
        Each user's relevant held-out item ids (ids the model never saw included; repeats
        count once).
    k : int

    Returns
    -------
    dict with ``precision``, ``recall``, ``ndcg`` and ``users`` (the number averaged over).
    """
    problems = check_int("k", k, 1, "ranking_metrics")
    if problems:
        raise ValueError("; ".join(problems))
    recommended = check_array(recommended, label="recommended", ndim=2, shape=(len(relevant), None))
    if recommended.shape[1] < k:
        raise ValueError(f"recommended must have at least k={k} columns; got {recommended.shape[1]}")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    precision, recall, ndcg = [], [], []
    for items, targets in zip(recommended[:, :k], relevant):
        targets = np.unique(targets)  # an item listed twice is still one relevant item
        if len(targets) == 0:
            continue
        hits = np.isin(items, targets) & (items >= 0)
        n_hits = int(hits.sum())
        precision.append(n_hits / k)
        recall.append(n_hits / len(targets))
        ndcg.append(float(discounts[hits].sum() / discounts[: min(len(targets), k)].sum()))
    users = len(precision)
    if users == 0:
        return {"precision": float("nan"), "recall": float("nan"), "ndcg": float("nan"), "users": 0}
    return {"precision": float(np.mean(precision)), "recall": float(np.mean(recall)), "ndcg": float(np.mean(ndcg)), "users": users}

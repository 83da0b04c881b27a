"""Deterministic initial factors: a pure function of the seed and each row's key.

Because a row's initial value depends on its own key only, it is the same whatever block,
chunk, worker or retry computes it, and a rerun starts from the same point.
"""

from __future__ import annotations

import numpy as np

from nnmf_tf.params import SolverParams

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 with wrapping arithmetic.

    A strong, cheap bit mixer: consecutive inputs give unrelated outputs.
    """
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniform_from_hash(hashes: np.ndarray) -> np.ndarray:
    """Map uint64 hashes to floats uniform in ``[0, 1)`` (53-bit resolution)."""
    return (np.asarray(hashes, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def default_scale(target_mean: float, rank: int) -> float:
    """Scale ``s`` for which uniform ``[0, s)`` factors give predictions averaging ``target_mean``.

    ``E[w·h] = rank · (s/2)²`` for independent uniform entries.
    """
    return 2.0 * float(np.sqrt(max(target_mean, 1e-3) / rank))


def initial_factors(keys: np.ndarray, rank: int, seed: int, scale: float, salt: int = 0) -> np.ndarray:
    """Initial factor rows, uniform in ``[0, scale)``, one row per key.

    Parameters
    ----------
    keys : np.ndarray of uint64 or int, shape (n,)
        A stable key per row (a row index, or the hash of an external id).
    rank : int
    seed : int
    scale : float
    salt : int, default=0
        Separates the two sides (users 0, items 1) so equal keys get unrelated rows.

    Returns
    -------
    np.ndarray of float32, shape (n, rank)
    """
    keys = np.asarray(keys).astype(np.uint64)
    row = splitmix64(splitmix64(keys ^ splitmix64(np.uint64(seed))) + np.uint64(salt))
    with np.errstate(over="ignore"):
        cells = splitmix64(row[:, None] + np.arange(1, rank + 1, dtype=np.uint64)[None, :] * _GOLDEN)
    return (scale * uniform_from_hash(cells)).astype(np.float32)


def initial_scale(params: SolverParams, global_mean: float) -> float:
    """Scale of the initial factors: ``params.init_scale``, else the scale that makes initial
    predictions average the mean rating (unbiased) or 1 (the interaction of a biased model)."""
    if params.init_scale is not None:
        return params.init_scale
    return default_scale(1.0 if params.bias else global_mean, params.rank)

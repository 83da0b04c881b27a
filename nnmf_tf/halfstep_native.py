"""The sparse half-step on the native kernel (:mod:`nnmf_tf.native`): its layout and calls.

The kernel takes a chunk of rows as CSR arrays and solves each row in one pass, spreading
the rows over TensorFlow's intra-op threads itself, so a half-step makes one call per
replica. What depends on the sparsity pattern alone (the CSR arrays as tensors, the rows of
each replica) is built once per matrix into a :class:`NativeLayout`; a half-step converts
the targets and the factors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from nnmf_tf import native
from nnmf_tf.data import SparseRatings


@dataclass(frozen=True)
class NativeLayout:
    """How the native kernel cuts one matrix: consecutive rows per replica, as tensors.

    Like a ``SparseLayout`` it depends on the matrix's sparsity pattern and the width only.

    Attributes
    ----------
    shape, nnz, d
        The matrix and width it was built for (checked by ``half_step``).
    row_sets : tuple of range
        The rows of each replica's chunk (about equal numbers of entries).
    entries : tuple of (int, int)
        Each chunk's entries, ``start:stop`` in the matrix's CSR order.
    chunks : tuple of (tf.Tensor, tf.Tensor)
        Each chunk's row splits (from 0) and columns.
    """

    shape: tuple[int, int]
    nnz: int
    d: int
    row_sets: tuple[range, ...]
    entries: tuple[tuple[int, int], ...]
    chunks: tuple[tuple[tf.Tensor, tf.Tensor], ...]


def native_layout(ratings: SparseRatings, d: int, replicas: int) -> NativeLayout:
    """The :class:`NativeLayout` of ``ratings`` for half-steps of width ``d`` (the rank, plus
    one with biases) over ``replicas`` replicas."""
    splits = ratings.row_splits
    edges = np.searchsorted(splits, np.linspace(0, ratings.nnz, replicas + 1), side="left")
    edges[0], edges[-1] = 0, ratings.shape[0]
    edges = np.maximum.accumulate(edges)
    bounds = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a] or [(0, 0)]
    row_sets, entries, chunks = [], [], []
    for first, stop in bounds:
        lo, hi = int(splits[first]), int(splits[stop])
        row_sets.append(range(first, stop))
        entries.append((lo, hi))
        chunks.append((tf.constant(splits[first : stop + 1] - lo), tf.constant(ratings.cols[lo:hi])))
    return NativeLayout(ratings.shape, ratings.nnz, d, tuple(row_sets), tuple(entries), tuple(chunks))


def solve(row_splits, cols, targets, current, features, reg_diag, reg_power, center, lower, base_gram, obs_weight,
          max_iter, tol):
    """One chunk through the kernel: ``(z, objective, penalty, pg0_sq, steps)`` per row, as the
    TensorFlow-ops chunk functions of :mod:`nnmf_tf.halfstep` return them."""
    return native.solve_rows_op().nnmf_solve_rows(
        features, row_splits, cols, targets, current, reg_diag, reg_power, center, lower, base_gram, obs_weight,
        max_iter, tol,
    )


def native_chunks(
    layout: NativeLayout, targets: np.ndarray, start: np.ndarray
) -> tuple[list[tuple], list[range], tuple]:
    """Each chunk's inputs ``(row_splits, cols, targets, current)``, each chunk's rows, and a
    chunk without rows (for idle replicas). ``targets`` are the entries' targets in CSR order;
    ``start`` is the warm start of every row."""
    chunks = []
    for rows, (lo, hi), (row_splits, cols) in zip(layout.row_sets, layout.entries, layout.chunks):
        chunks.append((row_splits, cols, tf.constant(targets[lo:hi], tf.float32), tf.constant(start[rows.start : rows.stop])))
    idle = (np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros((0, start.shape[1]), np.float32))
    return chunks, list(layout.row_sets), idle

"""The two representations of a partially observed ratings matrix.

* :class:`MaskedDense` — a dense matrix ``A`` with a boolean mask ``M`` of observed entries:
  the textbook formulation, matmul-friendly, right for small or dense blocks.
* :class:`SparseRatings` — coordinate (COO) arrays of the observed entries only, kept sorted
  by (row, column) so each row's entries are contiguous (CSR order). It is never densified.

Both describe the same thing, and the solver gives the same model for either.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from nnmf_tf.errors import check_array


@dataclass(frozen=True)
class SparseRatings:
    """Observed entries of an ``n_rows × n_cols`` matrix as sorted COO arrays.

    Parameters
    ----------
    rows : np.ndarray of int, shape (nnz,)
        Row index of each entry, in ``[0, n_rows)``.
    cols : np.ndarray of int, shape (nnz,)
        Column index of each entry, in ``[0, n_cols)``.
    values : np.ndarray of float, shape (nnz,)
        Observed value of each entry; must be finite.
    shape : tuple (n_rows, n_cols)
        Matrix size; rows or columns without entries are allowed.

    Entries are stored sorted by (row, col) as int32/int32/float32 arrays. Duplicate
    (row, col) pairs are an error: deduplication is the caller's policy.
    """

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        rows = check_array(self.rows, label="rows", ndim=1)
        nnz = rows.shape[0]
        cols = check_array(self.cols, label="cols", ndim=1, shape=(nnz,))
        values = check_array(self.values, label="values", ndim=1, shape=(nnz,))
        for label, index in (("rows", rows), ("cols", cols)):
            if index.dtype.kind not in "iu" and not (index.dtype.kind == "f" and np.all(index == np.round(index))):
                raise ValueError(f"{label} must hold whole-number indices; got dtype {index.dtype} with non-integer values")
        n_rows, n_cols = (int(s) for s in self.shape)
        if n_rows < 0 or n_cols < 0:
            raise ValueError(f"shape must be non-negative; got {self.shape}")
        if max(n_rows, n_cols) > np.iinfo(np.int32).max:
            raise ValueError(f"shape must be below 2**31 in each dimension (indices are int32); got {self.shape}")
        if nnz:
            for label, index, bound in (("rows", rows, n_rows), ("cols", cols, n_cols)):
                low, high = int(index.min()), int(index.max())
                if low < 0 or high >= bound:
                    raise ValueError(f"{label} index out of range [0, {bound}); found values in [{low}, {high}]")
            if not np.all(np.isfinite(values)):
                raise ValueError("values must be finite; found NaN or inf")
        # One int64 key per entry (row-major position); entries already in order (blocks cut
        # from a sorted matrix, most callers) skip the sort.
        key = rows.astype(np.int64) * max(n_cols, 1) + cols.astype(np.int64)
        step = np.diff(key)
        if not np.all(step > 0):
            order = np.argsort(key, kind="stable")
            rows, cols, values = rows[order], cols[order], values[order]
            step = np.diff(key[order])
            if not np.all(step > 0):
                at = int(np.flatnonzero(step == 0)[0])
                raise ValueError(f"duplicate entry at (row {rows[at]}, col {cols[at]}); deduplicate first")
        object.__setattr__(self, "rows", rows.astype(np.int32))
        object.__setattr__(self, "cols", cols.astype(np.int32))
        object.__setattr__(self, "values", values.astype(np.float32))
        object.__setattr__(self, "shape", (n_rows, n_cols))

    @property
    def nnz(self) -> int:
        """Number of observed entries."""
        return int(self.rows.shape[0])

    @cached_property
    def row_splits(self) -> np.ndarray:
        """CSR row pointer, shape (n_rows + 1,): row ``u``'s entries are ``[splits[u], splits[u+1])``."""
        return np.searchsorted(self.rows, np.arange(self.shape[0] + 1), side="left").astype(np.int64)

    def row_counts(self) -> np.ndarray:
        """Number of entries in each row, shape (n_rows,)."""
        return np.diff(self.row_splits)

    def col_counts(self) -> np.ndarray:
        """Number of entries in each column, shape (n_cols,)."""
        return np.bincount(self.cols, minlength=self.shape[1])

    def transpose(self) -> "SparseRatings":
        """The same entries with rows and columns swapped (for the other half-step)."""
        return SparseRatings(self.cols, self.rows, self.values, (self.shape[1], self.shape[0]))

    def row_block(self, start: int, stop: int) -> "SparseRatings":
        """Rows ``[start, stop)`` as their own matrix, rows renumbered from 0, columns kept."""
        lo, hi = self.row_splits[start], self.row_splits[stop]
        return SparseRatings(self.rows[lo:hi] - start, self.cols[lo:hi], self.values[lo:hi], (stop - start, self.shape[1]))

    def mean(self) -> float:
        """Mean observed value (0 for an empty matrix)."""
        return float(np.mean(self.values, dtype=np.float64)) if self.nnz else 0.0

    @classmethod
    def from_dense(cls, values: np.ndarray, mask: np.ndarray) -> "SparseRatings":
        """The observed entries of a masked dense matrix."""
        dense = MaskedDense(values, mask)
        rows, cols = np.nonzero(dense.mask)
        return cls(rows, cols, dense.values[rows, cols], dense.values.shape)


@dataclass(frozen=True)
class MaskedDense:
    """A dense matrix with a boolean mask of observed entries.

    Parameters
    ----------
    values : np.ndarray of float, shape (n_rows, n_cols)
        Entries; unobserved ones may hold anything (NaN included) and are ignored.
    mask : np.ndarray of bool, shape (n_rows, n_cols)
        True where the entry is observed.
    """

    values: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        values = check_array(self.values, label="values", ndim=2)
        mask = check_array(self.mask, label="mask", ndim=2, shape=values.shape).astype(bool)
        if not np.all(np.isfinite(values[mask])):
            raise ValueError("observed values must be finite; found NaN or inf under the mask")
        object.__setattr__(self, "values", np.where(mask, values, 0.0).astype(np.float32))
        object.__setattr__(self, "mask", mask)

    @property
    def shape(self) -> tuple[int, int]:
        """Matrix size (n_rows, n_cols)."""
        return self.values.shape  # type: ignore[return-value]

    @property
    def nnz(self) -> int:
        """Number of observed entries."""
        return int(self.mask.sum())

    def row_counts(self) -> np.ndarray:
        """Number of observed entries in each row."""
        return self.mask.sum(axis=1)

    def transpose(self) -> "MaskedDense":
        """The transposed matrix and mask (for the other half-step)."""
        return MaskedDense(self.values.T, self.mask.T)

    def row_block(self, start: int, stop: int) -> "MaskedDense":
        """Rows ``[start, stop)`` as their own matrix."""
        return MaskedDense(self.values[start:stop], self.mask[start:stop])

    def mean(self) -> float:
        """Mean observed value (0 when nothing is observed)."""
        return float(self.values[self.mask].mean(dtype=np.float64)) if self.nnz else 0.0

    @classmethod
    def from_nan(cls, values: np.ndarray) -> "MaskedDense":
        """A matrix whose NaN entries are the missing ones."""
        values = np.asarray(values, dtype=np.float64)
        return cls(values, ~np.isnan(values))


Ratings = SparseRatings | MaskedDense

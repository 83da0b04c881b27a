"""Shared fixtures of the nnmf_tf tests: TensorFlow device layout, the seed, small problems.

TensorFlow fixes its logical devices at its first op, so the CPU is split into two logical
devices here, at import time (pytest imports conftest before any test module). The default
strategy still runs on one device; ``make_strategy("mirrored")`` gets two replicas.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import pytest

from nnmf_tf.data import MaskedDense, SparseRatings
from nnmf_tf.device import DeviceSettings, configure

configure(DeviceSettings(logical_cpu_devices=2))

RNG_SEED = int(os.environ.get("NNMF_TEST_SEED", "42"))
"""Seed of every random test problem; override with the environment variable NNMF_TEST_SEED."""


@pytest.fixture
def rng_seed() -> int:
    """The test seed (``NNMF_TEST_SEED`` or 42)."""
    return RNG_SEED


@pytest.fixture
def rng(rng_seed: int) -> np.random.Generator:
    """A fresh generator seeded with :data:`RNG_SEED`."""
    return np.random.default_rng(rng_seed)


MaskedProblem = Callable[..., tuple[np.ndarray, np.ndarray]]


@pytest.fixture
def masked_problem(rng: np.random.Generator) -> MaskedProblem:
    """A factory of random masked matrices, drawn from the seeded :func:`rng`.

    ``masked_problem(shape, rank, density, noise=0.05, min_count=1)`` returns ``(values, mask)``:
    a non-negative rank-``rank`` matrix (entries of its factors uniform in [0.2, 1)) plus
    Gaussian noise, and a boolean mask observing about ``density`` of the entries, with at
    least ``min_count`` observed entries in every row and every column.
    """

    def make(
        shape: tuple[int, int], rank: int, density: float, noise: float = 0.05, min_count: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        n_rows, n_cols = shape
        values = rng.uniform(0.2, 1.0, (n_rows, rank)) @ rng.uniform(0.2, 1.0, (n_cols, rank)).T
        values = values + rng.normal(0.0, noise, shape)
        mask = rng.random(shape) < density
        for row in range(n_rows):
            mask[row, rng.choice(n_cols, size=min(min_count, n_cols), replace=False)] = True
        for col in range(n_cols):
            mask[rng.choice(n_rows, size=min(min_count, n_rows), replace=False), col] = True
        return values, mask

    return make


AsRatings = Callable[[np.ndarray, np.ndarray, str], SparseRatings | MaskedDense]


@pytest.fixture
def as_ratings() -> AsRatings:
    """``as_ratings(values, mask, kind)``: the masked matrix as ``"sparse"`` (:class:`SparseRatings`)
    or ``"dense"`` (:class:`MaskedDense`)."""

    def convert(values: np.ndarray, mask: np.ndarray, kind: str) -> SparseRatings | MaskedDense:
        if kind == "sparse":
            return SparseRatings.from_dense(values, mask)
        if kind == "dense":
            return MaskedDense(values, mask)
        raise ValueError(f"kind must be 'sparse' or 'dense'; got {kind!r}")

    return convert


@pytest.fixture(params=["native", "tensorflow"])
def kernel(request, monkeypatch) -> str:
    """Run the test once per sparse half-step kernel that ``kernel="auto"`` can choose: the
    native kernel (skipped, with the reason, where it cannot be built) and TensorFlow ops
    (the native kernel hidden, as on a machine without a compiler)."""
    from nnmf_tf import native

    if request.param == "native":
        if native.solve_rows_op() is None:
            pytest.skip(f"native kernel unavailable: {native.unavailable_reason()}")
        from nnmf_tf.halfstep import uses_native_kernel
        from nnmf_tf.params import SolverParams

        assert uses_native_kernel(SolverParams(rank=3)), "kernel 'auto' must choose the native kernel here"
    else:
        monkeypatch.setattr(native, "solve_rows_op", lambda: None)
    return request.param

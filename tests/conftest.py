"""Shared fixtures of the nnmf_tf tests: TensorFlow device layout, the seed, small problems.

TensorFlow fixes its logical devices at its first op, so the CPU is split into two logical
devices here, at import time (pytest imports conftest before any test module). The default
strategy still runs on one device; ``make_strategy("mirrored")`` gets two replicas.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

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


def random_masked(
    rng: np.random.Generator, shape: tuple[int, int], rank: int, density: float, noise: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """A non-negative low-rank matrix plus noise and a random observation mask.

    Every row and every column keeps at least one observed entry.

    Returns
    -------
    values : np.ndarray of float64, shape ``shape``
    mask : np.ndarray of bool, shape ``shape``
    """
    n_rows, n_cols = shape
    values = rng.uniform(0.2, 1.0, (n_rows, rank)) @ rng.uniform(0.2, 1.0, (n_cols, rank)).T
    values = values + rng.normal(0.0, noise, shape)
    mask = rng.random(shape) < density
    mask[np.arange(n_rows), rng.integers(0, n_cols, n_rows)] = True
    mask[rng.integers(0, n_rows, n_cols), np.arange(n_cols)] = True
    return values, mask

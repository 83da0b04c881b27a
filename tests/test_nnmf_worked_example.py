"""The worked example: 4 users × 3 movies, one missing rating, rank 3.

Both the joint projected-gradient method (learning rate 0.001, 1000 steps) and the
alternating solver must reproduce every observed rating after rounding.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnmf_tf.demo import RANK, RATINGS, worked_example
from nnmf_tf.errors import NNMFFitError
from nnmf_tf.gradient import fit_joint_gradient
from nnmf_tf.model import Factors
from nnmf_tf.params import SolverParams
from nnmf_tf.solver import fit

REPO = Path(__file__).resolve().parent.parent
OBSERVED_SUM_OF_SQUARES = float(np.nansum(np.square(RATINGS)))


def rounded_prediction(factors: Factors) -> np.ndarray:
    """``round(W Hᵀ)`` as integers."""
    return np.round(factors.user_factors.astype(np.float64) @ factors.item_factors.T).astype(int)


def test_the_example_matrix():
    data = worked_example()
    assert data.shape == (4, 3) and RANK == 3
    np.testing.assert_array_equal(data.mask, ~np.isnan(RATINGS))
    assert data.nnz == 11 and not data.mask[0, 0]


@pytest.mark.parametrize("seed", range(5))
def test_joint_gradient_reproduces_the_observed_ratings(seed):
    data = worked_example()

    result = fit_joint_gradient(data, RANK, learning_rate=0.001, steps=1000, seed=seed)

    np.testing.assert_array_equal(rounded_prediction(result.factors)[data.mask], RATINGS[data.mask])
    steps, costs = zip(*result.cost_history)
    assert steps == tuple(range(100, 1001, 100))
    assert np.all(np.diff(costs) < 0.0), costs
    assert costs[-1] < 0.5
    assert result.factors.user_factors.min() >= 0.0 and result.factors.item_factors.min() >= 0.0
    prediction = result.factors.user_factors.astype(np.float64) @ result.factors.item_factors.T
    np.testing.assert_allclose(costs[-1], np.square(prediction - RATINGS)[data.mask].sum(), rtol=1e-4)


def test_alternating_solver_reproduces_the_observed_ratings():
    """The demo's settings at seed 0 (the demo itself runs the default seed, 42)."""
    data = worked_example()
    params = SolverParams(rank=RANK, reg=0.0, max_iter=30, inner_max_iter=200, inner_tol=1e-6, seed=0)

    result = fit(data, params)

    np.testing.assert_array_equal(rounded_prediction(result.factors)[data.mask], RATINGS[data.mask])
    assert result.objective_history[-1] < 1e-3
    assert result.objective_history[-1] < result.initial_objective


def test_demo_prints_cost_lines_and_the_rounded_matrix():
    completed = subprocess.run(
        [sys.executable, "-m", "nnmf_tf.demo"], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    out = completed.stdout

    costs = [float(c) for c in re.findall(r"^  step\s+\d+\s+cost (\S+)$", out, flags=re.M)]
    assert len(costs) == 10 and costs == sorted(costs, reverse=True)
    assert len(re.findall(r"^  iteration\s+\d+\s+cost \S+$", out, flags=re.M)) == 4
    blocks = re.findall(r"Rounded prediction W Hᵀ:\n((?:\s*\[+[\d ]+\]+\n?){4})", out)
    assert len(blocks) == 2, out
    mask = ~np.isnan(RATINGS)
    for block in blocks:
        matrix = np.array([[int(v) for v in row.split()] for row in re.findall(r"\[([\d ]+)\]", block)])
        np.testing.assert_array_equal(matrix[mask], RATINGS[mask])


@pytest.mark.parametrize("learning_rate, seed", [(1.0, 1), (100.0, 4), (1e20, 42)])
def test_diverging_learning_rate_raises_naming_learning_rate(learning_rate, seed):
    got = re.escape(f"(got {learning_rate})")
    message = rf"non-finite by step 100 of the joint gradient method; lower learning_rate {got}"
    with pytest.raises(NNMFFitError, match=message):
        fit_joint_gradient(worked_example(), RANK, learning_rate=learning_rate, steps=1000, seed=seed)


@pytest.mark.parametrize("learning_rate", [1.0, 100.0])
def test_collapsing_learning_rate_fails_loudly(learning_rate):
    try:
        result = fit_joint_gradient(worked_example(), RANK, learning_rate=learning_rate, steps=1000, seed=42)
    except NNMFFitError as error:
        assert "learning_rate" in str(error)
        return
    collapsed = not result.factors.user_factors.any() and not result.factors.item_factors.any()
    cost = result.cost_history[-1][1]
    assert not collapsed, f"factors collapsed to zero; cost {cost} (Σ r² = {OBSERVED_SUM_OF_SQUARES})"


def test_joint_gradient_rejects_bad_arguments():
    message = r"learning_rate must be a finite number in \(0.0, inf\) for fit_joint_gradient; got 0.0"
    with pytest.raises(ValueError, match=message):
        fit_joint_gradient(worked_example(), RANK, learning_rate=0.0)
    with pytest.raises(ValueError, match=r"steps must be an int >= 1 for fit_joint_gradient; got 0"):
        fit_joint_gradient(worked_example(), RANK, steps=0)

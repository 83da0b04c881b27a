"""Parameter and input validation: every message names the parameter or array, the allowed
range or shape, and the value found."""

from __future__ import annotations

import logging
import math
import re
import subprocess
import sys

import numpy as np
import pytest

import nnmf_tf
from nnmf_tf.data import MaskedDense, SparseRatings
from nnmf_tf.device import DeviceSettings, configure
from nnmf_tf.errors import NNMFFitError, check_factors_finite
from nnmf_tf.halfstep import half_step
from nnmf_tf.model import Factors, predict
from nnmf_tf.params import SolverParams
from nnmf_tf.solver import fit
from nnmf_tf.topn import top_n


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rank": 0}, "rank must be an int >= 1 for NNMF; got 0"),
        ({"rank": 2.5}, "rank must be an int >= 1 for NNMF; got 2.5"),
        ({"rank": True}, "rank must be an int >= 1 for NNMF; got True"),
        ({"reg": -1}, "reg must be a finite number in [0.0, inf) for NNMF; got -1"),
        ({"reg": math.nan}, "reg must be a finite number in [0.0, inf) for NNMF; got nan"),
        ({"bias": "yes"}, "bias must be a bool for NNMF; got 'yes'"),
        ({"bias_reg": -0.5}, "bias_reg must be a finite number in [0.0, inf) for NNMF; got -0.5"),
        ({"max_iter": 0}, "max_iter must be an int >= 1 for NNMF; got 0"),
        ({"tol": 2.0}, "tol must be a finite number in [0.0, 1.0] for NNMF; got 2.0"),
        ({"inner_max_iter": 0}, "inner_max_iter must be an int >= 1 for NNMF; got 0"),
        ({"inner_tol": -1e-3}, "inner_tol must be a finite number in [0.0, 1.0] for NNMF; got -0.001"),
        ({"seed": -1}, "seed must be an int >= 0 for NNMF; got -1"),
        ({"init_scale": 0.0}, "init_scale must be a finite number in (0.0, inf) for NNMF; got 0.0"),
        ({"objective": "x"}, "objective must be one of ['rating', 'ranking'] for NNMF; got 'x'"),
        ({"unobserved_weight": 0.0}, "unobserved_weight must be a finite number in (0.0, 1.0] for NNMF; got 0.0"),
        (
            {"objective": "ranking", "bias": True},
            "bias must be false when objective is 'ranking' for NNMF; got bias=True",
        ),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else None,
)
def test_solver_params_errors_name_parameter_range_and_value(changes, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        SolverParams(**changes)


def test_solver_params_report_every_problem_at_once():
    expected = "; ".join(
        [
            "rank must be an int >= 1 for NNMF; got 0",
            "reg must be a finite number in [0.0, inf) for NNMF; got -1",
            "objective must be one of ['rating', 'ranking'] for NNMF; got 'x'",
        ]
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        SolverParams(rank=0, reg=-1, objective="x")


def test_solver_params_defaults_replace_and_bias_reg():
    params = SolverParams()
    assert params.errors() == []
    assert params.effective_bias_reg == params.reg
    assert params.replace(bias_reg=0.5).effective_bias_reg == 0.5
    with pytest.raises(ValueError, match=r"rank must be an int >= 1 for NNMF; got -3"):
        params.replace(rank=-3)


@pytest.mark.parametrize(
    "rows, cols, values, shape, message",
    [
        ([0, 1, 3], [0, 1, 2], [1.0, 2.0, 3.0], (3, 3), "rows index out of range [0, 3); found values in [0, 3]"),
        ([0, 1, 2], [-1, 1, 2], [1.0, 2.0, 3.0], (3, 3), "cols index out of range [0, 3); found values in [-1, 2]"),
        ([0, 1, 2], [0, 1], [1.0, 2.0, 3.0], (3, 3), "cols must have shape (3,); got (2,) (axis 0)"),
        ([0, 1, 2], [0, 1, 2], [1.0, 2.0], (3, 3), "values must have shape (3,); got (2,) (axis 0)"),
        ([[0, 1], [1, 2]], [0, 1], [1.0, 2.0], (3, 3), "rows must be a 1-d array; got shape (2, 2)"),
        ([1, 0, 1], [2, 0, 2], [1.0, 2.0, 3.0], (3, 3), "duplicate entry at (row 1, col 2); deduplicate first"),
        ([0, 1], [0, 1], [1.0, math.nan], (3, 3), "values must be finite; found NaN or inf"),
        ([0, 1], [0, 1], [math.inf, 1.0], (3, 3), "values must be finite; found NaN or inf"),
        ([], [], [], (-1, 3), "shape must be non-negative; got (-1, 3)"),
    ],
    ids=["row-range", "col-range", "cols-length", "values-length", "rows-2d", "duplicate", "nan", "inf", "shape"],
)
def test_sparse_ratings_errors(rows, cols, values, shape, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        SparseRatings(np.array(rows), np.array(cols), np.array(values), shape)


def test_sparse_ratings_are_sorted_and_sliced_by_row():
    ratings = SparseRatings(np.array([2, 0, 2, 0]), np.array([1, 3, 0, 0]), np.array([1.0, 2.0, 3.0, 4.0]), (4, 5))

    np.testing.assert_array_equal(ratings.rows, [0, 0, 2, 2])
    np.testing.assert_array_equal(ratings.cols, [0, 3, 0, 1])
    np.testing.assert_array_equal(ratings.values, [4.0, 2.0, 3.0, 1.0])
    assert (ratings.rows.dtype, ratings.cols.dtype, ratings.values.dtype) == (np.int32, np.int32, np.float32)
    np.testing.assert_array_equal(ratings.row_splits, [0, 2, 2, 4, 4])
    np.testing.assert_array_equal(ratings.row_counts(), [2, 0, 2, 0])
    np.testing.assert_array_equal(ratings.col_counts(), [2, 1, 0, 1, 0])
    block = ratings.row_block(1, 3)
    assert block.shape == (2, 5) and block.nnz == 2
    np.testing.assert_array_equal(block.rows, [1, 1])
    transposed = ratings.transpose()
    assert transposed.shape == (5, 4)
    np.testing.assert_array_equal(transposed.rows, [0, 0, 1, 3])
    assert ratings.mean() == pytest.approx(2.5)
    assert SparseRatings(np.array([], int), np.array([], int), np.array([]), (2, 2)).mean() == 0.0


def test_masked_dense_errors_and_conversion():
    values = np.array([[1.0, np.nan, 3.0], [np.nan, 5.0, 6.0]])
    with pytest.raises(ValueError, match=re.escape("observed values must be finite; found NaN or inf under the mask")):
        MaskedDense(values, np.ones((2, 3), bool))
    with pytest.raises(ValueError, match=re.escape("mask must have shape (2, 3); got (3, 2) (axis 0)")):
        MaskedDense(values, np.ones((3, 2), bool))
    dense = MaskedDense.from_nan(values)
    assert dense.nnz == 4 and dense.shape == (2, 3)
    np.testing.assert_array_equal(dense.values, [[1.0, 0.0, 3.0], [0.0, 5.0, 6.0]])
    sparse = SparseRatings.from_dense(dense.values, dense.mask)
    np.testing.assert_array_equal(sparse.rows, [0, 0, 1, 1])
    np.testing.assert_array_equal(sparse.values, [1.0, 3.0, 5.0, 6.0])
    assert dense.mean() == sparse.mean() == pytest.approx(3.75)


def test_half_step_shape_errors(rng):
    ratings = SparseRatings.from_dense(rng.uniform(size=(4, 5)), rng.random((4, 5)) < 0.6)
    params = SolverParams(rank=3)
    with pytest.raises(ValueError, match=re.escape("other factors must have shape (5, 3); got (5, 2) (axis 1)")):
        half_step(ratings, np.ones((5, 2)), np.ones((4, 3)), params)
    with pytest.raises(ValueError, match=re.escape("other factors must have shape (5, 3); got (6, 3) (axis 0)")):
        half_step(ratings, np.ones((6, 3)), np.ones((4, 3)), params)
    with pytest.raises(ValueError, match=re.escape("current factors must have shape (4, 3); got (5, 3) (axis 0)")):
        half_step(ratings, np.ones((5, 3)), np.ones((5, 3)), params)
    with pytest.raises(ValueError, match="other_bias and current_bias are required when params.bias is true"):
        half_step(ratings, np.ones((5, 3)), np.ones((4, 3)), params.replace(bias=True))
    with pytest.raises(ValueError, match=re.escape("other bias must have shape (5,); got (4,) (axis 0)")):
        biases = {"other_bias": np.zeros(4), "current_bias": np.zeros(4)}
        half_step(ratings, np.ones((5, 3)), np.ones((4, 3)), params.replace(bias=True), **biases)


def test_factors_errors():
    with pytest.raises(ValueError, match=re.escape("item_factors must have shape ('*', 3); got (4, 2) (axis 1)")):
        Factors(np.ones((5, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="user_bias and item_bias must both be given or both be None"):
        Factors(np.ones((5, 3)), np.ones((4, 3)), user_bias=np.zeros(5))
    with pytest.raises(ValueError, match=re.escape("item_bias must have shape (4,); got (5,) (axis 0)")):
        Factors(np.ones((5, 3)), np.ones((4, 3)), np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match=re.escape("items must have shape (2,); got (3,) (axis 0)")):
        predict(Factors(np.ones((5, 3)), np.ones((4, 3))), np.array([0, 1]), np.array([0, 1, 2]))


def test_top_n_errors():
    factors = Factors(np.ones((3, 2), np.float32), np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match=re.escape("n must be an int >= 1 for top_n; got 0")):
        top_n(factors, 0)
    with pytest.raises(ValueError, match=re.escape("item_block_size must be an int >= 1 for top_n; got 0")):
        top_n(factors, 2, item_block_size=0)
    wrong = SparseRatings(np.array([0]), np.array([0]), np.array([1.0]), (3, 5))
    with pytest.raises(ValueError, match=re.escape("exclude must have shape (3, 4) for top_n; got (3, 5)")):
        top_n(factors, 2, exclude=wrong)


def test_fit_layout_and_init_errors(rng):
    ratings = SparseRatings.from_dense(rng.uniform(size=(4, 5)), np.ones((4, 5), bool))
    params = SolverParams(rank=2, max_iter=1)
    with pytest.raises(ValueError, match=re.escape("row_blocks must be an int >= 1 for fit; got 0")):
        fit(ratings, params, row_blocks=0)
    message = "init factors must have shapes (4, 2) and (5, 2); got (4, 2) and (6, 2)"
    with pytest.raises(ValueError, match=re.escape(message)):
        fit(ratings, params, init=Factors(np.ones((4, 2)), np.ones((6, 2))))


def test_check_factors_finite_messages():
    factors = np.ones((3, 2))
    check_factors_finite(factors, side="user", iteration=1)
    factors[0, 1], factors[2, 0] = np.nan, np.inf
    with pytest.raises(
        NNMFFitError,
        match=re.escape(
            "2 non-finite user factor value(s) after the user half-step of iteration 3 (block 1): the factors "
            "overflow float32; lower model.init_scale or raise reg"
        ),
    ):
        check_factors_finite(factors, side="user", iteration=3, block=1)
    with pytest.raises(NNMFFitError, match=re.escape("negative item factors after the item half-step of iteration 2")):
        check_factors_finite(-np.ones((2, 2)), side="item", iteration=2)


def test_configure_after_start_keeps_the_settings_in_force(caplog):
    with caplog.at_level(logging.WARNING, logger="nnmf_tf.device"):
        settings = configure(DeviceSettings(logical_cpu_devices=4))
    assert settings == DeviceSettings(logical_cpu_devices=2)
    assert "already configured" in caplog.text


def test_package_exports_are_lazy_and_complete():
    assert nnmf_tf.SolverParams is SolverParams and nnmf_tf.top_n is top_n
    for name in nnmf_tf.__all__:
        assert getattr(nnmf_tf, name) is not None
    with pytest.raises(AttributeError, match="module 'nnmf_tf' has no attribute 'nope'"):
        nnmf_tf.nope  # noqa: B018
    code = "import sys, nnmf_tf, nnmf_tf.params; nnmf_tf.SolverParams(rank=2); assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_numpy_scalars_are_valid_parameters():
    params = SolverParams(rank=np.int64(3), reg=np.float32(0.1))
    assert params.rank == 3


def test_non_integer_indices_are_rejected():
    with pytest.raises(ValueError, match="rows"):
        SparseRatings(np.array([0.7, 1.2]), np.array([0, 1]), np.array([1.0, 2.0]), (2, 2))

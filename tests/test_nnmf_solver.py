"""The alternating solver: recovery, monotonicity, determinism, layout independence, failures."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from nnmf_tf.data import MaskedDense, SparseRatings
from nnmf_tf.errors import ConvergenceWarning, NNMFFitError
from nnmf_tf.metrics import rmse
from nnmf_tf.model import Factors, objective, predict
from nnmf_tf.params import SolverParams
from nnmf_tf.solver import FitResult, fit, initial_model

# Every test runs once per sparse kernel (conftest.kernel).
pytestmark = pytest.mark.usefixtures("kernel")

SOLVED = {"inner_max_iter": 300, "inner_tol": 1e-6}
"""Inner settings that solve each half-step: layout comparisons then differ by rounding only.

(With the default ``inner_tol=1e-3`` a rounding difference can move a row's early stop by one
step; after a few iterations layouts then differ by up to ~1e-4.)
"""

VARIANTS = {
    "rating": {"reg": 0.05},
    "rating-reg0": {"reg": 0.0},
    "bias": {"reg": 0.05, "bias": True, "bias_reg": 0.01},
    "ranking": {"reg": 0.05, "objective": "ranking", "unobserved_weight": 0.05},
}


def data_scale(ratings: SparseRatings | MaskedDense) -> float:
    """``Σ r²`` over the observed entries: the size of the float32 terms the objective sums."""
    values = ratings.values[ratings.mask] if isinstance(ratings, MaskedDense) else ratings.values
    return float(np.square(values, dtype=np.float64).sum())


def assert_valid_fit(result: FitResult, ratings: SparseRatings | MaskedDense, params: SolverParams) -> None:
    """Finite non-negative factors, a non-increasing history that ends at the model's objective.

    Slack: the half-step sums its objective in float32 from terms of size ``Σ r²``, so values
    may differ from the float64 reference, and wobble between iterations, by ``1e-6 · Σ r²``.
    """
    slack = 1e-6 * data_scale(ratings)
    w, h = result.factors.user_factors, result.factors.item_factors
    assert w.shape == (ratings.shape[0], params.rank) and h.shape == (ratings.shape[1], params.rank)
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(h))
    assert w.min() >= 0.0 and h.min() >= 0.0
    history = np.array([result.initial_objective, *result.objective_history])
    assert np.all(np.diff(history) <= slack), history
    assert history[-1] < history[0]
    np.testing.assert_allclose(result.objective_history[-1], objective(ratings, result.factors, params), atol=slack)
    assert result.n_iter == len(result.objective_history) == len(result.pg_norm_history)


@pytest.fixture
def planted(rng: np.random.Generator) -> dict:
    """A non-negative rank-3 60×50 matrix plus N(0, 0.1²) noise, half of its entries held out."""
    truth = rng.uniform(0.0, 1.0, (60, 3)) @ rng.uniform(0.0, 1.0, (50, 3)).T
    noisy = truth + rng.normal(0.0, 0.1, truth.shape)
    train = rng.random(truth.shape) < 0.5
    return {"truth": truth, "noisy": noisy, "train": train, "noise": 0.1}


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_planted_factorization_recovers_held_out_entries(planted, as_ratings, kind):
    train, test = planted["train"], ~planted["train"]
    params = SolverParams(rank=3, reg=1e-3, max_iter=30)

    result = fit(as_ratings(planted["noisy"], train, kind), params)

    users, items = np.nonzero(test)
    predicted = predict(result.factors, users, items)
    noise = planted["noise"]
    assert rmse(predicted, planted["noisy"][test]) < 1.5 * noise
    assert rmse(predicted, planted["truth"][test]) < 1.0 * noise
    assert rmse(predict(result.factors, *np.nonzero(train)), planted["noisy"][train]) < noise


@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_history_is_monotone_and_ends_at_the_objective(masked_problem, as_ratings, kind, variant):
    values, mask = masked_problem((35, 25), 3, 0.3)
    ratings = as_ratings(values, mask, kind)
    params = SolverParams(rank=3, max_iter=12, **VARIANTS[variant])

    result = fit(ratings, params)

    assert_valid_fit(result, ratings, params)
    start = initial_model(ratings, params)
    np.testing.assert_allclose(result.initial_objective, objective(ratings, start, params), rtol=1e-12)
    assert not result.converged and result.n_iter == params.max_iter


def test_ranking_history_ends_at_the_objective_with_an_empty_column():
    """Fixed data (not the test seed): a deterministic repro. Item 4 has no observed entry."""
    rng = np.random.default_rng(0)
    values, mask = rng.uniform(1.0, 5.0, (12, 10)), rng.random((12, 10)) < 0.5
    mask[:, 4] = False
    ratings = SparseRatings.from_dense(values, mask)
    params = SolverParams(rank=2, reg=0.05, objective="ranking", unobserved_weight=0.5, max_iter=1, inner_max_iter=1)

    result = fit(ratings, params)

    assert np.all(result.factors.item_factors[4] == 0.0)
    np.testing.assert_allclose(result.objective_history[-1], objective(ratings, result.factors, params), rtol=1e-5)


def test_same_seed_is_bitwise_identical_and_another_seed_differs(masked_problem):
    values, mask = masked_problem((30, 20), 3, 0.4)
    ratings = SparseRatings.from_dense(values, mask)
    params = SolverParams(rank=3, reg=0.05, max_iter=5)

    first, second = fit(ratings, params), fit(ratings, params)
    other = fit(ratings, params.replace(seed=params.seed + 1))

    np.testing.assert_array_equal(first.factors.user_factors, second.factors.user_factors)
    np.testing.assert_array_equal(first.factors.item_factors, second.factors.item_factors)
    assert first.objective_history == second.objective_history
    assert not np.allclose(first.factors.user_factors, other.factors.user_factors, atol=1e-3)


@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("bias", [False, True], ids=["plain", "bias"])
@pytest.mark.parametrize("row_blocks, col_blocks", [(2, 1), (1, 3), (3, 2), (2, 2)])
def test_blocked_fit_equals_unblocked(masked_problem, as_ratings, kind, bias, row_blocks, col_blocks):
    values, mask = masked_problem((31, 23), 3, 0.35, min_count=6)
    ratings = as_ratings(values, mask, kind)
    params = SolverParams(rank=3, reg=0.05, bias=bias, max_iter=4, **SOLVED)

    whole = fit(ratings, params)
    blocked = fit(ratings, params, row_blocks=row_blocks, col_blocks=col_blocks)

    np.testing.assert_allclose(blocked.factors.user_factors, whole.factors.user_factors, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(blocked.factors.item_factors, whole.factors.item_factors, rtol=1e-4, atol=1e-5)
    if bias:
        np.testing.assert_allclose(blocked.factors.user_bias, whole.factors.user_bias, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(blocked.factors.item_bias, whole.factors.item_bias, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(blocked.objective_history, whole.objective_history, rtol=1e-5)


@pytest.mark.parametrize("variant", ["rating", "bias", "ranking"])
def test_sparse_and_dense_fits_agree(masked_problem, variant):
    """Same fit from both representations. (Without regularisation the alternating problem is
    ill-conditioned enough that float32 rounding differences grow to ~1e-3 over a few
    iterations; the unregularised half-step itself is compared in test_nnmf_halfstep.)"""
    values, mask = masked_problem((26, 19), 3, 0.4, min_count=6)
    params = SolverParams(rank=3, max_iter=5, **SOLVED, **VARIANTS[variant])

    sparse = fit(SparseRatings.from_dense(values, mask), params)
    dense = fit(MaskedDense(values, mask), params)

    np.testing.assert_allclose(sparse.factors.user_factors, dense.factors.user_factors, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(sparse.factors.item_factors, dense.factors.item_factors, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(sparse.objective_history, dense.objective_history, rtol=1e-4)
    np.testing.assert_allclose(sparse.initial_objective, dense.initial_objective, rtol=1e-9)


def test_full_mask_fit_minimises_the_frobenius_loss(rng):
    """Fully observed exact rank-2 data: the masked solver drives ‖A − W Hᵀ‖² to (nearly) zero."""
    values = rng.uniform(0.2, 1.0, (15, 2)) @ rng.uniform(0.2, 1.0, (12, 2)).T
    dense = MaskedDense(values, np.ones(values.shape, bool))
    params = SolverParams(rank=2, reg=0.0, max_iter=60, inner_max_iter=100)

    result = fit(dense, params)

    prediction = result.factors.user_factors.astype(np.float64) @ result.factors.item_factors.T
    assert float(np.square(values - prediction).sum()) < 1e-4 * float(np.square(values).sum())
    frobenius = np.square(values - prediction).sum()
    np.testing.assert_allclose(result.objective_history[-1], frobenius, atol=1e-6 * np.square(values).sum())


def test_tolerance_stops_early_and_converges(masked_problem):
    values, mask = masked_problem((30, 20), 2, 0.5)
    ratings = SparseRatings.from_dense(values, mask)
    params = SolverParams(rank=2, reg=0.05, max_iter=200, tol=1e-3)

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result = fit(ratings, params)

    assert result.converged and 1 < result.n_iter < params.max_iter
    history = [result.initial_objective, *result.objective_history]
    assert history[-2] - history[-1] <= params.tol * history[-2]
    assert all(a - b > params.tol * a for a, b in zip(history[:-2], history[1:-1]))


def test_max_iter_before_tolerance_warns(masked_problem):
    values, mask = masked_problem((30, 20), 2, 0.5)
    params = SolverParams(rank=2, reg=0.05, max_iter=2, tol=1e-8)

    with pytest.warns(ConvergenceWarning, match=r"max_iter=2 .*tol=1e-08"):
        result = fit(SparseRatings.from_dense(values, mask), params)

    assert not result.converged and result.n_iter == 2


def test_no_warning_without_a_tolerance(masked_problem):
    values, mask = masked_problem((10, 8), 2, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = fit(SparseRatings.from_dense(values, mask), SolverParams(rank=2, max_iter=2, tol=0.0))
    assert not result.converged


def test_callback_sees_each_iteration(masked_problem):
    values, mask = masked_problem((10, 8), 2, 0.5)
    seen: list[tuple[int, float]] = []

    ratings = SparseRatings.from_dense(values, mask)

    result = fit(ratings, SolverParams(rank=2, max_iter=4), callback=lambda i, o: seen.append((i, o)))

    assert seen == list(zip(range(1, 5), result.objective_history))


def test_warm_start_continues_from_the_given_factors(masked_problem):
    values, mask = masked_problem((20, 15), 2, 0.5)
    ratings = SparseRatings.from_dense(values, mask)
    params = SolverParams(rank=2, reg=0.05, max_iter=5)

    first = fit(ratings, params)
    resumed = fit(ratings, params, init=first.factors)

    np.testing.assert_allclose(resumed.initial_objective, first.objective_history[-1], atol=1e-6 * data_scale(ratings))
    assert resumed.objective_history[-1] <= first.objective_history[-1] + 1e-6 * data_scale(ratings)


def test_initial_rows_depend_on_their_keys_only(masked_problem, rng):
    values, mask = masked_problem((12, 9), 3, 0.5)
    ratings = SparseRatings.from_dense(values, mask)
    params = SolverParams(rank=3)
    row_keys = rng.permutation(1000)[:12].astype(np.uint64)
    order = rng.permutation(12)

    model = initial_model(ratings, params, row_keys=row_keys)
    permuted = initial_model(SparseRatings.from_dense(values[order], mask[order]), params, row_keys=row_keys[order])

    np.testing.assert_array_equal(permuted.user_factors, model.user_factors[order])
    np.testing.assert_array_equal(permuted.item_factors, model.item_factors)
    assert model.user_factors.min() >= 0.0


@pytest.mark.parametrize(("value", "message"), [(np.nan, "must be finite"), (-1.0, "must be non-negative")])
def test_init_factors_must_be_finite_and_non_negative(masked_problem, value, message):
    values, mask = masked_problem((10, 8), 2, 0.6)
    ratings = SparseRatings.from_dense(values, mask)
    start = initial_model(ratings, SolverParams(rank=2))
    item_factors = start.item_factors.copy()
    item_factors[3, 0] = value
    with pytest.raises(ValueError, match=f"init item factors {message}"):
        fit(ratings, SolverParams(rank=2, max_iter=3), init=Factors(start.user_factors, item_factors))


def test_non_finite_factors_in_a_block_name_the_block(masked_problem):
    """Factors that overflow float32 products (a huge init scale) break the first half-step:
    its error names the iteration, the side and the block."""
    values, mask = masked_problem((10, 8), 2, 0.6)
    params = SolverParams(rank=2, bias=True, max_iter=3, init_scale=1e30)
    with pytest.raises(NNMFFitError, match=r"after the user half-step of iteration 1 \(block 0\)"):
        fit(MaskedDense(values, mask), params, row_blocks=2)


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_factors_too_large_for_float32_products_raise_instead_of_a_nan_model(masked_problem, as_ratings, kind):
    """Finite factors near 1e30 overflow the Grams: the solver cannot move them and the loss is
    not finite (the dense kernel's bias overflows first). The fit stops at the first
    half-step, naming it."""
    values, mask = masked_problem((10, 8), 2, 0.6)
    params = SolverParams(rank=2, bias=True, max_iter=3, init_scale=1e30)
    message = r"non-finite (objective \(.*\)|user bias) after the user half-step of iteration 1"
    with pytest.raises(NNMFFitError, match=message):
        fit(as_ratings(values, mask, kind), params)
    fit(as_ratings(values, mask, kind), params.replace(init_scale=1e3))  # large but representable: fits


def test_warm_start_keeps_the_biases_but_takes_the_new_ratings_mean(masked_problem):
    """μ is the mean of the ratings being fitted, as in the pipeline's warm start: yesterday's
    model on today's ratings must not carry yesterday's mean."""
    values, mask = masked_problem((12, 9), 2, 0.7)
    params = SolverParams(rank=2, bias=True, max_iter=2)
    before = fit(SparseRatings.from_dense(values, mask), params).factors
    today = SparseRatings.from_dense(values + 1.5, mask)
    after = fit(today, params.replace(max_iter=1), init=before)
    assert after.factors.global_mean == pytest.approx(today.mean())
    assert before.global_mean == pytest.approx(today.mean() - 1.5)


def test_indices_must_fit_in_int32():
    with pytest.raises(ValueError, match=r"below 2\*\*31"):
        SparseRatings(np.array([2**31]), np.array([0]), np.array([1.0]), (2**31 + 1, 1))


def test_unbiased_fit_from_a_biased_init_starts_at_its_initial_objective():
    """Fixed data (not the test seed): a deterministic repro. Rejecting such an init also passes."""
    rng = np.random.default_rng(0)
    values, mask = rng.uniform(1.0, 5.0, (8, 6)), rng.random((8, 6)) < 0.6
    ratings = SparseRatings.from_dense(values, mask)
    biased = fit(ratings, SolverParams(rank=2, bias=True, max_iter=3)).factors

    try:
        result = fit(ratings, SolverParams(rank=2, max_iter=3), init=biased)
    except ValueError:
        return
    assert result.objective_history[0] <= result.initial_objective, (result.initial_objective, result.objective_history)

"""The half-step kernel against NumPy / SciPy references of each row's subproblem.

Row ``u`` of a half-step solves ``min_z ‖F_u z − t_u‖² + Σ_j λ_j n_u z_j²`` with ``z_j ≥ 0``
on the factor coordinates (the bias coordinate, when fitted, is free). With many inner
steps and a tiny inner tolerance the kernel must reach that solution: it is compared with
``scipy.optimize.nnls`` (or ``lsq_linear`` for the biased case) on the stacked system
``[F_u; sqrt(λ n_u) I] z ≈ [t_u; 0]`` and with the KKT conditions of the row's problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf

from nnmf_tf.data import MaskedDense, SparseRatings
from nnmf_tf.halfstep import PIECE, HalfStepResult, half_step
from nnmf_tf.model import Factors, objective
from nnmf_tf.params import SolverParams

# Every test runs once per sparse kernel (conftest.kernel).
pytestmark = pytest.mark.usefixtures("kernel")

EXACT = {"inner_max_iter": 2000, "inner_tol": 1e-6}
"""Inner settings under which a half-step must solve its subproblems (float32) exactly."""


@dataclass(frozen=True)
class RowProblem:
    """Row ``u``'s subproblem in least-squares form: ``min ‖A z − b‖²`` (``G = AᵀA``, ``c = Aᵀb``)."""

    design: np.ndarray
    target: np.ndarray
    nonneg: np.ndarray

    @property
    def gram(self) -> np.ndarray:
        """``G = AᵀA``, shape (d, d)."""
        return self.design.T @ self.design

    @property
    def rhs(self) -> np.ndarray:
        """``c = Aᵀb``, shape (d,)."""
        return self.design.T @ self.target

    def loss(self, z: np.ndarray) -> float:
        """The row's data term plus penalty at ``z``."""
        residual = self.design @ z - self.target
        return float(residual @ residual)


def row_problems(
    values: np.ndarray,
    weights: np.ndarray,
    mask: np.ndarray,
    other: np.ndarray,
    params: SolverParams,
    other_bias: np.ndarray | None = None,
    global_mean: float = 0.0,
) -> list[RowProblem]:
    """Each row's subproblem, built densely in float64 from first principles.

    ``weights[u, i]`` is the weight of pair (u, i) in the data term (1 for observed pairs;
    ``unobserved_weight`` or 0 otherwise); unobserved pairs have target 0. ``mask`` gives the
    rating counts ``n_u`` of the weighted-λ penalty.
    """
    features = other.astype(np.float64)
    targets = np.where(mask, values, 0.0)
    reg = [params.reg] * params.rank
    if params.bias:
        features = np.hstack([features, np.ones((features.shape[0], 1))])
        targets = np.where(mask, targets - global_mean - other_bias[None, :], 0.0)
        reg = reg + [params.effective_bias_reg]
    nonneg = np.array([True] * params.rank + [False] * (features.shape[1] - params.rank))
    problems = []
    for u in range(values.shape[0]):
        root_w = np.sqrt(weights[u])
        n_u = mask[u].sum()
        design = np.vstack([root_w[:, None] * features, np.diag(np.sqrt(np.asarray(reg) * n_u))])
        target = np.concatenate([root_w * targets[u], np.zeros(features.shape[1])])
        problems.append(RowProblem(design, target, nonneg))
    return problems


def reference_solution(problem: RowProblem) -> np.ndarray:
    """The subproblem's minimiser: ``scipy.optimize.nnls``, or ``lsq_linear`` with a free bias."""
    if problem.nonneg.all():
        return scipy.optimize.nnls(problem.design, problem.target, maxiter=10_000)[0]
    lower = np.where(problem.nonneg, 0.0, -np.inf)
    return scipy.optimize.lsq_linear(problem.design, problem.target, bounds=(lower, np.inf), method="bvls").x


def assert_kkt(problem: RowProblem, z: np.ndarray, rtol: float = 1e-4) -> None:
    """KKT conditions of ``min ‖A z − b‖²`` s.t. ``z ≥ 0`` on the constrained coordinates.

    With ``g = 2(G z − c)``: ``z ≥ 0`` there; ``g ≥ −tol`` where such a ``z`` is 0; ``|g| ≤ tol``
    where it is positive and on every free coordinate. ``tol`` is ``rtol`` times the size of
    the terms of ``g`` (float32 arithmetic in the kernel).
    """
    gram, rhs = problem.gram, problem.rhs
    gradient = 2.0 * (gram @ z - rhs)
    tol = rtol * 2.0 * (np.abs(gram).sum(axis=1).max() * max(np.abs(z).max(), 1.0) + np.abs(rhs).max() + 1.0)
    at_bound = problem.nonneg & (z <= 1e-6)
    assert np.all(z[problem.nonneg] >= 0.0), z
    assert np.all(gradient[at_bound] >= -tol), (gradient, z, tol)
    np.testing.assert_allclose(gradient[~at_bound], 0.0, atol=tol, err_msg=f"z={z}")


def assert_row_optimal(problem: RowProblem, z: np.ndarray) -> None:
    """``z`` satisfies the KKT conditions, reaches the reference loss, and equals the reference
    minimiser when the subproblem is well conditioned (so that the minimiser is unique)."""
    assert_kkt(problem, z)
    expected = reference_solution(problem)
    scale = problem.target @ problem.target + 1.0
    assert problem.loss(z) <= problem.loss(expected) + 1e-5 * scale
    eigenvalues = np.linalg.eigvalsh(problem.gram)
    if eigenvalues[0] > 1e-2 * eigenvalues[-1]:
        np.testing.assert_allclose(z, expected, rtol=1e-3, atol=1e-3 * (1.0 + np.abs(expected).max()))


def stacked(result: HalfStepResult) -> np.ndarray:
    """The half-step's rows with the bias (when fitted) as one more column."""
    if result.bias is None:
        return result.factors.astype(np.float64)
    return np.hstack([result.factors, result.bias[:, None]]).astype(np.float64)


def penalty_of(rows: np.ndarray, mask: np.ndarray, params: SolverParams) -> float:
    """``Σ_u n_u (λ ‖w_u‖² + λ_b b_u²)`` for stacked rows."""
    n_u = mask.sum(axis=1)
    penalty = params.reg * float(n_u @ np.square(rows[:, : params.rank]).sum(axis=1))
    if params.bias:
        penalty += params.effective_bias_reg * float(n_u @ np.square(rows[:, params.rank]))
    return penalty


SHAPES_AND_RANKS = [((7, 5), 1, 0.6), ((30, 12), 3, 0.5), ((12, 30), 4, 0.3), ((16, 9), 2, 1.0)]


@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("bias", [False, True], ids=["plain", "bias"])
@pytest.mark.parametrize("reg", [0.0, 0.1])
@pytest.mark.parametrize("shape, rank, density", SHAPES_AND_RANKS)
def test_each_row_solves_its_nnls_subproblem(masked_problem, as_ratings, rng, kind, bias, reg, shape, rank, density):
    values, mask = masked_problem(shape, rank, density)
    params = SolverParams(rank=rank, reg=reg, bias=bias, bias_reg=0.05 if bias else None, **EXACT)
    other = rng.uniform(0.0, 1.0, (shape[1], rank))
    current = rng.uniform(0.0, 1.0, (shape[0], rank))
    extra = {}
    other_bias, mean = None, 0.0
    if bias:
        other_bias, mean = rng.normal(0.0, 0.3, shape[1]), float(values[mask].mean())
        extra = {"other_bias": other_bias, "current_bias": np.zeros(shape[0]), "global_mean": mean}

    result = half_step(as_ratings(values, mask, kind), other, current, params, **extra)

    assert result.factors.shape == (shape[0], rank) and result.factors.dtype == np.float32
    assert (result.bias is not None) == bias
    rows = stacked(result)
    problems = row_problems(values, mask.astype(float), mask, other, params, other_bias, mean)
    for problem, z in zip(problems, rows):
        assert_row_optimal(problem, z)
    data_scale = sum(problem.target @ problem.target for problem in problems)
    direct = sum(problem.loss(z) for problem, z in zip(problems, rows))
    np.testing.assert_allclose(result.objective, direct, rtol=1e-5, atol=1e-6 * data_scale)
    np.testing.assert_allclose(result.penalty, penalty_of(rows, mask, params), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("reg", [0.0, 0.05])
@pytest.mark.parametrize("shape, rank, density", [((10, 8), 2, 0.4), ((25, 20), 3, 0.2)])
def test_ranking_half_step_solves_the_full_weighted_problem(
    masked_problem, as_ratings, rng, kind, reg, shape, rank, density
):
    """Reference: every unobserved pair is a target 0 of weight ``unobserved_weight``."""
    values, mask = masked_problem(shape, rank, density)
    params = SolverParams(rank=rank, reg=reg, objective="ranking", unobserved_weight=0.1, **EXACT)
    other = rng.uniform(0.0, 1.0, (shape[1], rank))
    current = rng.uniform(0.0, 1.0, (shape[0], rank))

    result = half_step(as_ratings(values, mask, kind), other, current, params)

    weights = np.where(mask, 1.0, params.unobserved_weight)
    problems = row_problems(values, weights, mask, other, params)
    for problem, z in zip(problems, result.factors.astype(np.float64)):
        assert_row_optimal(problem, z)
    direct = sum(problem.loss(z) for problem, z in zip(problems, result.factors.astype(np.float64)))
    np.testing.assert_allclose(result.objective, direct, rtol=1e-5)


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_ranking_objective_equals_the_dense_weighted_loss(masked_problem, as_ratings, rng, kind):
    values, mask = masked_problem((9, 11), 2, 0.4)
    params = SolverParams(rank=2, reg=0.03, objective="ranking", unobserved_weight=0.2)
    w, h = rng.uniform(0.0, 1.0, (9, 2)), rng.uniform(0.0, 1.0, (11, 2))
    weights = np.where(mask, 1.0, params.unobserved_weight)
    dense_loss = float((weights * np.square(np.where(mask, values, 0.0) - w @ h.T)).sum())
    n_u, n_i = mask.sum(axis=1), mask.sum(axis=0)
    dense_loss += params.reg * float(n_u @ np.square(w).sum(axis=1) + n_i @ np.square(h).sum(axis=1))

    got = objective(as_ratings(values, mask, kind), Factors(w.astype(np.float32), h.astype(np.float32)), params)

    np.testing.assert_allclose(got, dense_loss, rtol=1e-5)


def test_ranking_objective_reported_for_rows_without_entries():
    """Fixed data (not the test seed): a deterministic repro. Row 3 has no observed entry."""
    rng = np.random.default_rng(0)
    values = rng.uniform(1.0, 5.0, (6, 15))
    mask = rng.random((6, 15)) < 0.5
    mask[3] = False
    params = SolverParams(rank=3, reg=0.05, objective="ranking", unobserved_weight=0.5, inner_max_iter=1)
    other = rng.uniform(0.0, 1.0, (15, 3))
    current = rng.uniform(0.0, 1.0, (6, 3))

    result = half_step(SparseRatings.from_dense(values, mask), other, current, params)

    assert np.all(result.factors[3] == 0.0)
    weights = np.where(mask, 1.0, params.unobserved_weight)
    problems = row_problems(values, weights, mask, other, params)
    direct = sum(problem.loss(z) for problem, z in zip(problems, result.factors.astype(np.float64)))
    np.testing.assert_allclose(result.objective, direct, rtol=1e-5)


@pytest.mark.parametrize(
    "bias, objective_name", [(False, "rating"), (True, "rating"), (False, "ranking")], ids=["plain", "bias", "ranking"]
)
@pytest.mark.parametrize("reg", [0.0, 0.1])
def test_sparse_and_dense_half_steps_agree(masked_problem, rng, bias, objective_name, reg):
    """Solved to convergence, both representations reach the same rows (every row has enough
    entries for its subproblem to have one minimiser).

    (With an early-stopping ``inner_tol`` a float32 rounding difference can move a row's
    stopping step by one, which changes it by up to that tolerance.)
    """
    values, mask = masked_problem((23, 17), 3, 0.35, min_count=6)
    params = SolverParams(rank=3, reg=reg, bias=bias, objective=objective_name, **EXACT)
    other = rng.uniform(0.0, 1.0, (17, 3))
    current = rng.uniform(0.0, 1.0, (23, 3))
    extra = {}
    if bias:
        extra = {"other_bias": rng.normal(0.0, 0.3, 17), "current_bias": rng.normal(0.0, 0.3, 23), "global_mean": 0.7}

    sparse = half_step(SparseRatings.from_dense(values, mask), other, current, params, **extra)
    dense = half_step(MaskedDense(values, mask), other, current, params, **extra)

    np.testing.assert_allclose(stacked(sparse), stacked(dense), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sparse.objective, dense.objective, rtol=1e-5)
    np.testing.assert_allclose(sparse.penalty, dense.penalty, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(sparse.pg_norm_sq, dense.pg_norm_sq, rtol=1e-4)


@pytest.mark.parametrize("bias", [False, True], ids=["plain", "bias"])
def test_rows_of_several_pieces_match_the_dense_kernel(rng, bias):
    """Rows cut into up to five pieces (lengths at piece boundaries and one off), with rows
    without entries first and last: the sparse kernel's sums of piece Grams solve the same
    subproblems as the dense kernel's matmul Grams."""
    lengths = [0, 1, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE, 2 * PIECE + 1, 5 * PIECE - 3, 0]
    n_cols = 5 * PIECE
    mask = np.zeros((len(lengths), n_cols), bool)
    for row, length in enumerate(lengths):
        mask[row, rng.choice(n_cols, size=length, replace=False)] = True
    values = np.where(mask, rng.uniform(1.0, 5.0, mask.shape), 0.0)
    params = SolverParams(rank=3, reg=0.1, bias=bias, **EXACT)
    other, current = rng.uniform(0.0, 1.0, (n_cols, 3)), rng.uniform(0.0, 1.0, (len(lengths), 3))
    extra = {}
    if bias:
        extra = {"other_bias": rng.normal(0.0, 0.3, n_cols), "current_bias": rng.normal(0.0, 0.3, len(lengths))}
        extra["global_mean"] = 3.0

    sparse = half_step(SparseRatings.from_dense(values, mask), other, current, params, **extra)
    dense = half_step(MaskedDense(values, mask), other, current, params, **extra)

    np.testing.assert_allclose(stacked(sparse), stacked(dense), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sparse.objective, dense.objective, rtol=1e-5)
    assert np.all(stacked(sparse)[[0, -1]] == 0.0)


def test_full_mask_equals_plain_dense_least_squares(rng):
    """Fully observed exact low-rank data: the masked half-step is ordinary least squares."""
    w_true, h = rng.uniform(0.2, 1.0, (12, 3)), rng.uniform(0.2, 1.0, (9, 3))
    values = w_true @ h.T
    full = np.ones(values.shape, bool)
    params = SolverParams(rank=3, reg=0.0, **EXACT)

    for ratings in (MaskedDense(values, full), SparseRatings.from_dense(values, full)):
        result = half_step(ratings, h, rng.uniform(0.0, 1.0, (12, 3)), params)
        least_squares = np.linalg.lstsq(h, values.T, rcond=None)[0].T
        np.testing.assert_allclose(least_squares, w_true, atol=1e-10)
        np.testing.assert_allclose(result.factors, least_squares, rtol=1e-3, atol=1e-4)
        plain = float(np.square(values - result.factors.astype(np.float64) @ h.T).sum())
        np.testing.assert_allclose(result.objective, plain, atol=1e-6 * np.square(values).sum())


def test_full_mask_objective_is_the_frobenius_loss(rng):
    values = rng.uniform(0.0, 5.0, (8, 6))
    w, h = rng.uniform(0.0, 1.0, (8, 2)), rng.uniform(0.0, 1.0, (6, 2))
    params = SolverParams(rank=2, reg=0.1)
    frobenius = float(np.square(values - w @ h.T).sum()) + 0.1 * (6 * np.square(w).sum() + 8 * np.square(h).sum())

    got = objective(MaskedDense(values, np.ones(values.shape, bool)), Factors(w, h), params)

    np.testing.assert_allclose(got, frobenius, rtol=1e-6)


@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("bias", [False, True], ids=["plain", "bias"])
def test_a_row_depends_only_on_its_own_data(masked_problem, as_ratings, rng, kind, bias):
    """Half-steps on a contiguous block and on a scattered subset give the full half-step's rows."""
    values, mask = masked_problem((40, 15), 3, 0.4)
    params = SolverParams(rank=3, reg=0.05, bias=bias, inner_max_iter=20)
    other = rng.uniform(0.0, 1.0, (15, 3))
    current = rng.uniform(0.0, 1.0, (40, 3))
    other_bias, current_bias = rng.normal(0.0, 0.3, 15), rng.normal(0.0, 0.3, 40)

    def run(rows: np.ndarray) -> HalfStepResult:
        extra = {"other_bias": other_bias, "current_bias": current_bias[rows], "global_mean": 0.5} if bias else {}
        return half_step(as_ratings(values[rows], mask[rows], kind), other, current[rows], params, **extra)

    full = stacked(run(np.arange(40)))
    for rows in (np.arange(10, 23), np.sort(rng.choice(40, size=7, replace=False)), np.array([31])):
        np.testing.assert_allclose(stacked(run(rows)), full[rows], rtol=1e-5, atol=1e-6)


def test_row_block_of_sparse_ratings_matches_full_half_step(masked_problem, rng):
    values, mask = masked_problem((30, 12), 2, 0.5)
    ratings = SparseRatings.from_dense(values, mask)
    params = SolverParams(rank=2, reg=0.05, inner_max_iter=20)
    other, current = rng.uniform(0.0, 1.0, (12, 2)), rng.uniform(0.0, 1.0, (30, 2))

    full = half_step(ratings, other, current, params)
    parts = [half_step(ratings.row_block(a, b), other, current[a:b], params) for a, b in ((0, 11), (11, 12), (12, 30))]

    np.testing.assert_allclose(np.vstack([p.factors for p in parts]), full.factors, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sum(p.objective for p in parts), full.objective, rtol=1e-5)
    np.testing.assert_allclose(sum(p.penalty for p in parts), full.penalty, rtol=1e-5)
    # Each row stops on its own: the step counts add up, whatever rows share a call.
    assert sum(p.row_steps for p in parts) == full.row_steps
    assert max(p.inner_iters for p in parts) == full.inner_iters


def test_projected_gradient_vanishes_at_the_solution(masked_problem, rng):
    """Restarting from a solved half-step reports a negligible projected gradient."""
    values, mask = masked_problem((20, 10), 3, 0.6)
    ratings = SparseRatings.from_dense(values, mask)
    params = SolverParams(rank=3, reg=0.05, **EXACT)
    other = rng.uniform(0.0, 1.0, (10, 3))

    first = half_step(ratings, other, rng.uniform(0.0, 1.0, (20, 3)), params)
    again = half_step(ratings, other, first.factors, params)

    assert first.pg_norm_sq > 0.0 and first.inner_iters >= 1
    assert again.pg_norm_sq <= 1e-6 * first.pg_norm_sq
    np.testing.assert_allclose(again.factors, first.factors, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True], ids=["plain", "bias"])
def test_reported_projected_gradient_is_that_of_the_rows_loss(masked_problem, rng, bias):
    """``pg_norm_sq`` is ‖P∇L‖² at the rows given, with ``∇L = 2(G z − c)`` the gradient of
    each row's data term plus penalty (built here from first principles), projected where a
    factor sits at zero."""
    values, mask = masked_problem((15, 8), 3, 0.6)
    params = SolverParams(rank=3, reg=0.1, bias=bias)
    other = rng.uniform(0.0, 1.0, (8, 3))
    current = rng.uniform(0.0, 1.0, (15, 3))
    current[::4, 1] = 0.0  # some factors at their bound
    extra = {"other_bias": rng.normal(size=8), "current_bias": rng.normal(size=15), "global_mean": 3.0} if bias else {}
    result = half_step(SparseRatings.from_dense(values, mask), other, current, params, **extra)

    problems = row_problems(values, mask.astype(float), mask, other, params, extra.get("other_bias"), extra.get("global_mean", 0.0))
    start = np.hstack([current, extra["current_bias"][:, None]]) if bias else current
    expected = 0.0
    for problem, z in zip(problems, start):
        gradient = 2.0 * (problem.gram @ z - problem.rhs)
        projected = np.where(problem.nonneg & (z <= 0.0), np.minimum(gradient, 0.0), gradient)
        expected += float(projected @ projected)
    assert result.pg_norm_sq == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda other, current: other.__setitem__((2, 1), -0.5), "other factors must be non-negative"),
        (lambda other, current: other.__setitem__((0, 0), np.nan), "other factors must be finite"),
        (lambda other, current: current.__setitem__((1, 2), np.inf), "current factors must be finite"),
    ],
    ids=["negative", "nan", "inf"],
)
def test_factors_that_would_make_the_steps_diverge_are_refused(masked_problem, rng, change, message):
    """The step size uses an eigenvalue bound that holds for Grams with non-negative entries:
    negative factors of the other side would make it too long (NaN rows, no error)."""
    values, mask = masked_problem((6, 5), 3, 0.8)
    other, current = rng.uniform(0.0, 1.0, (5, 3)), rng.uniform(0.0, 1.0, (6, 3))
    change(other, current)
    with pytest.raises(ValueError, match=message):
        half_step(SparseRatings.from_dense(values, mask), other, current, SolverParams(rank=3))


def test_rows_without_entries_get_zero_factors_and_bias(rng):
    """An empty row gets the neutral zero; the other rows are as if it were not there."""
    values = rng.uniform(1.0, 5.0, (5, 6))
    mask = rng.random((5, 6)) < 0.7
    mask[:, 0] = True
    mask[2] = False
    params = SolverParams(rank=2, reg=0.1, bias=True)
    other, current = rng.uniform(0.0, 1.0, (6, 2)), rng.uniform(0.5, 1.0, (5, 2))
    other_bias = rng.normal(0.0, 0.3, 6)

    def run(rows: list[int]) -> HalfStepResult:
        ratings = SparseRatings.from_dense(values[rows], mask[rows])
        extra = {"other_bias": other_bias, "current_bias": np.ones(len(rows)), "global_mean": 3.0}
        return half_step(ratings, other, current[rows], params, **extra)

    result, rest = run([0, 1, 2, 3, 4]), run([0, 1, 3, 4])

    assert np.all(result.factors[2] == 0.0) and result.bias[2] == 0.0
    np.testing.assert_allclose(stacked(result)[[0, 1, 3, 4]], stacked(rest), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.objective, rest.objective, rtol=1e-5)


def test_default_inner_settings_decrease_every_row_loss(masked_problem, rng):
    """A few warm-started inner steps never make a row worse than its starting point."""
    values, mask = masked_problem((50, 20), 4, 0.3)
    params = SolverParams(rank=4, reg=0.01, inner_max_iter=3)
    other, current = rng.uniform(0.0, 1.0, (20, 4)), rng.uniform(0.0, 1.0, (50, 4))

    result = half_step(SparseRatings.from_dense(values, mask), other, current, params)

    problems = row_problems(values, mask.astype(float), mask, other, params)
    for problem, before, after in zip(problems, current, result.factors):
        assert problem.loss(after.astype(np.float64)) <= problem.loss(before) * (1 + 1e-6) + 1e-9


@pytest.mark.parametrize("bias", [False, True], ids=["plain", "bias"])
def test_other_side_given_as_a_tensor_gives_the_same_result(masked_problem, rng, bias):
    """Callers convert the other side's factors once for all their blocks; the half-step reads
    the tensor as it would the array."""
    values, mask = masked_problem((25, 12), 3, 0.5)
    ratings = SparseRatings.from_dense(values, mask)
    params = SolverParams(rank=3, reg=0.05, bias=bias)
    other, current = rng.uniform(0.0, 1.0, (12, 3)).astype(np.float32), rng.uniform(0.0, 1.0, (25, 3))
    extra = {"other_bias": rng.normal(0, 0.1, 12), "current_bias": rng.normal(0, 0.1, 25), "global_mean": 3.0} if bias else {}
    as_array = half_step(ratings, other, current, params, **extra)
    as_tensor = half_step(ratings, tf.constant(other), current, params, **extra)
    np.testing.assert_array_equal(as_tensor.factors, as_array.factors)
    assert as_tensor.objective == as_array.objective


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_a_block_without_rows_is_a_no_op(as_ratings, rng, kind):
    """A block of zero rows (more row blocks than rows) updates nothing and reports zeros."""
    ratings = as_ratings(np.zeros((0, 4)), np.zeros((0, 4), bool), kind)
    result = half_step(ratings, rng.uniform(0.0, 1.0, (4, 2)), np.zeros((0, 2)), SolverParams(rank=2))
    assert result.factors.shape == (0, 2)
    assert (result.objective, result.penalty, result.pg_norm_sq, result.inner_iters, result.row_steps) == (0, 0, 0, 0, 0)


def test_a_layout_serves_any_ratings_of_its_sparsity_pattern(masked_problem, rng):
    """A layout depends on where the entries are, not on their values: built from one matrix,
    it gives another matrix with the same pattern that matrix's own result."""
    from nnmf_tf.halfstep import sparse_layout

    values, mask = masked_problem((30, 12), 2, 0.5)
    params = SolverParams(rank=2, reg=0.05)
    first = SparseRatings.from_dense(values, mask)
    second = SparseRatings.from_dense(np.where(mask, 6.0 - values, 0.0), mask)
    other, current = rng.uniform(0.0, 1.0, (12, 2)), rng.uniform(0.0, 1.0, (30, 2))
    layout = sparse_layout(first, params)
    reused = half_step(second, other, current, params, layout=layout)
    own = half_step(second, other, current, params)
    np.testing.assert_array_equal(reused.factors, own.factors)
    assert not np.allclose(reused.factors, half_step(first, other, current, params).factors)

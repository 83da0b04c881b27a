"""The native half-step kernel: same results as the TensorFlow ops, its limits, its build.

Both kernels take the same steps from the same start, so they agree to float32 rounding:
after a few inner steps (trajectories still close) and at convergence (the subproblems are
strictly convex with ``reg > 0``, so both reach the one solution).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from nnmf_tf import native
from nnmf_tf.data import SparseRatings
from nnmf_tf.halfstep import half_step, sparse_layout, uses_native_kernel
from nnmf_tf.params import SolverParams

COMPILER = shutil.which(os.environ.get("CXX", "c++"))
BUILDS_HERE = COMPILER is not None and platform.system() == "Linux"


@pytest.fixture
def native_built() -> None:
    """Skip, with the reason, where the native kernel cannot be built (looked up when a test
    runs, not when the suite is collected, so collecting never compiles it)."""
    if native.solve_rows_op() is None:
        pytest.skip(f"native kernel unavailable: {native.unavailable_reason()}")


needs_native = pytest.mark.usefixtures("native_built")


def test_native_kernel_builds_wherever_linux_has_a_compiler():
    """Guard: where the kernel can be built, it is, so the tests below really run it."""
    if not BUILDS_HERE:
        pytest.skip("no C++ compiler on Linux here")
    assert native.solve_rows_op() is not None, native.unavailable_reason()
    assert uses_native_kernel(SolverParams(rank=20))


def problem(rng, n_rows: int, n_cols: int, density: float, params: SolverParams):
    """Sparse ratings with an empty row and a long row, the other side's factors, a warm start
    and (with biases) the bias arguments."""
    mask = rng.random((n_rows, n_cols)) < density
    mask[0] = False  # a row without entries
    mask[1] = True  # a row longer than the kernel's prefetch distance and register blocks
    values = rng.uniform(1.0, 5.0, (n_rows, n_cols))
    ratings = SparseRatings.from_dense(values, mask)
    other = rng.uniform(0.0, 1.0, (n_cols, params.rank)).astype(np.float32)
    current = rng.uniform(0.0, 1.0, (n_rows, params.rank)).astype(np.float32)
    extra = {}
    if params.bias:
        extra = {
            "other_bias": rng.normal(0.0, 0.3, n_cols).astype(np.float32),
            "current_bias": rng.normal(0.0, 0.3, n_rows).astype(np.float32),
            "global_mean": 3.0,
        }
    return ratings, other, current, extra


def both_kernels(ratings, other, current, params, **extra):
    native_result = half_step(ratings, other, current, params.replace(kernel="native"), **extra)
    tf_result = half_step(ratings, other, current, params.replace(kernel="tensorflow"), **extra)
    return native_result, tf_result


VARIANTS = {
    "plain": {"reg": 0.1},
    "bias": {"reg": 0.1, "bias": True},
    "ranking": {"reg": 0.1, "objective": "ranking", "unobserved_weight": 0.05},
    "exponents-and-centre": {"reg": 0.3, "reg_exponent": 0.5, "factor_center": 0.2, "bias": True, "bias_reg_exponent": 0.0},
}


@needs_native
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("rank", [1, 7, 8, 20, 31, 40, 48, 56, 63])
def test_native_matches_tensorflow_after_a_few_steps(rng, variant, rank):
    """Widths 1-64 (rank, plus one with biases: every register layout the kernel has, 8 to 64
    lanes), five inner steps: same factors, biases, objective, penalty, projected gradient and
    step counts (to within a step for rows at their stopping threshold)."""
    params = SolverParams(rank=rank, inner_max_iter=5, **VARIANTS[variant])
    ratings, other, current, extra = problem(rng, 40, 30, 0.3, params)
    got, expected = both_kernels(ratings, other, current, params, **extra)
    np.testing.assert_allclose(got.factors, expected.factors, rtol=1e-4, atol=1e-5)
    if params.bias:
        np.testing.assert_allclose(got.bias, expected.bias, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.objective, expected.objective, rtol=1e-5)
    np.testing.assert_allclose(got.penalty, expected.penalty, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.pg_norm_sq, expected.pg_norm_sq, rtol=1e-4)
    assert got.inner_iters == expected.inner_iters
    assert abs(got.row_steps - expected.row_steps) <= 2
    assert not got.factors[0].any(), "a row without entries stays at zero"


@needs_native
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_native_reaches_the_same_solution(rng, variant):
    """Run to convergence, both kernels land on the subproblems' unique solution."""
    params = SolverParams(rank=6, inner_max_iter=3000, inner_tol=1e-7, **VARIANTS[variant])
    ratings, other, current, extra = problem(rng, 30, 25, 0.4, params)
    got, expected = both_kernels(ratings, other, current, params, **extra)
    np.testing.assert_allclose(got.factors, expected.factors, atol=2e-4)
    np.testing.assert_allclose(got.objective, expected.objective, rtol=1e-5)


@needs_native
def test_native_result_does_not_depend_on_the_thread_split(rng):
    """The kernel spreads rows over threads; every row's result depends on its own data only,
    so solving rows apart gives the same bits as solving them together."""
    params = SolverParams(rank=5, reg=0.1, kernel="native")
    ratings, other, current, _ = problem(rng, 300, 40, 0.3, params)
    whole = half_step(ratings, other, current, params)
    parts = [half_step(ratings.row_block(a, b), other, current[a:b], params) for a, b in ((0, 7), (7, 151), (151, 300))]
    np.testing.assert_array_equal(np.vstack([part.factors for part in parts]), whole.factors)


@needs_native
def test_native_solves_every_row_when_single_rows_outweigh_a_piece(rng):
    """Rows are cut into pieces of about equal cost: rows that outweigh a piece (here the
    sixth and the last) leave pieces empty where the op has two or more threads, and every
    row is still solved once, as it is alone."""
    params = SolverParams(rank=4, reg=0.1, kernel="native")
    mask = rng.random((60, 2000)) < 0.002
    mask[[5, 59]] = True  # 2,000 entries each, against a few in every other row
    ratings = SparseRatings.from_dense(rng.uniform(1.0, 5.0, mask.shape), mask)
    other = rng.uniform(0.0, 1.0, (2000, 4)).astype(np.float32)
    current = rng.uniform(0.0, 1.0, (60, 4)).astype(np.float32)
    whole = half_step(ratings, other, current, params)
    alone = [half_step(ratings.row_block(r, r + 1), other, current[r : r + 1], params) for r in range(60)]
    np.testing.assert_array_equal(np.vstack([row.factors for row in alone]), whole.factors)
    assert whole.row_steps == sum(row.row_steps for row in alone)


@needs_native
def test_a_layout_for_the_other_kernel_is_refused(rng):
    params = SolverParams(rank=3, reg=0.1)
    ratings, other, current, _ = problem(rng, 10, 6, 0.5, params)
    tf_layout = sparse_layout(ratings, params.replace(kernel="tensorflow"))
    with pytest.raises(ValueError, match="layout is a SparseLayout but this half-step runs the native kernel"):
        half_step(ratings, other, current, params.replace(kernel="native"), layout=tf_layout)


def test_native_refuses_rows_wider_than_it_handles_and_auto_falls_back(rng):
    params = SolverParams(rank=64, reg=0.1, bias=True)
    ratings, other, current, extra = problem(rng, 6, 5, 0.5, params)
    with pytest.raises(ValueError, match="up to 64; got 65"):
        half_step(ratings, other, current, params.replace(kernel="native"), **extra)
    assert not uses_native_kernel(params)
    assert np.isfinite(half_step(ratings, other, current, params, **extra).objective)


def test_unknown_kernel_is_rejected():
    with pytest.raises(ValueError, match=r"kernel must be one of \['auto', 'native', 'tensorflow'\] for NNMF; got 'fast'"):
        SolverParams(kernel="fast")


@needs_native
def test_the_op_rejects_indices_out_of_range():
    """The op checks every index instead of reading out of bounds."""
    op = native.solve_rows_op().nnmf_solve_rows
    d = 2
    args = dict(
        features=tf.zeros((3, d)), row_splits=tf.constant([0, 2], tf.int64), cols=tf.constant([0, 3], tf.int32),
        targets=tf.ones(2), current=tf.zeros((1, d)), reg_diag=tf.ones(d), reg_power=tf.ones(d), center=tf.zeros(d),
        lower=tf.zeros(d), base_gram=tf.zeros((d, d)), obs_weight=tf.constant(1.0), max_iter=tf.constant(5),
        tol=tf.constant(1e-3),
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="cols must index rows of features"):
        op(**args)
    with pytest.raises(tf.errors.InvalidArgumentError, match="row_splits must ascend"):
        op(**{**args, "row_splits": tf.constant([0, 5], tf.int64)})
    with pytest.raises(tf.errors.InvalidArgumentError, match="features must have d columns"):
        op(**{**args, "features": tf.zeros((3, d + 1))})


FALLBACK_RUN = (
    "import sys, numpy as np\n"
    "from nnmf_tf.data import SparseRatings\n"
    "from nnmf_tf.halfstep import half_step, uses_native_kernel\n"
    "from nnmf_tf.params import SolverParams\n"
    "rng = np.random.default_rng(0)\n"
    "mask = rng.random((20, 10)) < 0.5\n"
    "ratings = SparseRatings.from_dense(rng.uniform(1, 5, mask.shape), mask)\n"
    "args = (ratings, rng.random((10, 3)), rng.random((20, 3)))\n"
    "print('auto uses native:', uses_native_kernel(SolverParams(rank=3)))\n"
    "print('objective:', half_step(*args, SolverParams(rank=3)).objective)\n"
    "half_step(*args, SolverParams(rank=3, kernel='native'))\n"
)


def test_without_a_compiler_auto_falls_back_and_native_says_why(tmp_path):
    """A machine without a compiler (CXX names none, empty cache): ``auto`` logs the reason
    once and uses TensorFlow ops; ``native`` fails with the reason."""
    env = {**os.environ, "CXX": "no-such-compiler", "NNMF_KERNEL_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", FALLBACK_RUN], capture_output=True, text=True, env=env, timeout=300)
    assert "auto uses native: False" in done.stdout
    assert "objective:" in done.stdout
    assert done.stderr.count("native half-step kernel unavailable, using TensorFlow ops") == 1
    assert done.returncode != 0
    assert "RuntimeError: kernel 'native' is unavailable here: RuntimeError: no C++ compiler 'no-such-compiler'" in done.stderr


@pytest.mark.skipif(not BUILDS_HERE, reason="no C++ compiler on Linux here")
def test_a_built_kernel_is_reused_by_the_next_process(tmp_path):
    """The first process builds into the cache folder; the second loads that file as is."""
    env = {**os.environ, "NNMF_KERNEL_CACHE": str(tmp_path)}
    run = [sys.executable, "-c", "from nnmf_tf import native; assert native.solve_rows_op() is not None"]
    subprocess.run(run, check=True, env=env, timeout=600, capture_output=True)
    built = {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
    assert len(built) == 1 and next(iter(built)).endswith(".so")
    subprocess.run(run, check=True, env=env, timeout=600, capture_output=True)
    assert {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()} == built


@pytest.mark.skipif(not BUILDS_HERE, reason="no C++ compiler on Linux here")
def test_processes_starting_together_build_the_kernel_once(tmp_path):
    """Beam workers on a fresh machine: two processes find an empty cache at the same time;
    one builds (about 15 s) while the other waits for it, then loads the same library."""
    cache = tmp_path / "cache"
    env = {**os.environ, "NNMF_KERNEL_CACHE": str(cache)}
    code = (
        "import logging; logging.basicConfig(level=logging.INFO); from nnmf_tf import native; "
        "assert native.solve_rows_op() is not None"
    )
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    workers = []
    for log in logs:
        with open(log, "w") as out:  # a file, not a pipe: a full pipe would stall its writer
            workers.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out, stderr=out))
    try:
        codes = [worker.wait(timeout=600) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()  # no-op for a finished worker; stops a stuck one
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts
    assert sum(text.count("building the native half-step kernel") for text in texts) == 1, texts
    assert [path.suffix for path in cache.iterdir()] == [".so"]


@pytest.mark.skipif(native.fcntl is None, reason="no flock on this platform")
@pytest.mark.parametrize("refused", ["open", "flock"])
def test_a_cache_folder_that_cannot_be_locked_builds_unlocked(tmp_path, monkeypatch, caplog, refused):
    """Locking only saves duplicate builds: where the cache folder cannot be opened or locked,
    the build goes ahead (its rename into place is atomic either way) and the log says why."""

    def refuse(*args, **kwargs):
        raise PermissionError(f"{refused} not allowed")

    monkeypatch.setattr(native.os if refused == "open" else native.fcntl, refused, refuse)
    with native._exclusive(tmp_path):
        pass
    assert f"cannot lock {tmp_path} ({refused} not allowed): building without the lock" in caplog.text

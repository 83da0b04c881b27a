"""Execution backends: the default strategy, MirroredStrategy over two logical CPUs, and GPU.

``tests/conftest.py`` splits the CPU into two logical devices before TensorFlow starts, so a
mirrored strategy here has two replicas. A half-step spreads its chunks of rows over the
replicas; each row's result depends on its own data only, so every backend must give the
default strategy's answer.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import nnmf_tf.halfstep
from nnmf_tf.data import MaskedDense, SparseRatings
from nnmf_tf.device import make_strategy
from nnmf_tf.halfstep import HalfStepResult, half_step
from nnmf_tf.metrics import ranking_metrics
from nnmf_tf.model import objective
from nnmf_tf.params import SolverParams
from nnmf_tf.solver import FitResult, fit
from nnmf_tf.topn import top_n

GPUS = tf.config.list_physical_devices("GPU")

TOL = {"rtol": 1e-5, "atol": 1e-5}
"""Mirrored vs default: the same float32 kernels on the same rows, up to summation order."""


@pytest.fixture(scope="module")
def mirrored() -> tf.distribute.Strategy:
    """A MirroredStrategy over the two logical CPU devices."""
    return make_strategy("mirrored")


def test_mirrored_strategy_has_two_replicas(mirrored):
    assert len(tf.config.list_logical_devices("CPU")) == 2
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 2
    assert make_strategy("default").num_replicas_in_sync == 1


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match=r"strategy must be one of \['default', 'mirrored'\]; got 'tpu'"):
        make_strategy("tpu")


def assert_same_half_step(got: HalfStepResult, expected: HalfStepResult) -> None:
    """Factors, biases, objective and penalty agree within :data:`TOL`."""
    np.testing.assert_allclose(got.factors, expected.factors, **TOL)
    if expected.bias is not None:
        np.testing.assert_allclose(got.bias, expected.bias, **TOL)
    np.testing.assert_allclose(got.objective, expected.objective, rtol=1e-5)
    np.testing.assert_allclose(got.penalty, expected.penalty, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(got.pg_norm_sq, expected.pg_norm_sq, rtol=1e-5)


HALF_STEP_CASES = {
    "plain": {"reg": 0.05},
    "bias": {"reg": 0.05, "bias": True},
    "ranking": {"reg": 0.05, "objective": "ranking"},
}


@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("case", sorted(HALF_STEP_CASES))
@pytest.mark.parametrize("n_rows", [1, 3, 40], ids=lambda n: f"{n}rows")
@pytest.mark.parametrize("chunk_bytes", [None, 256], ids=["one-chunk", "many-chunks"])
@pytest.mark.usefixtures("kernel")
def test_mirrored_half_step_equals_default(
    monkeypatch, masked_problem, as_ratings, rng, mirrored, kind, case, n_rows, chunk_bytes
):
    """Including fewer rows than replicas (1 row) and a chunk budget small enough for dozens of
    chunks, an odd number of which leaves a replica idle in the last round."""
    if chunk_bytes is not None:
        monkeypatch.setattr(nnmf_tf.halfstep, "CHUNK_BYTES", chunk_bytes)
    values, mask = masked_problem((n_rows, 17), 3, 0.5)
    params = SolverParams(rank=3, inner_max_iter=30, **HALF_STEP_CASES[case])
    other = rng.uniform(0.0, 1.0, (17, 3))
    current = rng.uniform(0.0, 1.0, (n_rows, 3))
    extra = {}
    if params.bias:
        extra = {"other_bias": rng.normal(0.0, 0.3, 17), "current_bias": np.zeros(n_rows), "global_mean": 0.6}
    ratings = as_ratings(values, mask, kind)

    expected = half_step(ratings, other, current, params, **extra)
    got = half_step(ratings, other, current, params, strategy=mirrored, **extra)

    assert_same_half_step(got, expected)


def test_small_chunk_budget_really_makes_many_chunks(monkeypatch, masked_problem, rng):
    """Guard for the test above: 256 bytes split 40 rows of ~8 entries into many chunks, all
    padded to one size (one compiled shape)."""
    monkeypatch.setattr(nnmf_tf.halfstep, "CHUNK_BYTES", 256)
    values, mask = masked_problem((40, 17), 3, 0.5)
    ratings = SparseRatings.from_dense(values, mask)
    layout = nnmf_tf.halfstep.sparse_layout(ratings, SolverParams(rank=3, kernel="tensorflow"))
    chunks, row_sets, idle = nnmf_tf.halfstep._sparse_chunks(layout, ratings.values, rng.uniform(size=(40, 3)))
    assert len(chunks) >= 10
    assert sorted(np.concatenate(row_sets).tolist()) == list(range(40))
    padded = nnmf_tf.halfstep.MIN_PADDED_ROWS
    assert {len(chunk[0]) for chunk in chunks} == {len(idle[0])} == {padded}
    assert {len(chunk[-1]) for chunk in chunks} == {len(idle[-1])} == {padded}


@pytest.mark.parametrize(
    ("n", "expected"), [(0, 64), (1, 64), (64, 64), (65, 128), (1000, 1024), (4096, 4096), (5000, 4096)]
)
def test_chunks_are_padded_to_few_sizes(n, expected):
    """Few distinct shapes, so the solver is compiled a handful of times per process."""
    assert nnmf_tf.halfstep.CHUNK_ROWS == 4096
    assert nnmf_tf.halfstep.padded_rows(n) == expected


def test_padding_follows_the_largest_chunk(monkeypatch, masked_problem, rng):
    """Chunks cut short by the byte budget are padded to the power of two above the largest of
    them, not to CHUNK_ROWS: 300 rows in chunks of at most 100 rows pad to 128 each."""
    values, mask = masked_problem((300, 17), 3, 0.5)
    ratings = SparseRatings.from_dense(values, mask)
    d = 3
    per_row = nnmf_tf.halfstep._sparse_row_bytes(np.array([1]), d)[0]  # every row has 1-17 entries: one piece
    monkeypatch.setattr(nnmf_tf.halfstep, "CHUNK_BYTES", 100 * per_row)
    layout = nnmf_tf.halfstep.sparse_layout(ratings, SolverParams(rank=d, kernel="tensorflow"))
    chunks, row_sets, idle = nnmf_tf.halfstep._sparse_chunks(layout, ratings.values, rng.uniform(size=(300, d)))
    assert max(map(len, row_sets)) == 100 and len(row_sets) == 3
    assert {len(chunk[0]) for chunk in chunks} == {len(idle[0])} == {128}


@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("bias", [False, True], ids=["plain", "bias"])
@pytest.mark.usefixtures("kernel")
def test_mirrored_fit_equals_default(monkeypatch, masked_problem, as_ratings, mirrored, kind, bias):
    monkeypatch.setattr(nnmf_tf.halfstep, "CHUNK_BYTES", 512)
    values, mask = masked_problem((29, 21), 3, 0.4)
    ratings = as_ratings(values, mask, kind)
    params = SolverParams(rank=3, reg=0.05, bias=bias, max_iter=4)

    expected = fit(ratings, params, row_blocks=2)
    got = fit(ratings, params, strategy=mirrored, row_blocks=2)

    np.testing.assert_allclose(got.factors.user_factors, expected.factors.user_factors, **TOL)
    np.testing.assert_allclose(got.factors.item_factors, expected.factors.item_factors, **TOL)
    if bias:
        np.testing.assert_allclose(got.factors.user_bias, expected.factors.user_bias, **TOL)
        np.testing.assert_allclose(got.factors.item_bias, expected.factors.item_bias, **TOL)
    np.testing.assert_allclose(got.objective_history, expected.objective_history, rtol=1e-5)


def checker_board(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``size × size`` 0/1 checkerboard (1 where ``u + i`` is even), every entry observed but the
    diagonal. A non-negative rank-2 matrix: the withheld diagonal entries are all 1, so user
    ``u``'s best unrated item, ignoring the 1s it rated, is ``u`` itself."""
    u, i = np.indices((size, size))
    values = ((u + i) % 2 == 0).astype(float)
    return values, u != i


class NNMFBackendContract:
    """Behaviour every execution backend must show; subclasses supply :meth:`strategy`."""

    kind = "sparse"

    def strategy(self) -> tf.distribute.Strategy:
        """The backend under test."""
        raise NotImplementedError

    def ratings(self, values: np.ndarray, mask: np.ndarray) -> SparseRatings | MaskedDense:
        """The data in this class's representation."""
        return SparseRatings.from_dense(values, mask) if self.kind == "sparse" else MaskedDense(values, mask)

    def fit(self, values: np.ndarray, mask: np.ndarray, params: SolverParams) -> FitResult:
        """Fit on this backend."""
        return fit(self.ratings(values, mask), params, strategy=self.strategy())

    def test_factors_are_finite_and_non_negative(self, masked_problem):
        values, mask = masked_problem((24, 18), 3, 0.4)
        result = self.fit(values, mask, SolverParams(rank=3, reg=0.0, max_iter=5))
        for factors in (result.factors.user_factors, result.factors.item_factors):
            assert np.all(np.isfinite(factors)) and factors.min() >= 0.0

    def test_objective_is_monotone_and_ends_at_the_model_objective(self, masked_problem):
        values, mask = masked_problem((24, 18), 3, 0.4)
        params = SolverParams(rank=3, reg=0.05, max_iter=8)
        result = self.fit(values, mask, params)
        slack = 1e-6 * float(np.square(values[mask]).sum())
        history = np.array([result.initial_objective, *result.objective_history])
        assert np.all(np.diff(history) <= slack) and history[-1] < history[0]
        final = objective(self.ratings(values, mask), result.factors, params)
        np.testing.assert_allclose(history[-1], final, atol=slack)

    def test_same_seed_same_factors_other_seed_other_factors(self, masked_problem):
        values, mask = masked_problem((24, 18), 3, 0.4)
        params = SolverParams(rank=3, reg=0.05, max_iter=3)
        first, second = self.fit(values, mask, params), self.fit(values, mask, params)
        other = self.fit(values, mask, params.replace(seed=params.seed + 7))
        np.testing.assert_array_equal(first.factors.user_factors, second.factors.user_factors)
        np.testing.assert_array_equal(first.factors.item_factors, second.factors.item_factors)
        assert not np.allclose(first.factors.item_factors, other.factors.item_factors, atol=1e-3)

    def test_known_top_1_on_a_checker_board(self):
        values, mask = checker_board(10)
        result = self.fit(values, mask, SolverParams(rank=2, reg=0.01, max_iter=25))
        liked = SparseRatings.from_dense(values, mask & (values > 0))
        items, scores = top_n(result.factors, 1, exclude=liked)
        np.testing.assert_array_equal(items[:, 0], np.arange(10))
        assert scores.min() > 0.5
        metrics = ranking_metrics(items, [np.array([u]) for u in range(10)], k=1)
        assert metrics["precision"] == 1.0 and metrics["users"] == 10


class TestDefaultStrategy(NNMFBackendContract):
    def strategy(self) -> tf.distribute.Strategy:
        return make_strategy("default")


class TestDefaultStrategyDense(TestDefaultStrategy):
    kind = "dense"


class TestMirroredTwoLogicalCPUs(NNMFBackendContract):
    def strategy(self) -> tf.distribute.Strategy:
        strategy = make_strategy("mirrored")
        assert strategy.num_replicas_in_sync == 2
        return strategy


class TestMirroredTwoLogicalCPUsDense(TestMirroredTwoLogicalCPUs):
    kind = "dense"


@pytest.mark.skipif(not GPUS, reason="no GPU visible to TensorFlow")
class TestGPU(NNMFBackendContract):
    def strategy(self) -> tf.distribute.Strategy:
        return make_strategy("mirrored") if len(GPUS) > 1 else make_strategy("default")

    def fit(self, values: np.ndarray, mask: np.ndarray, params: SolverParams) -> FitResult:
        with tf.device("/GPU:0"):
            return super().fit(values, mask, params)


def test_configure_after_tensorflow_started_fails_with_the_fix():
    """In a fresh process: running an op first makes the logical-device split impossible."""
    code = (
        "import tensorflow as tf\n"
        "from nnmf_tf.device import DeviceSettings, configure\n"
        "tf.constant(1.0) + 1.0\n"
        "configure(DeviceSettings(logical_cpu_devices=2))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode != 0
    assert "call configure() before any TensorFlow op in this process" in completed.stderr


XLA_CACHE_RUN = (
    "import sys, hashlib\n"
    "import numpy as np\n"
    "from nnmf_tf.device import DeviceSettings, configure\n"
    "configure(DeviceSettings(logical_cpu_devices=2, xla_cache_dir=sys.argv[1]))\n"
    "from nnmf_tf.data import SparseRatings\n"
    "from nnmf_tf.halfstep import half_step\n"
    "from nnmf_tf.params import SolverParams\n"
    "rng = np.random.default_rng(3)\n"
    "mask = rng.random((50, 20)) < 0.4\n"
    "ratings = SparseRatings.from_dense(rng.uniform(1.0, 5.0, mask.shape), mask)\n"
    "result = half_step(ratings, rng.random((20, 4)), rng.random((50, 4)), SolverParams(rank=4, reg=0.1, kernel=\"tensorflow\"))\n"
    "print(hashlib.sha256(result.factors.tobytes()).hexdigest())\n"
)
"""A half-step in a fresh process whose XLA cache folder is ``argv[1]``; prints a hash of its factors."""


def run_with_xla_cache(folder) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [sys.executable, "-c", XLA_CACHE_RUN, str(folder)], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed


def test_xla_cache_dir_keeps_the_compiled_solver_for_the_next_process(tmp_path):
    """Two fresh processes with the same cache folder: the first writes the compiled solver
    into its TensorFlow version's subfolder; the second reads it (writes nothing) and computes
    the same bytes."""

    def run() -> str:
        return run_with_xla_cache(tmp_path).stdout.strip()

    def written() -> dict:
        return {entry.name: entry.stat().st_mtime_ns for entry in (tmp_path / f"tf-{tf.__version__}").iterdir()}

    first = run()
    entries = written()
    assert entries, "no compiled solver written to the cache folder"
    assert run() == first
    assert written() == entries, "the second process compiled again instead of reading the cache"


def test_an_unwritable_xla_cache_dir_is_skipped_with_a_warning(tmp_path):
    """The cache only saves time: a folder under a regular file cannot be created, so the
    process warns, compiles without it, and computes the same factors as with a cache."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    completed = run_with_xla_cache(blocker / "cache")
    assert "is not writable" in completed.stderr and "compiling without a cache" in completed.stderr
    assert completed.stdout.strip() == run_with_xla_cache(tmp_path / "cache").stdout.strip()


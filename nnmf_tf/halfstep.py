"""The half-step: update one side's rows given the other side's factors.

Fixing the other side's factors ``F`` (items when updating users) makes the objective
separable by row. Row ``u`` solves a small non-negative least-squares problem::

    min_z  zᵀ G_u z − 2 c_uᵀ z        subject to z_j ≥ 0 for the factor coordinates

    G_u = B + ω Σ_{i∈Ω_u} f_i f_iᵀ + diag(reg · n_u)
    c_u = Σ_{i∈Ω_u} t_ui f_i

where ``f_i`` is item ``i``'s factor row (with a trailing 1 when biases are fitted, so the
bias is one more, unconstrained, coordinate), ``t_ui`` the target (the rating, minus the
global mean and the item bias when biased), ``n_u`` the row's rating count (weighted-λ),
``B = w₀ FᵀF`` and ``ω = 1 − w₀`` under the ranking objective (``B = 0``, ``ω = 1``
otherwise).

Each subproblem is solved by projected gradient with Nesterov acceleration and adaptive
restart (O'Donoghue & Candès, 2015), step ``1/λ_max(G_u)`` (the Lipschitz constant of the
gradient), warm-started from the current row. A row stops when its projected-gradient norm
fell below ``inner_tol`` times its value at the warm start; a finished row is frozen, so a
row's result depends on its own data only — not on which rows share its chunk, block or
replica.

The same function updates the other side on the transposed problem (as scikit-learn's
coordinate-descent NMF does). Rows are processed in chunks that bound memory, and chunks
are spread over the replicas of the ``tf.distribute`` strategy given.

References
----------
Lin, C.-J. (2007). Projected gradient methods for non-negative matrix factorization.
Neural Computation 19(10).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from nnmf_tf.data import MaskedDense, Ratings, SparseRatings
from nnmf_tf.errors import check_array
from nnmf_tf.params import SolverParams

#: Bytes allowed for one chunk's per-entry outer products (sparse) or mask products (dense).
CHUNK_BYTES = 64 << 20
#: Rows per chunk, at most.
CHUNK_ROWS = 16384


@dataclass(frozen=True)
class HalfStepResult:
    """What one half-step returns.

    Attributes
    ----------
    factors : np.ndarray of float32, shape (n_rows, rank)
        The updated non-negative factor rows.
    bias : np.ndarray of float32, shape (n_rows,) or None
        The updated biases (when fitted).
    objective : float
        Σ over these rows of the data term plus this side's penalty, at the new rows. After
        the second half-step of an iteration this plus the first side's ``penalty`` is the
        full objective.
    penalty : float
        This side's regularisation term alone, at the new rows.
    pg_norm_sq : float
        Squared norm of the projected gradient at the rows given (before the update).
    inner_iters : int
        The largest number of inner steps any chunk took.
    """

    factors: np.ndarray
    bias: np.ndarray | None
    objective: float
    penalty: float
    pg_norm_sq: float
    inner_iters: int


def _lipschitz_bound(gram: tf.Tensor) -> tf.Tensor:
    """An upper bound on each Gram's largest eigenvalue, shape (rows,).

    The Grams here have non-negative entries (non-negative factors, a constant bias feature,
    a non-negative diagonal), so for any positive vector ``x`` the Collatz–Wielandt bound
    ``λ_max ≤ max_j (G x)_j / x_j`` holds; a few power iterations make ``x`` close to the
    Perron vector and the bound tight. Much cheaper than ``eigvalsh`` on many small matrices.
    """
    x = tf.ones(tf.shape(gram)[:2], gram.dtype)
    for _ in range(4):
        x = tf.einsum("rkl,rl->rk", gram, x)
        x = x / tf.maximum(tf.reduce_max(x, axis=1, keepdims=True), 1e-30) + 1e-3
    return tf.reduce_max(tf.einsum("rkl,rl->rk", gram, x) / x, axis=1)


def _solve_rows(
    gram: tf.Tensor,
    rhs: tf.Tensor,
    sq_targets: tf.Tensor,
    z0: tf.Tensor,
    nonneg: tf.Tensor,
    penalty_diag: tf.Tensor,
    max_iter: tf.Tensor,
    tol: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Accelerated projected gradient on a batch of NNLS subproblems.

    Parameters
    ----------
    gram : tf.Tensor of shape (rows, d, d)
    rhs : tf.Tensor of shape (rows, d)
    sq_targets : tf.Tensor of shape (rows,)
        Σ t², so that the returned objective is the row's true loss.
    z0 : tf.Tensor of shape (rows, d)
        Warm start.
    nonneg : tf.Tensor of bool, shape (d,)
        Which coordinates are constrained to be ≥ 0.
    penalty_diag : tf.Tensor of shape (rows, d)
        The diagonal regularisation included in ``gram`` (to report the penalty apart).

    Returns
    -------
    z : (rows, d); objective : (rows,); penalty : (rows,); pg0_sq : (rows,); iterations : ()
    """
    step = (1.0 / tf.maximum(_lipschitz_bound(gram), 1e-12))[:, None]

    def gradient(z: tf.Tensor) -> tf.Tensor:
        return tf.einsum("rkl,rl->rk", gram, z) - rhs

    def project(z: tf.Tensor) -> tf.Tensor:
        return tf.where(nonneg, tf.maximum(z, 0.0), z)

    def projected_gradient_sq(z: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
        pg = tf.where(nonneg & (z <= 0.0), tf.minimum(g, 0.0), g)
        return tf.reduce_sum(pg * pg, axis=1)

    z0 = project(z0)
    g0 = gradient(z0)
    pg0_sq = projected_gradient_sq(z0, g0)
    threshold = tol * tol * pg0_sq
    done0 = pg0_sq <= threshold

    def keep_going(i, z, gz, y, gy, t, done):
        return tf.logical_and(i < max_iter, tf.logical_not(tf.reduce_all(done)))

    def step_once(i, z, gz, y, gy, t, done):
        z_new = project(y - step * gy)
        g_new = gradient(z_new)
        restart = tf.reduce_sum((y - z_new) * (z_new - z), axis=1) > 0.0
        t_new = 0.5 * (1.0 + tf.sqrt(1.0 + 4.0 * t * t))
        beta = tf.where(restart, tf.zeros_like(t), (t - 1.0) / t_new)[:, None]
        t_new = tf.where(restart, tf.ones_like(t_new), t_new)
        # The gradient is affine, so the gradient at the extrapolated point costs no matvec.
        y_new, gy_new = z_new + beta * (z_new - z), g_new + beta * (g_new - gz)
        frozen = done[:, None]
        z_new, g_new = tf.where(frozen, z, z_new), tf.where(frozen, gz, g_new)
        y_new, gy_new = tf.where(frozen, y, y_new), tf.where(frozen, gy, gy_new)
        done_new = done | (projected_gradient_sq(z_new, g_new) <= threshold)
        return i + 1, z_new, g_new, y_new, gy_new, t_new, done_new

    iterations, z, gz, _, _, _, _ = tf.while_loop(
        keep_going, step_once, (tf.constant(0), z0, g0, z0, g0, tf.ones_like(pg0_sq), done0)
    )
    # zᵀGz − 2cᵀz + Σt² with Gz = gz + c; clamped at the true loss's lower bound, 0,
    # which float32 cancellation can cross when a row is fitted exactly.
    objective = tf.maximum(tf.reduce_sum(z * (gz - rhs), axis=1) + sq_targets, 0.0)
    penalty = tf.reduce_sum(penalty_diag * z * z, axis=1)
    return z, objective, penalty, pg0_sq, iterations


def _penalty_diag(counts: tf.Tensor, reg_diag: tf.Tensor) -> tf.Tensor:
    return tf.cast(counts, tf.float32)[:, None] * reg_diag[None, :]


_COMMON_SIGNATURE = [
    tf.TensorSpec([None, None], tf.float32, name="current"),
    tf.TensorSpec([None, None], tf.float32, name="features"),
    tf.TensorSpec([None], tf.float32, name="reg_diag"),
    tf.TensorSpec([None], tf.bool, name="nonneg"),
    tf.TensorSpec([None, None], tf.float32, name="base_gram"),
    tf.TensorSpec([], tf.float32, name="obs_weight"),
    tf.TensorSpec([], tf.int32, name="max_iter"),
    tf.TensorSpec([], tf.float32, name="tol"),
]


@tf.function(
    input_signature=[
        tf.TensorSpec([None], tf.int64, name="row_lengths"),
        tf.TensorSpec([None], tf.int32, name="cols"),
        tf.TensorSpec([None], tf.float32, name="targets"),
        *_COMMON_SIGNATURE,
    ]
)
def _sparse_chunk(row_lengths, cols, targets, current, features, reg_diag, nonneg, base_gram, obs_weight, max_iter, tol):
    """Solve the rows of one chunk of entries (``row_lengths`` entries per row, in order).

    Each row's feature rows are padded to the chunk's longest row, so the Grams are one
    batched matmul; chunks hold rows of similar length, so the padding stays small.
    """
    padded = tf.RaggedTensor.from_row_lengths(tf.gather(features, cols), row_lengths).to_tensor()
    padded_targets = tf.RaggedTensor.from_row_lengths(targets, row_lengths).to_tensor()
    penalty_diag = _penalty_diag(row_lengths, reg_diag)
    gram = (
        base_gram[None]
        + obs_weight * tf.matmul(padded, padded, transpose_a=True)
        + tf.linalg.diag(penalty_diag)
    )
    rhs = tf.einsum("rn,rnk->rk", padded_targets, padded)
    sq_targets = tf.reduce_sum(padded_targets * padded_targets, axis=1)
    return _solve_rows(gram, rhs, sq_targets, current, nonneg, penalty_diag, max_iter, tol)


@tf.function(
    input_signature=[
        tf.TensorSpec([None, None], tf.float32, name="targets"),
        tf.TensorSpec([None, None], tf.float32, name="mask"),
        *_COMMON_SIGNATURE,
    ]
)
def _dense_chunk(targets, mask, current, features, reg_diag, nonneg, base_gram, obs_weight, max_iter, tol):
    """Solve the rows of one chunk of a masked dense matrix (matmul form of the Grams)."""
    d = tf.shape(features)[1]
    outer = tf.reshape(features[:, :, None] * features[:, None, :], [tf.shape(features)[0], d * d])
    penalty_diag = _penalty_diag(tf.reduce_sum(mask, axis=1), reg_diag)
    gram = (
        base_gram[None]
        + obs_weight * tf.reshape(tf.matmul(mask, outer), [-1, d, d])
        + tf.linalg.diag(penalty_diag)
    )
    masked_targets = mask * targets
    rhs = tf.matmul(masked_targets, features)
    sq_targets = tf.reduce_sum(masked_targets * targets, axis=1)
    return _solve_rows(gram, rhs, sq_targets, current, nonneg, penalty_diag, max_iter, tol)


def _length_sorted_chunks(counts: np.ndarray, width: int) -> list[np.ndarray]:
    """Group rows, in order of increasing entry count, into chunks whose padded size
    (rows × longest row × ``width`` floats) stays within ``CHUNK_BYTES``.

    Returns the row indices of each chunk.
    """
    order = np.argsort(counts, kind="stable")
    sorted_counts = counts[order]
    budget = max(1, CHUNK_BYTES // (4 * width))
    chunks, start, n = [], 0, len(order)
    while start < n:
        low, high = start + 1, min(n, start + CHUNK_ROWS)
        while low < high:  # largest stop whose padded size fits (at least one row)
            mid = (low + high + 1) // 2
            if (mid - start) * max(int(sorted_counts[mid - 1]), 1) <= budget:
                low = mid
            else:
                high = mid - 1
        chunks.append(order[start:low])
        start = low
    return chunks


def _entries_of(rows: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """Positions of all entries of ``rows`` (CSR ``splits``), row after row."""
    starts, lengths = splits[rows], splits[rows + 1] - splits[rows]
    offsets = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum())) - np.repeat(offsets, lengths) + np.repeat(starts, lengths)


def _sparse_chunks(ratings: SparseRatings, targets: np.ndarray, current: np.ndarray, d: int) -> tuple[list[tuple], list[np.ndarray]]:
    """The kernel inputs of each chunk of rows, and each chunk's row indices."""
    counts = ratings.row_counts()
    row_sets = _length_sorted_chunks(counts, d)
    chunks = []
    for rows in row_sets:
        entries = _entries_of(rows, ratings.row_splits)
        chunks.append((counts[rows].astype(np.int64), ratings.cols[entries], targets[entries], current[rows]))
    return chunks, row_sets


def _dense_chunks(ratings: MaskedDense, targets: np.ndarray, current: np.ndarray, d: int) -> tuple[list[tuple], list[np.ndarray]]:
    """Consecutive rows in chunks whose mask products stay within ``CHUNK_BYTES``."""
    n_rows, n_cols = ratings.shape
    size = int(min(CHUNK_ROWS, max(1, CHUNK_BYTES // (4 * max(n_cols, d * d)))))
    mask = ratings.mask.astype(np.float32)
    row_sets = [np.arange(s, min(s + size, n_rows)) for s in range(0, n_rows, size)]
    return [(targets[rows], mask[rows], current[rows]) for rows in row_sets], row_sets


def _empty_like(chunk: tuple) -> tuple:
    return tuple(np.zeros((0,) + np.shape(part)[1:], dtype=np.asarray(part).dtype) for part in chunk)


def _run_chunks(kernel, chunks: list[tuple], shared: tuple, strategy: tf.distribute.Strategy) -> list[tuple]:
    """Run ``kernel(*chunk, *shared)`` for every chunk, spreading chunks over the replicas."""
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return [kernel(*chunk, *shared) for chunk in chunks]
    results: list[tuple] = []
    for first in range(0, len(chunks), replicas):
        group = chunks[first : first + replicas]
        group = group + [_empty_like(group[0])] * (replicas - len(group))
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda context, group=group: tuple(tf.constant(part) for part in group[context.replica_id_in_sync_group])
        )
        outputs = strategy.run(lambda chunk: kernel(*chunk, *shared), args=(per_replica,))
        local = [strategy.experimental_local_results(part) for part in outputs]
        real = min(replicas, len(chunks) - first)
        results.extend(tuple(part[r] for part in local) for r in range(real))
    return results


def half_step(
    ratings: Ratings,
    other: np.ndarray,
    current: np.ndarray,
    params: SolverParams,
    *,
    other_bias: np.ndarray | None = None,
    current_bias: np.ndarray | None = None,
    global_mean: float = 0.0,
    strategy: tf.distribute.Strategy | None = None,
) -> HalfStepResult:
    """Update the rows of ``current`` (and their biases) given the other side's factors.

    Parameters
    ----------
    ratings : SparseRatings or MaskedDense of shape (n_rows, n_other)
        This side's observed entries; column ``j`` refers to row ``j`` of ``other``. To update
        the item side, pass ``ratings.transpose()``.
    other : np.ndarray of shape (n_other, rank)
        The other side's factors, held fixed. For the ranking objective it must hold *every*
        item of the model (the all-items Gram is built from it).
    current : np.ndarray of shape (n_rows, rank)
        This side's current factors: the warm start.
    params : SolverParams
        ``rank``, ``reg``, ``bias``, ``bias_reg``, ``inner_max_iter``, ``inner_tol``,
        ``objective`` and ``unobserved_weight`` are used.
    other_bias, current_bias : np.ndarray of shape (n_other,) / (n_rows,), optional
        Required when ``params.bias``.
    global_mean : float, default=0.0
        μ, subtracted from every rating when ``params.bias``.
    strategy : tf.distribute.Strategy, optional
        Chunks of rows are spread over its replicas; default: the default strategy.

    Returns
    -------
    HalfStepResult
    """
    n_rows, n_other = ratings.shape
    k = params.rank
    other = check_array(other, label="other factors", ndim=2, shape=(n_other, k)).astype(np.float32)
    current = check_array(current, label="current factors", ndim=2, shape=(n_rows, k)).astype(np.float32)
    if params.bias:
        if other_bias is None or current_bias is None:
            raise ValueError("other_bias and current_bias are required when params.bias is true")
        other_bias = check_array(other_bias, label="other bias", ndim=1, shape=(n_other,)).astype(np.float32)
        current_bias = check_array(current_bias, label="current bias", ndim=1, shape=(n_rows,)).astype(np.float32)
        features = np.hstack([other, np.ones((n_other, 1), np.float32)])
        start = np.hstack([current, current_bias[:, None]])
        reg_diag = np.array([params.reg] * k + [params.effective_bias_reg], np.float32)
        nonneg = np.array([True] * k + [False])
    else:
        features, start = other, current
        reg_diag = np.full(k, params.reg, np.float32)
        nonneg = np.ones(k, bool)
    d = features.shape[1]

    if params.objective == "ranking":
        w0 = params.unobserved_weight
        base_gram = (w0 * features.astype(np.float64).T @ features).astype(np.float32)
        obs_weight = 1.0 - w0
    else:
        base_gram = np.zeros((d, d), np.float32)
        obs_weight = 1.0

    if isinstance(ratings, SparseRatings):
        targets = ratings.values
        if params.bias:
            targets = targets - np.float32(global_mean) - other_bias[ratings.cols]
        (chunks, row_sets), kernel = _sparse_chunks(ratings, targets, start, d), _sparse_chunk
    else:
        targets = ratings.values
        if params.bias:
            targets = targets - np.float32(global_mean) - other_bias[None, :]
        (chunks, row_sets), kernel = _dense_chunks(ratings, targets.astype(np.float32), start, d), _dense_chunk

    shared = (
        tf.constant(features),
        tf.constant(reg_diag),
        tf.constant(nonneg),
        tf.constant(base_gram),
        tf.constant(obs_weight, tf.float32),
        tf.constant(params.inner_max_iter, tf.int32),
        tf.constant(params.inner_tol, tf.float32),
    )
    results = _run_chunks(kernel, chunks, shared, strategy or tf.distribute.get_strategy())
    z = start.copy()
    for rows, result in zip(row_sets, results):
        z[rows] = result[0].numpy()
    sums = [sum(float(r[i].numpy().sum(dtype=np.float64)) for r in results) for i in (1, 2, 3)]
    inner = max((int(r[4].numpy()) for r in results), default=0)
    # A row without entries has a zero loss whatever its value: give it the neutral zero,
    # so that it predicts the fallback (global mean plus the other side's bias).
    z[ratings.row_counts() == 0] = 0.0
    return HalfStepResult(
        factors=np.ascontiguousarray(z[:, :k]),
        bias=np.ascontiguousarray(z[:, k]) if params.bias else None,
        objective=float(sums[0]),
        penalty=float(sums[1]),
        pg_norm_sq=float(sums[2]),
        inner_iters=inner,
    )

"""The half-step: update one side's rows given the other side's factors.

Fixing the other side's factors ``F`` (items when updating users) makes the objective
separable by row. Row ``u`` solves a small non-negative least-squares problem::

    min_z  zᵀ G_u z − 2 c_uᵀ z        subject to z_j ≥ 0 for the factor coordinates

    G_u = B + ω Σ_{i∈Ω_u} f_i f_iᵀ + diag(p_u)
    c_u = Σ_{i∈Ω_u} t_ui f_i + p_u ⊙ m

where ``f_i`` is item ``i``'s factor row (with a trailing 1 when biases are fitted, so the
bias is one more, unconstrained, coordinate), ``t_ui`` the target (the rating, minus the
global mean and the item bias when biased), ``B = w₀ FᵀF`` and ``ω = 1 − w₀`` under the
ranking objective (``B = 0``, ``ω = 1`` otherwise). The penalty ``Σ_j p_uj (z_j − m_j)²``
has weights ``p_uj = reg · n_u^reg_exponent`` on the factors and
``bias_reg · n_u^bias_reg_exponent`` on the bias (``n_u`` the row's rating count; by default
both exponents are 1: weighted-λ) and centre ``m_j = factor_center`` on the factors,
``SolverParams.bias_center`` on the bias (by default 0).

The Grams are built without padding every row to the longest: a row's entries are cut into
pieces of :data:`PIECE` entries, each piece's Gram is one small matmul, and a row's Gram is
the sum over its pieces — ``nnz · d²`` work plus at most one padded piece per row.

Each subproblem is solved by projected gradient with Nesterov acceleration and adaptive
restart (O'Donoghue & Candès, 2015), step ``1/λ_max(G_u)`` (the Lipschitz constant of the
gradient), warm-started from the current row; each step evaluates the gradient once, at the
extrapolated point. A row stops when its gradient mapping (the projected step it takes,
divided by the step size) fell below ``inner_tol`` times its projected-gradient norm at the
warm start; a finished row is frozen, so a row's result depends on its own data only — not
on which rows share its chunk, block or replica.

On CPUs, sparse ratings go through a native kernel (:mod:`nnmf_tf.native`) that builds
each row's Gram and solves its subproblem in one pass, the same computation 4.8-8.7x faster
than the TensorFlow ops below; ``SolverParams.kernel`` chooses (see
:func:`uses_native_kernel`). The TensorFlow ops serve GPUs, dense ratings and machines
where the native kernel cannot be built.

The same function updates the other side on the transposed problem (as scikit-learn's
coordinate-descent NMF does). The TensorFlow ops process rows in chunks that bound memory;
chunks are spread over the replicas of the ``tf.distribute`` strategy given (or, with one
replica, over threads). Their Grams are built op by op (the shapes vary with the row
lengths); their solver is compiled by XLA for chunks padded to a power-of-two number of
rows. The native kernel takes one chunk per replica and spreads its rows over the intra-op
threads itself.

References
----------
Lin, C.-J. (2007). Projected gradient methods for non-negative matrix factorization.
Neural Computation 19(10).
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from nnmf_tf import native
from nnmf_tf.data import MaskedDense, Ratings, SparseRatings
from nnmf_tf.device import compute_threads
from nnmf_tf.errors import check_array, check_finite
from nnmf_tf.halfstep_native import NativeLayout, native_chunks, native_layout, solve
from nnmf_tf.params import SolverParams

#: Bytes allowed for one chunk's working set: padded pieces and Grams (sparse) or mask
#: products (dense).
CHUNK_BYTES = 64 << 20
#: Rows per chunk, at most. Every chunk of a half-step is padded to the same number of rows
#: (this, or the power of two above its largest chunk), so the compiled solver sees few
#: shapes per rank. On 2 cores a 5M-rating user half-step (8 blocks of ~25k users) takes
#: 0.80 s with 4096-row chunks against 0.94 s with 1024: fewer calls, less fixed cost each.
CHUNK_ROWS = 4096
#: Fewest rows a chunk is padded to, so that small problems share one compiled shape.
MIN_PADDED_ROWS = 64
#: Entries per piece. A row's entries are cut into pieces of this many, the last one padded
#: with zeros, so the Grams are one batched matmul over pieces whatever the row lengths.
PIECE = 32


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
        Squared norm of the projected gradient of the rows' loss (data term plus penalty) at
        the rows given (before the update).
    inner_iters : int
        The largest number of inner steps any row took.
    row_steps : int
        The inner steps of all rows together (their useful work: a row stops at its own
        tolerance).
    """

    factors: np.ndarray
    bias: np.ndarray | None
    objective: float
    penalty: float
    pg_norm_sq: float
    inner_iters: int
    row_steps: int


def _lipschitz_bound(gram: tf.Tensor) -> tf.Tensor:
    """An upper bound on each Gram's largest eigenvalue, shape (rows,).

    The Grams here have non-negative entries (non-negative factors, a constant bias feature,
    a non-negative diagonal), so for any positive vector ``x`` the Collatz–Wielandt bound
    ``λ_max ≤ max_j (G x)_j / x_j`` holds; a few power iterations make ``x`` close to the
    Perron vector and the bound tight. Much cheaper than ``eigvalsh`` on many small matrices.
    """
    x = tf.ones(tf.shape(gram)[:2], gram.dtype)
    for _ in range(4):
        x = tf.linalg.matvec(gram, x)
        x = x / tf.maximum(tf.reduce_max(x, axis=1, keepdims=True), 1e-30) + 1e-3
    return tf.reduce_max(tf.linalg.matvec(gram, x) / x, axis=1)


def _solve_rows(
    gram: tf.Tensor,
    rhs: tf.Tensor,
    sq_targets: tf.Tensor,
    z0: tf.Tensor,
    lower: tf.Tensor,
    penalty_diag: tf.Tensor,
    center: tf.Tensor,
    max_iter: tf.Tensor,
    tol: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Accelerated projected gradient on a batch of NNLS subproblems.

    Parameters
    ----------
    gram : tf.Tensor of shape (rows, d, d)
    rhs : tf.Tensor of shape (rows, d)
    sq_targets : tf.Tensor of shape (rows,)
        The constant of the row's loss (Σ t² plus the penalty at 0), so that the returned
        objective is the row's true loss.
    z0 : tf.Tensor of shape (rows, d)
        Warm start.
    lower : tf.Tensor of shape (d,)
        Lower bound of each coordinate: 0 for factors, ``-inf`` for the free bias.
    penalty_diag, center : tf.Tensor of shape (rows, d) and (d,)
        The diagonal regularisation included in ``gram`` and its centre (to report the
        penalty apart).

    Returns
    -------
    z : (rows, d); objective : (rows,); penalty : (rows,); pg0_sq : (rows,); steps : (rows,)
        The steps each row took before it stopped.
    """
    step = (1.0 / tf.maximum(_lipschitz_bound(gram), 1e-12))[:, None]

    def gradient(z: tf.Tensor) -> tf.Tensor:
        return tf.linalg.matvec(gram, z) - rhs

    def projected_gradient_sq(z: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
        pg = tf.where(z <= lower, tf.minimum(g, 0.0), g)
        return tf.reduce_sum(pg * pg, axis=1)

    z0 = tf.maximum(z0, lower)
    pg0_sq = projected_gradient_sq(z0, gradient(z0))
    threshold = tol * tol * pg0_sq
    done0 = pg0_sq <= threshold
    # A row is done when its step from the extrapolated point, divided by the step size (the
    # gradient mapping), is within the tolerance.
    move_threshold = threshold * tf.square(step[:, 0])

    def keep_going(i, z, y, t, done, steps):
        return tf.logical_and(i < max_iter, tf.logical_not(tf.reduce_all(done)))

    def step_once(i, z, y, t, done, steps):
        # One matvec per step, at y. A finished row has y = z and keeps z: it stays exactly
        # where it is.
        z_new = tf.where(done[:, None], z, tf.maximum(y - step * gradient(y), lower))
        move = y - z_new
        done_new = done | (tf.reduce_sum(move * move, axis=1) <= move_threshold)
        dz = z_new - z
        restart = tf.reduce_sum(move * dz, axis=1) > 0.0
        t_new = 0.5 + tf.sqrt(0.25 + t * t)
        beta = tf.where(restart | done_new, 0.0, (t - 1.0) / t_new)[:, None]
        t_new = tf.where(restart, 1.0, t_new)
        return i + 1, z_new, z_new + beta * dz, t_new, done_new, steps + tf.cast(tf.logical_not(done), tf.int32)

    _, z, _, _, _, steps = tf.while_loop(
        keep_going, step_once, (tf.constant(0), z0, z0, tf.ones_like(pg0_sq), done0, tf.zeros_like(done0, tf.int32))
    )
    gz = gradient(z)
    # zᵀGz − 2cᵀz + constant with Gz = gz + c; clamped at the true loss's lower bound, 0,
    # which float32 cancellation can cross when a row is fitted exactly.
    objective = tf.maximum(tf.reduce_sum(z * (gz - rhs), axis=1) + sq_targets, 0.0)
    penalty = tf.reduce_sum(penalty_diag * tf.square(z - center), axis=1)
    return z, objective, penalty, pg0_sq, steps


def _regularised_solve(
    gram, rhs, sq_targets, counts, current, reg_diag, reg_power, center, lower, base_gram, obs_weight, max_iter, tol
):
    """Add the ranking objective's base Gram and the penalty ``Σ_j p_j (z_j − center_j)²``,
    ``p_j = reg_j · n^power_j`` (0 for a row without entries), then solve the rows."""
    n = tf.cast(counts, tf.float32)[:, None]
    penalty_diag = tf.where(n > 0.0, reg_diag * tf.pow(n, reg_power), 0.0)
    gram = base_gram[None] + obs_weight * gram + tf.linalg.diag(penalty_diag)
    rhs = rhs + penalty_diag * center
    sq_targets = sq_targets + tf.reduce_sum(penalty_diag * center * center, axis=1)
    return _solve_rows(gram, rhs, sq_targets, current, lower, penalty_diag, center, max_iter, tol)


#: The subproblems' solver compiled with XLA, which fuses each step's matvec and elementwise
#: updates into one pass over the rows (about 3× faster than op by op on CPU). XLA compiles
#: once per input shape, so the chunks are padded to a few sizes (see :func:`padded_rows`).
_compiled_solve = tf.function(_regularised_solve, jit_compile=True)


_COMMON_SIGNATURE = [
    tf.TensorSpec([None, None], tf.float32, name="current"),
    tf.TensorSpec([None, None], tf.float32, name="features"),
    tf.TensorSpec([None], tf.float32, name="reg_diag"),
    tf.TensorSpec([None], tf.float32, name="reg_power"),
    tf.TensorSpec([None], tf.float32, name="center"),
    tf.TensorSpec([None], tf.float32, name="lower"),
    tf.TensorSpec([None, None], tf.float32, name="base_gram"),
    tf.TensorSpec([], tf.float32, name="obs_weight"),
    tf.TensorSpec([], tf.int32, name="max_iter"),
    tf.TensorSpec([], tf.float32, name="tol"),
]


@tf.function(
    input_signature=[
        tf.TensorSpec([None], tf.int64, name="counts"),
        tf.TensorSpec([None], tf.int32, name="piece_rows"),
        tf.TensorSpec([None, None], tf.int32, name="piece_cols"),
        tf.TensorSpec([None, None], tf.float32, name="piece_targets"),
        *_COMMON_SIGNATURE,
    ]
)
def _sparse_chunk(
    counts, piece_rows, piece_cols, piece_targets, current, features, reg_diag, reg_power, center, lower, base_gram,
    obs_weight, max_iter, tol,
):
    """Solve the rows of one chunk given as pieces of entries (see :func:`_pieces`).

    Column ``n_other`` (one past the last) marks padding; it gathers a zero feature row.
    Each piece's Gram is one small matmul; a row's Gram is the sum over its pieces. The
    pieces come in row order, so the sums are sorted segment sums (one pass, 1.3 against
    3.0 ms for an item chunk of 13k pieces at 5M); a padding piece of the last row makes
    them cover every row of the chunk.
    """
    last_row = tf.shape(current)[:1] - 1
    piece_rows = tf.concat([piece_rows, last_row], axis=0)
    piece_cols = tf.pad(piece_cols, [[0, 1], [0, 0]], constant_values=tf.shape(features)[0])
    piece_targets = tf.pad(piece_targets, [[0, 1], [0, 0]])
    padded = tf.gather(tf.pad(features, [[0, 1], [0, 0]]), piece_cols)
    gram = tf.math.segment_sum(tf.matmul(padded, padded, transpose_a=True), piece_rows)
    rhs = tf.math.segment_sum(tf.linalg.matvec(padded, piece_targets, transpose_a=True), piece_rows)
    sq_targets = tf.math.segment_sum(tf.reduce_sum(tf.square(piece_targets), axis=1), piece_rows)
    return _compiled_solve(
        gram, rhs, sq_targets, counts, current, reg_diag, reg_power, center, lower, base_gram, obs_weight, max_iter, tol
    )


@tf.function(
    input_signature=[
        tf.TensorSpec([None, None], tf.float32, name="targets"),
        tf.TensorSpec([None, None], tf.float32, name="mask"),
        *_COMMON_SIGNATURE,
    ]
)
def _dense_chunk(
    targets, mask, current, features, reg_diag, reg_power, center, lower, base_gram, obs_weight, max_iter, tol
):
    """Solve the rows of one chunk of a masked dense matrix (matmul form of the Grams)."""
    d = tf.shape(features)[1]
    outer = tf.reshape(features[:, :, None] * features[:, None, :], [tf.shape(features)[0], d * d])
    gram = tf.reshape(tf.matmul(mask, outer), [-1, d, d])
    masked_targets = mask * targets
    rhs = tf.matmul(masked_targets, features)
    sq_targets = tf.reduce_sum(masked_targets * targets, axis=1)
    counts = tf.reduce_sum(mask, axis=1)
    return _compiled_solve(
        gram, rhs, sq_targets, counts, current, reg_diag, reg_power, center, lower, base_gram, obs_weight, max_iter, tol
    )


@functools.lru_cache(maxsize=16)
def _solver_constants(params: SolverParams) -> tuple[tf.Tensor, ...]:
    """Each coordinate's penalty weight, exponent, centre and lower bound (the bias, when
    fitted, is the last coordinate: free), then the inner step limit and tolerance, as
    tensors. They depend on the parameters alone, so a fit converts them once."""
    k = params.rank
    reg_diag, reg_power = [params.reg] * k, [params.reg_exponent] * k
    center, lower = [params.factor_center] * k, [0.0] * k
    if params.bias:
        reg_diag.append(params.effective_bias_reg)
        reg_power.append(params.bias_reg_exponent)
        center.append(params.bias_center)
        lower.append(-np.inf)
    return (
        *(tf.constant(part, tf.float32) for part in (reg_diag, reg_power, center, lower)),
        tf.constant(params.inner_max_iter, tf.int32),
        tf.constant(params.inner_tol, tf.float32),
    )


@functools.lru_cache(maxsize=16)
def _unweighted(d: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The rating objective's base Gram (zero) and weight of observed entries (one), as
    tensors: converted once per width."""
    return tf.zeros((d, d), tf.float32), tf.constant(1.0, tf.float32)


@functools.lru_cache(maxsize=1)
def _default_device() -> str:
    """Where the default strategy places ops: the first GPU, if there is one. Fixed once
    TensorFlow has started, so looked up once."""
    return next((device.name for device in tf.config.list_logical_devices("GPU")), "/device:CPU:0")


def uses_native_kernel(params: SolverParams, strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether :func:`half_step` solves sparse ratings with the native kernel.

    ``params.kernel`` ``"tensorflow"``: never. ``"auto"``: when the strategy runs on CPUs only,
    the row width (rank, plus one with biases) is at most :data:`nnmf_tf.native.MAX_WIDTH`
    and the kernel builds here. ``"native"``: always, and an error where ``"auto"`` would
    fall back. The first call in a process on a machine without a cached build compiles the
    kernel (about 15 s; :mod:`nnmf_tf.native`).
    """
    if params.kernel == "tensorflow":
        return False
    forced = params.kernel == "native"
    d = params.rank + int(params.bias)
    if d > native.MAX_WIDTH:
        if forced:
            raise ValueError(f"kernel 'native' handles rank (+1 with bias) up to {native.MAX_WIDTH}; got {d}")
        return False
    strategy = strategy or tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1:
        devices = list(strategy.extended.worker_devices)
    else:
        devices = [_default_device()]
    if not all(tf.DeviceSpec.from_string(device).device_type in (None, "CPU") for device in devices):
        if forced:
            raise ValueError(f"kernel 'native' runs on CPUs only; this strategy runs on {devices}")
        return False
    if native.solve_rows_op() is None:
        if forced:
            raise RuntimeError(f"kernel 'native' is unavailable here: {native.unavailable_reason()}")
        return False
    return True


#: The native kernel's call as a graph function, for ``strategy.run`` across replicas (one
#: replica calls :func:`nnmf_tf.halfstep_native.solve` directly).
_native_chunk = tf.function(
    solve,
    input_signature=[
        tf.TensorSpec([None], tf.int64, name="row_splits"),
        tf.TensorSpec([None], tf.int32, name="cols"),
        tf.TensorSpec([None], tf.float32, name="targets"),
        *_COMMON_SIGNATURE,
    ],
)


def _pieces(splits: np.ndarray, cols: np.ndarray, n_cols: int, padding: int) -> tuple[np.ndarray, ...]:
    """The entries of consecutive rows (CSR ``splits``) cut into pieces of ``PIECE`` entries.

    Returns
    -------
    piece_rows : np.ndarray of int32, shape (pieces,)
        The row of each piece, counted from the first row; ascending (the kernel sums in
        sorted segments).
    piece_cols : np.ndarray of int32, shape (pieces, PIECE)
        The column of each entry; ``n_cols`` where the last piece of a row is padded.
    piece_entries : np.ndarray of int32 or int64, shape (pieces, PIECE)
        The position of each entry in ``cols`` (to gather its target); ``padding`` where
        padded.
    """
    lengths = np.diff(splits)
    per_row = -(-lengths // PIECE)
    piece_rows = np.repeat(np.arange(len(lengths), dtype=np.int32), per_row)
    first_piece = np.cumsum(per_row) - per_row
    first_entry = splits[:-1][piece_rows] + (np.arange(len(piece_rows)) - first_piece[piece_rows]) * PIECE
    entries = first_entry[:, None] + np.arange(PIECE)[None, :]
    valid = entries < splits[1:][piece_rows][:, None]
    entries = np.where(valid, entries, padding)
    piece_cols = np.where(valid, cols[np.where(valid, entries, 0)], n_cols).astype(np.int32)
    index_type = np.int32 if padding < np.iinfo(np.int32).max else np.int64
    return piece_rows, piece_cols, entries.astype(index_type)


def padded_rows(n: int) -> int:
    """Rows every chunk of a half-step is padded to when its largest chunk has ``n`` rows:
    the next power of two, at least :data:`MIN_PADDED_ROWS`, at most :data:`CHUNK_ROWS`. A
    process thus compiles the solver for a few shapes per rank whatever its data."""
    return min(CHUNK_ROWS, max(MIN_PADDED_ROWS, 1 << max(n - 1, 0).bit_length()))


def _pad_rows(part: np.ndarray, n: int) -> np.ndarray:
    """``part`` with zero rows appended up to ``n`` rows. A zero row (no entries, zero start)
    has a zero projected gradient, so the solver finishes it before the first step."""
    return np.concatenate([part, np.zeros((n - len(part),) + part.shape[1:], part.dtype)])


def _chunk_bounds(costs: np.ndarray) -> list[range]:
    """Consecutive ranges of rows whose summed ``costs`` (bytes) stay within ``CHUNK_BYTES``
    and whose length stays within ``CHUNK_ROWS`` (at least one row each)."""
    total = np.concatenate([[0], np.cumsum(costs)])
    row_sets, start, n = [], 0, len(costs)
    while start < n:
        stop = int(np.searchsorted(total, total[start] + CHUNK_BYTES, side="right")) - 1
        stop = min(max(stop, start + 1), start + CHUNK_ROWS, n)
        row_sets.append(range(start, stop))
        start = stop
    return row_sets


def _sparse_row_bytes(counts: np.ndarray, d: int) -> np.ndarray:
    """Working-set bytes of each row of the sparse kernel, given its entry count: each piece's
    features, columns, targets and Gram (float32s), the row's Gram and the solver's vectors."""
    pieces = -(-counts // PIECE)
    return 4 * (pieces * (PIECE * (d + 2) + d * d) + 4 * d * d)


@dataclass(frozen=True)
class SparseLayout:
    """How the sparse kernel cuts one matrix: rows into chunks, each chunk's entries into pieces.

    It depends on the matrix's sparsity pattern and the solve's width ``d`` only (the rank,
    plus one with biases), never on factors or targets, so an iterative fit builds it once
    per matrix (:func:`sparse_layout`) and hands it to every :func:`half_step`: building it
    is about a fifth of a half-step's time.

    Attributes
    ----------
    shape, nnz, d
        The matrix and width it was built for (checked by :func:`half_step`).
    row_sets : tuple of range
        The rows of each chunk.
    chunks : tuple of (counts, piece_rows, piece_cols, piece_entries)
        Per chunk: entry counts of its rows padded to ``padded_rows`` rows, and its pieces
        (see :func:`_pieces`; ``piece_entries`` is ``nnz`` where padded).
    padded_rows : int
        Rows every chunk is padded to (see :func:`padded_rows`).
    """

    shape: tuple[int, int]
    nnz: int
    d: int
    row_sets: tuple[range, ...]
    chunks: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...]
    padded_rows: int


def sparse_layout(
    ratings: SparseRatings, params: SolverParams, strategy: tf.distribute.Strategy | None = None
) -> SparseLayout | NativeLayout:
    """The layout of ``ratings`` for half-steps with ``params`` (its rank, whether biases are
    fitted, its kernel) under ``strategy``: a :class:`NativeLayout` where the native kernel
    runs (:func:`uses_native_kernel`), else a :class:`SparseLayout`."""
    d = params.rank + int(params.bias)
    strategy = strategy or tf.distribute.get_strategy()
    if uses_native_kernel(params, strategy):
        return native_layout(ratings, d, strategy.num_replicas_in_sync)
    counts = ratings.row_counts()
    row_sets = _chunk_bounds(_sparse_row_bytes(counts, d))
    n = padded_rows(max(map(len, row_sets), default=0))

    def chunk(rows: range) -> tuple:
        splits = ratings.row_splits[rows.start : rows.stop + 1]
        return (_pad_rows(counts[rows.start : rows.stop], n), *_pieces(splits, ratings.cols, ratings.shape[1], ratings.nnz))

    return SparseLayout(ratings.shape, ratings.nnz, d, tuple(row_sets), tuple(chunk(rows) for rows in row_sets), n)


def _sparse_chunks(
    layout: SparseLayout, targets: np.ndarray, current: np.ndarray
) -> tuple[list[tuple], list[range], tuple]:
    """The kernel inputs of each chunk of ``layout`` given this half-step's targets and warm
    start, each chunk's rows, and a chunk without rows (for idle replicas)."""
    n, d = layout.padded_rows, current.shape[1]
    padded_targets = np.append(targets.astype(np.float32, copy=False), np.float32(0.0))
    chunks = [
        (counts, piece_rows, piece_cols, padded_targets[entries], _pad_rows(current[rows.start : rows.stop], n))
        for rows, (counts, piece_rows, piece_cols, entries) in zip(layout.row_sets, layout.chunks)
    ]
    idle = (
        np.zeros(n, np.int64),
        np.zeros(0, np.int32),
        np.zeros((0, PIECE), np.int32),
        np.zeros((0, PIECE), np.float32),
        np.zeros((n, d), np.float32),
    )
    return chunks, list(layout.row_sets), idle


def _dense_chunks(
    ratings: MaskedDense, targets: np.ndarray, current: np.ndarray, d: int
) -> tuple[list[tuple], list[range], tuple]:
    """Consecutive rows in chunks whose mask products stay within ``CHUNK_BYTES``; as
    :func:`_sparse_chunks`."""
    n_rows, n_cols = ratings.shape
    mask = ratings.mask.astype(np.float32)
    row_sets = _chunk_bounds(np.full(n_rows, 4 * max(n_cols, d * d)))
    n = padded_rows(max(map(len, row_sets), default=0))

    def chunk(rows: range) -> tuple:
        return tuple(_pad_rows(part[rows.start : rows.stop], n) for part in (targets, mask, current))

    return [chunk(rows) for rows in row_sets], row_sets, chunk(range(0))


def _run_chunks(
    kernel, chunks: list[tuple], idle: tuple, shared: tuple, strategy: tf.distribute.Strategy
) -> list[tuple]:
    """Run ``kernel(*chunk, *shared)`` for every chunk, spreading chunks over the replicas
    (a replica left without a chunk runs ``idle``).

    With one replica, chunks run concurrently on as many threads as TensorFlow has intra-op
    threads: much of a chunk's time is in single-threaded compiled loops, so two chunks at
    once use two cores (1.4–1.6× faster half-steps on 2 cores). Each chunk's result depends
    on its own rows only, so the order of execution does not change it.
    """
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        threads = min(len(chunks), compute_threads()) if len(chunks) > 1 else 1
        if threads <= 1:
            return [kernel(*chunk, *shared) for chunk in chunks]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda chunk: kernel(*chunk, *shared), chunks))
    results: list[tuple] = []
    for first in range(0, len(chunks), replicas):
        group = chunks[first : first + replicas]
        group = group + [idle] * (replicas - len(group))
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
    other: np.ndarray | tf.Tensor,
    current: np.ndarray,
    params: SolverParams,
    *,
    other_bias: np.ndarray | None = None,
    current_bias: np.ndarray | None = None,
    global_mean: float = 0.0,
    strategy: tf.distribute.Strategy | None = None,
    layout: SparseLayout | NativeLayout | None = None,
) -> HalfStepResult:
    """Update the rows of ``current`` (and their biases) given the other side's factors.

    Parameters
    ----------
    ratings : SparseRatings or MaskedDense of shape (n_rows, n_other)
        This side's observed entries; column ``j`` refers to row ``j`` of ``other``. To update
        the item side, pass ``ratings.transpose()``.
    other : np.ndarray or tf.Tensor of shape (n_other, rank)
        The other side's factors, held fixed. For the ranking objective it must hold *every*
        item of the model (the all-items Gram is built from it). A caller updating several
        blocks of rows against the same other side may pass them once converted to a float32
        ``tf.Tensor``, which the kernels then read as is.
    current : np.ndarray of shape (n_rows, rank)
        This side's current factors: the warm start.
    params : SolverParams
        ``rank``, ``reg``, ``reg_exponent``, ``factor_center``, ``bias``, ``bias_reg``,
        ``bias_reg_exponent``, ``inner_max_iter``, ``inner_tol``, ``objective``,
        ``unobserved_weight`` and ``kernel`` are used.
    other_bias, current_bias : np.ndarray of shape (n_other,) / (n_rows,), optional
        Required when ``params.bias``.
    global_mean : float, default=0.0
        μ, subtracted from every rating when ``params.bias``.
    strategy : tf.distribute.Strategy, optional
        Chunks of rows are spread over its replicas; default: the default strategy.
    layout : SparseLayout or NativeLayout, optional
        ``sparse_layout(ratings, params, strategy)``, built once by a caller that updates the
        same sparse ratings again and again; default: built here.

    Returns
    -------
    HalfStepResult
    """
    n_rows, n_other = ratings.shape
    k = params.rank
    other_tensor = other if isinstance(other, tf.Tensor) and other.dtype == tf.float32 else None
    other = check_array(other, label="other factors", ndim=2, shape=(n_other, k)).astype(np.float32, copy=False)
    current = check_array(current, label="current factors", ndim=2, shape=(n_rows, k)).astype(np.float32, copy=False)
    # The step size bounds each Gram's largest eigenvalue by a bound that holds for Grams with
    # non-negative entries only: negative factors would make the steps diverge.
    check_finite(other, label="other factors", non_negative=True)
    check_finite(current, label="current factors")
    if params.bias:
        if other_bias is None or current_bias is None:
            raise ValueError("other_bias and current_bias are required when params.bias is true")
        other_bias = check_array(other_bias, label="other bias", ndim=1, shape=(n_other,)).astype(np.float32, copy=False)
        current_bias = check_array(current_bias, label="current bias", ndim=1, shape=(n_rows,)).astype(np.float32, copy=False)
        check_finite(other_bias, label="other bias")
        check_finite(current_bias, label="current bias")
        start = np.hstack([current, current_bias[:, None]])
    else:
        start = current
    d = k + int(params.bias)
    # Every kernel reads the other side's factors, with a column of ones for the bias.
    features = other_tensor if other_tensor is not None else tf.constant(other)
    if params.bias:
        features = tf.concat([features, tf.ones([n_other, 1])], axis=1)

    if params.objective == "ranking":
        w0 = params.unobserved_weight
        base_gram = tf.constant((w0 * other.astype(np.float64).T @ other).astype(np.float32))  # no bias under ranking
        obs_weight = tf.constant(1.0 - w0, tf.float32)
    else:
        base_gram, obs_weight = _unweighted(d)

    # A row without entries has a zero loss whatever its value: start it at the neutral zero
    # (already optimal), so it predicts the fallback (global mean plus the other side's bias).
    empty = ratings.row_counts() == 0
    if empty.any():
        start = np.where(empty[:, None], np.float32(0.0), start).astype(np.float32, copy=False)
    strategy = strategy or tf.distribute.get_strategy()
    if isinstance(ratings, SparseRatings):
        targets = ratings.values
        if params.bias:
            targets = targets - np.float32(global_mean) - other_bias[ratings.cols]
        native_kernel_runs = uses_native_kernel(params, strategy)
        if layout is None:
            layout = sparse_layout(ratings, params, strategy)
        elif isinstance(layout, NativeLayout) != native_kernel_runs:
            raise ValueError(
                f"layout is a {type(layout).__name__} but this half-step runs the "
                f"{'native' if native_kernel_runs else 'TensorFlow'} kernel: build it with sparse_layout(ratings, "
                "params, strategy)"
            )
        elif (layout.shape, layout.nnz, layout.d) != (ratings.shape, ratings.nnz, d):
            raise ValueError(
                f"layout was built for a {layout.shape} matrix with {layout.nnz} entries and width {layout.d}; "
                f"these ratings are {ratings.shape} with {ratings.nnz} entries and width {d}"
            )
        if native_kernel_runs:
            chunks, row_sets, idle = native_chunks(layout, targets, start)
            kernel = solve if strategy.num_replicas_in_sync == 1 else _native_chunk
        else:
            chunks, row_sets, idle = _sparse_chunks(layout, targets, start)
            kernel = _sparse_chunk
    else:
        if layout is not None:
            raise ValueError("layout applies to SparseRatings only")
        targets = ratings.values
        if params.bias:
            targets = targets - np.float32(global_mean) - other_bias[None, :]
        (chunks, row_sets, idle), kernel = _dense_chunks(ratings, targets.astype(np.float32), start, d), _dense_chunk

    reg_diag, reg_power, center, lower, max_iter, tol = _solver_constants(params)
    shared = (
        features,
        reg_diag,
        reg_power,
        center,
        lower,
        base_gram,
        obs_weight,
        max_iter,
        tol,
    )
    results = _run_chunks(kernel, chunks, idle, shared, strategy)
    z = start.copy()
    for rows, result in zip(row_sets, results):
        z[rows.start : rows.stop] = result[0].numpy()[: len(rows)]
    sums = [sum(float(r[i].numpy().sum(dtype=np.float64)) for r in results) for i in (1, 2, 3)]
    steps = np.concatenate([r[4].numpy()[: len(rows)] for rows, r in zip(row_sets, results)] or [np.zeros(0, np.int32)])
    return HalfStepResult(
        factors=np.ascontiguousarray(z[:, :k]),
        bias=np.ascontiguousarray(z[:, k]) if params.bias else None,
        objective=float(sums[0]),
        penalty=float(sums[1]),
        # The kernel's gradient is G z − c, half the gradient of the rows' loss.
        pg_norm_sq=4.0 * float(sums[2]),
        inner_iters=int(steps.max(initial=0)),
        row_steps=int(steps.sum(dtype=np.int64)),
    )

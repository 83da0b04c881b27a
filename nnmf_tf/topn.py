"""Top-N recommendation, computed one block of users against one block of items at a time.

The users × items score matrix is never formed: each user chunk streams over item blocks
and keeps a running top-N merged with ``tf.math.top_k``, so memory is
``user_block × (item_block + n)`` scores whatever the catalogue size.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf

from nnmf_tf.data import SparseRatings
from nnmf_tf.device import compute_threads
from nnmf_tf.model import Factors
from nnmf_tf.params import check_int


#: Columns per group in the pre-selection of :func:`_merge_item_block`.
_GROUP = 64


@tf.function(
    input_signature=[
        tf.TensorSpec([None, None], tf.float32, name="users"),
        tf.TensorSpec([None, None], tf.float32, name="items"),
        tf.TensorSpec([None], tf.float32, name="item_bias"),
        tf.TensorSpec([], tf.int64, name="first_item"),
        tf.TensorSpec([None, 2], tf.int64, name="excluded"),
        tf.TensorSpec([None, None], tf.float32, name="best_scores"),
        tf.TensorSpec([None, None], tf.int64, name="best_items"),
        tf.TensorSpec([], tf.int32, name="n"),
    ]
)
def _merge_item_block(users, items, item_bias, first_item, excluded, best_scores, best_items, n):
    """Score one item block for a chunk of users and merge it into the running top-``n``.

    Order: score descending, ties by ascending item index (``tf.math.top_k`` puts the lower
    position first among equal scores, and every candidate list below is in ascending item
    order).

    Only the block's own top-``n`` joins the running best, found without a full ``top_k``
    over the block: the block's columns are cut into groups of ``_GROUP`` and only the ``n``
    groups with the largest maxima over their non-excluded entries (ties: lower group) are
    searched. That is exact: a group
    left out has ``n`` selected groups ranked above it, and the first maximum of each of them
    ranks above every entry of the left-out group (a higher score, or the same score at a
    lower index), so none of its entries is in the top ``n``.
    """
    scores = tf.matmul(users, items, transpose_b=True)
    # An empty item_bias means none (unbiased model): skip a full pass over the scores.
    scores = tf.cond(tf.size(item_bias) > 0, lambda: scores + item_bias[None, :], lambda: scores)
    n_users, width = tf.shape(scores)[0], tf.shape(scores)[1]
    k = tf.minimum(n, width)
    pad = -width % _GROUP
    padded = tf.cond(
        pad > 0,
        lambda: tf.pad(scores, [[0, 0], [0, pad]], constant_values=-np.inf),
        lambda: scores,
    )
    groups = tf.reshape(padded, [n_users, -1, _GROUP])
    n_groups = tf.shape(groups)[1]
    # Excluded pairs never touch the (large) score tile: only the maxima of the few groups
    # holding one are recomputed without them, and only the chosen groups' entries are masked.
    ex_rows, ex_cols = excluded[:, 0], excluded[:, 1]
    ex_groups, ex_offsets = ex_cols // _GROUP, ex_cols % _GROUP
    dirty, pair_of = tf.unique(ex_rows * tf.cast(n_groups, tf.int64) + ex_groups)
    dirty_pairs = tf.stack([dirty // tf.cast(n_groups, tf.int64), dirty % tf.cast(n_groups, tf.int64)], axis=1)
    hidden = tf.scatter_nd(
        tf.stack([tf.cast(pair_of, tf.int64), ex_offsets], axis=1),
        tf.ones_like(ex_rows, tf.int32),
        tf.stack([tf.size(dirty, out_type=tf.int64), tf.constant(_GROUP, tf.int64)]),
    ) > 0
    dirty_max = tf.reduce_max(tf.where(hidden, -np.inf, tf.gather_nd(groups, dirty_pairs)), axis=1)
    maxima = tf.tensor_scatter_nd_update(tf.reduce_max(groups, axis=2), dirty_pairs, dirty_max)
    chosen = tf.math.top_k(maxima, k=tf.minimum(k, n_groups), sorted=True).indices
    chosen = tf.sort(chosen, axis=1)  # ascending groups: candidates in ascending item order
    candidates = tf.gather(groups, chosen, batch_dims=1)
    # An excluded pair inside a chosen group: mask it among the candidates.
    match = tf.equal(tf.cast(tf.gather(chosen, ex_rows), tf.int64), ex_groups[:, None])
    inside = tf.reduce_any(match, axis=1)
    slots = tf.stack(
        [ex_rows, tf.argmax(tf.cast(match, tf.int32), axis=1, output_type=tf.int64), ex_offsets], axis=1
    )
    slots = tf.boolean_mask(slots, inside)
    candidates = tf.tensor_scatter_nd_update(
        candidates, slots, tf.fill(tf.shape(slots)[:1], tf.constant(-np.inf, tf.float32))
    )
    candidates = tf.reshape(candidates, [n_users, -1])
    columns = tf.reshape(chosen[:, :, None] * _GROUP + tf.range(_GROUP)[None, None, :], [n_users, -1])
    block_top = tf.math.top_k(candidates, k=k, sorted=True)
    block_items = first_item + tf.cast(tf.gather(columns, block_top.indices, batch_dims=1), tf.int64)
    # The running best holds lower item indices than this block: it goes first.
    all_scores = tf.concat([best_scores, block_top.values], axis=1)
    all_items = tf.concat([best_items, block_items], axis=1)
    top = tf.math.top_k(all_scores, k=tf.minimum(n, tf.shape(all_scores)[1]), sorted=True)
    return top.values, tf.gather(all_items, top.indices, batch_dims=1)


def _item_blocks(n_items: int, size: int) -> list[tuple[int, int]]:
    """Item ranges of at most ``size`` items whose widths are multiples of ``_GROUP`` except
    for one last range of fewer than ``_GROUP`` items: only that small range needs padding
    to whole groups (padding a wide score tile would copy it)."""
    size = max(_GROUP, size - size % _GROUP)
    edges = list(range(0, n_items - n_items % _GROUP, size)) + [n_items - n_items % _GROUP, n_items]
    edges = sorted(set(min(edge, n_items) for edge in edges))
    return list(zip(edges[:-1], edges[1:]))


def top_n(
    factors: Factors,
    n: int,
    *,
    exclude: SparseRatings | None = None,
    user_block_size: int = 2048,
    item_block_size: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's ``n`` best-scored items.

    Parameters
    ----------
    factors : Factors
        Scores are ``μ + b_u + b_i + w_u · h_i`` (``w_u · h_i`` for an unbiased model).
    n : int
        Items per user; may exceed the number of items.
    exclude : SparseRatings of shape (n_users, n_items), optional
        Pairs never recommended (typically the training ratings: already-rated items).
    user_block_size, item_block_size : int
        Scores are computed ``user_block_size × item_block_size`` at a time (the item block
        rounded down to whole groups of 64 items, at least one group).

    Returns
    -------
    items : np.ndarray of int64, shape (n_users, n)
        Item indices, best first; ties by ascending index. Padded with -1 where a user has
        fewer than ``n`` candidates.
    scores : np.ndarray of float32, shape (n_users, n)
        Their scores; ``-inf`` where padded.
    """
    problems = check_int("n", n, 1, "top_n") + check_int("user_block_size", user_block_size, 1, "top_n")
    problems += check_int("item_block_size", item_block_size, 1, "top_n")
    w, h = factors.user_factors.astype(np.float32), factors.item_factors.astype(np.float32)
    n_users, n_items = w.shape[0], h.shape[0]
    # A NaN score is never among the best: such users would silently get no recommendation.
    arrays = {"user factors": w, "item factors": h, "user bias": factors.user_bias, "item bias": factors.item_bias}
    for label, values in arrays.items():
        if values is not None and not np.all(np.isfinite(values)):
            problems.append(f"{label} must be finite for top_n; found NaN or inf")
    if exclude is not None and exclude.shape != (n_users, n_items):
        problems.append(f"exclude must have shape {(n_users, n_items)} for top_n; got {exclude.shape}")
    if problems:
        raise ValueError("; ".join(problems))
    item_bias = factors.item_bias.astype(np.float32) if factors.biased else None
    no_bias = np.zeros(0, np.float32)
    user_offset = (
        factors.global_mean + factors.user_bias.astype(np.float32) if factors.biased else np.zeros(n_users, np.float32)
    )
    items_out = np.full((n_users, n), -1, np.int64)
    scores_out = np.full((n_users, n), -np.inf, np.float32)

    def score_users(u0: int) -> None:
        u1 = min(u0 + user_block_size, n_users)
        if exclude is not None:
            lo, hi = exclude.row_splits[u0], exclude.row_splits[u1]
            ex_rows, ex_cols = exclude.rows[lo:hi].astype(np.int64) - u0, exclude.cols[lo:hi].astype(np.int64)
        best_scores = tf.zeros((u1 - u0, 0), tf.float32)
        best_items = tf.zeros((u1 - u0, 0), tf.int64)
        for i0, i1 in _item_blocks(n_items, item_block_size):
            if exclude is not None:
                inside = (ex_cols >= i0) & (ex_cols < i1)
                excluded = np.stack([ex_rows[inside], ex_cols[inside] - i0], axis=1)
            else:
                excluded = np.zeros((0, 2), np.int64)
            best_scores, best_items = _merge_item_block(
                w[u0:u1], h[i0:i1], no_bias if item_bias is None else item_bias[i0:i1], np.int64(i0), excluded, best_scores, best_items, np.int32(n)
            )
        scores = best_scores.numpy()
        found = np.isfinite(scores)
        width = scores.shape[1]
        items_out[u0:u1, :width] = np.where(found, best_items.numpy(), -1)
        scores_out[u0:u1, :width] = np.where(found, scores + user_offset[u0:u1, None], -np.inf)

    # User blocks write disjoint rows: two at once keep both cores busy through the
    # single-threaded parts of a block (10-15% faster on 2 cores).
    starts = range(0, n_users, user_block_size)
    threads = min(len(starts), compute_threads())
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        list(pool.map(score_users, starts))
    return items_out, scores_out

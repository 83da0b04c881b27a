"""Split ratings into training and held-out sets by a seeded hash of the (user, item) pair.

A pair's side depends only on its ids and the seed, never on the batch it travels in, the
shard order or the runner, so reruns and retried bundles give the same split. For a fixed
seed the held-out sets are nested: raising ``fraction`` only moves pairs from train to
held-out.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline import schemas
from nnmf_tf.init import uniform_from_hash
from pipeline.ids import stable_hash

_SPLIT_SALT = 0x73706C6974  # "split": keeps these hashes independent of other seeded hashes.
_MASK64 = (1 << 64) - 1


Ids = pa.Array | pa.ChunkedArray | np.ndarray


def pair_hash(user_ids: Ids, item_ids: Ids, seed: int) -> np.ndarray:
    """Seeded 64-bit hash of each (user_id, item_id) pair.

    Returns
    -------
    np.ndarray of uint64, one per pair.
    """
    salt = (seed ^ _SPLIT_SALT) & _MASK64
    user_hashes = stable_hash(user_ids, salt=salt)
    item_hashes = stable_hash(item_ids, salt=(salt + 1) & _MASK64)
    return stable_hash((user_hashes ^ item_hashes).view(np.int64), salt=salt)


def split_holdout(table: pa.Table, fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """Split ratings into (train, held-out): a pair is held out when its hash falls below ``fraction``.

    Parameters
    ----------
    table : pa.Table
        Ratings with ``user_id`` and ``item_id`` columns.
    fraction : float
        Expected share of rows held out, in ``[0, 1)``.
    seed : int
        Salt of the pair hash: another seed gives another split.

    Returns
    -------
    train, heldout : pa.Table
        The rows of ``table`` on each side, in input order.

    Raises
    ------
    ValueError
        If ``fraction`` is outside ``[0, 1)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1); got {fraction!r}")
    held_out = uniform_from_hash(pair_hash(table.column(schemas.USER_ID), table.column(schemas.ITEM_ID), seed)) < fraction
    return table.filter(pa.array(~held_out)), table.filter(pa.array(held_out))

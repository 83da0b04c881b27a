"""Stable, vectorised hashing of external ids.

Blocking, the train/held-out split and the initial factors all derive from these hashes, so
they must not depend on the process, the platform or ``PYTHONHASHSEED``: a retried bundle and
a rerun see the same values. ``pandas.util.hash_array`` is a fixed-key SipHash over the value's
bytes (strings) or a fixed integer mix (integers); it is vectorised and deterministic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from nnmf_tf.init import splitmix64


def _as_numpy(values: np.ndarray | pa.Array | pa.ChunkedArray | pd.Series) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_numpy(zero_copy_only=False)
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(np.int64, copy=False)
    return values.astype(object, copy=False)


def stable_hash(values: np.ndarray | pa.Array | pa.ChunkedArray | pd.Series, salt: int = 0) -> np.ndarray:
    """64-bit hashes of ids (integers or strings), salted so separate uses are independent.

    Returns
    -------
    np.ndarray of uint64, same length as ``values``.
    """
    array = _as_numpy(values)
    if array.dtype == object and len(array) > 1024:
        # Hash each distinct id once: ratings repeat ids many times.
        codes, uniques = pd.factorize(array)
        hashed = pd.util.hash_array(np.asarray(uniques, dtype=object), categorize=False)[codes]
    else:
        hashed = pd.util.hash_array(array, categorize=False)
    return splitmix64(hashed ^ splitmix64(np.full(1, salt, dtype=np.uint64)))


def block_of(values: np.ndarray | pa.Array | pa.ChunkedArray | pd.Series, n_blocks: int, salt: int = 0) -> np.ndarray:
    """Block number in ``[0, n_blocks)`` of each id: its stable hash modulo ``n_blocks``."""
    return (stable_hash(values, salt) % np.uint64(n_blocks)).astype(np.int32)

"""Keep one rating per (user, item) pair.

Duplicates come from re-exports, appended logs and merged sources. The rule that picks the
survivor must not depend on the order rows arrive in (shard order, bundle splits, runner), so
every policy is a total order over the rows of a pair, ending with ``(source, row)``, which
identifies a row uniquely.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schemas

POLICIES = ("latest", "first", "last")
"""``latest``: the largest timestamp wins (a null timestamp is older than any other); among
equal timestamps, or without a timestamp column, the row read last by ``(source, row)``.
``first`` / ``last``: the first / last row read by ``(source, row)``, timestamps ignored."""

_READ_ORDER = [(schemas.SOURCE, "ascending"), (schemas.ROW, "ascending")]


def deduplicate(table: pa.Table, policy: str = "latest") -> tuple[pa.Table, pa.Table]:
    """Split validated ratings into one kept row per (user_id, item_id) pair and the others.

    The result is the same whatever the order of the input rows. All rows of a pair must be in
    ``table``: pairs spread over several batches must be brought together first (e.g. by
    grouping on a hash of the pair).

    Parameters
    ----------
    table : pa.Table
        Ratings with ``user_id``, ``item_id``, ``source``, ``row`` and, for ``latest``,
        optionally ``timestamp`` (see :func:`pipeline.schemas.ratings_schema`), compared as
        stored: :mod:`pipeline.validate` gives microseconds since the epoch, whatever the input.
    policy : {'latest', 'first', 'last'}, default='latest'
        Which row of a pair survives (see :data:`POLICIES`).

    Returns
    -------
    kept : pa.Table
        One row per pair, sorted by ``(source, row)``.
    dropped : pa.Table
        The other rows, sorted by ``(source, row)``.

    Raises
    ------
    ValueError
        If ``policy`` is unknown.
    """
    if policy not in POLICIES:
        raise ValueError(f"dedup policy must be one of {list(POLICIES)}; got {policy!r}")
    keys = {name: table.column(name) for name in (schemas.USER_ID, schemas.ITEM_ID)}
    if policy == "latest" and schemas.TIMESTAMP in table.column_names:
        # A null timestamp sorts as the oldest: validated timestamps (int64 microseconds, see
        # pipeline.validate) never take int64's smallest value, which stands for null here.
        keys[schemas.TIMESTAMP] = pc.fill_null(table.column(schemas.TIMESTAMP), np.iinfo(np.int64).min)
    keys.update({name: table.column(name) for name, _ in _READ_ORDER})
    order = pc.sort_indices(pa.table(keys), sort_keys=[(name, "ascending") for name in keys]).to_numpy()
    users = table.column(schemas.USER_ID).take(order).combine_chunks()
    items = table.column(schemas.ITEM_ID).take(order).combine_chunks()
    n = len(order)
    pair_ends = np.ones(n, dtype=bool)
    if n > 1:
        pair_ends[:-1] = pc.or_(
            pc.not_equal(users.slice(1), users.slice(0, n - 1)),
            pc.not_equal(items.slice(1), items.slice(0, n - 1)),
        ).to_numpy(zero_copy_only=False)
    keep = np.roll(pair_ends, 1) if policy == "first" else pair_ends
    kept = table.take(order[keep]).sort_by(_READ_ORDER)
    dropped = table.take(order[~keep]).sort_by(_READ_ORDER)
    return kept, dropped

"""Blocked ratings and factors: what moves between the pipeline's stages.

Users are hashed into ``user_blocks`` blocks and items into ``item_blocks`` blocks. Within a
block, rows are numbered by sorted external id (the block-local index). Across blocks, the
*global* index of a row is its block's offset (blocks in ascending order, each as long as its
vocabulary) plus its local index: that is the column a rating refers to in the other side's
concatenated factor matrix.

Everything here is plain numpy/pyarrow so it can be tested without Beam.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pyarrow as pa

from nnmf_tf.data import SparseRatings
from pipeline import schemas
from pipeline.ids import block_of, stable_hash

USER_BLOCK_SALT = 1
ITEM_BLOCK_SALT = 2


def user_block_of(user_ids, n_blocks: int) -> np.ndarray:
    """User block of each user id."""
    return block_of(user_ids, n_blocks, salt=USER_BLOCK_SALT)


def item_block_of(item_ids, n_blocks: int) -> np.ndarray:
    """Item block of each item id."""
    return block_of(item_ids, n_blocks, salt=ITEM_BLOCK_SALT)


def row_keys(ids: np.ndarray) -> np.ndarray:
    """The key each row's initial factors derive from: the stable hash of its id."""
    return stable_hash(ids)


def id_array(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Ids as numpy: int64 for integer ids, object (str) for string ids."""
    values = column.to_numpy(zero_copy_only=False) if hasattr(column, "to_numpy") else np.asarray(column)
    return values.astype(np.int64) if values.dtype.kind in "iu" else values.astype(object)


@dataclass(frozen=True)
class FactorBlock:
    """One block's factor rows (and biases), in block-local order.

    Attributes
    ----------
    factors : np.ndarray of float32, shape (n_rows, rank)
    bias : np.ndarray of float32, shape (n_rows,), or None
    """

    factors: np.ndarray
    bias: np.ndarray | None = None


@dataclass(frozen=True)
class HeldOut:
    """A user block's held-out ratings.

    ``rows`` index the block's users (-1: a user without training ratings), ``cols`` the
    global item index (-1: an item without training ratings), ``users`` numbers the distinct
    held-out users (so users unseen in training stay apart).
    """

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    users: np.ndarray

    def __reduce__(self):
        # Indices travel as int32 (they fit: block rows, global item indices, users of one
        # block) and come back as the int64 arrays they were; see RatingsBlock.__reduce__.
        return _heldout_from_compact, (_narrow(self.rows), _narrow(self.cols), self.values, _narrow(self.users))


def _narrow(index: np.ndarray) -> np.ndarray:
    """An index array as int32 when it fits, unchanged otherwise."""
    index = np.asarray(index)
    if index.dtype.kind in "iu" and index.dtype.itemsize > 4 and len(index):
        if int(index.min()) >= np.iinfo(np.int32).min and int(index.max()) <= np.iinfo(np.int32).max:
            return index.astype(np.int32)
    return index


def _heldout_from_compact(rows, cols, values, users) -> "HeldOut":
    return HeldOut(rows.astype(np.int64), cols.astype(np.int64), values, users.astype(np.int64))


_SPARSE_FIELDS = ("rows", "cols", "values", "shape")


def _compact_ratings(ratings: SparseRatings) -> tuple:
    """What a pickled :class:`SparseRatings` needs: per-row counts instead of per-entry rows."""
    return ratings.row_counts().astype(np.int32), ratings.cols, ratings.values, ratings.shape


def _ratings_from_compact(row_counts: np.ndarray, cols: np.ndarray, values: np.ndarray, shape) -> SparseRatings:
    """The :class:`SparseRatings` :func:`_compact_ratings` described, rebuilt without re-checking
    and re-sorting entries that were checked and sorted when it was first built (which would
    cost a sort of every block's ratings in every stage that reads the block)."""
    rows = np.repeat(np.arange(len(row_counts), dtype=np.int32), row_counts)
    if tuple(f.name for f in dataclasses.fields(SparseRatings)) != _SPARSE_FIELDS:
        return SparseRatings(rows, cols, values, shape)  # its layout changed: take the checked path
    ratings = object.__new__(SparseRatings)
    for name, value in zip(_SPARSE_FIELDS, (rows, cols, values, tuple(shape))):
        object.__setattr__(ratings, name, value)
    splits = np.zeros(len(row_counts) + 1, np.int64)
    np.cumsum(row_counts, out=splits[1:])
    ratings.__dict__["row_splits"] = splits  # the cached property, as SparseRatings computes it
    return ratings


@dataclass(frozen=True)
class RatingsBlock:
    """The training ratings of one block of rows, grouped once and reused every iteration.

    Attributes
    ----------
    side : {'user', 'item'}
    block : int
    ids : np.ndarray
        External ids of the block's rows, sorted; row ``r`` is ``ids[r]``.
    ratings : SparseRatings
        Rows: block-local index; columns: global index on the other side.
    heldout : HeldOut or None
        User blocks only.
    """

    side: str
    block: int
    ids: np.ndarray
    ratings: SparseRatings
    heldout: HeldOut | None = None

    @property
    def keys(self) -> np.ndarray:
        """Initialisation keys of the rows."""
        return row_keys(self.ids)

    def __reduce__(self):
        # Blocks are pickled into the block store and to the few stages that read them whole:
        # ratings travel as row counts + columns + values (8 bytes per rating instead of 12),
        # held-out indices as int32.
        return _block_from_compact, (self.side, self.block, self.ids, _compact_ratings(self.ratings), self.heldout)


def _block_from_compact(side, block, ids, ratings, heldout) -> "RatingsBlock":
    return RatingsBlock(side, block, ids, _ratings_from_compact(*ratings), heldout)


def offsets(sizes: Mapping[int, int]) -> dict[int, int]:
    """Global index of each block's first row: blocks in ascending order."""
    result, total = {}, 0
    for block in sorted(sizes):
        result[block] = total
        total += int(sizes[block])
    return result


def concat_blocks(vocab: Mapping[int, np.ndarray]) -> np.ndarray:
    """Per-block arrays (ids, counts) concatenated in global order (blocks ascending)."""
    parts = [vocab[b] for b in sorted(vocab)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def concat_factors(blocks: Mapping[int, FactorBlock], rank: int) -> FactorBlock:
    """All factor rows in global order (blocks ascending)."""
    ordered = [blocks[b] for b in sorted(blocks)]
    if not ordered:
        return FactorBlock(np.zeros((0, rank), np.float32), None)
    factors = np.concatenate([block.factors for block in ordered])
    bias = None if ordered[0].bias is None else np.concatenate([block.bias for block in ordered])
    return FactorBlock(factors, bias)


def global_index(ids: np.ndarray, vocab: Mapping[int, np.ndarray], block_ids: np.ndarray) -> np.ndarray:
    """Global index of each id given its block, -1 for ids absent from the vocabulary."""
    starts = offsets({b: len(v) for b, v in vocab.items()})
    out = np.full(len(ids), -1, np.int64)
    for block in np.unique(block_ids):
        where = np.flatnonzero(block_ids == block)
        known = vocab.get(int(block))
        if known is None or len(known) == 0:
            continue
        position = np.searchsorted(known, ids[where])
        position = np.minimum(position, len(known) - 1)
        found = known[position] == ids[where]
        out[where[found]] = starts[int(block)] + position[found]
    return out


def build_user_block(
    block: int,
    train: pa.Table,
    heldout: pa.Table,
    item_vocab: Mapping[int, np.ndarray],
    item_blocks: int,
) -> tuple[RatingsBlock, dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """A user block's ratings, and its entries for each item block.

    Parameters
    ----------
    block : int
    train, heldout : pa.Table
        Deduplicated ratings of this block's users.
    item_vocab : mapping item block -> sorted item ids (training items)
    item_blocks : int

    Returns
    -------
    user_block : RatingsBlock
        Columns are global item indices.
    item_entries : dict item block -> (item local index, user local index, rating)
        The same ratings seen from the item side; the user index still needs this block's
        offset.
    """
    user_ids = id_array(train.column(schemas.USER_ID))
    item_ids = id_array(train.column(schemas.ITEM_ID))
    ids, rows = np.unique(user_ids, return_inverse=True)
    item_blocks_of = item_block_of(item_ids, item_blocks)
    cols = global_index(item_ids, item_vocab, item_blocks_of)
    values = train.column(schemas.RATING).to_numpy().astype(np.float32)
    n_items = sum(len(v) for v in item_vocab.values())
    ratings = SparseRatings(rows, cols, values, (len(ids), n_items))

    h_users = id_array(heldout.column(schemas.USER_ID))
    h_items = id_array(heldout.column(schemas.ITEM_ID))
    h_rows = global_index(h_users, {0: ids}, np.zeros(len(h_users), np.int32))
    h_cols = global_index(h_items, item_vocab, item_block_of(h_items, item_blocks))
    h_values = heldout.column(schemas.RATING).to_numpy().astype(np.float32)
    held = HeldOut(h_rows, h_cols, h_values, np.unique(h_users, return_inverse=True)[1].astype(np.int64))

    starts = offsets({b: len(v) for b, v in item_vocab.items()})
    entries = {}
    for item_block in np.unique(item_blocks_of):
        where = item_blocks_of == item_block
        entries[int(item_block)] = (cols[where] - starts[int(item_block)], rows[where], values[where])
    return RatingsBlock("user", block, ids, ratings, held), entries


def build_item_block(
    block: int,
    item_ids: np.ndarray,
    parts: list[tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]]],
    user_sizes: Mapping[int, int],
) -> RatingsBlock:
    """An item block's ratings from the entries each user block sent it.

    ``parts`` holds ``(user block, (item local, user local, rating))``; columns become global
    user indices.
    """
    starts = offsets(user_sizes)
    n_users = sum(int(n) for n in user_sizes.values())
    rows = [part[0] for _, part in parts]
    cols = [starts[user_block] + part[1] for user_block, part in parts]
    values = [part[2] for _, part in parts]
    if not parts:
        rows, cols, values = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    ratings = SparseRatings(np.concatenate(rows), np.concatenate(cols), np.concatenate(values), (len(item_ids), n_users))
    return RatingsBlock("item", block, item_ids, ratings)

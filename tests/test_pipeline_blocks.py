"""pipeline.blocks without Beam: global indices, user/item blocks and factor concatenation.

A small ratings table is cut into 3 user blocks and 2 item blocks exactly as ``BlockRatings``
does it (``user_block_of`` / ``item_block_of``); mapping every block's entries back through
the block ids must give the original (user, item, rating) triples, from both sides.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline import blocks, schemas

USER_BLOCKS = 3
ITEM_BLOCKS = 2


# ----------------------------------------------------------------------------- global_index


def test_global_index_offsets_blocks_in_ascending_order_whatever_the_dict_order():
    # Inserted out of order on purpose: offsets follow ascending block numbers.
    vocab = {2: np.array([7]), 0: np.array([10, 20, 30]), 1: np.array([5, 15])}
    ids = np.array([15, 10, 7, 30, 5, 20])
    block_ids = np.array([1, 0, 2, 0, 1, 0])
    # block 0 -> [0, 3), block 1 -> [3, 5), block 2 -> [5, 6)
    np.testing.assert_array_equal(blocks.global_index(ids, vocab, block_ids), [4, 0, 5, 2, 3, 1])


def test_global_index_is_minus_one_for_unknown_ids():
    vocab = {0: np.array([10, 20, 30]), 1: np.array([5, 15])}
    ids = np.array([99, 1, 25, 10, 15, 10, 4])
    # 99: above every id; 1: below; 25: between; 10 in the wrong block; 4: a block with no vocabulary.
    block_ids = np.array([0, 0, 0, 1, 1, 0, 2])
    np.testing.assert_array_equal(blocks.global_index(ids, vocab, block_ids), [-1, -1, -1, -1, 4, 0, -1])


def test_global_index_with_string_ids():
    vocab = {1: np.array(["b", "d"], dtype=object), 0: np.array(["a", "c"], dtype=object)}
    ids = np.array(["d", "a", "z", "c"], dtype=object)
    np.testing.assert_array_equal(blocks.global_index(ids, vocab, np.array([1, 0, 1, 0])), [3, 0, -1, 1])


def test_offsets_and_concat_blocks_follow_ascending_blocks():
    assert blocks.offsets({3: 2, 0: 4, 1: 0}) == {0: 0, 1: 4, 3: 4}
    vocab = {1: np.array([8, 9]), 0: np.array([1, 5])}
    np.testing.assert_array_equal(blocks.concat_blocks(vocab), [1, 5, 8, 9])


# ----------------------------------------------------------------------------- concat_factors


def test_concat_factors_orders_blocks_ascending_with_their_biases():
    parts = {
        2: blocks.FactorBlock(np.full((1, 2), 2.0, np.float32), np.array([20.0], np.float32)),
        0: blocks.FactorBlock(np.full((2, 2), 0.0, np.float32), np.array([0.0, 1.0], np.float32)),
        1: blocks.FactorBlock(np.full((3, 2), 1.0, np.float32), np.array([10.0, 11.0, 12.0], np.float32)),
    }
    result = blocks.concat_factors(parts, rank=2)
    np.testing.assert_array_equal(result.factors[:, 0], [0, 0, 1, 1, 1, 2])
    assert result.factors.shape == (6, 2)
    np.testing.assert_array_equal(result.bias, [0, 1, 10, 11, 12, 20])


def test_concat_factors_without_bias_and_empty():
    parts = {1: blocks.FactorBlock(np.ones((1, 3), np.float32)), 0: blocks.FactorBlock(np.zeros((2, 3), np.float32))}
    result = blocks.concat_factors(parts, rank=3)
    assert result.bias is None
    np.testing.assert_array_equal(result.factors.sum(axis=1), [0, 0, 3])
    empty = blocks.concat_factors({}, rank=3)
    assert empty.factors.shape == (0, 3) and empty.bias is None


# ----------------------------------------------------------------------------- user and item blocks


def _ids(kind: str, numbers: np.ndarray) -> np.ndarray:
    if kind == "int":
        return numbers.astype(np.int64)
    return np.array([f"x{n}" for n in numbers], dtype=object)


def _table(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, id_type: str) -> pa.Table:
    schema = schemas.ratings_schema(id_type, id_type)
    n = len(users)
    return pa.Table.from_arrays(
        [
            pa.array(list(users), schema.field(schemas.USER_ID).type),
            pa.array(list(items), schema.field(schemas.ITEM_ID).type),
            pa.array(ratings, pa.float32()),
            pa.nulls(n, pa.int64()),
            pa.array(["mem"] * n, pa.string()),
            pa.array(np.arange(2, n + 2), pa.int64()),
        ],
        schema=schema,
    )


@pytest.fixture(params=["int", "string"])
def blocked(request):
    """A small table cut into 3 user blocks and 2 item blocks, as BlockRatings does it."""
    id_type = request.param
    rng = np.random.default_rng(7)
    n_users, n_items = 30, 12
    user_numbers = 1000 + 37 * np.arange(n_users)  # sparse, non-contiguous ids
    item_numbers = 5 + 11 * np.arange(n_items)
    pairs = rng.choice(n_users * n_items, 150, replace=False)
    users = _ids(id_type, user_numbers[pairs // n_items])
    items = _ids(id_type, item_numbers[pairs % n_items])
    ratings = rng.integers(2, 11, len(pairs)) / 2.0
    train = _table(users, items, ratings, id_type)

    known_user, known_item = users[0], items[0]
    unknown_user = _ids(id_type, np.array([999_999]))[0]
    unknown_item = _ids(id_type, np.array([777_777]))[0]
    held_users = np.array([known_user, unknown_user, known_user, unknown_user], dtype=users.dtype)
    held_items = np.array([unknown_item, known_item, known_item, unknown_item], dtype=items.dtype)
    heldout = _table(held_users, held_items, np.array([1.0, 2.0, 3.0, 4.0]), id_type)

    user_block_ids = blocks.user_block_of(train.column(schemas.USER_ID), USER_BLOCKS)
    held_block_ids = blocks.user_block_of(heldout.column(schemas.USER_ID), USER_BLOCKS)
    assert set(np.unique(user_block_ids)) == set(range(USER_BLOCKS)), "test data must fill every user block"
    distinct_items = np.unique(items)
    item_block_ids = blocks.item_block_of(distinct_items, ITEM_BLOCKS)
    assert set(np.unique(item_block_ids)) == set(range(ITEM_BLOCKS)), "test data must fill every item block"
    item_vocab = {int(b): np.sort(distinct_items[item_block_ids == b]) for b in range(ITEM_BLOCKS)}

    user_blocks, entries = {}, {}
    for b in range(USER_BLOCKS):
        part_train = train.filter(pa.array(user_block_ids == b))
        part_held = heldout.filter(pa.array(held_block_ids == b))
        user_blocks[b], entries[b] = blocks.build_user_block(b, part_train, part_held, item_vocab, ITEM_BLOCKS)
    user_sizes = {b: len(block.ids) for b, block in user_blocks.items()}
    item_blocks = {}
    for item_block in range(ITEM_BLOCKS):
        parts = [(b, entries[b][item_block]) for b in range(USER_BLOCKS) if item_block in entries[b]]
        item_blocks[item_block] = blocks.build_item_block(item_block, item_vocab[item_block], parts, user_sizes)
    return {
        "triples": sorted(zip(users.tolist(), items.tolist(), ratings.tolist())),
        "user_blocks": user_blocks,
        "item_blocks": item_blocks,
        "item_vocab": item_vocab,
        "heldout": (held_users, held_items),
        "unknown": (unknown_user, unknown_item),
    }


def _triples(block: blocks.RatingsBlock, other_ids: np.ndarray, user_side: bool) -> list:
    r = block.ratings
    own, other = block.ids[r.rows], other_ids[r.cols]
    users, items = (own, other) if user_side else (other, own)
    return list(zip(users.tolist(), items.tolist(), r.values.astype(np.float64).tolist()))


def test_user_blocks_reproduce_the_ratings(blocked):
    item_ids = blocks.concat_blocks(blocked["item_vocab"])
    n_items = len(item_ids)
    triples = []
    for b, block in blocked["user_blocks"].items():
        assert block.side == "user" and block.block == b
        assert list(block.ids) == sorted(block.ids), "block ids must be sorted"
        assert np.all(blocks.user_block_of(block.ids, USER_BLOCKS) == b), "a user landed in the wrong block"
        assert block.ratings.shape == (len(block.ids), n_items)
        triples += _triples(block, item_ids, user_side=True)
    assert sorted(triples) == blocked["triples"]


def test_item_blocks_reproduce_the_ratings(blocked):
    user_vocab = {b: block.ids for b, block in blocked["user_blocks"].items()}
    user_ids = blocks.concat_blocks(user_vocab)
    triples = []
    for b, block in blocked["item_blocks"].items():
        assert block.side == "item" and block.block == b
        np.testing.assert_array_equal(block.ids, blocked["item_vocab"][b])
        assert block.ratings.shape == (len(block.ids), len(user_ids))
        triples += _triples(block, user_ids, user_side=False)
    assert sorted(triples) == blocked["triples"]


def test_item_blocks_are_the_transpose_of_the_user_blocks(blocked):
    """Assembled globally, the item side is exactly the user side transposed."""
    def dense(parts, n_rows, n_cols):
        matrix = np.zeros((n_rows, n_cols), np.float32)
        row0 = 0
        for b in sorted(parts):
            r = parts[b].ratings
            matrix[row0 + r.rows, r.cols] = r.values
            row0 += r.shape[0]
        return matrix

    n_users = sum(len(b.ids) for b in blocked["user_blocks"].values())
    n_items = sum(len(v) for v in blocked["item_vocab"].values())
    users = dense(blocked["user_blocks"], n_users, n_items)
    items = dense(blocked["item_blocks"], n_items, n_users)
    np.testing.assert_array_equal(users, items.T)


def test_heldout_rows_of_unknown_users_and_items_are_minus_one(blocked):
    item_ids = blocks.concat_blocks(blocked["item_vocab"])
    unknown_user, unknown_item = blocked["unknown"]
    seen = []
    for block in blocked["user_blocks"].values():
        held = block.heldout
        assert held is not None
        for row, col, value in zip(held.rows, held.cols, held.values):
            user = unknown_user if row == -1 else block.ids[row]
            item = unknown_item if col == -1 else item_ids[col]
            seen.append((user, item, float(value)))
    held_users, held_items = blocked["heldout"]
    expected = list(zip(held_users.tolist(), held_items.tolist(), [1.0, 2.0, 3.0, 4.0]))
    assert sorted(seen, key=lambda t: t[2]) == expected
    # and the known ones really are resolved (not -1)
    rows = np.concatenate([b.heldout.rows for b in blocked["user_blocks"].values()])
    cols = np.concatenate([b.heldout.cols for b in blocked["user_blocks"].values()])
    values = np.concatenate([b.heldout.values for b in blocked["user_blocks"].values()])
    order = np.argsort(values)
    np.testing.assert_array_equal(rows[order] >= 0, [True, False, True, False])
    np.testing.assert_array_equal(cols[order] >= 0, [False, True, True, False])


def test_row_keys_depend_on_the_id_only(blocked):
    for block in blocked["user_blocks"].values():
        np.testing.assert_array_equal(block.keys, blocks.row_keys(block.ids))
        if len(block.ids) > 1:
            np.testing.assert_array_equal(blocks.row_keys(block.ids[1:]), block.keys[1:])

"""deduplicate and split_holdout: the policies, and independence from row order and batching."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schemas
from pipeline.dedup import deduplicate
from pipeline.read import ReadSettings, read_file
from pipeline.split import pair_hash, split_holdout
from pipeline.validate import ValidationSettings, validate_batch


def _ratings(rows: list[tuple], id_type: str = "int") -> pa.Table:
    """Ratings from ``(user, item, rating, timestamp, source, row)`` tuples."""
    columns = list(zip(*rows)) if rows else [[]] * 6
    return pa.Table.from_arrays([pa.array(list(c)) for c in columns], schema=schemas.ratings_schema(id_type, id_type))


def _kept_ratings(table: pa.Table, policy: str) -> list[float]:
    kept, _ = deduplicate(table, policy)
    return kept.column("rating").to_pylist()


# (user, item, rating, timestamp, source, row)
DUPLICATES = _ratings(
    [
        (1, 1, 1.0, 50, "b.csv", 2),
        (1, 1, 2.0, None, "a.csv", 9),
        (1, 1, 3.0, 50, "a.csv", 3),
        (1, 1, 4.0, 20, "c.csv", 5),
        (1, 2, 5.0, 10, "a.csv", 4),
        (2, 1, 0.5, None, "a.csv", 2),
        (2, 1, 1.5, None, "a.csv", 7),
    ]
)


def test_latest_timestamp_wins_ties_go_to_the_row_read_last_and_null_is_oldest():
    kept, dropped = deduplicate(DUPLICATES, "latest")
    # (1, 1): timestamps 50 (b.csv:2) and 50 (a.csv:3) tie; b.csv:2 is read after a.csv:3.
    # (2, 1): no timestamps, a.csv:7 is read last.
    assert kept.select(["user_id", "item_id", "rating"]).to_pylist() == [
        {"user_id": 1, "item_id": 2, "rating": 5.0},
        {"user_id": 2, "item_id": 1, "rating": 1.5},
        {"user_id": 1, "item_id": 1, "rating": 1.0},
    ]
    assert dropped.column("rating").to_pylist() == [0.5, 3.0, 2.0, 4.0]


def test_first_and_last_follow_the_read_order_and_ignore_timestamps():
    assert _kept_ratings(DUPLICATES, "first") == [0.5, 3.0, 5.0]
    assert _kept_ratings(DUPLICATES, "last") == [5.0, 1.5, 4.0]
    kept, _ = deduplicate(DUPLICATES, "last")
    assert {(r["user_id"], r["item_id"]): (r["source"], r["row"]) for r in kept.to_pylist()} == {
        (1, 1): ("c.csv", 5),
        (1, 2): ("a.csv", 4),
        (2, 1): ("a.csv", 7),
    }


def test_latest_without_a_timestamp_column_is_last():
    no_timestamps = DUPLICATES.drop_columns(["timestamp"])
    assert _kept_ratings(no_timestamps, "latest") == _kept_ratings(DUPLICATES, "last")


@pytest.mark.parametrize("newer_first", [False, True])
@pytest.mark.parametrize(("unit", "per_second"), [("ms", 1_000), ("us", 1_000_000), ("ns", 1_000_000_000)])
def test_latest_orders_parquet_timestamps_within_a_second(tmp_path, unit, per_second, newer_first):
    # Two ratings of one pair 0.8 s apart, in the same second: the newer one (5.0) is kept,
    # whichever is read last and whatever integer-seconds timestamp another row has.
    ratings = [(5.0, 1600000000 * per_second + 9 * per_second // 10), (1.0, 1600000000 * per_second + per_second // 10)]
    if not newer_first:
        ratings.reverse()
    path = str(tmp_path / "r.parquet")
    pq.write_table(
        pa.table(
            {
                "user_id": [1, 1, 2],
                "item_id": [2, 2, 2],
                "rating": [r for r, _ in ratings] + [3.0],
                "timestamp": pa.array([t for _, t in ratings] + [1600000000 * per_second], pa.timestamp(unit)),
            }
        ),
        path,
    )
    settings = ReadSettings(path=path, format="parquet", timestamp_column="timestamp")
    valid, rejected = validate_batch(pa.concat_tables(read_file(path, settings)), ValidationSettings())
    assert rejected.num_rows == 0
    kept, dropped = deduplicate(valid, "latest")
    assert kept.select(["user_id", "rating"]).to_pylist() == [
        {"user_id": 1, "rating": 5.0},
        {"user_id": 2, "rating": 3.0},
    ]
    assert dropped.column("rating").to_pylist() == [1.0]


def test_string_ids_and_empty_input():
    table = _ratings(
        [("u1", "i1", 1.0, 1, "a", 1), ("u1", "i1", 2.0, 2, "a", 2), ("u10", "i1", 3.0, 1, "a", 3)], "string"
    )
    assert _kept_ratings(table, "latest") == [2.0, 3.0]
    kept, dropped = deduplicate(table.slice(0, 0))
    assert kept.num_rows == dropped.num_rows == 0


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match=r"dedup policy must be one of \['latest', 'first', 'last'\]; got 'newest'"):
        deduplicate(DUPLICATES, "newest")


def _random_ratings(n: int, seed: int, n_users: int = 50, n_items: int = 40) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.Table.from_arrays(
        [
            pa.array(rng.integers(0, n_users, n)),
            pa.array(rng.integers(0, n_items, n)),
            pa.array(rng.integers(1, 11, n) / 2, pa.float32()),
            pa.array(rng.integers(0, 5, n), mask=rng.random(n) < 0.2),
            pa.array([f"shard-{s}" for s in rng.integers(0, 3, n)]),
            pa.array(np.arange(n)),
        ],
        schema=schemas.ratings_schema(),
    )


@pytest.mark.parametrize("policy", ["latest", "first", "last"])
def test_dedup_is_independent_of_row_order(policy):
    table = _random_ratings(5_000, seed=1)
    kept, dropped = deduplicate(table, policy)
    pairs = kept.column("user_id").to_numpy() * 1000 + kept.column("item_id").to_numpy()
    all_pairs = table.column("user_id").to_numpy() * 1000 + table.column("item_id").to_numpy()
    assert len(np.unique(pairs)) == kept.num_rows == len(np.unique(all_pairs))
    assert kept.num_rows + dropped.num_rows == table.num_rows
    for seed in range(3):
        shuffled = table.take(np.random.default_rng(seed).permutation(table.num_rows))
        assert deduplicate(shuffled, policy) == (kept, dropped)


def _held_out_pairs(table: pa.Table, fraction: float, seed: int) -> set[tuple]:
    _, heldout = split_holdout(table, fraction, seed)
    return set(zip(heldout.column("user_id").to_pylist(), heldout.column("item_id").to_pylist()))


def test_split_fraction_is_close_to_the_target_and_sides_partition_the_rows():
    n = 100_000
    table = pa.table({"user_id": np.arange(n) % 997, "item_id": np.arange(n) // 997, "rating": np.ones(n)})
    train, heldout = split_holdout(table, 0.2, seed=3)
    assert train.num_rows + heldout.num_rows == n
    assert abs(heldout.num_rows / n - 0.2) < 0.006  # ~4.7 binomial standard deviations
    assert split_holdout(table, 0.0, seed=3)[1].num_rows == 0


def test_split_is_deterministic_and_independent_of_row_order_and_batching():
    table = _random_ratings(20_000, seed=2, n_users=5_000, n_items=3_000)
    expected = _held_out_pairs(table, 0.25, seed=7)
    assert _held_out_pairs(table, 0.25, seed=7) == expected
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    assert _held_out_pairs(shuffled, 0.25, seed=7) == expected
    batched = set().union(
        *(_held_out_pairs(shuffled.slice(start, 3_000), 0.25, seed=7) for start in range(0, 20_000, 3_000))
    )
    assert batched == expected
    assert _held_out_pairs(table, 0.25, seed=8) != expected


def test_split_hash_depends_on_the_pair_not_on_each_id_alone():
    users = np.array([1, 2, 1, 2])
    items = np.array([2, 1, 1, 2])
    hashes = pair_hash(users, items, seed=0)
    assert len(set(hashes.tolist())) == 4
    assert not np.any(pair_hash(users, items, seed=1) == hashes)


def test_split_heldout_sets_are_nested_in_the_fraction_and_work_on_string_ids():
    table = _ratings([(f"u{u}", f"i{i}", 3.0, None, "a", u * 100 + i) for u in range(60) for i in range(50)], "string")
    small, large = _held_out_pairs(table, 0.1, seed=1), _held_out_pairs(table, 0.3, seed=1)
    assert small < large
    assert 0.2 < len(large) / table.num_rows < 0.4


def test_split_rejects_fractions_outside_zero_one():
    with pytest.raises(ValueError, match=r"held-out fraction must be in \[0, 1\); got 1.0"):
        split_holdout(DUPLICATES, 1.0, seed=0)

"""Synthetic ratings with a planted non-negative low-rank structure, written as sharded files.

The model: user factors ``W`` (n_users × rank) and item factors ``H`` (n_items × rank) are
gamma-distributed, hence non-negative, and scaled so that ``W·Hᵀ`` is centred in the rating
range. Each observed rating is ``clip(round_to_step(w_u · h_i + noise · ε), rating_min,
rating_max)`` with ``ε ~ N(0, 1)``, so an exact non-negative rank-``rank`` model explains the
ratings up to noise, rounding and clipping. Which pairs are observed mimics real data: item
popularity is Zipf-like (``p_i ∝ rank_i^-skew``), user activity is log-normal, and each user
rates distinct items (sampling without replacement, weighted by popularity).

Everything is vectorised numpy over chunks of about ``chunk_rows`` ratings, so 20M ratings take
tens of seconds and well under a few GB. Output is determined by the arguments and the seed.

Command line::

    python -m pipeline.generate --out sample_data --users 300 --items 120 --ratings 9000
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline import schemas

FORMATS = ("csv", "parquet")
COMPRESSIONS = ("none", "gzip", "bz2", "zstd")
_CSV_SUFFIX = {"none": "", "gzip": ".gz", "bz2": ".bz2", "zstd": ".zst"}
TRUTH_FILE = "planted_model.npz"
"""File (in the output folder) holding the planted factors when asked for."""

_GAMMA_SHAPE = 2.0
_CENTRE = 0.65
"""Where the mean planted score sits in the rating range (real ratings lean high)."""
_MAX_USER_SHARE = 0.8
"""No user rates more than this share of the items."""
_ACTIVITY_SIGMA = 1.0
_SKEWED_ROUNDS = 6
_GUMBEL_CELLS = 1 << 24
_TIME_START = 1_420_070_400  # 2015-01-01T00:00:00Z
_TIME_SPAN = 5 * 365 * 86_400


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent generator per purpose (and per chunk), all derived from ``seed``."""
    return np.random.default_rng([seed, *stream])


def planted_model(
    n_users: int, n_items: int, rank: int, seed: int, rating_min: float = 0.5, rating_max: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """The planted factors behind :func:`generate_ratings` for the same arguments.

    Returns
    -------
    user_factors : np.ndarray of shape (n_users, rank), float32, non-negative
    item_factors : np.ndarray of shape (n_items, rank), float32, non-negative
        Scaled so that the mean of ``user_factors @ item_factors.T`` sits 65% of the way from
        ``rating_min`` to ``rating_max``.
    """
    rng = _rng(seed, 0)
    user_factors = rng.gamma(_GAMMA_SHAPE, size=(n_users, rank))
    item_factors = rng.gamma(_GAMMA_SHAPE, size=(n_items, rank))
    mean_score = rank * _GAMMA_SHAPE**2
    scale = np.sqrt((rating_min + _CENTRE * (rating_max - rating_min)) / mean_score)
    return (user_factors * scale).astype(np.float32), (item_factors * scale).astype(np.float32)


def generate_ratings(
    n_users: int,
    n_items: int,
    n_ratings: int,
    *,
    rank: int = 5,
    noise: float = 0.3,
    seed: int = 0,
    popularity_skew: float = 1.0,
    rating_min: float = 0.5,
    rating_max: float = 5.0,
    rating_step: float = 0.5,
    string_ids: bool = False,
    chunk_rows: int = 1_000_000,
) -> Iterator[pa.Table]:
    """Synthetic ratings, in chunks of about ``chunk_rows`` rows.

    Parameters
    ----------
    n_users, n_items : int
        Ids run from 1 to ``n_users`` / ``n_items`` (``u1``... / ``i1``... with ``string_ids``).
        Every user gets at least one rating when ``n_ratings >= n_users``.
    n_ratings : int
        Exact number of distinct (user, item) pairs generated; at most 80% of each user's row.
    rank : int, default=5
        Rank of the planted non-negative model.
    noise : float, default=0.3
        Standard deviation of the Gaussian noise added before rounding.
    seed : int, default=0
        Everything derives from it: the same arguments give the same tables.
    popularity_skew : float, default=1.0
        Zipf exponent of item popularity; 0 means uniform.
    rating_min, rating_max, rating_step : float, default=0.5, 5.0, 0.5
        Ratings are ``rating_min + k * rating_step`` clipped to ``[rating_min, rating_max]``.
    string_ids : bool, default=False
        Emit ids as strings (``u17``, ``i3``) instead of int64.
    chunk_rows : int, default=1_000_000
        Approximate rows per emitted table.

    Yields
    ------
    pa.Table
        Schema :func:`pipeline.schemas.input_schema`: user_id, item_id, rating (float32),
        timestamp (int64 seconds), rows in random order.

    Raises
    ------
    ValueError
        On a non-positive size, a negative seed or noise, or more ratings than fit.
    """
    _check_arguments(n_users, n_items, n_ratings, rank, noise, seed, rating_min, rating_max, rating_step)
    user_factors, item_factors = planted_model(n_users, n_items, rank, seed, rating_min, rating_max)
    popularity = _item_popularity(n_items, popularity_skew, _rng(seed, 1))
    counts = _ratings_per_user(n_users, n_ratings, _max_per_user(n_items), _rng(seed, 2))
    id_type = "string" if string_ids else "int"
    schema = schemas.input_schema(id_type, id_type)
    ends = np.cumsum(counts)
    bounds = np.searchsorted(ends, np.arange(chunk_rows, n_ratings, chunk_rows), side="left") + 1

    def chunks() -> Iterator[pa.Table]:
        for chunk, (first, stop) in enumerate(zip(np.r_[0, bounds], np.r_[bounds, n_users])):
            if first >= stop:
                continue
            rng = _rng(seed, 3, chunk)
            local_users, items = _sample_items(counts[first:stop], popularity, rng)
            users = local_users + first
            scores = np.einsum("ij,ij->i", user_factors[users], item_factors[items], dtype=np.float64)
            noisy = scores + noise * rng.standard_normal(len(users))
            steps = np.round((noisy - rating_min) / rating_step)
            ratings = np.clip(rating_min + steps * rating_step, rating_min, rating_max).astype(np.float32)
            timestamps = _TIME_START + rng.integers(0, _TIME_SPAN, size=len(users), dtype=np.int64)
            order = rng.permutation(len(users))
            yield pa.Table.from_arrays(
                [
                    _ids(users[order] + 1, "u", string_ids),
                    _ids(items[order] + 1, "i", string_ids),
                    pa.array(ratings[order]),
                    pa.array(timestamps[order]),
                ],
                schema=schema,
            )

    # Arguments are checked above, when called; the chunks are made as they are consumed.
    return chunks()


def _check_arguments(
    n_users: int,
    n_items: int,
    n_ratings: int,
    rank: int,
    noise: float,
    seed: int,
    rating_min: float,
    rating_max: float,
    rating_step: float,
) -> None:
    sizes = {"n_users": n_users, "n_items": n_items, "n_ratings": n_ratings, "rank": rank}
    problems = [f"{name} must be >= 1; got {value}" for name, value in sizes.items() if value < 1]
    if seed < 0:
        problems.append(f"seed must be >= 0; got {seed}")
    if noise < 0:
        problems.append(f"noise must be >= 0; got {noise}")
    if not (rating_min < rating_max and rating_step > 0):
        problems.append(
            f"need rating_min < rating_max and rating_step > 0; got {rating_min}, {rating_max}, {rating_step}"
        )
    capacity = n_users * _max_per_user(n_items)
    if n_ratings > capacity:
        problems.append(
            f"n_ratings must be at most {capacity} ({_MAX_USER_SHARE:.0%} of {n_users} x {n_items}); got {n_ratings}"
        )
    if problems:
        raise ValueError("invalid generator arguments: " + "; ".join(problems))


def _max_per_user(n_items: int) -> int:
    return max(1, int(_MAX_USER_SHARE * n_items))


def _item_popularity(n_items: int, skew: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like item probabilities, the popularity ranks shuffled over the items."""
    weights = np.arange(1, n_items + 1, dtype=np.float64) ** -skew
    popularity = weights[rng.permutation(n_items)]
    return popularity / popularity.sum()


def _ratings_per_user(n_users: int, n_ratings: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Log-normal user activity: ratings per user, summing to ``n_ratings``, each in ``[0, cap]``."""
    activity = rng.lognormal(0.0, _ACTIVITY_SIGMA, size=n_users)
    counts = np.full(n_users, 1 if n_ratings >= n_users else 0, dtype=np.int64)
    while (remaining := n_ratings - counts.sum()) > 0:
        open_users = activity * (counts < cap)
        counts = np.minimum(counts + rng.multinomial(remaining, open_users / open_users.sum()), cap)
    return counts


def _sample_items(
    counts: np.ndarray, popularity: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """For each user ``u``, ``counts[u]`` distinct items drawn with probability ``popularity``.

    Rounds of draws with replacement (duplicates discarded, surplus trimmed at random) settle
    almost every user; the few left (heavy raters of a skewed catalogue) take their remaining
    items exactly by the Gumbel top-k trick over the items they have not rated yet. Pairs are
    handled as sorted int64 keys ``user * n_items + item``.

    Returns
    -------
    users, items : np.ndarray of int64
        Pairs, ``users`` indexing ``counts``.
    """
    n_items = len(popularity)
    cdf = np.cumsum(popularity)
    need = counts.copy()
    taken = np.empty(0, dtype=np.int64)
    for _ in range(_SKEWED_ROUNDS):
        active = np.flatnonzero(need)
        if not active.size:
            break
        users = np.repeat(active, need[active] + need[active] // 4 + 2)
        items = np.minimum(np.searchsorted(cdf, rng.random(len(users)) * cdf[-1], side="right"), n_items - 1)
        keys = _sorted_unique(users * n_items + items)
        keys = keys[~_contains(taken, keys)]
        # Random order within each user, then keep the first need[user] keys of each user.
        keys = keys[rng.permutation(len(keys))]
        keys = keys[np.argsort(keys // n_items, kind="stable")]
        key_users = keys // n_items
        rank_in_user = np.arange(len(keys)) - np.searchsorted(key_users, key_users, side="left")
        kept = keys[rank_in_user < need[key_users]]
        need -= np.bincount(kept // n_items, minlength=len(need))
        taken = np.sort(np.concatenate([taken, kept]))
    active = np.flatnonzero(need)
    rows_per_block = max(1, _GUMBEL_CELLS // n_items)
    for start in range(0, len(active), rows_per_block):
        block = active[start : start + rows_per_block]
        scores = np.log(popularity) + rng.gumbel(size=(len(block), n_items))
        already = taken[np.isin(taken // n_items, block)]
        scores[np.searchsorted(block, already // n_items), already % n_items] = -np.inf
        most = need[block].max()
        top = np.argpartition(-scores, most - 1, axis=1)[:, :most]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
        chosen = np.arange(most) < need[block][:, None]
        taken = np.concatenate([taken, (block[:, None] * n_items + top)[chosen]])
    return taken // n_items, taken % n_items


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    keys = np.sort(keys)
    return keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each of ``keys`` is in ``sorted_keys``."""
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    position = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[position] == keys


def _ids(numbers: np.ndarray, prefix: str, as_strings: bool) -> pa.Array:
    array = pa.array(numbers, pa.int64())
    if not as_strings:
        return array
    return pc.binary_join_element_wise(prefix, array.cast(pa.string()), "")


def shard_paths(out_dir: str, n_shards: int, format: str = "csv", compression: str = "none") -> list[str]:
    """Paths of the shards :func:`write_shards` writes: ``ratings-00000-of-00004.csv`` etc."""
    suffix = ".parquet" if format == "parquet" else ".csv" + _CSV_SUFFIX[compression]
    return [os.path.join(out_dir, f"ratings-{i:05d}-of-{n_shards:05d}{suffix}") for i in range(n_shards)]


def check_shard_arguments(n_shards: int, format: str, compression: str) -> None:
    """Raise ``ValueError`` unless :func:`write_shards` can write these shards."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}; got {format!r}")
    if compression not in COMPRESSIONS or (format == "parquet" and compression == "bz2"):
        allowed = [c for c in COMPRESSIONS if format == "csv" or c != "bz2"]
        raise ValueError(f"compression for {format} must be one of {allowed}; got {compression!r}")
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1; got {n_shards}")


def write_shards(
    tables: Iterable[pa.Table], out_dir: str, n_shards: int, format: str = "csv", compression: str = "none"
) -> list[str]:
    """Write ratings tables as ``n_shards`` files of about equal size.

    Each table is cut into ``n_shards`` contiguous slices, one per shard, so shards fill evenly
    while the tables stream through.

    Parameters
    ----------
    tables : iterable of pa.Table
        All with the same schema, e.g. from :func:`generate_ratings`.
    out_dir : str
        Local folder, created if needed.
    n_shards : int
        Number of files, each named ``ratings-<i>-of-<n_shards>`` (5-digit numbers).
    format : {'csv', 'parquet'}, default='csv'
        CSV files have a header line and no quoting; Parquet files keep the tables' schema.
    compression : {'none', 'gzip', 'bz2', 'zstd'}, default='none'
        CSV: the whole file, with a matching suffix (``.csv.gz``...). Parquet: the column codec
        (``bz2`` is not available for Parquet).

    Returns
    -------
    list of str
        The paths written.
    """
    check_shard_arguments(n_shards, format, compression)
    os.makedirs(out_dir, exist_ok=True)
    paths = shard_paths(out_dir, n_shards, format, compression)
    tables = iter(tables)
    first = next(tables)
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(_writer(path, first.schema, format, compression)) for path in paths]
        for table in itertools.chain([first], tables):
            bounds = np.linspace(0, table.num_rows, n_shards + 1).astype(np.int64)
            for writer, start, stop in zip(writers, bounds[:-1], bounds[1:]):
                writer.write_table(table.slice(start, stop - start))
    return paths


@contextlib.contextmanager
def _writer(
    path: str, schema: pa.Schema, format: str, compression: str
) -> Iterator[pacsv.CSVWriter | pq.ParquetWriter]:
    if format == "parquet":
        with pq.ParquetWriter(path, schema, compression=compression) as writer:
            yield writer
        return
    codec = None if compression == "none" else {"gzip": "gzip", "bz2": "bz2", "zstd": "zstd"}[compression]
    with pa.output_stream(path, compression=codec) as sink:
        options = pacsv.WriteOptions(quoting_style="none", quoting_header="none")
        with pacsv.CSVWriter(sink, schema, write_options=options) as writer:
            yield writer


def save_truth(
    out_dir: str,
    n_users: int,
    n_items: int,
    rank: int,
    seed: int,
    rating_min: float,
    rating_max: float,
    string_ids: bool,
) -> str:
    """Write the planted factors with their ids to ``out_dir/planted_model.npz``.

    The archive holds ``user_ids``, ``item_ids`` (as in the ratings files), ``user_factors`` and
    ``item_factors`` (rows aligned with the ids). Returns its path.
    """
    user_factors, item_factors = planted_model(n_users, n_items, rank, seed, rating_min, rating_max)
    path = os.path.join(out_dir, TRUTH_FILE)
    id_dtype = str if string_ids else np.int64
    np.savez(
        path,
        user_ids=_ids(np.arange(1, n_users + 1), "u", string_ids).to_numpy(zero_copy_only=False).astype(id_dtype),
        item_ids=_ids(np.arange(1, n_items + 1), "i", string_ids).to_numpy(zero_copy_only=False).astype(id_dtype),
        user_factors=user_factors,
        item_factors=item_factors,
    )
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the generator's flags to ``parser`` (also used by the project CLI)."""
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument("--users", type=int, default=300, help="number of users (default: %(default)s)")
    parser.add_argument("--items", type=int, default=120, help="number of items (default: %(default)s)")
    parser.add_argument("--ratings", type=int, default=9000, help="number of ratings (default: %(default)s)")
    parser.add_argument("--rank", type=int, default=5, help="rank of the planted model (default: %(default)s)")
    parser.add_argument("--noise", type=float, default=0.3, help="Gaussian noise std (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--shards", type=int, default=4, help="number of output files (default: %(default)s)")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="file format (default: %(default)s)")
    parser.add_argument(
        "--skew", type=float, default=1.0, help="Zipf exponent of item popularity (default: %(default)s)"
    )
    parser.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default="none",
        help="CSV: of the whole file; Parquet: the column codec, bz2 excepted (default: %(default)s)",
    )
    parser.add_argument("--rating-min", type=float, default=0.5, help="smallest rating (default: %(default)s)")
    parser.add_argument("--rating-max", type=float, default=5.0, help="largest rating (default: %(default)s)")
    parser.add_argument("--rating-step", type=float, default=0.5, help="rating granularity (default: %(default)s)")
    parser.add_argument("--string-ids", action="store_true", help="write ids as strings (u17, i3)")
    parser.add_argument("--save-truth", action="store_true", help=f"also write the planted factors to {TRUTH_FILE}")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the ratings files (and planted factors) an earlier run wrote to --out",
    )


def earlier_output(out_dir: str) -> list[str]:
    """The files an earlier run wrote to ``out_dir``: ratings shards and the planted factors."""
    if not os.path.isdir(out_dir):
        return []
    names = sorted(name for name in os.listdir(out_dir) if name.startswith("ratings-") or name == TRUTH_FILE)
    return [os.path.join(out_dir, name) for name in names]


def main(args: argparse.Namespace) -> int:
    """Generate ratings as parsed by :func:`add_arguments`, write them, print what was written.

    An earlier data set in ``--out`` is replaced only with ``--overwrite``: left in place,
    another run's shards (a different count) or planted factors would mix with these and be
    read as one data set.

    Raises
    ------
    FileExistsError
        ``--out`` holds an earlier data set and ``--overwrite`` was not given.
    """
    earlier = earlier_output(args.out)
    if earlier and not args.overwrite:
        raise FileExistsError(
            f"{args.out} already holds a generated data set ({len(earlier)} files, e.g. {os.path.basename(earlier[0])}); "
            "pass --overwrite to replace it"
        )
    tables = generate_ratings(
        args.users,
        args.items,
        args.ratings,
        rank=args.rank,
        noise=args.noise,
        seed=args.seed,
        popularity_skew=args.skew,
        rating_min=args.rating_min,
        rating_max=args.rating_max,
        rating_step=args.rating_step,
        string_ids=args.string_ids,
    )
    check_shard_arguments(args.shards, args.format, args.compression)
    tables = iter(tables)
    first = next(tables)  # invalid generator arguments fail here, before anything is deleted
    for path in earlier:
        os.remove(path)
    paths = write_shards(itertools.chain([first], tables), args.out, args.shards, args.format, args.compression)
    print(f"wrote {args.ratings} ratings ({args.users} users x {args.items} items) to {len(paths)} files:")
    for path in paths:
        print(f"  {path}")
    if args.save_truth:
        truth = save_truth(
            args.out, args.users, args.items, args.rank, args.seed, args.rating_min, args.rating_max, args.string_ids
        )
        print(f"planted factors: {truth}")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m pipeline.generate", description=__doc__.split("\n\n")[0])
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))

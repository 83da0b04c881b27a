"""The synthetic generator: shapes, ranges, distinct pairs, determinism, skew, files readable back."""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from pipeline import generate, schemas
from pipeline.generate import generate_ratings, planted_model, write_shards
from pipeline.read import ReadRatings, ReadSettings
from pipeline.validate import ValidateRatings


def _all(**kwargs) -> pa.Table:
    arguments = {"n_users": 200, "n_items": 80, "n_ratings": 4_000, "seed": 5} | kwargs
    return pa.concat_tables(generate_ratings(**arguments))


def _pairs(table: pa.Table) -> np.ndarray:
    return table.column("user_id").to_numpy() * 1_000_000 + table.column("item_id").to_numpy()


def test_shapes_types_and_ranges():
    table = _all(rating_min=1.0, rating_max=5.0, rating_step=1.0)
    assert table.schema == schemas.input_schema()
    assert table.num_rows == 4_000
    users, items, ratings = (table.column(c).to_numpy() for c in ("user_id", "item_id", "rating"))
    assert users.min() >= 1 and users.max() <= 200
    assert items.min() >= 1 and items.max() <= 80
    assert len(np.unique(users)) == 200  # every user rates something
    assert set(np.unique(ratings).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert len(np.unique(ratings)) == 5
    timestamps = table.column("timestamp").to_numpy()
    assert table.column("timestamp").null_count == 0 and timestamps.min() > 1_400_000_000


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"n_users": 50, "n_items": 40, "n_ratings": 1_500, "popularity_skew": 2.0},  # dense: exact fallback path
        {"chunk_rows": 333},
    ],
)
def test_pairs_are_distinct_and_the_count_exact(arguments):
    table = _all(**arguments)
    assert table.num_rows == arguments.get("n_ratings", 4_000)
    assert len(np.unique(_pairs(table))) == table.num_rows


def test_chunks_are_about_chunk_rows():
    sizes = [t.num_rows for t in generate_ratings(200, 80, 4_000, seed=5, chunk_rows=1_000)]
    assert sum(sizes) == 4_000 and len(sizes) >= 4 and max(sizes) < 1_200


def test_same_seed_same_ratings_other_seed_other_ratings():
    assert _all(seed=11).equals(_all(seed=11))
    assert not _all(seed=11).equals(_all(seed=12))


def test_item_popularity_is_skewed():
    def top_decile_share(skew: float) -> float:
        counts = np.bincount(
            _all(n_users=2_000, n_items=500, n_ratings=20_000, popularity_skew=skew).column("item_id").to_numpy()
        )
        return np.sort(counts)[::-1][:50].sum() / counts.sum()

    assert top_decile_share(1.2) > 0.5
    assert top_decile_share(0.0) < 0.15


def test_user_activity_varies():
    counts = np.bincount(_all(n_users=1_000, n_items=400, n_ratings=30_000).column("user_id").to_numpy())[1:]
    assert counts.max() > 5 * np.median(counts)


def test_ratings_follow_the_planted_nonnegative_model():
    table = _all(n_users=300, n_items=100, n_ratings=6_000, rank=4, noise=0.2, seed=3)
    user_factors, item_factors = planted_model(300, 100, 4, seed=3)
    assert user_factors.shape == (300, 4) and item_factors.shape == (100, 4)
    assert user_factors.min() >= 0 and item_factors.min() >= 0
    users = table.column("user_id").to_numpy() - 1
    items = table.column("item_id").to_numpy() - 1
    planted = np.clip(np.einsum("ij,ij->i", user_factors[users], item_factors[items]), 0.5, 5.0)
    ratings = table.column("rating").to_numpy()
    assert np.sqrt(np.mean((planted - ratings) ** 2)) < 0.3
    assert np.sqrt(np.mean((planted - ratings.mean()) ** 2)) > 0.8  # the model explains real spread


def test_string_ids():
    table = _all(string_ids=True, n_ratings=500)
    assert table.schema == schemas.input_schema("string", "string")
    assert all(u.startswith("u") for u in table.column("user_id").to_pylist())
    assert all(i.startswith("i") for i in table.column("item_id").to_pylist())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"n_ratings": 200 * 64 + 1}, r"n_ratings must be at most 12800 \(80% of 200 x 80\)"),
        ({"rank": 0}, "rank must be >= 1; got 0"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_invalid_arguments_are_refused_at_the_call(arguments, message):
    with pytest.raises(ValueError, match=message):
        generate_ratings(**({"n_users": 200, "n_items": 80, "n_ratings": 4_000} | arguments))


def _sorted_rows(table: pa.Table) -> list[tuple]:
    """The generated rows as validation gives them back: timestamps (epoch seconds) in microseconds."""
    rows = zip(*(table.column(c).to_pylist() for c in schemas.DATA_COLUMNS))
    return sorted((*row[:-1], row[-1] * 1_000_000) for row in rows)


@pytest.mark.parametrize(
    ("file_format", "compression", "string_ids"),
    [("csv", "none", False), ("csv", "gzip", True), ("parquet", "zstd", False), ("parquet", "none", True)],
)
def test_shards_read_back_through_read_and_validate(tmp_path, file_format, compression, string_ids):
    arguments = {"n_ratings": 1_000, "string_ids": string_ids, "chunk_rows": 300}
    table = _all(**arguments)
    paths = write_shards(generate_ratings(200, 80, seed=5, **arguments), str(tmp_path), 4, file_format, compression)
    suffix = {"parquet": ".parquet", "csv": ".csv"}[file_format] + (".gz" if compression == "gzip" else "")
    assert [p.rsplit("/", 1)[1] for p in paths] == [f"ratings-0000{i}-of-00004{suffix}" for i in range(4)]
    if file_format == "csv":
        with open(paths[0], "rb") as f:
            head = f.read(2) if compression == "gzip" else f.readline()
        assert head == (b"\x1f\x8b" if compression == "gzip" else b"user_id,item_id,rating,timestamp\n")
    else:
        assert pq.read_schema(paths[0]) == schemas.input_schema(*["string" if string_ids else "int"] * 2)
    id_type = "string" if string_ids else "int"
    settings = ReadSettings(
        path=str(tmp_path / "ratings-*"),
        format=file_format,
        timestamp_column="timestamp",
        user_id_type=id_type,
        item_id_type=id_type,
    )
    with beam.Pipeline(runner=FnApiRunner()) as p:
        validated = p | ReadRatings(settings) | ValidateRatings(user_id_type=id_type, item_id_type=id_type)
        assert_that(
            validated.valid | beam.FlatMap(lambda t: zip(*(t.column(c).to_pylist() for c in schemas.DATA_COLUMNS))),
            equal_to(_sorted_rows(table)),
        )
        assert_that(validated.rejected, equal_to([]), label="NothingRejected")


def test_write_shards_with_fewer_rows_than_shards_still_writes_headers(tmp_path):
    paths = write_shards(generate_ratings(2, 5, 2, seed=0), str(tmp_path), 3)
    assert [pathlib.Path(p).read_text().count("\n") for p in paths] == [1, 2, 2]


def test_bz2_is_refused_for_parquet(tmp_path):
    with pytest.raises(
        ValueError, match=r"compression for parquet must be one of \['none', 'gzip', 'zstd'\]; got 'bz2'"
    ):
        write_shards(iter([]), str(tmp_path), 2, "parquet", "bz2")


def test_cli_writes_shards_and_the_planted_model(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    args = parser.parse_args(
        [
            "--out",
            str(tmp_path),
            "--users",
            "30",
            "--items",
            "20",
            "--ratings",
            "300",
            "--shards",
            "2",
            "--rank",
            "3",
            "--seed",
            "9",
            "--save-truth",
            "--string-ids",
        ]
    )
    assert generate.main(args) == 0
    printed = capsys.readouterr().out
    assert "wrote 300 ratings (30 users x 20 items) to 2 files" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        generate.TRUTH_FILE,
        "ratings-00000-of-00002.csv",
        "ratings-00001-of-00002.csv",
    ]
    truth = np.load(tmp_path / generate.TRUTH_FILE)
    user_factors, item_factors = planted_model(30, 20, 3, seed=9)
    assert np.array_equal(truth["user_factors"], user_factors) and np.array_equal(truth["item_factors"], item_factors)
    assert truth["user_ids"][:2].tolist() == ["u1", "u2"] and truth["item_ids"][-1] == "i20"


def test_runs_as_a_module(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.generate",
            "--out",
            str(tmp_path),
            "--users",
            "20",
            "--items",
            "10",
            "--ratings",
            "100",
            "--shards",
            "1",
            "--format",
            "parquet",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "ratings-00000-of-00001.parquet" in completed.stdout
    assert pq.read_table(tmp_path / "ratings-00000-of-00001.parquet").num_rows == 100


SAMPLE = pathlib.Path(__file__).parent.parent / "sample_data"


def test_bundled_sample_is_reproduced_by_the_readme_command(tmp_path, capsys):
    command = next(line for line in (SAMPLE / "README.md").read_text().splitlines() if "nnmf-pipeline generate" in line)
    argv = command.split()[2:]
    argv[argv.index("--out") + 1] = str(tmp_path)
    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    assert generate.main(parser.parse_args(argv)) == 0
    written = sorted(tmp_path.iterdir())
    assert [p.name for p in written] == sorted(p.name for p in SAMPLE.glob("ratings-*.csv"))
    for path in written:
        assert path.read_bytes() == (SAMPLE / path.name).read_bytes(), f"regenerate sample_data: {command}"


def test_bundled_sample_reads_and_validates_cleanly():
    with beam.Pipeline(runner=FnApiRunner()) as p:
        validated = (
            p | ReadRatings(path=str(SAMPLE / "ratings-*.csv"), timestamp_column="timestamp") | ValidateRatings()
        )
        rows = validated.valid | beam.FlatMap(
            lambda t: zip(t.column("user_id").to_pylist(), t.column("source").to_pylist())
        )
        assert_that(
            rows | beam.combiners.Count.Globally(),
            equal_to([9_000]),
            label="AllValid",
        )
        assert_that(
            rows
            | "Users" >> beam.Map(lambda r: r[0])
            | beam.Distinct()
            | "CountUsers" >> beam.combiners.Count.Globally(),
            equal_to([300]),
            label="EveryUser",
        )
        assert_that(
            rows | "Files" >> beam.Map(lambda r: pathlib.Path(r[1]).name) | "DistinctFiles" >> beam.Distinct(),
            equal_to([f"ratings-0000{i}-of-00004.csv" for i in range(4)]),
            label="FourShards",
        )
        assert_that(validated.rejected, equal_to([]), label="NothingRejected")


def test_an_earlier_data_set_is_replaced_only_with_overwrite(tmp_path, capsys):
    """Left in place, an earlier run's shards (another count) would be read with the new ones
    as one data set; invalid arguments never delete it."""
    from pipeline.cli import main as cli_main

    out = str(tmp_path / "g")
    small = ["--out", out, "--users", "20", "--items", "10", "--ratings", "100"]
    assert cli_main(["generate", *small, "--shards", "4", "--save-truth"]) == 0
    first = sorted(p.name for p in pathlib.Path(out).iterdir())
    assert len(first) == 5

    assert cli_main(["generate", *small, "--shards", "2"]) == 1
    assert "already holds a generated data set (5 files" in capsys.readouterr().err
    for bad in (["--shards", "0"], ["--format", "parquet", "--compression", "bz2"], ["--ratings", "0"]):
        assert cli_main(["generate", *small, *bad, "--overwrite"]) == 2
        assert capsys.readouterr().err.startswith("nnmf-pipeline generate: error: ")
    assert sorted(p.name for p in pathlib.Path(out).iterdir()) == first

    assert cli_main(["generate", *small, "--shards", "2", "--overwrite"]) == 0
    assert sorted(p.name for p in pathlib.Path(out).iterdir()) == ["ratings-00000-of-00002.csv", "ratings-00001-of-00002.csv"]

"""ReadRatings: formats, compression, globs, line numbers, malformed lines and structural errors."""

from __future__ import annotations

import gzip
import pathlib
import re
import shutil

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from pipeline import schemas
from pipeline.read import InputStructureError, ReadRatings, ReadSettings
from pipeline.validate import ValidateRatings

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _pipeline() -> test_pipeline.TestPipeline:
    return test_pipeline.TestPipeline(runner=FnApiRunner())


def _rows(batches: beam.PCollection, label: str = "Rows") -> beam.PCollection:
    """One dict per row: readable expectations for small inputs."""
    return batches | label >> beam.FlatMap(lambda table: table.to_pylist())


def _raw(
    path: str, row: int, *values, parse_error: str | None = None, raw_line: str | None = None, columns: int = 3
) -> dict:
    """A raw row: ``values`` of the first data columns (none for a malformed line of ``columns``)."""
    values = values or (None,) * columns
    return {
        **dict(zip(schemas.DATA_COLUMNS, values)),
        schemas.SOURCE: path,
        schemas.ROW: row,
        schemas.PARSE_ERROR: parse_error,
        schemas.RAW_LINE: raw_line,
    }


def _holds(predicate, description: str):
    """Matcher: ``predicate`` is true of the list of elements."""

    def match(actual):
        if not predicate(actual):
            raise BeamAssertException(f"expected {description}; got {actual}")

    return match


def _write(path: pathlib.Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


def test_csv_with_header_gives_raw_text_with_line_numbers(tmp_path):
    path = _write(tmp_path / "r.csv", b"user_id,item_id,rating,timestamp\n1,10,4.0,100\n2,11,3.5,\n 3 ,12,x,7\n")
    with _pipeline() as p:
        batches = p | ReadRatings(path=path, timestamp_column="timestamp")
        assert_that(
            batches | beam.Map(lambda table: table.schema),
            equal_to(
                [
                    pa.schema(
                        [(name, pa.binary()) for name in schemas.DATA_COLUMNS]
                        + [
                            ("source", pa.string()),
                            ("row", pa.int64()),
                            ("parse_error", pa.string()),
                            ("raw_line", pa.string()),
                        ]
                    )
                ]
            ),
            label="Schema",
        )
        assert_that(
            _rows(batches),
            equal_to(
                [
                    _raw(path, 2, b"1", b"10", b"4.0", b"100"),
                    _raw(path, 3, b"2", b"11", b"3.5", b""),
                    _raw(path, 4, b" 3 ", b"12", b"x", b"7"),
                ]
            ),
        )


def test_header_names_select_and_rename_columns_in_any_order(tmp_path):
    path = _write(tmp_path / "r.csv", b"ts,score,extra,movie,person\n100,4.0,zz,10,1\n")
    settings = ReadSettings(
        path=path, user_column="person", item_column="movie", rating_column="score", timestamp_column="ts"
    )
    with _pipeline() as p:
        assert_that(_rows(p | ReadRatings(settings)), equal_to([_raw(path, 2, b"1", b"10", b"4.0", b"100")]))


def test_no_header_uses_positions_and_numbers_lines_from_one(tmp_path):
    path = _write(tmp_path / "r.csv", b"4.0,10,1\n3.5,11,2\n")
    settings = ReadSettings(path=path, header=False, user_column=2, item_column=1, rating_column=0)
    with _pipeline() as p:
        assert_that(
            _rows(p | ReadRatings(settings)),
            equal_to([_raw(path, 1, b"1", b"10", b"4.0"), _raw(path, 2, b"2", b"11", b"3.5")]),
        )


@pytest.mark.parametrize(("format", "delimiter", "separator"), [("tsv", None, b"\t"), ("csv", ";", b";")])
def test_delimiters(tmp_path, format, delimiter, separator):
    lines = [[b"user_id", b"item_id", b"rating"], [b"1", b"a,b", b"2"]]
    path = _write(tmp_path / "r.txt", b"".join(separator.join(line) + b"\n" for line in lines))
    with _pipeline() as p:
        batches = p | ReadRatings(path=path, format=format, delimiter=delimiter)
        assert_that(_rows(batches), equal_to([_raw(path, 2, b"1", b"a,b", b"2")]))


def test_parquet_keeps_file_types_and_numbers_rows_across_batches(tmp_path):
    table = pa.table(
        {
            "user": pa.array([1, 2, 3, 4, 5], pa.int32()),
            "item": pa.array(["a", "b", "c", "d", "e"]).dictionary_encode(),
            "stars": pa.array([1.0, 2.0, 3.0, 4.0, 5.0], pa.float64()),
            "when": pa.array([10, 20, 30, 40, 50], pa.timestamp("s")),
        }
    )
    path = str(tmp_path / "r.parquet")
    pq.write_table(table, path, row_group_size=2)
    settings = ReadSettings(
        path=path,
        format="parquet",
        user_column="user",
        item_column=1,
        rating_column="stars",
        timestamp_column="when",
        batch_rows=2,
    )
    with _pipeline() as p:
        batches = p | ReadRatings(settings)
        assert_that(batches | beam.Map(lambda t: t.num_rows), equal_to([2, 2, 1]), label="Batches")
        assert_that(
            batches | beam.Map(lambda t: [str(t.schema.field(name).type) for name in schemas.DATA_COLUMNS]),
            equal_to([["int32", "string", "double", "timestamp[ms]"]] * 3),
            label="Types",
        )
        assert_that(
            _rows(batches | beam.Map(lambda t: t.select(["user_id", "item_id", "row"]))),
            equal_to([{"user_id": u, "item_id": i, "row": u} for u, i in zip(range(1, 6), "abcde")]),
        )


def test_gzip_shard_is_decompressed_by_extension_or_setting(tmp_path):
    content = b"user_id,item_id,rating\n1,10,4.0\n2,11,3.5\n"
    auto = _write(tmp_path / "r.csv.gz", gzip.compress(content))
    explicit = _write(tmp_path / "r.data", gzip.compress(content))
    with _pipeline() as p:
        by_extension = p | "ReadAuto" >> ReadRatings(path=auto)
        by_setting = p | "ReadGzip" >> ReadRatings(path=explicit, compression="gzip")
        for label, batches in [("Auto", by_extension), ("Gzip", by_setting)]:
            assert_that(
                _rows(batches, f"{label}Rows")
                | f"{label}Values" >> beam.Map(lambda r: (r["user_id"], r["rating"], r["row"])),
                equal_to([(b"1", b"4.0", 2), (b"2", b"3.5", 3)]),
                label=label,
            )


def test_glob_reads_every_matching_shard(tmp_path):
    for shard in range(3):
        _write(
            tmp_path / f"ratings-{shard}.csv",
            b"user_id,item_id,rating\n" + b"".join(b"%d,%d,4\n" % (shard, i) for i in range(shard + 1)),
        )
    _write(tmp_path / "notes.txt", b"not a ratings file\n")
    with _pipeline() as p:
        rows = _rows(p | ReadRatings(path=str(tmp_path / "ratings-*.csv")))
        assert_that(
            rows | beam.Map(lambda r: (pathlib.Path(r["source"]).name, r["user_id"], r["item_id"])),
            equal_to([(f"ratings-{s}.csv", b"%d" % s, b"%d" % i) for s in range(3) for i in range(s + 1)]),
        )


def test_header_only_and_empty_files_give_no_rows(tmp_path):
    shutil.copy(FIXTURES / "header_only.csv", tmp_path / "a.csv")
    shutil.copy(FIXTURES / "empty.csv", tmp_path / "b.csv")
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([], pa.int64()),
                "item_id": pa.array([], pa.int64()),
                "rating": pa.array([], pa.float32()),
            }
        ),
        tmp_path / "c.parquet",
    )
    _write(tmp_path / "d.parquet", b"")
    with _pipeline() as p:
        assert_that(p | "Csv" >> ReadRatings(path=str(tmp_path / "*.csv")), equal_to([]), label="NoCsvRows")
        assert_that(
            p | "Parquet" >> ReadRatings(path=str(tmp_path / "*.parquet"), format="parquet"),
            equal_to([]),
            label="NoParquetRows",
        )


def test_malformed_and_non_utf8_lines_are_kept_with_their_reason_and_line_number(tmp_path):
    path = _write(
        tmp_path / "r.csv", b"user_id,item_id,rating\n1,10,4.0\n1,11\n2,\xff,3.0\n\n3,12,2.0,extra\xfe\n4,13,1.0\n"
    )
    expected = [
        _raw(path, 2, b"1", b"10", b"4.0"),
        _raw(path, 3, parse_error="expected 3 columns, got 2", raw_line="1,11"),
        _raw(path, 4, b"2", b"\xff", b"3.0"),
        _raw(path, 5, b"", b"", b""),
        _raw(path, 6, parse_error="expected 3 columns, got 4", raw_line="3,12,2.0,extra\\xfe"),
        _raw(path, 7, b"4", b"13", b"1.0"),
    ]
    for block_bytes in (1 << 20, 10):
        with _pipeline() as p:
            assert_that(_rows(p | ReadRatings(path=path, block_bytes=block_bytes)), equal_to(expected))


def test_row_is_the_line_number_across_blocks_quotes_and_crlf(tmp_path):
    lines = [b"user_id,item_id,rating"]
    for line_number in range(2, 400):
        if line_number % 37 == 0:
            lines.append(b"bad")
        elif line_number % 53 == 0:
            lines.append(b'"%d,"unbalanced,4' % line_number)
        else:
            lines.append(b'"%d",%d,"4.0"' % (line_number, line_number))
    path = _write(tmp_path / "r.csv", b"\r\n".join(lines) + b"\r\n")
    with _pipeline() as p:
        batches = p | ReadRatings(path=path, block_bytes=200)
        assert_that(
            batches | beam.combiners.Count.Globally(), _holds(lambda n: n[0] > 10, "many batches"), label="Batches"
        )
        rows = _rows(batches)
        assert_that(
            rows
            | beam.Filter(lambda r: r["parse_error"] is None)
            | beam.Map(lambda r: (r["user_id"], r["item_id"], r["row"])),
            equal_to([(b"%d" % n, b"%d" % n, n) for n in range(2, 400) if n % 37 and n % 53]),
        )
        assert_that(
            rows | beam.Filter(lambda r: r["parse_error"] is not None) | beam.Map(lambda r: r["row"]),
            equal_to([n for n in range(2, 400) if n % 37 == 0 or n % 53 == 0]),
            label="MalformedRows",
        )


def test_counters_count_rows_files_and_malformed_lines():
    p = beam.Pipeline(runner=FnApiRunner())
    _ = p | ReadRatings(path=str(FIXTURES / "ratings_defects.csv"), timestamp_column="timestamp")
    metrics = p.run().metrics()
    counters = {
        r.key.metric.name: r.committed for r in metrics.query(MetricsFilter().with_namespace("read"))["counters"]
    }
    assert counters == {"rows_read": 17, "files_read": 1, "malformed_lines": 2}


@pytest.mark.parametrize("id_type", ["int", "string"])
def test_ids_of_either_type_survive_read_and_validation(tmp_path, id_type):
    ids = {"int": (b"7", b"12", 7, 12), "string": (b"u7", b"i12", "u7", "i12")}[id_type]
    path = _write(tmp_path / "r.csv", b"user_id,item_id,rating\n%s,%s,4.5\n" % ids[:2])
    with _pipeline() as p:
        raw = p | ReadRatings(path=path, user_id_type=id_type, item_id_type=id_type)
        validated = raw | ValidateRatings(user_id_type=id_type, item_id_type=id_type)
        assert_that(
            _rows(validated.valid),
            equal_to(
                [{"user_id": ids[2], "item_id": ids[3], "rating": 4.5, "timestamp": None, "source": path, "row": 2}]
            ),
        )


def test_parquet_ids_convert_between_int_and_string(tmp_path):
    path = str(tmp_path / "r.parquet")
    pq.write_table(
        pa.table({"user_id": pa.array([7], pa.uint16()), "item_id": ["12"], "rating": pa.array([3], pa.int8())}), path
    )
    with _pipeline() as p:
        validated = (
            p | ReadRatings(path=path, format="parquet") | ValidateRatings(user_id_type="string", item_id_type="int")
        )
        assert_that(
            _rows(validated.valid),
            equal_to([{"user_id": "7", "item_id": 12, "rating": 3.0, "timestamp": None, "source": path, "row": 1}]),
        )


# ----------------------------------------------------------------------------- structural errors


def _apply(settings: ReadSettings) -> None:
    """Build (not run) a pipeline reading ``settings``: structural errors must surface here."""
    _ = beam.Pipeline(runner=FnApiRunner()) | ReadRatings(settings)


def test_no_matching_file_fails_before_running(tmp_path):
    pattern = str(tmp_path / "*.csv")
    with pytest.raises(FileNotFoundError, match=re.escape(f"no input file matches '{pattern}'")):
        _apply(ReadSettings(path=pattern))


def test_header_without_configured_column_names_file_and_column():
    path = str(FIXTURES / "missing_rating_column.csv")
    with pytest.raises(
        InputStructureError,
        match=r"missing_rating_column\.csv: header has no column 'rating' \(rating_column\); "
        r"header columns: user_id, item_id, score",
    ):
        _apply(ReadSettings(path=path))


def test_one_bad_shard_among_good_ones_is_named(tmp_path):
    _write(tmp_path / "a.csv", b"user_id,item_id,rating\n1,2,3\n")
    _write(tmp_path / "b.csv", b"user_id,item_id,stars\n1,2,3\n")
    with pytest.raises(InputStructureError, match=r"b\.csv: header has no column 'rating'"):
        _apply(ReadSettings(path=str(tmp_path / "*.csv")))


def test_position_beyond_first_line_is_an_error(tmp_path):
    path = _write(tmp_path / "r.csv", b"1,2,3\n")
    with pytest.raises(
        InputStructureError, match=r"r\.csv: timestamp_column is position 3 but the first line has 3 columns"
    ):
        _apply(ReadSettings(path=path, header=False, user_column=0, item_column=1, rating_column=2, timestamp_column=3))


def test_parquet_without_configured_column_names_file_and_column(tmp_path):
    path = str(tmp_path / "r.parquet")
    pq.write_table(pa.table({"user_id": [1], "item_id": [2], "score": [3.0]}), path)
    with pytest.raises(
        InputStructureError,
        match=r"r\.parquet: no column 'rating' \(rating_column\); file columns: user_id, item_id, score",
    ):
        _apply(ReadSettings(path=path, format="parquet"))


@pytest.mark.parametrize(
    ("column", "array", "expected"),
    [
        (
            "user_id",
            pa.array([1.0]),
            r"column 'user_id' \(user_column\) has type double; expected an integer or string column",
        ),
        (
            "rating",
            pa.array([[1]]),
            r"column 'rating' \(rating_column\) has type list<element: int64>; expected a numeric or string column",
        ),
        (
            "rating",
            pa.array([True]),
            r"column 'rating' \(rating_column\) has type bool; expected a numeric or string column",
        ),
    ],
)
def test_parquet_column_of_unusable_type_names_file_column_and_type(tmp_path, column, array, expected):
    columns = {"user_id": pa.array([1]), "item_id": pa.array([2]), "rating": pa.array([3.0])}
    columns[column] = array
    path = str(tmp_path / "r.parquet")
    pq.write_table(pa.table(columns), path)
    with pytest.raises(InputStructureError, match=r"r\.parquet: " + expected):
        _apply(ReadSettings(path=path, format="parquet"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"format": "json"}, "format must be one of"),
        ({"compression": "lz4"}, "compression must be one of"),
        ({"format": "parquet", "compression": "gzip"}, "compression applies to csv/tsv only"),
        ({"header": False}, "user_column must be a position \\(int\\) when header is false; got 'user_id'"),
        ({"rating_column": -1}, "rating_column must be a column name or a position >= 0; got -1"),
        ({"user_id_type": "uuid"}, "user_id_type must be one of"),
        ({"delimiter": "::"}, "delimiter must be one character"),
    ],
)
def test_settings_are_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        ReadSettings(path="x.csv", **overrides)

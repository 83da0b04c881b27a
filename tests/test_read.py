"""ReadRatings: formats, compression, globs, line numbers, malformed lines and structural errors."""

from __future__ import annotations

import bz2
import gzip
import lzma
import pathlib
import re
import shutil

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from pipeline import schemas
from pipeline.read import InputStructureError, ReadRatings, ReadSettings, read_file
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


# ----------------------------------------------------------------------------- compressed streams, records, headerless lines


def _read(path: str, **settings) -> list[dict]:
    """Every raw row of one file, read without a pipeline."""
    return [row for batch in read_file(path, ReadSettings(path=path, **settings)) for row in batch.to_pylist()]


_COMPRESSORS = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


@pytest.mark.parametrize("extension", sorted(_COMPRESSORS))
def test_concatenated_compressed_streams_read_as_one(tmp_path, extension):
    compress = _COMPRESSORS[extension]
    first, second = b"user_id,item_id,rating\n1,10,4\n", b"2,11,3\n"
    path = _write(tmp_path / f"r.csv.{extension}", compress(first) + compress(second))
    assert [(r["user_id"], r["row"]) for r in _read(path)] == [(b"1", 2), (b"2", 3)]


@pytest.mark.parametrize("extension", sorted(_COMPRESSORS))
@pytest.mark.parametrize("cut", ["next_stream_header", "mid_stream"])
def test_truncated_compressed_file_fails_naming_the_file(tmp_path, extension, cut):
    compress = _COMPRESSORS[extension]
    head = b"user_id,item_id,rating\n" + b"".join(b"%d,1,3\n" % i for i in range(100))
    rest = b"".join(b"%d,1,3\n" % i for i in range(100, 5000))
    if cut == "next_stream_header":
        data = compress(head) + compress(rest)[:15]
    else:
        whole = compress(head + rest)
        data = whole[: len(whole) // 2]
    path = _write(tmp_path / f"r.csv.{extension}", data)
    with pytest.raises(InputStructureError, match=re.escape(path) + ": .*(ends before the end of its stream|corrupt)"):
        _read(path)


def test_truncated_gzip_fails_the_pipeline_run(tmp_path):
    whole = gzip.compress(b"user_id,item_id,rating\n" + b"".join(b"%d,1,3\n" % i for i in range(5000)))
    path = _write(tmp_path / "r.csv.gz", whole[: len(whole) // 2])
    with pytest.raises(Exception, match=r"r\.csv\.gz: gzip data ends before the end of its stream"):
        with _pipeline() as p:
            _ = p | ReadRatings(path=path)


def test_garbage_after_a_gzip_member_fails_naming_the_file(tmp_path):
    path = _write(tmp_path / "r.csv.gz", gzip.compress(b"user_id,item_id,rating\n1,10,4\n") + b"garbage")
    with pytest.raises(InputStructureError, match=re.escape(path) + ": corrupt gzip data"):
        _read(path)


@pytest.mark.parametrize("block_bytes", [1 << 20, 7, 16, 40])
def test_quoted_value_spanning_lines_is_one_record_numbered_by_its_first_line(tmp_path, block_bytes):
    path = _write(
        tmp_path / "r.csv",
        b'user_id,item_id,rating,timestamp\r\n7,1,3,"100\r\n8,2,4,200"\r\n9,2,2,300\r\n"1\n\n0",5,"a\r\nb",\r\n',
    )
    rows = _read(path, timestamp_column="timestamp", block_bytes=block_bytes)
    assert [(r["user_id"], r["item_id"], r["rating"], r["timestamp"], r["row"]) for r in rows] == [
        (b"7", b"1", b"3", b"100\r\n8,2,4,200", 2),
        (b"9", b"2", b"2", b"300", 4),
        (b"1\n\n0", b"5", b"a\r\nb", b"", 5),
    ]
    assert all(r["parse_error"] is None for r in rows)


def test_multiline_record_is_validated_as_one_row(tmp_path):
    path = _write(tmp_path / "r.csv", b'user_id,item_id,rating,timestamp\r\n7,1,3,"100\r\n8,2,4,200"\r\n9,2,2,300\r\n')
    strings = _write(tmp_path / "s.csv", b'user_id,item_id,rating,timestamp\nu1,"The\nitem",3,100\n')
    with _pipeline() as p:
        ints = p | "ReadInts" >> ReadRatings(path=path, timestamp_column="timestamp") | "Ints" >> ValidateRatings()
        assert_that(_rows(ints.valid, "IntRows") | beam.Map(lambda r: (r["user_id"], r["row"])), equal_to([(9, 4)]))
        assert_that(
            _rows(ints.rejected, "Rejected") | beam.Map(lambda r: (r["row"], r["field"], r["value"])),
            equal_to([(2, "timestamp", "100\r\n8,2,4,200")]),
            label="RejectedTimestamp",
        )
        ids = dict(user_id_type="string", item_id_type="string")
        texts = p | "ReadStrings" >> ReadRatings(path=strings, timestamp_column="timestamp", **ids)
        validated = texts | "Strings" >> ValidateRatings(**ids)
        assert_that(
            _rows(validated.valid, "StringRows") | beam.Map(lambda r: (r["item_id"], r["row"])),
            equal_to([("The\nitem", 2)]),
            label="StringId",
        )
        assert_that(validated.rejected, equal_to([]), label="NoneRejected")


@pytest.mark.parametrize("block_bytes", [1 << 20, 8])
def test_quote_left_open_at_end_of_file_rejects_only_its_first_line(tmp_path, block_bytes):
    path = _write(tmp_path / "r.csv", b'user_id,item_id,rating\n1,"2,3\n4,5,6\n7,8,9\n')
    rows = _read(path, block_bytes=block_bytes)
    assert [(r["row"], r["user_id"], r["parse_error"], r["raw_line"]) for r in rows] == [
        (2, None, "quoted value is not closed before the end of the file", '1,"2,3'),
        (3, b"4", None, None),
        (4, b"7", None, None),
    ]


@pytest.mark.parametrize("block_bytes", [1 << 20, 4096])
def test_stray_quote_mid_file_costs_its_line_only(tmp_path, block_bytes):
    """A quote that never closes would make the rest of the file one value: the csv field limit
    stops it, the line is rejected with a reason that says what happened, and every later line
    is read (the carried text stays bounded by the limit, whatever the file's size)."""
    lines = [b"%d,%d,4" % (n, n) for n in range(3, 40_003)]
    path = _write(tmp_path / "r.csv", b'user_id,item_id,rating\n1,"2,3\n' + b"\n".join(lines) + b"\n")
    rows = _read(path, block_bytes=block_bytes)
    assert rows[0]["row"] == 2 and "not closed within" in rows[0]["parse_error"]
    assert [(r["row"], r["user_id"], r["parse_error"]) for r in rows[1:]] == [
        (n, b"%d" % n, None) for n in range(3, 40_003)
    ]


def test_quoted_fields_on_one_line_stay_on_the_fast_path_results(tmp_path):
    lines = [b'"%d","%d","4.0"' % (n, n) for n in range(2, 3000)]
    path = _write(tmp_path / "r.csv", b"user_id,item_id,rating\n" + b"\n".join(lines) + b"\n")
    rows = _read(path, block_bytes=4096)
    assert [(r["user_id"], r["row"]) for r in rows] == [(b"%d" % n, n) for n in range(2, 3000)]


@pytest.mark.parametrize("timestamp_column", [None, 3])
def test_without_header_a_line_needs_only_the_configured_positions(tmp_path, timestamp_column):
    path = _write(tmp_path / "r.csv", b"1,2,3\n2,3,4,100\n3,4,5,200\n4,5,1,300\n")
    settings = dict(header=False, user_column=0, item_column=1, rating_column=2, timestamp_column=timestamp_column)
    for block_bytes in (1 << 20, 9):
        rows = _read(path, block_bytes=block_bytes, **settings)
        values = [(r["row"], r["user_id"], r["parse_error"], r["raw_line"]) for r in rows]
        longer = [(2, b"2", None, None), (3, b"3", None, None), (4, b"4", None, None)]
        if timestamp_column is None:
            assert values == [(1, b"1", None, None), *longer]
        else:
            missing = "timestamp_column is position 3 but the line has 3 columns"
            assert values == [(1, None, missing, "1,2,3"), *longer]
            assert [r["timestamp"] for r in rows] == [None, b"100", b"200", b"300"]


def test_without_header_a_short_first_line_does_not_abort_the_file(tmp_path):
    """The pipeline is built (no structural error) and the short line is one rejected row."""
    path = _write(tmp_path / "r.csv", b"1,2,3\n4,5,6,7\n")
    settings = dict(header=False, user_column=0, item_column=1, rating_column=2, timestamp_column=3)
    _apply(ReadSettings(path=path, **settings))
    rows = _read(path, **settings)
    assert [(r["row"], r["user_id"], r["parse_error"]) for r in rows] == [
        (1, None, "timestamp_column is position 3 but the line has 3 columns"),
        (2, b"4", None),
    ]


def test_parquet_naming_a_configured_column_twice_names_file_and_column(tmp_path):
    path = str(tmp_path / "r.parquet")
    pq.write_table(pa.Table.from_arrays([pa.array([1]), pa.array([2]), pa.array([3.0]), pa.array([4.0])],
                                        names=["user_id", "item_id", "rating", "rating"]), path)
    with pytest.raises(InputStructureError, match=re.escape(path) + r": the file has 2 columns named 'rating' "
                       r"\(rating_column\), at positions 2, 3"):
        _apply(ReadSettings(path=path, format="parquet"))


def test_gzip_padded_with_zero_bytes_reads_like_gzip_open(tmp_path):
    """Some tools pad gzip files with zero bytes after the last member; gzip.open ignores them."""
    data = b"user_id,item_id,rating\n1,2,3\n"
    path = _write(tmp_path / "r.csv.gz", gzip.compress(data) + b"\0" * 1000)
    assert gzip.open(path).read() == data
    assert [(r["row"], r["user_id"]) for r in _read(path)] == [(2, b"1")]


def test_corrupt_parquet_names_the_file(tmp_path):
    path = _write(tmp_path / "a.parquet", b"hello,world\n")
    with pytest.raises(InputStructureError, match=re.escape(path) + ": cannot be read as Parquet: .*magic bytes"):
        _apply(ReadSettings(path=path, format="parquet"))


def test_header_repeating_a_configured_column_names_file_and_column(tmp_path):
    path = _write(tmp_path / "r.csv", b"user_id,item_id,rating,timestamp,rating\n1,2,3,4,5\n")
    with pytest.raises(
        InputStructureError, match=r"r\.csv: header names column 'rating' \(rating_column\) 2 times, at positions 2, 4"
    ):
        _apply(ReadSettings(path=path))


def test_header_repeating_an_unused_column_is_allowed(tmp_path):
    path = _write(tmp_path / "r.csv", b"user_id,x,item_id,rating,x\n1,a,2,3,b\n")
    assert [(r["user_id"], r["item_id"], r["rating"]) for r in _read(path)] == [(b"1", b"2", b"3")]


@pytest.mark.parametrize("block_bytes", [1 << 20, 6])
def test_blank_lines_are_not_rows_and_counts_add_up(tmp_path, block_bytes):
    path = _write(tmp_path / "r.csv", b"user_id,item_id,rating\n\n1,2,3\n\r\n\n4,5,6\n7,8\n\n")
    rows = _read(path, block_bytes=block_bytes)
    assert [(r["row"], r["user_id"], r["parse_error"]) for r in rows] == [
        (3, b"1", None),
        (6, b"4", None),
        (7, None, "expected 3 columns, got 2"),
    ]
    p = beam.Pipeline(runner=FnApiRunner())
    validated = p | ReadRatings(path=path, block_bytes=block_bytes) | ValidateRatings()
    _ = validated.rejected
    counters = {
        r.key.metric.name: r.committed
        for r in p.run().metrics().query(MetricsFilter().with_namespace("read"))["counters"]
    }
    assert counters["rows_read"] == 3

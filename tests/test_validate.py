"""ValidateRatings / validate_batch: one reason per defect, typed output, counters, rejection limit."""

from __future__ import annotations

import decimal
import pathlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from pipeline import schemas, validate
from pipeline.read import ReadRatings
from pipeline.validate import ValidateRatings, ValidationSettings, check_rejected_fraction, validate_batch

DEFECTS = str(pathlib.Path(__file__).parent / "fixtures" / "ratings_defects.csv")
RANGE = "must be a finite number in [0.5, 5.0]"
INT64 = "must be an integer in the int64 range"

# Line of ratings_defects.csv -> (field, value, reason); every other data line is valid.
EXPECTED_REJECTIONS = {
    3: ("<line>", "1,11,3.5", "expected 4 columns, got 3"),
    4: ("rating", "abc", f"rating {RANGE}; got 'abc'"),
    5: ("rating", "NaN", f"rating {RANGE}; got 'NaN'"),
    6: ("rating", "inf", f"rating {RANGE}; got 'inf'"),
    7: ("rating", "-3", f"rating {RANGE}; got '-3'"),
    8: ("user_id", "", "user_id is empty"),
    9: ("item_id", "", "item_id is empty"),
    10: ("user_id", "   ", "user_id is empty"),
    11: ("item_id", "\\xff\\xfe", "not valid UTF-8"),
    12: ("user_id", "99999999999999999999", f"user_id {INT64}; got '99999999999999999999'"),
    13: ("user_id", "x7", f"user_id {INT64}; got 'x7'"),
    15: ("timestamp", "yesterday", f"timestamp {INT64}; got 'yesterday'"),
    17: ("<line>", "6,13,2.0,1012,extra", "expected 4 columns, got 5"),
}
EXPECTED_VALID = [
    (1, 10, 4.0, 1000, 2),
    (5, 10, 4.5, 1011, 14),
    (5, 12, 0.5, None, 16),
    (9223372036854775807, 14, 1.0, 1013, 18),
]


def _read_and_validate(pipeline: beam.Pipeline) -> validate.ValidatedRatings:
    return pipeline | ReadRatings(path=DEFECTS, timestamp_column="timestamp") | ValidateRatings()


def test_each_defect_line_is_rejected_with_its_field_value_and_reason():
    with beam.Pipeline(runner=FnApiRunner()) as p:
        validated = _read_and_validate(p)
        assert_that(
            validated.rejected | beam.FlatMap(lambda t: t.to_pylist()),
            equal_to(
                [
                    {"source": DEFECTS, "row": line, "field": field, "value": value, "reason": reason}
                    for line, (field, value, reason) in EXPECTED_REJECTIONS.items()
                ]
            ),
            label="Rejected",
        )
        assert_that(
            validated.valid | beam.FlatMap(lambda t: t.to_pylist()),
            equal_to(
                [
                    {"user_id": u, "item_id": i, "rating": r, "timestamp": ts, "source": DEFECTS, "row": row}
                    for u, i, r, ts, row in EXPECTED_VALID
                ]
            ),
            label="Valid",
        )
        assert_that(
            validated.valid | beam.Map(lambda t: t.schema),
            equal_to([schemas.ratings_schema("int", "int")]),
            label="ValidSchema",
        )
        assert_that(
            validated.rejected | "RejectedSchema" >> beam.Map(lambda t: t.schema),
            equal_to([schemas.REJECTED_SCHEMA]),
            label="RejectedSchemaMatches",
        )


def test_every_row_read_is_either_valid_or_rejected_and_counted_by_reason():
    p = beam.Pipeline(runner=FnApiRunner())
    _read_and_validate(p)
    result = p.run()
    result.wait_until_finish()
    counters = {
        (r.key.metric.namespace, r.key.metric.name): r.committed
        for r in result.metrics().query(MetricsFilter())["counters"]
    }
    data_lines = len(pathlib.Path(DEFECTS).read_bytes().splitlines()) - 1
    assert counters[("read", "rows_read")] == data_lines == 17
    assert counters[("validate", "valid_rows")] == len(EXPECTED_VALID)
    assert counters[("validate", "rejected_rows")] == len(EXPECTED_REJECTIONS)
    assert counters[("validate", "valid_rows")] + counters[("validate", "rejected_rows")] == data_lines
    by_reason = {
        name: n for (namespace, name), n in counters.items() if namespace == "validate" and not name.endswith("_rows")
    }
    assert by_reason == {
        "malformed_line": 2,
        "rating_not_a_number": 1,
        "rating_not_finite": 2,
        "rating_out_of_range": 1,
        "user_id_empty": 2,
        "item_id_empty": 1,
        "item_id_not_utf8": 1,
        "user_id_not_int64": 2,
        "timestamp_not_int64": 1,
    }


def _text_batch(users, items, ratings, timestamps=None) -> pa.Table:
    columns = {
        "user_id": pa.array([None if v is None else v.encode() for v in users], pa.binary()),
        "item_id": pa.array([None if v is None else v.encode() for v in items], pa.binary()),
        "rating": pa.array([None if v is None else v.encode() for v in ratings], pa.binary()),
    }
    if timestamps is not None:
        columns["timestamp"] = pa.array([None if v is None else v.encode() for v in timestamps], pa.binary())
    n = len(users)
    columns["source"] = pa.array(["f.csv"] * n)
    columns["row"] = pa.array(range(2, n + 2), pa.int64())
    return pa.table(columns)


def _reasons(rejected: pa.Table) -> list[tuple[int, str, str | None, str]]:
    return [(r["row"], r["field"], r["value"], r["reason"]) for r in rejected.to_pylist()]


def test_integer_ids_are_trimmed_signed_and_bounded_to_int64():
    users = [" 7 ", "+5", "007", "-9223372036854775808", "-9223372036854775809", "9223372036854775808", "1.0", "1e3"]
    valid, rejected = validate_batch(_text_batch(users, ["1"] * len(users), ["3"] * len(users)), ValidationSettings())
    assert valid.column("user_id").to_pylist() == [7, 5, 7, -9223372036854775808]
    assert valid.column("row").to_pylist() == [2, 3, 4, 5]
    assert _reasons(rejected) == [
        (6, "user_id", "-9223372036854775809", f"user_id {INT64}; got '-9223372036854775809'"),
        (7, "user_id", "9223372036854775808", f"user_id {INT64}; got '9223372036854775808'"),
        (8, "user_id", "1.0", f"user_id {INT64}; got '1.0'"),
        (9, "user_id", "1e3", f"user_id {INT64}; got '1e3'"),
    ]


def test_ratings_accept_decimal_forms_and_report_the_configured_range():
    ratings = ["4.", ".5", "1e1", "+2", "10.0001", "", "1,5", "-inf"]
    settings = ValidationSettings(rating_min=1, rating_max=10)
    valid, rejected = validate_batch(_text_batch(["1"] * 8, ["2"] * 8, ratings), settings)
    assert valid.column("rating").to_pylist() == [4.0, 10.0, 2.0]
    assert valid.schema.field("rating").type == pa.float32()
    assert _reasons(rejected) == [
        (3, "rating", ".5", "rating must be a finite number in [1.0, 10.0]; got '.5'"),
        (6, "rating", "10.0001", "rating must be a finite number in [1.0, 10.0]; got '10.0001'"),
        (7, "rating", "", "rating is empty"),
        (8, "rating", "1,5", "rating must be a finite number in [1.0, 10.0]; got '1,5'"),
        (9, "rating", "-inf", "rating must be a finite number in [1.0, 10.0]; got '-inf'"),
    ]


def test_the_first_failing_field_is_reported_once():
    valid, rejected = validate_batch(_text_batch(["", "x"], ["", "y"], ["99", "99"]), ValidationSettings())
    assert valid.num_rows == 0
    assert _reasons(rejected) == [
        (2, "user_id", "", "user_id is empty"),
        (3, "user_id", "x", f"user_id {INT64}; got 'x'"),
    ]


def test_string_ids_are_trimmed_and_must_not_be_blank():
    settings = ValidationSettings(user_id_type="string", item_id_type="string")
    valid, rejected = validate_batch(_text_batch([" u1 ", "u2", "\t"], ["i1", "é", "i3"], ["3", "4", "5"]), settings)
    assert valid.select(["user_id", "item_id"]).to_pylist() == [
        {"user_id": "u1", "item_id": "i1"},
        {"user_id": "u2", "item_id": "é"},
    ]
    assert valid.schema.field("user_id").type == pa.string()
    assert _reasons(rejected) == [(4, "user_id", "\t", "user_id is empty")]


def test_timestamps_may_be_blank_or_absent():
    valid, rejected = validate_batch(
        _text_batch(["1"] * 4, ["2"] * 4, ["3"] * 4, ["", " 5 ", "-1", "5.5"]), ValidationSettings()
    )
    assert valid.column("timestamp").to_pylist() == [None, 5, -1]
    assert _reasons(rejected) == [(5, "timestamp", "5.5", f"timestamp {INT64}; got '5.5'")]
    valid, _ = validate_batch(_text_batch(["1"], ["2"], ["3"]), ValidationSettings())
    assert valid.column("timestamp").to_pylist() == [None]
    assert valid.schema == schemas.ratings_schema()


def test_typed_columns_from_parquet():
    raw = pa.table(
        {
            "user_id": pa.array([1, None, 2**63, 4, 5, 6, 7], pa.uint64()),
            "item_id": pa.array([10, 11, 12, 13, 14, 15, 16], pa.int16()),
            "rating": pa.array([decimal.Decimal("4.5"), 1, 1, None, decimal.Decimal("5.5"), 2, 3], pa.decimal128(3, 1)),
            "timestamp": pa.array([1_000, 0, 0, 0, 0, None, 2_500], pa.timestamp("ms")),
            "source": ["f.parquet"] * 7,
            "row": pa.array(range(1, 8), pa.int64()),
        }
    )
    valid, rejected = validate_batch(raw, ValidationSettings())
    assert valid.to_pylist() == [
        {"user_id": 1, "item_id": 10, "rating": 4.5, "timestamp": 1, "source": "f.parquet", "row": 1},
        {"user_id": 6, "item_id": 15, "rating": 2.0, "timestamp": None, "source": "f.parquet", "row": 6},
        {"user_id": 7, "item_id": 16, "rating": 3.0, "timestamp": 2, "source": "f.parquet", "row": 7},
    ]
    assert _reasons(rejected) == [
        (2, "user_id", None, "user_id is missing"),
        (3, "user_id", "9223372036854775808", f"user_id {INT64}; got '9223372036854775808'"),
        (4, "rating", None, "rating is missing"),
        (5, "rating", "5.5", f"rating {RANGE}; got '5.5'"),
    ]


def test_typed_float_ratings_reject_nan_and_integer_ids_become_strings():
    raw = pa.table(
        {
            "user_id": pa.array([1, 2], pa.int64()),
            "item_id": pa.array(["a", "b"]),
            "rating": pa.array([float("nan"), 2.0], pa.float32()),
            "source": ["f.parquet"] * 2,
            "row": pa.array([1, 2], pa.int64()),
        }
    )
    valid, rejected = validate_batch(raw, ValidationSettings(user_id_type="string", item_id_type="string"))
    assert valid.select(["user_id", "item_id", "rating"]).to_pylist() == [
        {"user_id": "2", "item_id": "b", "rating": 2.0}
    ]
    assert _reasons(rejected) == [(1, "rating", "nan", f"rating {RANGE}; got 'nan'")]


def test_empty_batch_gives_empty_tables_with_the_schemas():
    valid, rejected = validate_batch(_text_batch([], [], []), ValidationSettings(user_id_type="string"))
    assert valid.num_rows == rejected.num_rows == 0
    assert valid.schema == schemas.ratings_schema("string", "int")
    assert rejected.schema == schemas.REJECTED_SCHEMA


def test_clean_batches_take_the_vectorised_path(monkeypatch):
    def per_value_decoding(_column):
        raise AssertionError("valid UTF-8 must not be decoded value by value")

    monkeypatch.setattr(validate, "_decode_each", per_value_decoding)
    n = 100_000
    rng = np.random.default_rng(0)
    users = [str(v) for v in rng.integers(0, 10**12, n)]
    ratings = [str(v) for v in rng.integers(1, 11, n) / 2]
    valid, rejected = validate_batch(_text_batch(users, users, ratings, users), ValidationSettings())
    assert (valid.num_rows, rejected.num_rows) == (n, 0)
    assert valid.column("user_id").to_pylist() == [int(u) for u in users]


def test_rejected_fraction_limit():
    check_rejected_fraction(100, 10, 0.1)
    check_rejected_fraction(0, 0, 0.0)
    with pytest.raises(
        ValueError, match=r"11 of 100 rows read were rejected \(11\.00%\), more than max_rejected_fraction=0\.1"
    ):
        check_rejected_fraction(100, 11, 0.1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rating_min": 5.0, "rating_max": 1.0}, "rating_min < rating_max; got 5.0 and 1.0"),
        ({"rating_max": float("inf")}, "must be finite"),
        ({"max_rejected_fraction": 1.5}, r"max_rejected_fraction must be in \[0, 1\]; got 1.5"),
        ({"item_id_type": "float"}, "item_id_type must be one of"),
    ],
)
def test_settings_are_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        ValidationSettings(**overrides)

r"""Validate raw rating batches into typed ratings and rejected rows: the ``ValidateRatings`` stage.

Each raw row (see :mod:`pipeline.read`) is either valid, and becomes one row of
:func:`pipeline.schemas.ratings_schema`, or rejected, and becomes one row of
:data:`pipeline.schemas.REJECTED_SCHEMA` naming its first failing field, in this order:
the line itself, ``user_id``, ``item_id``, ``rating``, ``timestamp``. Reasons read:

=================  =====================================================================
field              reason
=================  =====================================================================
``<line>``         ``expected 4 columns, got 3`` (value: the raw line)
any                ``not valid UTF-8`` (value: the bytes, ``\xNN``-escaped)
ids, rating        ``user_id is empty`` (blank text), ``user_id is missing`` (null)
int ids            ``user_id must be an integer in the int64 range; got '99999999999999999999'``
rating             ``rating must be a finite number in [0.5, 5.0]; got '-3'``
timestamp          ``timestamp must be an integer number of seconds since the epoch, at most
                   9223372036854 in magnitude; got 'yesterday'`` (text and integer columns)
typed timestamp    ``timestamp must fit in int64 microseconds since the epoch; got
                   '10000000000000' (timestamp[s])`` (value: the stored integer)
=================  =====================================================================

Text values are trimmed of surrounding whitespace before parsing; integers are decimal
(``[+-]?[0-9]+``: no hexadecimal, no digit separators). A blank or null timestamp is allowed
and stored as null. Timestamps are stored as int64 **microseconds** since the epoch, so that
duplicates are ordered by time exactly whatever the input form: text and integer columns hold
seconds, timestamp columns keep their milliseconds and microseconds (nanoseconds are cut to
microseconds). Everything is vectorised with ``pyarrow.compute`` and numpy; only a column
holding invalid UTF-8 is decoded value by value.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from pipeline import schemas
from pipeline.timing import timed

VALID = "valid"
"""Tag of the main output: validated ratings batches."""
REJECTED = "rejected"
"""Tag of the rejected-rows output."""

_INT = r"^[+-]?[0-9]+$"
_FLOAT = r"^[+-]?(?:[0-9]+\.?[0-9]*(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?|(?i:nan|inf|infinity))$"
_INT64_MAX_DIGITS = "9223372036854775807"
_INT64_MIN_DIGITS = "9223372036854775808"
_INT64_MAX = np.iinfo(np.int64).max
_DECIMAL_BYTES = (ord("+"), ord("9"))
"""The bytes ``+`` to ``9`` (``+,-./`` and the digits): decimal integer text has no others,
while hexadecimal (``0x10``), exponents, ``_``, spaces and non-ASCII digits all do."""
_MICROS_PER_TICK = {"s": 1_000_000, "ms": 1_000, "us": 1}
"""Timestamp units converted to microseconds by multiplying (nanoseconds are divided)."""
_MAX_SECONDS = _INT64_MAX // _MICROS_PER_TICK["s"]


@dataclass(frozen=True)
class ValidationSettings:
    """What a valid rating looks like: the ``validation`` slice of the run configuration."""

    rating_min: float = 0.5
    """Smallest valid rating (inclusive)."""
    rating_max: float = 5.0
    """Largest valid rating (inclusive)."""
    max_rejected_fraction: float = 0.01
    """Largest fraction of rows read that may be rejected before the run fails."""
    user_id_type: str = "int"
    """``int`` (int64) or ``string`` user ids."""
    item_id_type: str = "int"
    """``int`` (int64) or ``string`` item ids."""

    def __post_init__(self) -> None:
        problems = []
        if not (
            math.isfinite(self.rating_min) and math.isfinite(self.rating_max) and self.rating_min < self.rating_max
        ):
            problems.append(
                f"rating_min and rating_max must be finite with rating_min < rating_max; "
                f"got {self.rating_min!r} and {self.rating_max!r}"
            )
        if not 0.0 <= self.max_rejected_fraction <= 1.0:
            problems.append(f"max_rejected_fraction must be in [0, 1]; got {self.max_rejected_fraction!r}")
        for id_setting in ("user_id_type", "item_id_type"):
            if getattr(self, id_setting) not in schemas.ID_TYPES:
                problems.append(
                    f"{id_setting} must be one of {sorted(schemas.ID_TYPES)}; got {getattr(self, id_setting)!r}"
                )
        if problems:
            raise ValueError("invalid validation settings: " + "; ".join(problems))

    @property
    def rating_range(self) -> str:
        """The valid range as written in reasons, e.g. ``[0.5, 5.0]``."""
        return f"[{float(self.rating_min)}, {float(self.rating_max)}]"


class ValidatedRatings(NamedTuple):
    """The two outputs of :class:`ValidateRatings`."""

    valid: beam.PCollection
    """Batches of :func:`pipeline.schemas.ratings_schema`."""
    rejected: beam.PCollection
    """Batches of :data:`pipeline.schemas.REJECTED_SCHEMA`."""


def validate_batch(raw: pa.Table, settings: ValidationSettings) -> tuple[pa.Table, pa.Table]:
    """Split one raw batch into valid ratings and rejected rows.

    Parameters
    ----------
    raw : pa.Table
        A batch from :class:`pipeline.read.ReadRatings`: ``user_id``, ``item_id``, ``rating``,
        optionally ``timestamp`` (text or typed), ``source``, ``row`` and optionally
        ``parse_error`` / ``raw_line``.
    settings : ValidationSettings
        The valid rating range and the id types.

    Returns
    -------
    valid : pa.Table
        Schema ``ratings_schema(settings.user_id_type, settings.item_id_type)``, input order.
    rejected : pa.Table
        Schema ``REJECTED_SCHEMA``, one row per rejected input row, input order.
    """
    valid, rejected, _ = _validate(raw, settings)
    return valid, rejected


def check_rejected_fraction(n_read: int, n_rejected: int, limit: float) -> None:
    """Fail when more than ``limit`` of the rows read were rejected.

    Raises
    ------
    ValueError
        If ``n_rejected > limit * n_read``; the message gives both counts and the limit.
    """
    if n_rejected > limit * n_read:
        raise ValueError(
            f"{n_rejected} of {n_read} rows read were rejected ({n_rejected / n_read:.2%}), "
            f"more than max_rejected_fraction={limit}; the rejected table gives each row's reason"
        )


class _ValidateBatchFn(beam.DoFn):
    """Validate one raw batch; rejected rows go to the ``REJECTED`` output.

    Counters (namespace ``validate``): ``valid_rows``, ``rejected_rows`` and one per reason
    (``rating_out_of_range``, ``user_id_empty``, ``malformed_line``...).
    """

    def __init__(self, settings: ValidationSettings):
        self._settings = settings
        self._valid_rows = Metrics.counter("validate", "valid_rows")
        self._rejected_rows = Metrics.counter("validate", "rejected_rows")

    def process(self, raw: pa.Table) -> Iterator[pa.Table | pvalue.TaggedOutput]:
        return timed("validate", self._validate(raw))

    def _validate(self, raw: pa.Table) -> Iterator[pa.Table | pvalue.TaggedOutput]:
        valid, rejected, counts = _validate(raw, self._settings)
        for reason_key, n in counts.items():
            Metrics.counter("validate", reason_key).inc(n)
        self._valid_rows.inc(valid.num_rows)
        self._rejected_rows.inc(rejected.num_rows)
        if valid.num_rows:
            yield valid
        if rejected.num_rows:
            yield pvalue.TaggedOutput(REJECTED, rejected)


class ValidateRatings(beam.PTransform):
    """Validate raw batches: ``raw_batches | ValidateRatings(settings)`` -> :class:`ValidatedRatings`.

    Parameters
    ----------
    settings : ValidationSettings, optional
        Keyword arguments build one (``ValidateRatings(rating_min=1.0)``) or override its fields.
    """

    def __init__(self, settings: ValidationSettings | None = None, /, **overrides):
        super().__init__()
        if settings is None:
            settings = ValidationSettings(**overrides)
        elif overrides:
            settings = dataclasses.replace(settings, **overrides)
        self._settings = settings

    def expand(self, raw_batches: beam.PCollection) -> ValidatedRatings:
        outputs = raw_batches | "ValidateBatch" >> beam.ParDo(_ValidateBatchFn(self._settings)).with_output_types(
            typing.Any
        ).with_outputs(REJECTED, main=VALID)
        return ValidatedRatings(valid=outputs[VALID], rejected=outputs[REJECTED])


# ----------------------------------------------------------------------------- core


class _Rejections:
    """Rows rejected so far: each row is rejected once, for its first failing check."""

    def __init__(self, n_rows: int):
        self.ok = np.ones(n_rows, dtype=bool)
        self.counts: collections.Counter[str] = collections.Counter()
        self._parts: list[tuple[np.ndarray, str, pa.Array, pa.Array]] = []

    def reject(
        self,
        failed: np.ndarray,
        field: str,
        key: str,
        values: pa.Array,
        reason: str | pa.Array | Callable[[pa.Array], pa.Array],
    ) -> None:
        """Reject the rows still valid where ``failed``, counting them under ``key``.

        ``values`` is the field's text for every row. ``reason`` is one text for all, a text per
        row, or a function of the rejected rows' values giving one reason per row.
        """
        index = np.flatnonzero(failed & self.ok)
        if not index.size:
            return
        self.ok[index] = False
        shown = values.take(index)
        if isinstance(reason, str):
            reasons = pa.repeat(pa.scalar(reason, pa.string()), index.size)
        elif isinstance(reason, pa.Array):
            reasons = reason.take(index)
        else:
            reasons = reason(shown)
        self._parts.append((index, field, shown, reasons))
        self.counts[key] += index.size

    def table(self, raw: pa.Table) -> pa.Table:
        if not self._parts:
            return schemas.REJECTED_SCHEMA.empty_table()
        index = np.concatenate([part[0] for part in self._parts])
        order = np.argsort(index, kind="stable")
        fields = pa.concat_arrays([pa.repeat(pa.scalar(part[1], pa.string()), part[0].size) for part in self._parts])
        values = pa.concat_arrays([part[2] for part in self._parts])
        reasons = pa.concat_arrays([part[3] for part in self._parts])
        return pa.Table.from_arrays(
            [
                raw.column(schemas.SOURCE).take(index[order]).cast(pa.string()),
                raw.column(schemas.ROW).take(index[order]).cast(pa.int64()),
                fields.take(order),
                values.take(order),
                reasons.take(order),
            ],
            schema=schemas.REJECTED_SCHEMA,
        )


def _validate(raw: pa.Table, settings: ValidationSettings) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """:func:`validate_batch`, also returning the number of rejections per reason key."""
    n = raw.num_rows
    rejections = _Rejections(n)
    if schemas.PARSE_ERROR in raw.column_names:
        parse_error = _column(raw, schemas.PARSE_ERROR).cast(pa.string())
        raw_line = _column(raw, schemas.RAW_LINE).cast(pa.string())
        rejections.reject(_mask(pc.is_valid(parse_error)), schemas.LINE_FIELD, "malformed_line", raw_line, parse_error)
    user_ids = _check_id(_column(raw, schemas.USER_ID), schemas.USER_ID, settings.user_id_type, rejections)
    item_ids = _check_id(_column(raw, schemas.ITEM_ID), schemas.ITEM_ID, settings.item_id_type, rejections)
    ratings = _check_rating(_column(raw, schemas.RATING), settings, rejections)
    if schemas.TIMESTAMP in raw.column_names:
        timestamps = _check_timestamp(_column(raw, schemas.TIMESTAMP), rejections)
    else:
        timestamps = pa.nulls(n, pa.int64())
    columns = [
        user_ids,
        item_ids,
        ratings,
        timestamps,
        _column(raw, schemas.SOURCE).cast(pa.string()),
        _column(raw, schemas.ROW).cast(pa.int64()),
    ]
    if not rejections.ok.all():
        index = np.flatnonzero(rejections.ok)
        columns = [column.take(index) for column in columns]
    valid = pa.Table.from_arrays(columns, schema=schemas.ratings_schema(settings.user_id_type, settings.item_id_type))
    return valid, rejections.table(raw), dict(rejections.counts)


def _column(table: pa.Table, name: str) -> pa.Array:
    chunked = table.column(name)
    array = chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def _mask(condition: pa.Array) -> np.ndarray:
    """A boolean array as numpy, null counting as false."""
    return pc.fill_null(condition, False).to_numpy(zero_copy_only=False)


def _got(prefix: str) -> Callable[[pa.Array], pa.Array]:
    """Reason builder: ``<prefix>; got '<value>'`` for each rejected value."""
    return lambda values: pc.binary_join_element_wise(f"{prefix}; got '", values, "'", "")


def _text(column: pa.Array, field: str, rejections: _Rejections, allow_null: bool = False) -> tuple[pa.Array, pa.Array]:
    """Decode a text column, rejecting invalid UTF-8 and, unless ``allow_null``, nulls.

    Returns
    -------
    text : pa.Array of string
        The value as read (null where rejected).
    trimmed : pa.Array of string
        The value without surrounding whitespace.
    """
    try:
        text = column.cast(pa.string())
    except pa.ArrowInvalid:
        text, shown, bad = _decode_each(column)
        rejections.reject(bad, field, f"{field}_not_utf8", shown, "not valid UTF-8")
    if not allow_null:
        rejections.reject(_mask(pc.is_null(text)), field, f"{field}_missing", text, f"{field} is missing")
    return text, pc.utf8_trim_whitespace(text)


def _decode_each(column: pa.Array) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """Decode values one by one: text (null where invalid), shown text, and the invalid mask."""
    text, shown = [], []
    bad = np.zeros(len(column), dtype=bool)
    for i, value in enumerate(column.to_pylist()):
        try:
            decoded = None if value is None else value.decode("utf-8")
        except UnicodeDecodeError:
            decoded = None
            bad[i] = True
            shown.append(value.decode("utf-8", "backslashreplace"))
        else:
            shown.append(decoded)
        text.append(decoded)
    return pa.array(text, pa.string()), pa.array(shown, pa.string()), bad


def _text_bytes(text: pa.Array) -> np.ndarray:
    """The bytes of every value of a string array, end to end (a view, nothing copied)."""
    if not len(text):
        return np.empty(0, np.uint8)
    _, offsets, data = text.buffers()
    offset_type = np.int64 if pa.types.is_large_string(text.type) else np.int32
    bounds = np.frombuffer(offsets, offset_type)[text.offset : text.offset + len(text) + 1]
    if data is None or bounds[-1] == bounds[0]:
        return np.empty(0, np.uint8)
    return np.frombuffer(data, np.uint8)[bounds[0] : bounds[-1]]


def _parse_int64(trimmed: pa.Array, pending: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """Parse decimal integer text; returns the values (0 where invalid) and the valid mask.

    The rule is the slow path's: the :data:`_INT` pattern and an int64 digit count. Only the
    ``pending`` rows (not rejected yet) matter. Fast path: when all of them hold only the
    bytes ``+`` to ``9`` (two reductions, no pattern matching) and parse with a plain cast,
    that is the answer. The byte check is what keeps the rule: the cast alone also reads
    ``0x10`` as 16, so without it such a value would be accepted or rejected depending on
    the other rows of its batch.
    """
    candidates = pc.if_else(pa.array(pending), trimmed, "0")
    text_bytes = _text_bytes(candidates)
    if not text_bytes.size or (text_bytes.min() >= _DECIMAL_BYTES[0] and text_bytes.max() <= _DECIMAL_BYTES[1]):
        try:
            values = pc.cast(candidates, pa.int64())
        except pa.ArrowInvalid:
            pass
        else:
            return values, pending.copy()
    digits = pc.replace_substring_regex(trimmed, r"^[+-]?0*", "")
    n_digits = pc.binary_length(digits)
    limit = pc.if_else(pc.starts_with(trimmed, "-"), _INT64_MIN_DIGITS, _INT64_MAX_DIGITS)
    fits = pc.or_(
        pc.less(n_digits, len(_INT64_MAX_DIGITS)),
        pc.and_(pc.equal(n_digits, len(_INT64_MAX_DIGITS)), pc.less_equal(digits, limit)),
    )
    ok = _mask(pc.and_(pc.match_substring_regex(trimmed, _INT), fits))
    cleaned = pc.if_else(pa.array(ok), pc.replace_substring_regex(trimmed, r"^\+", ""), "0")
    return pc.cast(cleaned, pa.int64()), ok


def _parse_float64(trimmed: pa.Array, pending: np.ndarray) -> pa.Array:
    """Parse decimal number text (``nan`` and ``inf`` included); null where it is not a number.

    The rule is the :data:`_FLOAT` pattern. As in :func:`_parse_int64`, a plain cast of the
    ``pending`` rows is tried first; the cast also reads ``nan(...)`` as NaN, so the values
    it gives as NaN (rare: they are rejected anyway) are checked against the pattern.
    """
    try:
        values = pc.cast(pc.if_else(pa.array(pending), trimmed, "0"), pa.float64())
    except pa.ArrowInvalid:
        is_number = pc.fill_null(pc.match_substring_regex(trimmed, _FLOAT), False)
        return pc.cast(pc.if_else(is_number, trimmed, pa.scalar(None, pa.string())), pa.float64())
    is_nan = pc.is_nan(values)
    if not pc.any(is_nan).as_py():
        return values
    nan = np.flatnonzero(_mask(is_nan))
    not_number = np.zeros(len(values), dtype=bool)
    not_number[nan] = ~_mask(pc.match_substring_regex(trimmed.take(nan), _FLOAT))
    return pc.if_else(pa.array(not_number), pa.scalar(None, pa.float64()), values)


def _integers_as_int64(column: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """An integer column as int64; returns the values and the in-range mask (uint64 may overflow)."""
    if column.type == pa.uint64():
        fits = _mask(pc.less_equal(column, pa.scalar(np.iinfo(np.int64).max, pa.uint64())))
    else:
        fits = np.ones(len(column), dtype=bool)
    return pc.cast(column, pa.int64(), safe=False), fits


def _check_id(column: pa.Array, field: str, id_type: str, rejections: _Rejections) -> pa.Array:
    if not schemas.is_text_type(column.type):
        shown = column.cast(pa.string())
        rejections.reject(_mask(pc.is_null(column)), field, f"{field}_missing", shown, f"{field} is missing")
        if id_type == "string":
            return shown
        values, fits = _integers_as_int64(column)
        rejections.reject(
            ~fits, field, f"{field}_not_int64", shown, _got(f"{field} must be an integer in the int64 range")
        )
        return values
    text, trimmed = _text(column, field, rejections)
    rejections.reject(_mask(pc.equal(trimmed, "")), field, f"{field}_empty", text, f"{field} is empty")
    if id_type == "string":
        return trimmed
    values, ok = _parse_int64(trimmed, rejections.ok)
    rejections.reject(~ok, field, f"{field}_not_int64", text, _got(f"{field} must be an integer in the int64 range"))
    return values


def _check_rating(column: pa.Array, settings: ValidationSettings, rejections: _Rejections) -> pa.Array:
    field = schemas.RATING
    expectation = f"{field} must be a finite number in {settings.rating_range}"
    if schemas.is_text_type(column.type):
        shown, trimmed = _text(column, field, rejections)
        rejections.reject(_mask(pc.equal(trimmed, "")), field, f"{field}_empty", shown, f"{field} is empty")
        values = _parse_float64(trimmed, rejections.ok)
        rejections.reject(_mask(pc.is_null(values)), field, f"{field}_not_a_number", shown, _got(expectation))
    else:
        shown = column.cast(pa.string())
        rejections.reject(_mask(pc.is_null(column)), field, f"{field}_missing", shown, f"{field} is missing")
        values = pc.cast(column, pa.float64())
    rejections.reject(~_mask(pc.is_finite(values)), field, f"{field}_not_finite", shown, _got(expectation))
    in_range = pc.and_(pc.greater_equal(values, settings.rating_min), pc.less_equal(values, settings.rating_max))
    rejections.reject(~_mask(in_range), field, f"{field}_out_of_range", shown, _got(expectation))
    return pc.cast(values, pa.float32(), safe=False)


def _check_timestamp(column: pa.Array, rejections: _Rejections) -> pa.Array:
    """The timestamps as int64 microseconds since the epoch (null where blank or null).

    Text and integer columns hold seconds; timestamp columns (Parquet) keep their resolution
    down to the microsecond, so that ``duplicates: latest`` orders ratings less than a second
    apart correctly. Values too far from the epoch for int64 microseconds are rejected.
    """
    field = schemas.TIMESTAMP
    if pa.types.is_timestamp(column.type):
        return _timestamp_micros(column, rejections)
    expectation = f"{field} must be an integer number of seconds since the epoch, at most {_MAX_SECONDS} in magnitude"
    if not schemas.is_text_type(column.type):
        shown = column.cast(pa.string())
        seconds, fits = _integers_as_int64(column)
        rejections.reject(~fits, field, f"{field}_not_int64", shown, _got(expectation))
    else:
        shown, trimmed = _text(column, field, rejections, allow_null=True)
        blank = pc.fill_null(pc.equal(trimmed, ""), True)
        seconds, ok = _parse_int64(pc.if_else(blank, "0", trimmed), rejections.ok)
        rejections.reject(~(ok | _mask(blank)), field, f"{field}_not_int64", shown, _got(expectation))
        seconds = pc.if_else(blank, pa.scalar(None, pa.int64()), seconds)
    micros, fits = _to_micros(seconds, _MICROS_PER_TICK["s"])
    rejections.reject(~fits, field, f"{field}_out_of_range", shown, _got(expectation))
    return micros


def _timestamp_micros(column: pa.Array, rejections: _Rejections) -> pa.Array:
    """A timestamp column (any unit; any time zone, as Arrow stores UTC) as int64 microseconds.

    Nanoseconds are cut to microseconds (toward zero, which keeps the order); seconds and
    milliseconds too far from the epoch to fit are rejected, showing the stored integer.
    """
    ticks = pc.cast(column, pa.int64())
    if column.type.unit == "ns":
        return pc.divide(ticks, 1_000)
    micros, fits = _to_micros(ticks, _MICROS_PER_TICK[column.type.unit])
    if not fits.all():
        field = schemas.TIMESTAMP
        rejections.reject(
            ~fits,
            field,
            f"{field}_out_of_range",
            ticks.cast(pa.string()),
            lambda values: pc.binary_join_element_wise(
                f"{field} must fit in int64 microseconds since the epoch; got '", values, f"' ({column.type})", ""
            ),
        )
    return micros


def _to_micros(ticks: pa.Array, micros_per_tick: int) -> tuple[pa.Array, np.ndarray]:
    """``ticks * micros_per_tick`` (0 where it would not fit in int64, null where null) and
    the mask of the rows where it fits.

    The range is symmetric, so int64's smallest value is never a valid timestamp: it stays
    free for :func:`pipeline.dedup.deduplicate` to stand for a null (older than any other).
    """
    limit = _INT64_MAX // micros_per_tick
    bounds = pc.min_max(ticks)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low is None or (low >= -limit and high <= limit):
        fits = np.ones(len(ticks), dtype=bool)
    else:
        fits = _mask(pc.fill_null(pc.and_(pc.greater_equal(ticks, -limit), pc.less_equal(ticks, limit)), True))
        ticks = pc.if_else(pa.array(fits), ticks, 0)
    return (ticks if micros_per_tick == 1 else pc.multiply(ticks, micros_per_tick)), fits

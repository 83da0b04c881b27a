"""Column names and pyarrow schemas of the ratings as they travel through the pipeline.

Ratings move through Beam as ``pyarrow.Table`` batches. Three shapes exist:

- *raw* batches, as ``ReadRatings`` emits them: the configured columns renamed to
  ``user_id``, ``item_id``, ``rating`` and (when configured) ``timestamp``, still holding the
  file's text (CSV/TSV: ``binary``) or the file's types (Parquet), plus ``source``, ``row``,
  ``parse_error`` and ``raw_line``;
- *ratings* batches, as ``ValidateRatings`` emits them (:func:`ratings_schema`): typed,
  one row per valid input row;
- *rejected* batches (:data:`REJECTED_SCHEMA`): one row per rejected input row.
"""

from __future__ import annotations

import pyarrow as pa

USER_ID = "user_id"
ITEM_ID = "item_id"
RATING = "rating"
TIMESTAMP = "timestamp"
SOURCE = "source"
ROW = "row"
PARSE_ERROR = "parse_error"
RAW_LINE = "raw_line"

FIELD = "field"
VALUE = "value"
REASON = "reason"

LINE_FIELD = "<line>"
"""``field`` of a rejected row whose line could not be split into the expected columns."""

DATA_COLUMNS = (USER_ID, ITEM_ID, RATING, TIMESTAMP)
"""Canonical data columns, in the order the generator writes them."""

ID_TYPES = {"int": pa.int64(), "string": pa.string()}
"""Arrow type of an id column for each ``user_id_type`` / ``item_id_type`` setting."""


def id_arrow_type(id_type: str) -> pa.DataType:
    """Arrow type of ids configured as ``id_type`` (``'int'`` or ``'string'``).

    Raises
    ------
    ValueError
        If ``id_type`` is neither ``'int'`` nor ``'string'``.
    """
    try:
        return ID_TYPES[id_type]
    except KeyError:
        raise ValueError(f"id type must be one of {sorted(ID_TYPES)}; got {id_type!r}") from None


def is_text_type(dtype: pa.DataType) -> bool:
    """Whether ``dtype`` holds text (string or binary, any size): values still to be parsed."""
    return (
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_string_view(dtype)
        or pa.types.is_binary(dtype)
        or pa.types.is_large_binary(dtype)
        or pa.types.is_binary_view(dtype)
    )


def ratings_schema(user_id_type: str = "int", item_id_type: str = "int") -> pa.Schema:
    """Schema of validated ratings.

    Parameters
    ----------
    user_id_type, item_id_type : {'int', 'string'}, default='int'
        ``int`` ids are int64, ``string`` ids are utf8 strings.

    Returns
    -------
    pa.Schema
        ``user_id``, ``item_id``, ``rating`` (float32), ``timestamp`` (int64 microseconds
        since the epoch, null when the input has none), ``source`` (the file path as matched) and ``row`` (1-based line number
        in a CSV/TSV file, the header being line 1; 1-based row number in a Parquet file).
    """
    return pa.schema(
        [
            pa.field(USER_ID, id_arrow_type(user_id_type), nullable=False),
            pa.field(ITEM_ID, id_arrow_type(item_id_type), nullable=False),
            pa.field(RATING, pa.float32(), nullable=False),
            pa.field(TIMESTAMP, pa.int64()),
            pa.field(SOURCE, pa.string(), nullable=False),
            pa.field(ROW, pa.int64(), nullable=False),
        ]
    )


def input_schema(user_id_type: str = "int", item_id_type: str = "int") -> pa.Schema:
    """Schema of ratings files as the generator writes them (the data columns only)."""
    return pa.schema([ratings_schema(user_id_type, item_id_type).field(name) for name in DATA_COLUMNS])


REJECTED_SCHEMA = pa.schema(
    [
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(ROW, pa.int64(), nullable=False),
        pa.field(FIELD, pa.string(), nullable=False),
        pa.field(VALUE, pa.string()),
        pa.field(REASON, pa.string(), nullable=False),
    ]
)
"""Schema of rejected rows: where (``source``, ``row``), which ``field``, its raw ``value``
(null when the value was missing) and why (``reason``)."""

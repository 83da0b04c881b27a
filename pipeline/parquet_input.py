"""Parquet files into raw Arrow batches: ``ParquetFile.iter_batches`` over the configured
columns, in the file's types (validation parses and checks them)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import schemas
from pipeline.read_settings import SETTING_OF_COLUMN, InputStructureError, ReadSettings, raw_schema

_EXPECTED_TYPES = {
    schemas.USER_ID: "an integer or string column",
    schemas.ITEM_ID: "an integer or string column",
    schemas.RATING: "a numeric or string column",
    schemas.TIMESTAMP: "an integer, timestamp or string column",
}


def check_parquet(path: str, settings: ReadSettings) -> None:
    """Check that ``path`` is Parquet and holds every configured column in a usable type.

    Raises
    ------
    InputStructureError
        If it does not.
    """
    with _open_parquet(path) as parquet:
        if parquet is not None:
            _parquet_columns(parquet.schema_arrow, settings, path)


def _usable_type(name: str, dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    if schemas.is_text_type(dtype) or pa.types.is_integer(dtype):
        return True
    if name == schemas.RATING:
        return pa.types.is_floating(dtype) or pa.types.is_decimal(dtype)
    if name == schemas.TIMESTAMP:
        return pa.types.is_timestamp(dtype)
    return False


def _parquet_columns(schema: pa.Schema, settings: ReadSettings, path: str) -> dict[str, str]:
    """The Parquet column name of each configured column, checking its type."""
    columns = {}
    for name, spec in settings.columns.items():
        setting = SETTING_OF_COLUMN[name]
        if isinstance(spec, int):
            if spec >= len(schema):
                raise InputStructureError(
                    f"{path}: {setting} is position {spec} but the file has {len(schema)} columns"
                )
            field = schema.field(spec)
        elif schema.names.count(spec) > 1:
            where = ", ".join(map(str, schema.get_all_field_indices(spec)))
            raise InputStructureError(
                f"{path}: the file has {schema.names.count(spec)} columns named {spec!r} ({setting}), at positions "
                f"{where}; it must have one"
            )
        elif spec in schema.names:
            field = schema.field(spec)
        else:
            raise InputStructureError(
                f"{path}: no column {spec!r} ({setting}); file columns: {', '.join(schema.names)}"
            )
        if not _usable_type(name, field.type):
            raise InputStructureError(
                f"{path}: column {field.name!r} ({setting}) has type {field.type}; expected {_EXPECTED_TYPES[name]}"
            )
        columns[name] = field.name
    return columns


@contextlib.contextmanager
def _open_parquet(path: str) -> Iterator[pq.ParquetFile | None]:
    """The ``pq.ParquetFile`` of ``path``, or ``None`` for an empty file.

    Raises
    ------
    InputStructureError
        If pyarrow cannot read the file (not Parquet, or corrupt), when opened or later read:
        pyarrow's own message does not name the file.
    """
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        if not f.read(1):
            yield None
            return
        f.seek(0)
        try:
            yield pq.ParquetFile(f)
        except pa.ArrowException as error:
            raise InputStructureError(f"{path}: cannot be read as Parquet: {error}") from None


def read_parquet(path: str, settings: ReadSettings) -> Iterator[pa.Table]:
    with _open_parquet(path) as parquet:
        if parquet is None:
            return
        columns = _parquet_columns(parquet.schema_arrow, settings, path)
        first_row = 1
        for batch in parquet.iter_batches(batch_size=settings.batch_rows, columns=sorted(set(columns.values()))):
            n = batch.num_rows
            arrays = [_decoded(batch.column(column)) for column in columns.values()]
            yield pa.Table.from_arrays(
                arrays
                + [
                    pa.repeat(pa.scalar(path, pa.string()), n),
                    pa.array(np.arange(first_row, first_row + n, dtype=np.int64)),
                    pa.nulls(n, pa.string()),
                    pa.nulls(n, pa.string()),
                ],
                schema=raw_schema(columns, [array.type for array in arrays]),
            )
            first_row += n


def _decoded(array: pa.Array) -> pa.Array:
    """``array`` with dictionary encoding (e.g. from pandas categoricals) undone."""
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array

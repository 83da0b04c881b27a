"""Read sharded ratings files into raw Arrow batches: the ``ReadRatings`` stage.

Files are matched with Beam's ``FileSystems`` (local paths, ``gs://``, ``s3://`` with the
matching extras) and each one is read whole by one ``DoFn`` call, with pyarrow:

- CSV/TSV: the (possibly compressed) text is cut into blocks of whole lines and each block is
  parsed by ``pyarrow.csv`` with every column read as ``binary``, so validation sees the raw
  text, invalid UTF-8 included. Lines with the wrong number of columns come out as rows with a
  ``parse_error`` and their ``raw_line``;
- Parquet: ``ParquetFile.iter_batches`` over the configured columns, in the file's types.

Each emitted batch holds the configured columns renamed to their canonical names (see
:mod:`pipeline.schemas`), plus ``source`` (the path as matched), ``row`` (1-based line number,
the header being line 1, for CSV/TSV; 1-based row number for Parquet), ``parse_error`` and
``raw_line``. Line numbers are physical lines as long as no quoted value spans lines.

Structural problems (no file matches, a header or Parquet schema without a configured column,
a Parquet column of an unusable type) raise :class:`InputStructureError` while the pipeline is
being built, before any work runs.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import typing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import schemas
from pipeline.timing import timed

FORMATS = ("csv", "tsv", "parquet")
COMPRESSIONS = {
    "auto": CompressionTypes.AUTO,
    "none": CompressionTypes.UNCOMPRESSED,
    "gzip": CompressionTypes.GZIP,
    "bz2": CompressionTypes.BZIP2,
    "zstd": CompressionTypes.ZSTD,
}
SETTING_OF_COLUMN = {
    schemas.USER_ID: "user_column",
    schemas.ITEM_ID: "item_column",
    schemas.RATING: "rating_column",
    schemas.TIMESTAMP: "timestamp_column",
}
_BOM = b"\xef\xbb\xbf"
_CHECK_THREADS = 16

_log = logging.getLogger(__name__)


class InputStructureError(ValueError):
    """An input file cannot be read as configured: a configured column is missing or unusable."""


@dataclass(frozen=True)
class ReadSettings:
    """What to read and how: the ``input`` slice of the run configuration."""

    path: str
    """Glob of the input files, e.g. ``data/ratings-*.csv.gz`` or ``gs://bucket/r/*.parquet``."""
    format: str = "csv"
    """``csv``, ``tsv`` or ``parquet``."""
    header: bool = True
    """Whether the first line of each CSV/TSV file names the columns (ignored for Parquet)."""
    delimiter: str | None = None
    """One-character field delimiter; ``None`` means ``,`` for csv and a tab for tsv."""
    compression: str = "auto"
    """``auto`` (from the file extension), ``none``, ``gzip``, ``bz2`` or ``zstd``: CSV/TSV only."""
    user_column: str | int = schemas.USER_ID
    """Column holding user ids: a header name, or a 0-based position."""
    item_column: str | int = schemas.ITEM_ID
    """Column holding item ids: a header name, or a 0-based position."""
    rating_column: str | int = schemas.RATING
    """Column holding ratings: a header name, or a 0-based position."""
    timestamp_column: str | int | None = None
    """Column holding integer timestamps, if any: a header name, or a 0-based position."""
    user_id_type: str = "int"
    """``int`` or ``string``: how user ids are validated and stored."""
    item_id_type: str = "int"
    """``int`` or ``string``: how item ids are validated and stored."""
    block_bytes: int = 16 << 20
    """Bytes of CSV/TSV text parsed into one batch (~16 MiB: several hundred thousand rows)."""
    batch_rows: int = 1_000_000
    """Rows per batch read from Parquet."""

    def __post_init__(self) -> None:
        problems = []
        if self.format not in FORMATS:
            problems.append(f"format must be one of {list(FORMATS)}; got {self.format!r}")
        if self.compression not in COMPRESSIONS:
            problems.append(f"compression must be one of {list(COMPRESSIONS)}; got {self.compression!r}")
        elif self.format == "parquet" and self.compression not in ("auto", "none"):
            problems.append(f"compression applies to csv/tsv only; got {self.compression!r} with parquet")
        if self.delimiter is not None and len(self.delimiter) != 1:
            problems.append(f"delimiter must be one character; got {self.delimiter!r}")
        for id_setting in ("user_id_type", "item_id_type"):
            if getattr(self, id_setting) not in schemas.ID_TYPES:
                problems.append(
                    f"{id_setting} must be one of {sorted(schemas.ID_TYPES)}; got {getattr(self, id_setting)!r}"
                )
        for setting in SETTING_OF_COLUMN.values():
            spec = getattr(self, setting)
            if spec is None and setting == "timestamp_column":
                continue
            if isinstance(spec, bool) or not isinstance(spec, (str, int)) or (isinstance(spec, int) and spec < 0):
                problems.append(f"{setting} must be a column name or a position >= 0; got {spec!r}")
            elif isinstance(spec, str) and self.format != "parquet" and not self.header:
                problems.append(f"{setting} must be a position (int) when header is false; got {spec!r}")
        for setting in ("block_bytes", "batch_rows"):
            if getattr(self, setting) < 1:
                problems.append(f"{setting} must be >= 1; got {getattr(self, setting)!r}")
        if problems:
            raise ValueError("invalid read settings: " + "; ".join(problems))

    @property
    def columns(self) -> dict[str, str | int]:
        """Canonical column name -> configured name or position (timestamp only when set)."""
        specs = {name: getattr(self, setting) for name, setting in SETTING_OF_COLUMN.items()}
        return {name: spec for name, spec in specs.items() if spec is not None}

    @property
    def field_delimiter(self) -> str:
        """The delimiter in effect: the configured one, else ``,`` for csv and a tab for tsv."""
        if self.delimiter is not None:
            return self.delimiter
        return "\t" if self.format == "tsv" else ","


def match_input_files(pattern: str) -> list[str]:
    """Paths matching ``pattern``, sorted.

    Raises
    ------
    FileNotFoundError
        If no file matches.
    """
    paths = sorted(metadata.path for metadata in FileSystems.match([pattern])[0].metadata_list)
    if not paths:
        raise FileNotFoundError(f"no input file matches {pattern!r}")
    return paths


def check_input_files(paths: list[str], settings: ReadSettings) -> None:
    """Check that every file holds the configured columns in usable types.

    Reads only each CSV/TSV file's first line or each Parquet file's footer, several files at
    a time.

    Raises
    ------
    InputStructureError
        For the first file (in ``paths`` order) that cannot be read as configured.
    """
    with ThreadPoolExecutor(max_workers=min(_CHECK_THREADS, len(paths))) as pool:
        list(pool.map(lambda path: _check_file(path, settings), paths))


def read_file(path: str, settings: ReadSettings) -> Iterator[pa.Table]:
    """Raw batches of one file (see the module docstring for their columns)."""
    if settings.format == "parquet":
        return _read_parquet(path, settings)
    return _read_delimited(path, settings)


class _ReadFileFn(beam.DoFn):
    """Read one matched file into raw batches, counting rows and malformed lines."""

    def __init__(self, settings: ReadSettings):
        self._settings = settings
        self._rows_read = Metrics.counter("read", "rows_read")
        self._malformed_lines = Metrics.counter("read", "malformed_lines")
        self._files_read = Metrics.counter("read", "files_read")
        self._rows_per_file = Metrics.distribution("read", "rows_per_file")

    def process(self, path: str) -> Iterator[pa.Table]:
        return timed("read", self._read(path))

    def _read(self, path: str) -> Iterator[pa.Table]:
        rows = 0
        for batch in read_file(path, self._settings):
            rows += batch.num_rows
            self._rows_read.inc(batch.num_rows)
            self._malformed_lines.inc(batch.num_rows - batch.column(schemas.PARSE_ERROR).null_count)
            yield batch
        self._files_read.inc()
        self._rows_per_file.update(rows)
        _log.info("read %d rows from %s", rows, path)


class ReadRatings(beam.PTransform):
    """Read the files matching ``settings.path`` into raw ``pa.Table`` batches.

    Apply to a pipeline: ``raw_batches = pipeline | ReadRatings(settings)``. The glob is matched
    and every file's structure checked when the pipeline is built, so a missing file or column
    fails before any work; the run reads exactly the files matched then.

    Parameters
    ----------
    settings : ReadSettings, optional
        What to read. Keyword arguments build one (``ReadRatings(path="r/*.csv")``) or override
        fields of ``settings``.
    """

    def __init__(self, settings: ReadSettings | None = None, /, **overrides):
        super().__init__()
        if settings is None:
            settings = ReadSettings(**overrides)
        elif overrides:
            settings = dataclasses.replace(settings, **overrides)
        self._settings = settings

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        paths = match_input_files(self._settings.path)
        check_input_files(paths, self._settings)
        return (
            pbegin
            | "ListInputFiles" >> beam.Create(paths)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadFile" >> beam.ParDo(_ReadFileFn(self._settings)).with_output_types(typing.Any)
        )


# ----------------------------------------------------------------------------- structure


def _check_file(path: str, settings: ReadSettings) -> None:
    if settings.format == "parquet":
        with _open_parquet(path) as parquet:
            if parquet is not None:
                _parquet_columns(parquet.schema_arrow, settings, path)
        return
    first_line = _first_line(path, settings)
    if first_line is not None:
        _delimited_positions(first_line, settings, path)


def _open(path: str, settings: ReadSettings) -> BinaryIO:
    compression = CompressionTypes.UNCOMPRESSED if settings.format == "parquet" else COMPRESSIONS[settings.compression]
    return FileSystems.open(path, compression_type=compression)


def _first_line(path: str, settings: ReadSettings) -> bytes | None:
    """The first line of a text file without its line ending, or ``None`` for an empty file."""
    with _open(path, settings) as f:
        head = b""
        while b"\n" not in head:
            data = f.read(1 << 16)
            if not data:
                break
            head += data
    if not head:
        return None
    return head.removeprefix(_BOM).split(b"\n", 1)[0].removesuffix(b"\r")


def _delimited_positions(first_line: bytes, settings: ReadSettings, path: str) -> tuple[int, dict[str, int]]:
    """Column count of a CSV/TSV file and the position of each configured column."""
    if settings.header:
        try:
            text = first_line.decode("utf-8")
        except UnicodeDecodeError:
            raise InputStructureError(f"{path}: header line is not valid UTF-8") from None
    else:
        text = first_line.decode("utf-8", "surrogateescape")
    fields = next(csv.reader([text], delimiter=settings.field_delimiter), [""])
    positions = {}
    for name, spec in settings.columns.items():
        setting = SETTING_OF_COLUMN[name]
        if isinstance(spec, int):
            if spec >= len(fields):
                raise InputStructureError(
                    f"{path}: {setting} is position {spec} but the first line has {len(fields)} columns"
                )
            positions[name] = spec
        elif spec in fields:
            positions[name] = fields.index(spec)
        else:
            raise InputStructureError(
                f"{path}: header has no column {spec!r} ({setting}); header columns: {', '.join(fields)}"
            )
    return len(fields), positions


_EXPECTED_TYPES = {
    schemas.USER_ID: "an integer or string column",
    schemas.ITEM_ID: "an integer or string column",
    schemas.RATING: "a numeric or string column",
    schemas.TIMESTAMP: "an integer, timestamp or string column",
}


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


# ----------------------------------------------------------------------------- CSV / TSV


class _Malformed(NamedTuple):
    """A line that does not split into the expected number of columns."""

    offset: int
    """0-based line offset within its block."""
    reason: str
    text: str


def _raw_schema(names: typing.Iterable[str], data_types: typing.Iterable[pa.DataType]) -> pa.Schema:
    return pa.schema(
        list(zip(names, data_types))
        + [
            (schemas.SOURCE, pa.string()),
            (schemas.ROW, pa.int64()),
            (schemas.PARSE_ERROR, pa.string()),
            (schemas.RAW_LINE, pa.string()),
        ]
    )


def _read_delimited(path: str, settings: ReadSettings) -> Iterator[pa.Table]:
    layout = None
    line = 1
    with _open(path, settings) as f:
        for block in _line_blocks(f, settings.block_bytes):
            if layout is None:
                block = block.removeprefix(_BOM)
                first_line, _, rest = block.partition(b"\n")
                layout = _delimited_positions(first_line.removesuffix(b"\r"), settings, path)
                if settings.header:
                    block, line = rest, 2
            if block:
                batch = _parse_block(block, line, layout, settings, path)
                if batch.num_rows:
                    yield batch
                line += _count_lines(block)


def _line_blocks(f: BinaryIO, block_bytes: int) -> Iterator[bytes]:
    """Blocks of about ``block_bytes`` bytes, each made of whole lines."""
    rest = b""
    while data := f.read(block_bytes):
        data = rest + data
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            yield data[:cut]
    if rest:
        yield rest


def _count_lines(block: bytes) -> int:
    return block.count(b"\n") + (not block.endswith(b"\n"))


def _is_utf8(block: bytes) -> bool:
    if block.isascii():
        return True
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parse_block(
    block: bytes, first_line: int, layout: tuple[int, dict[str, int]], settings: ReadSettings, path: str
) -> pa.Table:
    """Raw batch of one block of whole lines starting at line number ``first_line``."""
    n_columns, positions = layout
    parsed = _parse_block_arrow(block, n_columns, positions, settings.field_delimiter) if _is_utf8(block) else None
    if parsed is None or _parsed_rows(parsed) != _count_lines(block):
        # pyarrow cannot report a malformed line holding invalid UTF-8, and a quoted value
        # spanning lines would shift the line numbers: parse such a block line by line.
        parsed = _parse_block_python(block, n_columns, positions, settings.field_delimiter)
    columns, malformed = parsed
    n_valid = len(next(iter(columns.values())))
    is_valid = np.ones(n_valid + len(malformed), dtype=bool)
    is_valid[[m.offset for m in malformed]] = False
    rows = first_line + np.concatenate([np.flatnonzero(is_valid), [m.offset for m in malformed]]).astype(np.int64)
    arrays = [pa.concat_arrays([array, pa.nulls(len(malformed), pa.binary())]) for array in columns.values()]
    batch = pa.Table.from_arrays(
        arrays
        + [
            pa.repeat(pa.scalar(path, pa.string()), len(rows)),
            pa.array(rows, pa.int64()),
            pa.concat_arrays([pa.nulls(n_valid, pa.string()), pa.array([m.reason for m in malformed], pa.string())]),
            pa.concat_arrays([pa.nulls(n_valid, pa.string()), pa.array([m.text for m in malformed], pa.string())]),
        ],
        schema=_raw_schema(columns, [pa.binary()] * len(columns)),
    )
    return batch.take(np.argsort(rows, kind="stable")) if malformed else batch


_Parsed = tuple[dict[str, pa.Array], list[_Malformed]]


def _parsed_rows(parsed: _Parsed) -> int:
    columns, malformed = parsed
    return len(next(iter(columns.values()))) + len(malformed)


def _parse_block_arrow(block: bytes, n_columns: int, positions: dict[str, int], delimiter: str) -> _Parsed | None:
    """Parse with ``pyarrow.csv``; ``None`` when pyarrow refuses the block."""
    invalid_rows = []

    def skip_invalid_row(row: pacsv.InvalidRow) -> str:
        invalid_rows.append(row)
        return "skip"

    names = [f"f{i}" for i in range(n_columns)]
    wanted = sorted({names[position] for position in positions.values()})
    try:
        table = pacsv.read_csv(
            pa.py_buffer(block),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=len(block) + 1),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, ignore_empty_lines=False, invalid_row_handler=skip_invalid_row
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.binary() for name in wanted}, include_columns=wanted, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid:
        return None
    malformed = [
        _Malformed(row.number - 1, f"expected {row.expected_columns} columns, got {row.actual_columns}", row.text)
        for row in invalid_rows
    ]
    columns = {name: table.column(names[position]).combine_chunks() for name, position in positions.items()}
    return columns, malformed


def _parse_block_python(block: bytes, n_columns: int, positions: dict[str, int], delimiter: str) -> _Parsed:
    """Parse line by line with the ``csv`` module, keeping the bytes of each field."""
    lines = block.split(b"\n")
    if block.endswith(b"\n"):
        lines.pop()
    values: dict[str, list[bytes]] = {name: [] for name in positions}
    malformed = []
    for offset, line in enumerate(lines):
        text = line.removesuffix(b"\r").decode("utf-8", "surrogateescape")
        try:
            fields = next(csv.reader([text], delimiter=delimiter), None) or [""] * n_columns
        except csv.Error as error:
            malformed.append(_Malformed(offset, f"line cannot be split into columns: {error}", _shown(line)))
            continue
        if len(fields) != n_columns:
            malformed.append(_Malformed(offset, f"expected {n_columns} columns, got {len(fields)}", _shown(line)))
            continue
        for name, position in positions.items():
            values[name].append(fields[position].encode("utf-8", "surrogateescape"))
    return {name: pa.array(column, pa.binary()) for name, column in values.items()}, malformed


def _shown(line: bytes) -> str:
    r"""A line as text, invalid UTF-8 bytes written as ``\xNN`` escapes."""
    return line.removesuffix(b"\r").decode("utf-8", "backslashreplace")


# ----------------------------------------------------------------------------- Parquet


@contextlib.contextmanager
def _open_parquet(path: str) -> Iterator[pq.ParquetFile | None]:
    """The ``pq.ParquetFile`` of ``path``, or ``None`` for an empty file."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        if not f.read(1):
            yield None
            return
        f.seek(0)
        yield pq.ParquetFile(f)


def _read_parquet(path: str, settings: ReadSettings) -> Iterator[pa.Table]:
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
                schema=_raw_schema(columns, [array.type for array in arrays]),
            )
            first_row += n


def _decoded(array: pa.Array) -> pa.Array:
    """``array`` with dictionary encoding (e.g. from pandas categoricals) undone."""
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array

"""Read sharded ratings files into raw Arrow batches: the ``ReadRatings`` stage.

Files are matched with Beam's ``FileSystems`` (local paths, ``gs://``, ``s3://`` with the
matching extras) and each one is read whole by one ``DoFn`` call, with pyarrow:

- CSV/TSV: the (possibly compressed) text is cut into blocks of whole records (RFC 4180: a
  quoted value may hold delimiters and line breaks) and each block is parsed by ``pyarrow.csv``
  with every column read as ``binary``, so validation sees the raw text, invalid UTF-8
  included. Blank lines are not rows. Records with the wrong number of columns (with a header),
  or without every configured position (without one: extra columns are fine), come out as rows
  with a ``parse_error`` and their ``raw_line``. A quoted value still open at the end of the
  file rejects its first line, and reading resumes at the next line;
- Parquet: ``ParquetFile.iter_batches`` over the configured columns, in the file's types.

Each emitted batch holds the configured columns renamed to their canonical names (see
:mod:`pipeline.schemas`), plus ``source`` (the path as matched), ``row`` (1-based line number,
the header being line 1, of the record's first line for CSV/TSV; 1-based row number for
Parquet), ``parse_error`` and ``raw_line``.

Structural problems (no file matches, a header or Parquet schema without a configured column
or naming one twice, a Parquet column of an unusable type, a file that is not Parquet) raise
:class:`InputStructureError` while the pipeline is being built, before any work runs. A
compressed file that is truncated or corrupt raises it when read: its rows cannot all be known.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import dataclasses
import itertools
import logging
import lzma
import typing
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import zstandard
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
_QUOTE = b'"'
_CHECK_THREADS = 16
_COMPRESSED_READ_BYTES = 1 << 20
_DECOMPRESSORS: dict[str, Callable[[], typing.Any]] = {
    CompressionTypes.GZIP: lambda: zlib.decompressobj(zlib.MAX_WBITS | 16),
    CompressionTypes.DEFLATE: zlib.decompressobj,
    CompressionTypes.BZIP2: bz2.BZ2Decompressor,
    CompressionTypes.LZMA: lzma.LZMADecompressor,
    # The window limit Beam's CompressedFile uses, so that the same files stay readable.
    CompressionTypes.ZSTD: lambda: zstandard.ZstdDecompressor(max_window_size=1 << 31).decompressobj(),
}
_DECOMPRESSION_ERRORS = (zlib.error, OSError, EOFError, lzma.LZMAError, zstandard.ZstdError)

_log = logging.getLogger(__name__)


class InputStructureError(ValueError):
    """An input file cannot be read as configured: a configured column is missing, duplicated or
    unusable, or the file is corrupt (not Parquet, truncated or corrupt compressed data)."""


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
    if not settings.header:
        return  # without a header, each record is checked for the configured positions when read
    first_line = _first_line(path, settings)
    if first_line is not None:
        _header_layout(first_line, settings, path)


@contextlib.contextmanager
def _open(path: str, settings: ReadSettings) -> Iterator[BinaryIO | _DecompressedFile]:
    """The text of a CSV/TSV file, decompressed as configured (``auto``: from the extension).

    The raw bytes come through Beam's ``FileSystems`` (local, ``gs://``, ``s3://``) but are
    decompressed here: Beam's ``CompressedFile`` stops silently where the data stops, so a
    truncated file would read as a shorter, complete one.
    """
    compression = COMPRESSIONS[settings.compression]
    if compression == CompressionTypes.AUTO:
        compression = CompressionTypes.detect_compression_type(path)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        yield raw if compression == CompressionTypes.UNCOMPRESSED else _DecompressedFile(raw, compression, path)


class _DecompressedFile:
    """Read-only view of the decompressed bytes of ``raw`` that fails at a truncated or corrupt stream.

    Concatenated streams (several gzip members, bzip2 streams or zstd frames) read as one, as
    with ``gzip.open``; an empty file reads as empty.
    """

    def __init__(self, raw: BinaryIO, compression: str, path: str):
        self._raw = raw
        self._compression = compression
        self._path = path
        self._decompressor = _DECOMPRESSORS[compression]()
        self._started = False
        self._pending = b""

    def read(self, size: int) -> bytes:
        """Up to ``size`` decompressed bytes; ``b""`` at the end of the data."""
        parts = [self._pending]
        n = len(self._pending)
        while n < size and (chunk := self._next_chunk()):
            parts.append(chunk)
            n += len(chunk)
        data = b"".join(parts)
        self._pending = data[size:]
        return data[:size] if self._pending else data

    def _next_chunk(self) -> bytes:
        """The next decompressed bytes (possibly few), ``b""`` once the last stream has ended.

        Raises
        ------
        InputStructureError
            If the data stops inside a stream, or is not valid compressed data.
        """
        while True:
            if self._decompressor.eof:
                data = self._decompressor.unused_data or self._raw.read(_COMPRESSED_READ_BYTES)
                if not data:
                    return b""
                self._decompressor = _DECOMPRESSORS[self._compression]()
            else:
                data = self._raw.read(_COMPRESSED_READ_BYTES)
                if not data:
                    if self._started:
                        raise InputStructureError(
                            f"{self._path}: {self._compression} data ends before the end of its stream "
                            "(truncated file?)"
                        )
                    return b""
            self._started = True
            try:
                decompressed = self._decompressor.decompress(data)
            except _DECOMPRESSION_ERRORS as error:
                raise InputStructureError(f"{self._path}: corrupt {self._compression} data: {error}") from None
            if decompressed:
                return decompressed


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


@dataclass(frozen=True)
class _Layout:
    """Where the configured columns are in the records of a CSV/TSV file."""

    positions: dict[str, int]
    """Canonical column name -> 0-based position."""
    n_columns: int | None
    """Column count of every record: the header's; ``None`` without a header, where a record
    only needs every configured position (there is no authoritative count)."""

    def problem(self, n_fields: int) -> str | None:
        """Why a record of ``n_fields`` fields is unusable, or ``None`` when it is usable."""
        if self.n_columns is not None:
            return None if n_fields == self.n_columns else f"expected {self.n_columns} columns, got {n_fields}"
        for name, position in self.positions.items():
            if position >= n_fields:
                return f"{SETTING_OF_COLUMN[name]} is position {position} but the line has {n_fields} columns"
        return None


def _headerless_layout(settings: ReadSettings) -> _Layout:
    """The layout of a file without a header: the configured positions, any column count."""
    return _Layout({name: typing.cast(int, spec) for name, spec in settings.columns.items()}, None)


def _header_layout(first_line: bytes, settings: ReadSettings, path: str) -> _Layout:
    """The layout a header line gives: its column count and each configured column's position.

    Raises
    ------
    InputStructureError
        If the header is not UTF-8, or lacks or repeats a configured column (which of the
        repeated columns holds the values would be a guess).
    """
    try:
        text = first_line.decode("utf-8")
    except UnicodeDecodeError:
        raise InputStructureError(f"{path}: header line is not valid UTF-8") from None
    fields = next(csv.reader([text], delimiter=settings.field_delimiter), [""])
    positions = {}
    for name, spec in settings.columns.items():
        setting = SETTING_OF_COLUMN[name]
        if isinstance(spec, int):
            if spec >= len(fields):
                raise InputStructureError(
                    f"{path}: {setting} is position {spec} but the header has {len(fields)} columns"
                )
            positions[name] = spec
        elif fields.count(spec) > 1:
            where = [position for position, field in enumerate(fields) if field == spec]
            raise InputStructureError(
                f"{path}: header names column {spec!r} ({setting}) {len(where)} times, at positions "
                f"{', '.join(map(str, where))}; it must name it once"
            )
        elif spec in fields:
            positions[name] = fields.index(spec)
        else:
            raise InputStructureError(
                f"{path}: header has no column {spec!r} ({setting}); header columns: {', '.join(fields)}"
            )
    return _Layout(positions, len(fields))


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
    """A record that cannot be used: wrong column count, or not splittable into columns."""

    offset: int
    """0-based offset, within its block, of the record's first line."""
    reason: str
    text: str


class _Record(NamedTuple):
    """One CSV record as the ``csv`` module splits it."""

    offset: int
    """0-based offset of its first line."""
    end: int
    """Offset of the line after its last."""
    fields: list[str] | None
    """Its fields; ``None`` when it cannot be split (see ``error``) or its quoted value is still
    open at the end of a block that is not the file's last (``error`` is ``None`` then)."""
    error: str | None


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
    """Raw batches of a CSV/TSV file, block by block.

    A record whose quoted value is still open at the end of a block (a value spanning the cut
    between two blocks) is carried over and parsed with the next block.
    """
    layout = _headerless_layout(settings) if not settings.header else None
    line = 1
    tail = b""
    with _open(path, settings) as f:
        for index, block in enumerate(_line_blocks(f, settings.block_bytes)):
            if index == 0:
                block = block.removeprefix(_BOM)
                if settings.header:
                    first_line, _, block = block.partition(b"\n")
                    layout = _header_layout(first_line.removesuffix(b"\r"), settings, path)
                    line = 2
            block = tail + block
            if block:
                batch, tail = _parse_block(block, line, typing.cast(_Layout, layout), settings, path, final=False)
                if batch.num_rows:
                    yield batch
                line += block.count(b"\n") - tail.count(b"\n")
        if tail:
            batch, _ = _parse_block(tail, line, typing.cast(_Layout, layout), settings, path, final=True)
            if batch.num_rows:
                yield batch


def _line_blocks(f: BinaryIO | _DecompressedFile, block_bytes: int) -> Iterator[bytes]:
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
    block: bytes, first_line: int, layout: _Layout, settings: ReadSettings, path: str, final: bool
) -> tuple[pa.Table, bytes]:
    """Raw batch of a block of whole lines starting at line number ``first_line``, and its tail.

    The tail is the text of a last record whose quoted value is still open at the end of the
    block, to be parsed with the next block; it is empty when ``final`` (the file's end).
    """
    delimiter = settings.field_delimiter
    parsed = _parse_block_arrow(block, layout, delimiter) if _is_utf8(block) else None
    tail = b""
    if parsed is None:
        # pyarrow cannot report a malformed line holding invalid UTF-8 nor the first line of a
        # record spanning lines, and cannot tell a value still open at the end: go record by record.
        parsed, tail = _parse_block_python(block, layout, delimiter, final)
    columns, offsets, malformed = parsed
    rows = first_line + np.concatenate([offsets, [m.offset for m in malformed]]).astype(np.int64)
    n_valid = len(offsets)
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
    if len(rows) > 1 and (rows[1:] < rows[:-1]).any():
        batch = batch.take(np.argsort(rows, kind="stable"))
    return batch, tail


_Parsed = tuple[dict[str, pa.Array], np.ndarray, list[_Malformed]]
"""Values of the usable records by canonical column, their first lines' offsets, and the malformed records."""


def _parse_block_arrow(block: bytes, layout: _Layout, delimiter: str) -> _Parsed | None:
    """Parse with ``pyarrow.csv``, the fast path.

    ``None`` when pyarrow refuses the block, a record spans lines (pyarrow does not say where
    records start) or a quoted value may be open at the end of the block.
    """
    invalid_rows = []

    def skip_invalid_row(row: pacsv.InvalidRow) -> str:
        invalid_rows.append(row)
        return "skip"

    if layout.n_columns is not None:
        n_columns = layout.n_columns
    else:
        first_line = block.partition(b"\n")[0].decode("utf-8")
        n_columns = max(len(_split_line(first_line, delimiter)), max(layout.positions.values()) + 1)
    names = [f"f{i}" for i in range(n_columns)]
    wanted = sorted({names[position] for position in layout.positions.values()})
    try:
        table = pacsv.read_csv(
            pa.py_buffer(block),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=len(block) + 1),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, ignore_empty_lines=True, invalid_row_handler=skip_invalid_row
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.binary() for name in wanted}, include_columns=wanted, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid:
        return None
    n_records = table.num_rows + len(invalid_rows)
    # Each record on a line of its own, but for the blank lines pyarrow skips.
    line_of_record = np.arange(n_records) if n_records == _count_lines(block) else _nonblank_lines(block)
    if len(line_of_record) != n_records or any(row.number is None for row in invalid_rows):
        return None
    if _QUOTE in block and not _ends_outside_quotes(block, delimiter):
        return None
    is_valid = np.ones(n_records, dtype=bool)
    is_valid[[row.number - 1 for row in invalid_rows]] = False
    columns = {name: table.column(names[position]).combine_chunks() for name, position in layout.positions.items()}
    offsets = line_of_record[is_valid]
    malformed = []
    usable: dict[str, list[bytes]] = {name: [] for name in layout.positions}
    usable_offsets = []
    for row in invalid_rows:
        offset = int(line_of_record[row.number - 1])
        if problem := layout.problem(row.actual_columns):
            malformed.append(_Malformed(offset, problem, row.text))
            continue
        # Without a header, a record with more columns than pyarrow expected is usable.
        fields = _split_line(row.text, delimiter)
        for name, position in layout.positions.items():
            usable[name].append(fields[position].encode("utf-8"))
        usable_offsets.append(offset)
    if usable_offsets:
        columns = {
            name: pa.concat_arrays([array, pa.array(usable[name], pa.binary())]) for name, array in columns.items()
        }
        offsets = np.concatenate([offsets, usable_offsets])
    return columns, offsets, malformed


def _split_line(text: str, delimiter: str) -> list[str]:
    """The fields of one record's text (a record that pyarrow already split into columns)."""
    return next(csv.reader(_lines(text), delimiter=delimiter), [])


def _nonblank_lines(block: bytes) -> np.ndarray:
    """0-based offsets of the lines of ``block`` that are not blank (empty, or only ``\\r``)."""
    data = np.frombuffer(block, np.uint8)
    ends = np.flatnonzero(data == ord("\n"))
    if not block.endswith(b"\n"):
        ends = np.append(ends, len(block))
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts
    is_blank = (lengths == 0) | ((lengths == 1) & (data[np.minimum(starts, len(data) - 1)] == ord("\r")))
    return np.flatnonzero(~is_blank)


def _ends_outside_quotes(block: bytes, delimiter: str) -> bool:
    """Whether the last non-blank line of ``block``, read from its start, closes every quoted value it opens."""
    end = len(block)
    while end and block[end - 1] in b"\r\n":
        end -= 1
    last_line = block[block.rfind(b"\n", 0, end) + 1 : end].decode("utf-8", "surrogateescape")  # no copy of the block
    reader = csv.reader([last_line + "\n", "\n"], delimiter=delimiter)
    try:
        return len(list(reader)) == 2  # an open value would take in the second line: one record
    except csv.Error:
        return False


def _parse_block_python(block: bytes, layout: _Layout, delimiter: str, final: bool) -> tuple[_Parsed, bytes]:
    """Parse record by record with the ``csv`` module, keeping the bytes of each field.

    Also returns the block's tail: the text of a last record still open (see :func:`_parse_block`).
    """
    lines = _lines(block.decode("utf-8", "surrogateescape"))
    values: dict[str, list[bytes]] = {name: [] for name in layout.positions}
    offsets = []
    malformed = []
    tail = b""
    for record in _records(lines, delimiter, final):
        text = "".join(lines[record.offset : record.end])
        if record.fields is None and record.error is None:
            tail = text.encode("utf-8", "surrogateescape")
        elif record.fields is None:
            malformed.append(_Malformed(record.offset, record.error, _shown(text)))
        elif problem := layout.problem(len(record.fields)):
            malformed.append(_Malformed(record.offset, problem, _shown(text)))
        else:
            for name, position in layout.positions.items():
                values[name].append(record.fields[position].encode("utf-8", "surrogateescape"))
            offsets.append(record.offset)
    columns = {name: pa.array(column, pa.binary()) for name, column in values.items()}
    return (columns, np.array(offsets, dtype=np.int64), malformed), tail


def _lines(text: str) -> list[str]:
    """The lines of ``text``, each with its ``\\n`` (the last one may have none), as ``csv`` wants them."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    return lines


def _records(lines: list[str], delimiter: str, final: bool) -> Iterator[_Record]:
    """The records of ``lines`` (see :func:`_lines`), blank lines left out.

    A record the ``csv`` module cannot split, or whose quoted value is still open at the end of
    the file (``final``), comes with an error and only its first line: splitting resumes at the
    next line, so that a stray quote costs one line, not the rest of the file. A record still
    open at the end of a block that is not ``final`` comes last, with neither fields nor error.
    """
    start = 0
    while start < len(lines):
        # The extra line tells an open quoted value (which takes it in) from a closed record.
        reader = csv.reader(itertools.chain(itertools.islice(lines, start, None), ["\n"]), delimiter=delimiter)
        offset, restart = start, len(lines)
        try:
            for fields in reader:
                end = start + reader.line_num
                if end > len(lines):
                    if not fields:
                        break
                    if not final:
                        yield _Record(offset, len(lines), None, None)
                        break
                    yield _Record(offset, offset + 1, None, "quoted value is not closed before the end of the file")
                    restart = offset + 1
                    break
                if fields:
                    yield _Record(offset, end, fields, None)
                offset = end
        except csv.Error as error:
            reason = f"line cannot be split into columns: {error}"
            if "field larger than field limit" in str(error):  # what an unclosed quote usually runs into
                reason = f"quoted value not closed within {csv.field_size_limit()} characters (a stray quote?)"
            yield _Record(offset, offset + 1, None, reason)
            restart = offset + 1
        start = restart


def _shown(text: str) -> str:
    r"""A record's text without its final line break, invalid UTF-8 bytes written as ``\xNN`` escapes."""
    text = text.removesuffix("\n").removesuffix("\r")
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# ----------------------------------------------------------------------------- Parquet


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

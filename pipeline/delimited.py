"""CSV/TSV files into raw Arrow batches.

The (possibly compressed, see :mod:`pipeline.decompress`) text is cut into blocks of whole
records (RFC 4180: a quoted value may hold delimiters and line breaks) and each block is
parsed by ``pyarrow.csv`` with every column read as ``binary``, so validation sees the raw
text, invalid UTF-8 included; a block pyarrow cannot parse exactly (a record spanning lines,
invalid UTF-8 in a malformed line, a value open at its end) is parsed record by record with
the ``csv`` module. Blank lines are not rows. Records with the wrong number of columns (with a
header), or without every configured position (without one: extra columns are fine), come out
as rows with a ``parse_error`` and their ``raw_line``. A quoted value still open at the end of
the file rejects its first line, and reading resumes at the next line.
"""

from __future__ import annotations

import csv
import itertools
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from pipeline.decompress import DecompressedFile, open_text
from pipeline.read_settings import SETTING_OF_COLUMN, InputStructureError, ReadSettings, raw_schema

_BOM = b"\xef\xbb\xbf"
_QUOTE = b'"'


def check_header(path: str, settings: ReadSettings) -> None:
    """Check that the header of ``path`` names every configured column once (nothing to check
    without a header: each record is checked for the configured positions when read).

    Raises
    ------
    InputStructureError
        If it does not.
    """
    if not settings.header:
        return
    first_line = _first_line(path, settings)
    if first_line is not None:
        _header_layout(first_line, settings, path)


def _first_line(path: str, settings: ReadSettings) -> bytes | None:
    """The first line of a text file without its line ending, or ``None`` for an empty file."""
    with open_text(path, settings) as f:
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


def read_delimited(path: str, settings: ReadSettings) -> Iterator[pa.Table]:
    """Raw batches of a CSV/TSV file, block by block.

    A record whose quoted value is still open at the end of a block (a value spanning the cut
    between two blocks) is carried over and parsed with the next block.
    """
    layout = _headerless_layout(settings) if not settings.header else None
    line = 1
    tail = b""
    with open_text(path, settings) as f:
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


def _line_blocks(f: BinaryIO | DecompressedFile, block_bytes: int) -> Iterator[bytes]:
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
        schema=raw_schema(columns, [pa.binary()] * len(columns)),
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
        n_columns = max(_common_field_count(block, delimiter), max(layout.positions.values()) + 1)
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


def _common_field_count(block: bytes, delimiter: str, sample_lines: int = 64) -> int:
    """The most frequent field count among the first lines of a headerless block (ties: the
    larger). pyarrow reads every line of another count through a Python callback, so a first
    line unlike the rest would make the whole block about 10x slower to read."""
    head = block[: 1 << 16].split(b"\n")[:sample_lines]
    counts = [len(_split_line(line.decode("utf-8", "replace"), delimiter)) for line in head if line.strip(b"\r")]
    return max(set(counts), key=lambda count: (counts.count(count), count)) if counts else 0


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

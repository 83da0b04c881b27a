"""Read sharded ratings files into raw Arrow batches: the ``ReadRatings`` stage.

Files are matched with Beam's ``FileSystems`` (local paths, ``gs://``, ``s3://`` with the
matching extras) and each one is read whole by one ``DoFn`` call, with pyarrow: CSV/TSV by
:mod:`pipeline.delimited` (RFC 4180 records, every column as raw ``binary`` text, compressed
input through :mod:`pipeline.decompress`), Parquet by :mod:`pipeline.parquet_input` (in the
file's types). What to read is a :class:`~pipeline.read_settings.ReadSettings`.

Each emitted batch holds the configured columns renamed to their canonical names (see
:mod:`pipeline.schemas`), plus ``source`` (the path as matched), ``row`` (1-based line number,
the header being line 1, of the record's first line for CSV/TSV; 1-based row number for
Parquet), ``parse_error`` and ``raw_line``: a row that cannot be split into the configured
columns keeps its text and the reason, for validation to reject.

Structural problems (no file matches, a header or Parquet schema without a configured column
or naming one twice, a Parquet column of an unusable type, a file that is not Parquet) raise
:class:`InputStructureError` while the pipeline is being built, before any work runs. A
compressed file that is truncated or corrupt raises it when read: its rows cannot all be known.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import schemas
from pipeline.delimited import check_header, read_delimited
from pipeline.parquet_input import check_parquet, read_parquet
from pipeline.read_settings import InputStructureError, ReadSettings
from pipeline.timing import timed

__all__ = ["InputStructureError", "ReadRatings", "ReadSettings", "check_input_files", "match_input_files", "read_file"]

_CHECK_THREADS = 16

_log = logging.getLogger(__name__)


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
        check = check_parquet if settings.format == "parquet" else check_header
        list(pool.map(lambda path: check(path, settings), paths))


def read_file(path: str, settings: ReadSettings) -> Iterator[pa.Table]:
    """Raw batches of one file (see the module docstring for their columns)."""
    if settings.format == "parquet":
        return read_parquet(path, settings)
    return read_delimited(path, settings)


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

"""Run outputs: Parquet tables written to a staging folder, published only when complete.

A run writes everything under ``<output>.staging`` and, once the pipeline succeeded, moves
it to ``<output>`` and writes ``_SUCCESS`` last. A run killed midway leaves no ``_SUCCESS``,
so nothing half-written ever looks finished; rerunning replaces the leftovers. An output
that was published (has ``_SUCCESS`` and ``manifest.json``) is only replaced with
``overwrite``; anything else at the output path (a file, a folder holding other files) is
never deleted, with or without ``overwrite``: only an empty folder or a published run of
this tool is replaced.
"""

from __future__ import annotations

import json
import posixpath
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.timing import NAMESPACE

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"
STAGING_SUFFIX = ".staging"


class OutputExistsError(FileExistsError):
    """The output path holds something this run may not replace: a published run without
    overwrite, or anything that is not a published run (a file, a folder of other files)."""


def join(base: str, *parts: str) -> str:
    """Join path parts for local paths and URLs (``gs://``) alike."""
    return FileSystems.join(base, *parts) if "://" in base else posixpath.join(base, *parts)


def staging_path(output: str) -> str:
    """Where a run writes before publishing."""
    return output.rstrip("/") + STAGING_SUFFIX


def is_published_run(folder: str) -> bool:
    """Whether ``folder`` is a run this tool published: it holds ``_SUCCESS`` and ``manifest.json``."""
    return FileSystems.exists(join(folder, SUCCESS)) and FileSystems.exists(join(folder, MANIFEST))


def _is_file(path: str) -> bool:
    """Whether ``path`` is a file (an object, on object stores), not a folder.

    A local folder also exists with a trailing slash; a file does not. On object stores a
    "folder" is only a prefix, so ``path`` exists there only when an object has that name.
    """
    return FileSystems.exists(path) and not FileSystems.exists(path.rstrip("/") + "/")


def _holds_files(folder: str) -> bool:
    """Whether any file lies anywhere under ``folder`` (hidden files included). Object stores'
    folder placeholders (empty objects named ``.../``, as consoles create) are not files."""
    found = FileSystems.match([join(folder, "**")], limits=[100])[0].metadata_list
    return any(not (m.path.endswith("/") and m.size_in_bytes == 0) for m in found)


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` lies under ``folder`` (both absolute paths or URLs)."""
    return path.startswith(folder.rstrip("/") + "/")


def check_output(output: str, overwrite: bool, inputs: Sequence[str] = ()) -> None:
    """Refuse to start (or to publish) when writing ``output`` could destroy anything but an
    earlier published run that ``overwrite`` allows to replace.

    Publishing deletes what is at ``output``, so it must be absent, an empty folder, or a
    published run (replaced only with ``overwrite``). ``prepare_staging`` deletes
    ``<output>.staging`` as a killed run's leftovers; no input file may lie under either.

    Raises
    ------
    OutputExistsError
        With what was found and what to do instead.
    """
    for path in inputs:
        for folder in (output, staging_path(output)):
            if _inside(path, folder):
                raise OutputExistsError(
                    f"input file {path} is inside {folder}, which this run would delete; "
                    "choose an --output outside the input folder"
                )
    if is_published_run(output):
        if not overwrite:
            raise OutputExistsError(f"{output} holds a published run; pass --overwrite to replace it")
        return
    never = "nothing but an empty folder or a published run of this tool is replaced, even with --overwrite"
    if _is_file(output):
        raise OutputExistsError(f"{output} is an existing file, not a run's output folder ({never}); choose another --output")
    if _holds_files(output):
        raise OutputExistsError(
            f"{output} is a folder that holds files but is not a published run (no {SUCCESS} and {MANIFEST}); "
            f"{never}: choose another --output, or move its files away yourself"
        )


def delete_tree(path: str) -> None:
    """Delete ``path`` (a file or a folder and everything in it) when it exists."""
    if FileSystems.exists(path):
        FileSystems.delete([path])


def prepare_staging(output: str) -> str:
    """An empty staging folder for a new run (leftovers of a killed run removed)."""
    staging = staging_path(output)
    delete_tree(staging)
    FileSystems.mkdirs(staging)
    return staging


def write_json(path: str, payload: Any) -> None:
    """Write ``payload`` as indented JSON to any Beam filesystem path."""
    with FileSystems.create(path) as handle:
        handle.write(json.dumps(payload, indent=2, sort_keys=True, default=str).encode("utf-8"))


def publish(staging: str, output: str, overwrite: bool) -> None:
    """Move the staging folder to ``output`` and mark it complete with ``_SUCCESS``.

    ``output`` is checked again (see :func:`check_output`) right before it is replaced: the
    run took time, and something may have been written there meanwhile.
    """
    check_output(output, overwrite)
    delete_tree(output)
    FileSystems.rename([staging], [output])
    with FileSystems.create(join(output, SUCCESS)):
        pass


def read_table(folder: str, name: str) -> pa.Table:
    """Read back one output table (all its Parquet shards)."""
    tables = []
    for path in table_paths(folder, name):
        with FileSystems.open(path) as handle:
            tables.append(pq.read_table(handle))
    return pa.concat_tables(tables) if tables else pa.table({})


def table_paths(folder: str, name: str) -> list[str]:
    """The Parquet shards of one table, sorted."""
    return sorted(m.path for m in FileSystems.match([join(folder, name, "*.parquet")])[0].metadata_list)


def count_rows(folder: str, name: str) -> int:
    """Rows of one output table, from the Parquet footers only."""
    total = 0
    for path in table_paths(folder, name):
        with FileSystems.open(path) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def append_rows(folder: str, name: str, rows: pa.Table) -> pa.Table:
    """Rewrite a small table (the metrics) as one shard with ``rows`` appended; return it."""
    table = pa.concat_tables([read_table(folder, name), rows])
    paths = table_paths(folder, name)
    FileSystems.delete(paths)
    with FileSystems.create(join(folder, name, "part-00000-of-00001.parquet")) as handle:
        pq.write_table(table, handle)
    return table


@dataclass
class _Shard:
    """One open shard: its file, its Parquet writer and the seconds spent writing it."""

    handle: Any
    writer: pq.ParquetWriter
    busy: float


class ParquetTableSink(FileBasedSink):
    """Beam file sink writing ``pa.Table`` batches to snappy-compressed Parquet shards.

    The same files as ``beam.io.WriteToParquetBatched``; the time spent encoding and writing
    a shard is added to the ``write`` stage's busy seconds (``seconds_write`` in the run's
    metrics) when the shard closes, so the per-stage breakdown covers the writes too. Each
    shard's state travels in the handle ``open`` returns: the sink itself keeps none.
    """

    def __init__(self, file_path_prefix: str, schema: pa.Schema, num_shards: int = 0):
        super().__init__(
            file_path_prefix,
            coder=None,
            file_name_suffix=".parquet",
            num_shards=num_shards,
            mime_type="application/x-parquet",
            # Parquet compresses its pages itself (snappy); the file is not compressed again.
            compression_type=CompressionTypes.UNCOMPRESSED,
        )
        self._schema = schema

    def open(self, temp_path: str) -> _Shard:
        started = time.perf_counter()
        handle = super().open(temp_path)
        writer = pq.ParquetWriter(handle, self._schema, compression="snappy")
        return _Shard(handle, writer, time.perf_counter() - started)

    def write_record(self, file_handle: _Shard, value: pa.Table) -> None:
        started = time.perf_counter()
        file_handle.writer.write_table(value)
        file_handle.busy += time.perf_counter() - started

    def close(self, file_handle: _Shard) -> None:
        started = time.perf_counter()
        file_handle.writer.close()
        file_handle.handle.close()
        busy = file_handle.busy + time.perf_counter() - started
        Metrics.distribution(NAMESPACE, "write").update(int(round(busy * 1000)))


class WriteTable(beam.PTransform):
    """Write a PCollection of ``pa.Table`` batches as ``<folder>/<name>/part-*.parquet``."""

    def __init__(self, folder: str, name: str, schema: pa.Schema, num_shards: int = 0):
        super().__init__()
        self._folder, self._name, self._schema, self._shards = folder, name, schema, num_shards

    def expand(self, tables: beam.PCollection):
        sink = ParquetTableSink(join(self._folder, self._name, "part"), self._schema, self._shards)
        return tables | "WriteParquet" >> beam.io.Write(sink)

"""What to read and how (:class:`ReadSettings`), the shape of a raw batch, and the error for
an input file that cannot be read as configured.

Shared by the readers of each format (:mod:`pipeline.delimited`,
:mod:`pipeline.parquet_input`) and the stage that runs them (:mod:`pipeline.read`).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes

from pipeline import schemas

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


def raw_schema(names: typing.Iterable[str], data_types: typing.Iterable[pa.DataType]) -> pa.Schema:
    """The schema of a raw batch: the given data columns, then where each row comes from and
    why it could not be parsed (see :mod:`pipeline.read`)."""
    return pa.schema(
        list(zip(names, data_types))
        + [
            (schemas.SOURCE, pa.string()),
            (schemas.ROW, pa.int64()),
            (schemas.PARSE_ERROR, pa.string()),
            (schemas.RAW_LINE, pa.string()),
        ]
    )

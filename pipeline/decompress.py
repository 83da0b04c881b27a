"""The text of a CSV/TSV file, decompressed so that a truncated or corrupt file fails.

Beam's ``CompressedFile`` stops silently where the data stops, so a truncated file would read
as a shorter, complete one and the run would succeed on part of its input. Here the raw bytes
still come through Beam's ``FileSystems`` (local, ``gs://``, ``s3://``), and Python's stream
decompressors, which know where a stream must end, decompress them.
"""

from __future__ import annotations

import bz2
import contextlib
import lzma
import typing
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

import zstandard
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.read_settings import COMPRESSIONS, InputStructureError, ReadSettings

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


@contextlib.contextmanager
def open_text(path: str, settings: ReadSettings) -> Iterator[BinaryIO | DecompressedFile]:
    """The text of a CSV/TSV file, decompressed as configured (``auto``: from the extension).

    The raw bytes come through Beam's ``FileSystems`` (local, ``gs://``, ``s3://``) but are
    decompressed here: Beam's ``CompressedFile`` stops silently where the data stops, so a
    truncated file would read as a shorter, complete one.
    """
    compression = COMPRESSIONS[settings.compression]
    if compression == CompressionTypes.AUTO:
        compression = CompressionTypes.detect_compression_type(path)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        yield raw if compression == CompressionTypes.UNCOMPRESSED else DecompressedFile(raw, compression, path)


class DecompressedFile:
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

    def _skip_zero_padding(self, data: bytes) -> bytes:
        """``data`` and what follows it without the zero bytes some tools pad gzip files with
        after a member (``gzip.open`` ignores them too)."""
        while data and not data.strip(b"\0"):
            data = self._raw.read(_COMPRESSED_READ_BYTES)
        return data.lstrip(b"\0")

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
                if self._compression == CompressionTypes.GZIP:
                    data = self._skip_zero_padding(data)
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

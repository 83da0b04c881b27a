"""Rating blocks kept in files for the iterations, so that half-step stages receive handles.

Every half-step stage reads every block of its side. Passed as elements, each block would be
encoded, copied through the runner and decoded again by each of the 10-20 stages that read
it: about 330 MB per iteration at 20M ratings, most of the runner's cost per stage. Instead,
each block is written once, as a file under the run's staging folder, and travels as a small
:class:`StoredBlock`. A worker process loads a block's file the first time one of its stages
needs it and keeps it for the run's later stages; the process that stored a block starts
with it (on the DirectRunner in memory, no block is ever read back).

What a stage derives from a block alone and would otherwise recompute at every iteration
(the half-step kernel's layout) is kept with it (:func:`derived`).

Paths are unique per pipeline (a random run folder), so a process that runs several
pipelines never mistakes one run's block for another's; :func:`forget` drops a finished
run's blocks, and what was derived from them, from the process.
"""

from __future__ import annotations

import pickle
import threading
import uuid
from dataclasses import dataclass
from typing import Callable, TypeVar

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.blocks import RatingsBlock
from pipeline.output import join

_loaded: dict[tuple[str, str], RatingsBlock] = {}  # (folder, path) -> block
_derived: dict[tuple[str, str, str], object] = {}  # (folder, path, name) -> value
_building: dict[tuple[str, str, str], threading.Lock] = {}  # one lock per value being built
_lock = threading.Lock()

T = TypeVar("T")


@dataclass(frozen=True)
class StoredBlock:
    """Where one rating block is stored: what a half-step stage receives instead of it."""

    folder: str
    side: str
    block: int

    @property
    def path(self) -> str:
        return join(self.folder, f"{self.side}-{self.block:05d}.pkl")


def run_folder(parent: str) -> str:
    """A new folder under ``parent`` for one pipeline's blocks."""
    return join(parent, f"_blocks-{uuid.uuid4().hex}")


def store_block(block: RatingsBlock, folder: str) -> StoredBlock:
    """Write ``block`` under ``folder`` and keep it in this process; return its handle."""
    stored = StoredBlock(folder, block.side, block.block)
    with FileSystems.create(stored.path, compression_type=CompressionTypes.UNCOMPRESSED) as file:
        file.write(pickle.dumps(block, protocol=pickle.HIGHEST_PROTOCOL))
    with _lock:
        _loaded[folder, stored.path] = block
    return stored


def load_block(stored: StoredBlock) -> RatingsBlock:
    """The block ``stored`` refers to: from this process when loaded or stored here before,
    else read from its file (and kept)."""
    key = (stored.folder, stored.path)
    with _lock:
        block = _loaded.get(key)
    if block is None:
        with FileSystems.open(stored.path, compression_type=CompressionTypes.UNCOMPRESSED) as file:
            block = pickle.loads(file.read())
        with _lock:
            block = _loaded.setdefault(key, block)
    return block


def derived(stored: StoredBlock, name: str, build: Callable[[RatingsBlock], T]) -> T:
    """``build(block)`` for the block ``stored`` refers to, computed once per process and
    ``name``: every later stage of the run gets the same value. ``name`` must tell apart
    everything ``build`` depends on besides the block."""
    key = (stored.folder, stored.path, name)
    with _lock:
        if key in _derived:
            return _derived[key]
        building = _building.setdefault(key, threading.Lock())
    # Bundles running at once (multi-threaded runners) wait for one build instead of each
    # holding a copy of the value while it is built.
    with building:
        with _lock:
            if key in _derived:
                return _derived[key]
        value = build(load_block(stored))
        with _lock:
            _derived[key] = value
            _building.pop(key, None)
        return value


def forget(folder: str) -> None:
    """Drop the blocks stored under ``folder``, and what was derived from them, from this
    process."""
    with _lock:
        for key in [key for key in _loaded if key[0] == folder]:
            del _loaded[key]
        for key in [key for key in _derived if key[0] == folder]:
            del _derived[key]
        for key in [key for key in _building if key[0] == folder]:
            del _building[key]

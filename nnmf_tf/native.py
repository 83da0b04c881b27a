"""The sparse half-step's CPU kernel, built from C++ against the installed TensorFlow.

``kernels/solve_rows.cc`` computes each row's Gram and solves its subproblem in one pass
(see its header). TensorFlow custom ops must be compiled against the TensorFlow they load
into, so the library is built on first use with the compiler and flags TensorFlow reports
(``tf.sysconfig``) for this machine's CPU, about 15 s, and kept in a cache folder keyed by
the source, the TensorFlow version, the compiler and the CPU: later processes, and Beam
workers sharing the folder, load it at once. Where it cannot be built (no C++ compiler, an unsupported platform) the
half-step falls back to TensorFlow ops, which compute the same result more slowly; the
reason is logged once.

The cache folder is ``$NNMF_KERNEL_CACHE`` if set, else ``$XDG_CACHE_HOME/nnmf-pipeline``
(``~/.cache/nnmf-pipeline``). The compiler is ``$CXX`` if set, else ``c++``. Processes that
find no library take turns under a lock on the cache folder (``flock``, where the platform
has it): the first builds it, the others then load that build, so the Beam workers of a
fresh machine compile once (a build that fails is tried again by each waiting process in
turn). A failure is remembered for the rest of the process.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Iterator

import tensorflow as tf

try:
    import fcntl
except ImportError:  # fcntl is absent on Windows: processes there build side by side
    fcntl = None

SOURCE = Path(__file__).with_name("kernels") / "solve_rows.cc"
#: Widest row (rank, plus one with biases) the kernel handles: eight vectors of eight floats.
MAX_WIDTH = 64
#: Seconds a build may take before it counts as failed.
BUILD_TIMEOUT = 600

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: ModuleType | None = None
_failure: str | None = None


def _cache_dir() -> Path:
    explicit = os.environ.get("NNMF_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nnmf-pipeline"


def _target(compiler: list[str]) -> tuple[list[str], str]:
    """Flags that compile for this machine's CPU (its vector width sets the kernel's speed:
    the baseline x86-64 build runs about 13x slower), and what they resolve to.

    ``-march=native`` (``-mcpu=native`` where the compiler takes only that) is expanded by
    the compiler into the CPU's name and features; that expansion goes into the cache key,
    so a cache folder shared by machines of different CPUs keeps one library per CPU.
    """
    for flag in ("-march=native", "-mcpu=native"):
        probe = subprocess.run(
            [*compiler, flag, "-###", "-x", "c++", "-c", os.devnull, "-o", os.devnull],
            capture_output=True, text=True, timeout=60,
        )
        if probe.returncode == 0:
            # GCC lists -march=<cpu> and -m<feature> flags, clang -target-cpu and
            # -target-feature pairs; the rest (temporary file names) changes every run.
            resolved = re.findall(r'(?<![\w-])-m[\w.=+,-]+|"-target-(?:cpu|feature)" "[^"]+"', probe.stderr)
            return [flag], " ".join(sorted(set(resolved)))
    _log.warning("%s accepts neither -march=native nor -mcpu=native: the native kernel is built for the "
                 "baseline CPU and may run slower than TensorFlow's ops (set model.kernel: tensorflow)", compiler[0])
    return [], ""


def _build_command(compiler: list[str], target: list[str], output: Path) -> list[str]:
    flags = ["-O3", *target, "-shared", "-fPIC", "-w", *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
    if platform.system() == "Darwin":
        flags += ["-undefined", "dynamic_lookup"]
    return [*compiler, str(SOURCE), "-o", str(output), *flags]


def _library_path(compiler: list[str], target: list[str], cpu: str) -> Path:
    """Where the library built by ``compiler`` for this TensorFlow, source and CPU is cached."""
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), tf.__version__.encode(), tf.sysconfig.get_lib().encode(), version.encode(),
                 platform.machine().encode(), cpu.encode(), " ".join(_build_command(compiler, target, Path("out"))).encode()):
        key.update(part)
        key.update(b"\0")
    return _cache_dir() / f"solve_rows-{tf.__version__}-{key.hexdigest()[:16]}.so"


def _lock_folder(folder: Path) -> int | None:
    """An open descriptor of ``folder`` holding an exclusive ``flock`` on it (no lock file
    left behind; any user who can read the folder can lock it), or ``None`` where the folder
    cannot be locked: the build then goes ahead unlocked (the rename into place stays atomic)."""
    if fcntl is None:
        return None
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError as error:  # e.g. a folder that can be written but not read
        _log.warning("cannot lock %s (%s): building without the lock", folder, error)
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
    except OSError as error:  # e.g. a file system without locks
        os.close(descriptor)
        _log.warning("cannot lock %s (%s): building without the lock", folder, error)
        return None
    return descriptor


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold the lock of :func:`_lock_folder` on ``folder``; it is released when the descriptor
    closes, also when the process dies."""
    descriptor = _lock_folder(folder)
    try:
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)


def _build(compiler: list[str], target: list[str], library: Path) -> None:
    """Compile into a temporary file next to ``library``, then rename it into place, so that
    no process ever loads a half-written library."""
    handle, temporary = tempfile.mkstemp(suffix=".so", dir=library.parent)
    os.close(handle)
    try:
        done = subprocess.run(
            _build_command(compiler, target, Path(temporary)), capture_output=True, text=True, timeout=BUILD_TIMEOUT
        )
        if done.returncode != 0:
            raise RuntimeError(f"{compiler[0]} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
        # mkstemp made it private; like any library, it is for every user sharing the folder.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o755 & ~umask)
        os.replace(temporary, library)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _load() -> ModuleType:
    compiler = shlex.split(os.environ.get("CXX", "c++"))  # e.g. "ccache g++"
    if not compiler or shutil.which(compiler[0]) is None:
        raise RuntimeError(f"no C++ compiler {' '.join(compiler)!r} on PATH (set CXX to use another)")
    target, cpu = _target(compiler)
    library = _library_path(compiler, target, cpu)
    if not library.exists():
        library.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(library.parent):
            if not library.exists():  # else another process built it while this one waited
                _log.info("building the native half-step kernel into %s", library)
                _build(compiler, target, library)
    return tf.load_op_library(str(library))


def solve_rows_op() -> ModuleType | None:
    """The loaded kernel library (its op is ``nnmf_solve_rows``), built first if need be, or
    ``None`` when it cannot be built or loaded here (see :func:`unavailable_reason`)."""
    global _loaded, _failure
    with _lock:
        if _loaded is None and _failure is None:
            try:
                _loaded = _load()
            except Exception as error:  # any failure means: use the TensorFlow ops instead
                _failure = f"{type(error).__name__}: {error}"
                _log.warning("native half-step kernel unavailable, using TensorFlow ops: %s", _failure)
        return _loaded


def unavailable_reason() -> str | None:
    """Why :func:`solve_rows_op` returned ``None``, or ``None`` if it did not."""
    solve_rows_op()
    return _failure

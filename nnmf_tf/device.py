"""TensorFlow process set-up and the choice of ``tf.distribute`` strategy.

TensorFlow fixes its thread pools and logical devices at the first op it runs, so
:func:`configure` must run first, exactly once per process; it is guarded by a lock because
Beam may call ``DoFn.setup`` from several threads of one worker.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import tensorflow as tf

STRATEGIES = ("default", "mirrored")

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_configured: "DeviceSettings | None" = None
_ignored: set = set()


@dataclass(frozen=True)
class DeviceSettings:
    """How this process's TensorFlow runtime is laid out."""

    intra_op_threads: int = 0
    """Threads inside one op (0: TensorFlow's default, one per core)."""
    inter_op_threads: int = 0
    """Ops run concurrently (0: TensorFlow's default)."""
    logical_cpu_devices: int = 0
    """Split the CPU into this many logical devices (0 or 1: leave it whole). Lets
    ``MirroredStrategy`` run several replicas without GPUs, as tests do."""
    xla_cache_dir: str | None = None
    """Folder where XLA keeps the compiled solver for later processes (``None``: off). A
    process finding its shapes there skips their compilation (~0.4 s each on 2 cores).
    Entries go to a subfolder per TensorFlow version, so an upgrade never loads code
    compiled by another XLA; the code is compiled for this machine's CPU, so the folder must
    not be shared with machines of another CPU type."""


def configure(settings: DeviceSettings = DeviceSettings()) -> DeviceSettings:
    """Apply ``settings`` once per process; later calls return the settings in force.

    A later call with different settings logs a warning and changes nothing: TensorFlow
    cannot be reconfigured after it initialised.
    """
    global _configured
    with _lock:
        if _configured is not None:
            if settings != _configured and settings not in _ignored:
                _ignored.add(settings)
                _log.warning("TensorFlow already configured with %s; ignoring %s", _configured, settings)
            return _configured
        if settings.xla_cache_dir:
            _use_xla_cache(settings.xla_cache_dir)
        try:
            if settings.intra_op_threads:
                tf.config.threading.set_intra_op_parallelism_threads(settings.intra_op_threads)
            if settings.inter_op_threads:
                tf.config.threading.set_inter_op_parallelism_threads(settings.inter_op_threads)
            if settings.logical_cpu_devices > 1:
                cpu = tf.config.list_physical_devices("CPU")[0]
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration()] * settings.logical_cpu_devices
                )
        except RuntimeError as error:
            raise RuntimeError(
                "TensorFlow was initialised before nnmf_tf.device.configure() ran; call configure() "
                "before any TensorFlow op in this process"
            ) from error
        _configured = settings
        return settings


def _use_xla_cache(root: str) -> None:
    """Point TensorFlow's persistent XLA cache at ``root/tf-<version>`` (read with its other
    XLA flags at its first op). A folder that cannot be created or written is skipped with a
    warning: the cache only saves compilation time, and TensorFlow would fail every compiled
    call on it."""
    folder = os.path.join(os.path.expanduser(root), f"tf-{tf.__version__}")
    probe = os.path.join(folder, f".write-test-{os.getpid()}")
    try:
        tf.io.gfile.makedirs(folder)
        with tf.io.gfile.GFile(probe, "w") as handle:
            handle.write("")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as error:
        _log.warning("XLA cache folder %s is not writable (%s); compiling without a cache", folder, error)
        return
    flags = os.environ.get("TF_XLA_FLAGS", "")
    os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={folder}".strip()


def compute_threads() -> int:
    """How many independent pieces of work (chunks of rows, blocks of users) to run at once:
    TensorFlow's intra-op threads, or one per core when TensorFlow picks its own."""
    return tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count() or 1


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """The distribution strategy called ``name``.

    ``"default"`` is TensorFlow's default (one replica on the default device).
    ``"mirrored"`` is a ``MirroredStrategy`` over every GPU, or, without GPUs, over every
    logical CPU device; with a single device it falls back to the default strategy and
    logs why.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}; got {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
        d.name for d in tf.config.list_logical_devices("CPU")
    ]
    if len(devices) < 2:
        _log.warning("mirrored strategy needs 2+ devices; found %s, using the default strategy", devices)
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy(devices)

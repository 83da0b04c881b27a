"""TensorFlow on a Beam worker: configured once per process, one strategy reused by every DoFn.

``DoFn.setup`` calls :func:`worker_strategy`; nothing here runs at import time, so the
launcher process never runs a TensorFlow op before the workers configure their devices.
"""

from __future__ import annotations

import gc
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

    from pipeline.config import ComputeConfig

_lock = threading.Lock()
_strategies: dict[str, "tf.distribute.Strategy"] = {}


def _import_tensorflow() -> None:
    """Import TensorFlow with the garbage collector paused. The import creates hundreds of
    thousands of objects, and each collection it triggers also scans everything Beam holds
    already: after ``import apache_beam``, 2.56-2.72 s with collections against 1.78-1.94 s
    without (three alternating runs)."""
    with _lock:
        if "tensorflow" in sys.modules:
            return
        enabled = gc.isenabled()
        gc.disable()
        try:
            import tensorflow  # noqa: F401
        finally:
            if enabled:
                gc.enable()


def worker_strategy(compute: "ComputeConfig") -> "tf.distribute.Strategy":
    """Configure this process's TensorFlow (first call) and return the strategy ``compute`` names."""
    _import_tensorflow()
    from nnmf_tf.device import DeviceSettings, configure, make_strategy

    configure(
        DeviceSettings(
            intra_op_threads=compute.intra_op_threads,
            logical_cpu_devices=compute.logical_cpu_devices,
            xla_cache_dir=compute.xla_cache_dir,
        )
    )
    with _lock:
        if compute.strategy not in _strategies:
            _strategies[compute.strategy] = make_strategy(compute.strategy)
        return _strategies[compute.strategy]

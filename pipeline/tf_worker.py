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
    """Import TensorFlow without the garbage collector scanning it.

    The import creates about 490,000 tracked objects (modules, classes, functions; 142,000
    exist after ``import apache_beam``) that live as long as the process, and every full
    collection would scan them all again, with everything Beam holds: on the 1M benchmark,
    collection took 0.72-0.77 s of the first user half-step stage. Collection is paused
    during the import, and the objects alive after it are then frozen (``gc.freeze``: left
    out of later collections, which is also why their cyclic garbage, if any, is never
    reclaimed): 0.04 s of collection over the whole run, and that stage 2.9-3.1 s against
    3.6-3.9 s."""
    with _lock:
        if "tensorflow" in sys.modules:
            return
        enabled = gc.isenabled()
        gc.disable()
        try:
            import tensorflow  # noqa: F401

            gc.freeze()
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

"""Busy time per pipeline stage, reported through Beam metrics.

A DoFn's ``process`` is a generator whose consumers run while it is suspended at ``yield``
(Beam fuses stages), so timing the whole call would charge the downstream stages to it.
:func:`timed` counts only the time spent inside the generator itself.
"""

from __future__ import annotations

import time
from typing import Iterable, Iterator, TypeVar

from apache_beam.metrics import Metrics

NAMESPACE = "stage_msec"

T = TypeVar("T")


def timed(stage: str, outputs: Iterable[T]) -> Iterator[T]:
    """Yield ``outputs``, adding the milliseconds spent producing them to ``stage``'s distribution."""
    iterator = iter(outputs)
    busy = 0.0
    while True:
        started = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            busy += time.perf_counter() - started
            break
        busy += time.perf_counter() - started
        yield item
    Metrics.distribution(NAMESPACE, stage).update(int(round(busy * 1000)))


def stage_seconds(result) -> dict[str, float]:
    """Busy seconds per stage (summed over workers) from a finished pipeline's metrics."""
    from apache_beam.metrics.metric import MetricsFilter

    seconds: dict[str, float] = {}
    for entry in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["distributions"]:
        value = entry.committed if entry.committed is not None else entry.attempted
        seconds[entry.key.metric.name] = seconds.get(entry.key.metric.name, 0.0) + value.sum / 1000.0
    return seconds

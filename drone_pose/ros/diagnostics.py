"""A node's health as diagnostic_msgs/DiagnosticArray: rates, latency percentiles, counters.

Counters named rejected_<reason> count rejected inputs; the status is WARN once anything has been
rejected (the last reason is reported), else OK.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

LATENCY_WINDOW = 300


class RateWindow:
    """Input and output rates (Hz) since the previous report, and the latency percentiles (ms) of
    the last LATENCY_WINDOW outputs."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.restart()

    def restart(self) -> None:
        """Count rates from now on (a configure); the latency window is kept."""
        self._since = self._clock()
        self._base = (0, 0)

    def report(self, received: int, processed: int) -> dict[str, float]:
        """input_rate_hz, processed_rate_hz (counts since the last report over the time since it),
        latency_p50_ms and latency_p95_ms (NaN before the first output)."""
        now = self._clock()
        elapsed = max(now - self._since, 1e-6)
        last_received, last_processed = self._base
        self._since, self._base = now, (received, processed)
        latencies = np.array(self.latencies_ms) if self.latencies_ms else np.array([math.nan])
        return {
            "input_rate_hz": (received - last_received) / elapsed,
            "processed_rate_hz": (processed - last_processed) / elapsed,
            "latency_p50_ms": float(np.percentile(latencies, 50)),
            "latency_p95_ms": float(np.percentile(latencies, 95)),
        }


def diagnostic_status(
    name: str,
    hardware_id: str,
    values: Mapping[str, object],
    counters: Mapping[str, int],
    last_rejection: str,
    outputs_key: str,
    outputs_label: str = "poses",
) -> DiagnosticStatus:
    """One DiagnosticStatus with `values` then every counter as key-values; the message counts the
    outputs (counter `outputs_key`) and all rejections (counters rejected_<reason>)."""
    counts = dict(counters)  # one copy: the worker thread may add a counter meanwhile
    status = DiagnosticStatus(name=name, hardware_id=hardware_id)
    rejected = sum(v for k, v in counts.items() if k.startswith("rejected_"))
    status.level = DiagnosticStatus.WARN if last_rejection else DiagnosticStatus.OK
    status.message = f"{counts.get(outputs_key, 0)} {outputs_label}, {rejected} rejected"
    entries = {**values, "last_rejection": last_rejection, **counts}
    status.values = [
        KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in entries.items()
    ]
    return status


def diagnostic_array(
    name: str,
    hardware_id: str,
    values: Mapping[str, object],
    counters: Counter[str],
    last_rejection: str,
    outputs_key: str,
    stamp: object,
) -> DiagnosticArray:
    """A DiagnosticArray of one diagnostic_status (see there), stamped `stamp`."""
    array = DiagnosticArray(
        status=[diagnostic_status(name, hardware_id, values, counters, last_rejection, outputs_key)]
    )
    array.header.stamp = stamp
    return array

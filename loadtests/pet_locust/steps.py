"""One step of a stepped load: the latencies and creates Locust recorded between its start and end.

Locust keeps, per request name, a histogram of response times (milliseconds, rounded) since the
start of the run; a step's own histogram is the difference of two snapshots.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def percentile(histogram: Counter[int], fraction: float) -> float | None:
    """The ``fraction`` percentile (0..1) of a {milliseconds: count} histogram, in seconds."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = fraction * total
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return round(value / 1000.0, 3)
    return round(max(histogram) / 1000.0, 3)


class StepWindow:
    def __init__(self, stats: Any, key: tuple[str, str], creates: int) -> None:
        self.stats = stats
        self.key = key  # (request type, name) of the latency that decides
        self.start_histogram, self.start_failures = self._snapshot()
        self.start_creates = creates

    def _snapshot(self) -> tuple[Counter[int], int]:
        method, name = self.key
        entry = self.stats.entries.get((name, method))
        failures = int(self.stats.total.num_failures)  # any failure counts: API errors and reconcile time-outs
        if entry is None:
            return Counter(), failures
        return Counter(entry.response_times), failures

    def close(self, creates: int, seconds: float) -> dict[str, Any]:
        histogram, failures = self._snapshot()
        histogram.subtract(self.start_histogram)
        histogram = Counter({k: v for k, v in histogram.items() if v > 0})
        made = creates - self.start_creates
        return {
            "seconds": round(seconds, 1),
            "creates": made,
            "achieved_rate": round(made / seconds, 2) if seconds > 0 else None,
            "settled": sum(histogram.values()),
            "failures": failures - self.start_failures,
            "p50": percentile(histogram, 0.50),
            "p95": percentile(histogram, 0.95),
            "p99": percentile(histogram, 0.99),
        }

"""A step's figures come from the difference of Locust's cumulative histograms."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

from pet_locust.steps import StepWindow, percentile


def test_percentiles_of_a_histogram_in_seconds() -> None:
    histogram = Counter({100: 50, 200: 40, 2500: 10})
    assert percentile(histogram, 0.5) == 0.1
    assert percentile(histogram, 0.9) == 0.2
    assert percentile(histogram, 0.99) == 2.5
    assert percentile(Counter(), 0.5) is None


def test_a_window_counts_only_what_happened_inside_it() -> None:
    entry = SimpleNamespace(response_times={100: 10}, num_failures=0)
    total = SimpleNamespace(num_failures=1)
    stats = SimpleNamespace(entries={("create → Active", "RECONCILE"): entry}, total=total)
    window = StepWindow(stats, ("RECONCILE", "create → Active"), creates=100)
    entry.response_times = {100: 10, 3000: 5}
    total.num_failures = 3
    figures = window.close(creates=150, seconds=10.0)
    assert figures["creates"] == 50 and figures["achieved_rate"] == 5.0
    assert figures["settled"] == 5 and figures["p50"] == 3.0
    assert figures["failures"] == 2

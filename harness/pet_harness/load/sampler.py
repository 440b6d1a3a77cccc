"""Samples taken during a load run: the operator's RSS and CPU, and the number of pets.

RSS and CPU come from ``/proc/<pid>`` (Linux): ``VmRSS`` and the process's user + system time;
the pet count from a one-item list call whose ``remainingItemCount`` the API server fills in.
A sampler is a thread that stops when told or when its process is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclasses.dataclass(frozen=True)
class Sample:
    at: float  # seconds since the sampler started
    rss_mb: float | None
    cpu_percent: float | None  # of one core, since the previous sample
    pets: int | None
    others: dict[str, float] = dataclasses.field(default_factory=dict)  # CPU % of one core: other processes, "machine"


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


class Sampler:
    def __init__(
        self, pid: int | None, count_pets: Callable[[], int | None], interval: float = 1.0,
        progress: Callable[[Sample], None] | None = None, progress_every: float = 15.0,
        others: dict[str, int | None] | None = None,
    ) -> None:
        """``progress`` is called with the newest sample every ``progress_every`` seconds (long runs
        show they are alive and how far they got)."""
        self.progress = progress
        self.others = {name: pid for name, pid in (others or {}).items() if pid}
        self.progress_every = progress_every
        self.pid = pid
        self.count_pets = count_pets
        self.interval = interval
        self.samples: list[Sample] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)

    def _other_seconds(self) -> dict[str, float | None]:
        taken: dict[str, float | None] = {name: cpu_seconds(pid) for name, pid in self.others.items()}
        taken["machine"] = machine_cpu_seconds()
        return taken

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(30)
        return self.samples

    def _run(self) -> None:
        started = time.monotonic()
        last_cpu = cpu_seconds(self.pid) if self.pid else None
        last_at = started
        told = started
        last_others, others_at = self._other_seconds(), started
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            current = self._other_seconds()
            shares: dict[str, float] = {}
            for name, used in current.items():
                before = last_others.get(name)
                if used is not None and before is not None and now > others_at:
                    shares[name] = round(100.0 * (used - before) / (now - others_at), 1)
            last_others, others_at = current, now
            rss = cpu = None
            if self.pid:
                rss = rss_mb(self.pid)
                used = cpu_seconds(self.pid)
                if used is not None and last_cpu is not None and now > last_at:
                    cpu = round(100.0 * (used - last_cpu) / (now - last_at), 1)
                last_cpu, last_at = used, now
            try:
                pets = self.count_pets()
            except Exception:  # noqa: BLE001 - a missed count is a gap in the plot, not a failure
                self.errors += 1
                pets = None
            sample = Sample(round(now - started, 2), None if rss is None else round(rss, 1), cpu, pets, shares)
            self.samples.append(sample)
            if self.progress is not None and now - told >= self.progress_every:
                told = now
                with contextlib.suppress(Exception):  # a progress line is a courtesy
                    self.progress(sample)


def machine_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole machine so far, all cores (``/proc/stat``: all but idle and iowait)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)
    return busy / CLOCK_TICKS


def busiest(samples: list[Sample], window: int = 10) -> dict[str, float]:
    """Mean CPU of each process (and the machine) over the ``window`` samples in which the machine was
    busiest: at the top of a ramp, who uses the cores."""
    rows = [s for s in samples if "machine" in s.others]
    if len(rows) < window:
        return {}
    best = max(range(len(rows) - window + 1), key=lambda i: sum(r.others["machine"] for r in rows[i:i + window]))
    chosen = rows[best:best + window]
    names = {name for row in chosen for name in row.others}
    out = {name: round(sum(r.others.get(name, 0.0) for r in chosen) / window, 1) for name in sorted(names)}
    cpu = [r.cpu_percent for r in chosen if r.cpu_percent is not None]
    if cpu:
        out["operator"] = round(sum(cpu) / len(cpu), 1)
    out["from_second"] = chosen[0].at
    return out


def peak(samples: list[Sample]) -> float | None:
    values = [s.rss_mb for s in samples if s.rss_mb is not None]
    return max(values) if values else None


def rss_at(samples: list[Sample], pets: int) -> float | None:
    """RSS of the first sample taken once the cluster held at least ``pets`` pets."""
    for sample in samples:
        if sample.pets is not None and sample.pets >= pets and sample.rss_mb is not None:
            return sample.rss_mb
    return None

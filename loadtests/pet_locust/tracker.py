"""Reconcile latency: from a write the API server acknowledged to the status the contract predicts.

Each load process keeps one :class:`Tracker`. A user registers an :class:`Expectation` when its
write is acknowledged; the process's watch feeds every pet event to :meth:`Tracker.observe`;
the first event that shows the predicted phase with ``observedGeneration`` caught up settles the
expectation and reports its latency. Nothing polls a pet. Time comes from the client's clock
when the event is read, since ``creationTimestamp`` and ``lastTransitionTime`` have one-second
resolution.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Key = tuple[str, str]  # (namespace, name)

#: ``report(name, seconds, error)``: one settled (or failed) expectation.
Report = Callable[[str, float, Exception | None], None]

GONE = "<gone>"  # the phase a delete expects: the object is no longer there


class ReconcileTimeout(Exception):
    """An expectation was not met in time; the message says what was last seen."""


@dataclasses.dataclass
class Expectation:
    key: Key
    name: str  # what Locust shows, e.g. "create → Active"
    phase: str  # the predicted phase, or GONE
    generation: int  # the generation the write produced (observedGeneration must reach it)
    since: float  # when the write was acknowledged (tracker clock)
    uid: str = ""  # the object the write produced or hit ("" when unknown)


@dataclasses.dataclass(frozen=True)
class Seen:
    uid: str
    phase: str | None
    observed_generation: int
    at: float


def status_at(obj: Mapping[str, Any], path: Sequence[str]) -> Mapping[str, Any]:
    """The status mapping at ``path`` (``("status",)`` for ours, ``("status", "reconcile")`` for a
    Kopf operator that returns its status from a handler)."""
    node: Any = obj
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


class Tracker:
    def __init__(
        self, report: Report, status_path: Sequence[str] = ("status",), timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.report = report
        self.status_path = tuple(status_path)
        self.timeout = timeout
        self.clock = clock
        self.pending: dict[Key, list[Expectation]] = {}
        self.latest: dict[Key, Seen] = {}
        self.settled = 0
        self.failed = 0

    # --- from users -------------------------------------------------------------------------

    def expect(self, expectation: Expectation) -> None:
        """Register what a write should lead to; settles at once if the watch already showed it."""
        seen = self.latest.get(expectation.key)
        if expectation.phase == GONE:
            if seen is None or (expectation.uid and seen.uid != expectation.uid):
                self._settle(expectation, self.clock())  # already gone before the ack was handled
                return
        elif seen is not None and self._meets(expectation, seen):
            self._settle(expectation, seen.at)
            return
        self.pending.setdefault(expectation.key, []).append(expectation)

    @property
    def outstanding(self) -> int:
        return sum(len(v) for v in self.pending.values())

    # --- from the watch ---------------------------------------------------------------------

    def observe(self, event_type: str, obj: Mapping[str, Any], at: float | None = None) -> None:
        meta = obj.get("metadata") or {}
        key: Key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        now = self.clock() if at is None else at
        uid = str(meta.get("uid", ""))
        if event_type == "DELETED":
            self.latest.pop(key, None)
            for exp in self._take(key, lambda e: e.phase == GONE and (not e.uid or e.uid == uid)):
                self._settle(exp, now)
            return
        status = status_at(obj, self.status_path)
        try:
            observed = int(status.get("observedGeneration") or 0)
        except (TypeError, ValueError):
            observed = 0
        phase = status.get("phase")
        seen = Seen(uid, str(phase) if phase is not None else None, observed, now)
        self.latest[key] = seen
        for exp in self._take(key, lambda e: self._meets(e, seen)):
            self._settle(exp, now)

    def forget(self, key: Key) -> None:
        """The watch lost track (relisted): what it knew of ``key`` may be stale."""
        self.latest.pop(key, None)

    def sweep(self) -> int:
        """Fail every expectation older than the timeout; returns how many failed."""
        now = self.clock()
        failed = 0
        for key in list(self.pending):
            for exp in self._take(key, lambda e: now - e.since > self.timeout):
                seen = self.latest.get(key)
                last = ("not seen on the watch" if seen is None else
                        f"last seen phase {seen.phase} at observedGeneration {seen.observed_generation}")
                self.failed += 1
                failed += 1
                self.report(exp.name, now - exp.since, ReconcileTimeout(
                    f"{key[0]}/{key[1]} did not reach {exp.phase} (generation {exp.generation}) within "
                    f"{self.timeout:.0f}s: {last}"))
        return failed

    def fail_all(self, why: str) -> int:
        """Fail everything still pending (the run is over)."""
        count = 0
        now = self.clock()
        for key in list(self.pending):
            for exp in self.pending.pop(key):
                self.failed += 1
                count += 1
                self.report(exp.name, now - exp.since, ReconcileTimeout(f"{key[0]}/{key[1]}: {why}"))
        return count

    # --- internals ----------------------------------------------------------------------------

    @staticmethod
    def _meets(exp: Expectation, seen: Seen) -> bool:
        if exp.phase == GONE:
            return False
        if exp.uid and seen.uid != exp.uid:
            return False
        return seen.phase == exp.phase and seen.observed_generation >= exp.generation

    def _take(self, key: Key, match: Callable[[Expectation], bool]) -> list[Expectation]:
        waiting = self.pending.get(key)
        if not waiting:
            return []
        taken = [e for e in waiting if match(e)]
        if taken:
            rest = [e for e in waiting if not match(e)]
            if rest:
                self.pending[key] = rest
            else:
                del self.pending[key]
        return taken

    def _settle(self, exp: Expectation, at: float) -> None:
        self.settled += 1
        self.report(exp.name, max(0.0, at - exp.since), None)

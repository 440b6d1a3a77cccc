"""The reconcile-latency tracker: settles on the predicted status, times out, never double-counts."""

from __future__ import annotations

from typing import Any

from pet_locust.tracker import GONE, Expectation, ReconcileTimeout, Tracker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(timeout: float = 60.0, path: tuple[str, ...] = ("status",)) -> tuple[Tracker, list[Any], Clock]:
    reports: list[Any] = []
    clock = Clock()
    tracker = Tracker(lambda name, seconds, error: reports.append((name, round(seconds, 3), error)),
                      path, timeout, clock)
    return tracker, reports, clock


def pet(name: str = "a", phase: str | None = "Active", observed: int = 1, uid: str = "u1",
        where: tuple[str, ...] = ("status",)) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "observedGeneration": observed} if phase else {}
    obj: dict[str, Any] = {"metadata": {"namespace": "ns", "name": name, "uid": uid}}
    node = obj
    for part in where[:-1]:
        node = node.setdefault(part, {})
    node[where[-1]] = status
    return obj


def test_settles_when_the_watch_shows_the_predicted_phase_at_the_written_generation() -> None:
    tracker, reports, clock = make()
    tracker.expect(Expectation(("ns", "a"), "create → Active", "Active", 1, clock(), "u1"))
    clock.now += 0.5
    tracker.observe("MODIFIED", pet(phase=None))
    assert reports == []
    clock.now += 0.25
    tracker.observe("MODIFIED", pet(phase="Active", observed=1))
    assert reports == [("create → Active", 0.75, None)]
    assert tracker.outstanding == 0


def test_an_older_generation_or_another_phase_does_not_settle() -> None:
    tracker, reports, clock = make()
    tracker.expect(Expectation(("ns", "a"), "update tags → Active", "Active", 3, clock(), "u1"))
    tracker.observe("MODIFIED", pet(observed=2))
    tracker.observe("MODIFIED", pet(phase="Conflict", observed=3))
    assert reports == []
    tracker.observe("MODIFIED", pet(observed=3))
    assert [r[0] for r in reports] == ["update tags → Active"]


def test_another_object_of_the_same_name_does_not_settle() -> None:
    tracker, reports, clock = make()
    tracker.expect(Expectation(("ns", "a"), "create → Active", "Active", 1, clock(), "u2"))
    tracker.observe("MODIFIED", pet(uid="u1"))
    assert reports == []


def test_a_status_seen_before_the_write_was_acknowledged_settles_at_once_with_zero() -> None:
    tracker, reports, clock = make()
    tracker.observe("MODIFIED", pet(observed=1))
    clock.now += 1
    tracker.expect(Expectation(("ns", "a"), "create → Active", "Active", 1, clock(), "u1"))
    assert reports == [("create → Active", 0.0, None)]


def test_a_delete_settles_on_the_deleted_event_or_at_once_when_already_gone() -> None:
    tracker, reports, clock = make()
    tracker.observe("ADDED", pet())
    tracker.expect(Expectation(("ns", "a"), "delete → gone", GONE, 0, clock(), "u1"))
    tracker.observe("MODIFIED", pet())  # finalizer still there
    assert reports == []
    clock.now += 2
    tracker.observe("DELETED", pet())
    assert reports == [("delete → gone", 2.0, None)]
    tracker.expect(Expectation(("ns", "b"), "delete → gone", GONE, 0, clock(), "u9"))
    assert reports[-1] == ("delete → gone", 0.0, None)


def test_the_status_path_of_a_kopf_handler_result() -> None:
    where = ("status", "reconcile")
    tracker, reports, clock = make(path=where)
    tracker.expect(Expectation(("ns", "a"), "create → Active", "Active", 1, clock(), "u1"))
    tracker.observe("MODIFIED", pet(where=("status",)))  # status.phase is not where this operator writes
    assert reports == []
    tracker.observe("MODIFIED", pet(where=where))
    assert len(reports) == 1


def test_a_write_that_never_shows_fails_after_the_timeout_saying_what_was_seen() -> None:
    tracker, reports, clock = make(timeout=10)
    tracker.expect(Expectation(("ns", "a"), "create → Active", "Active", 1, clock(), "u1"))
    tracker.observe("MODIFIED", pet(phase="Pending", observed=1))
    clock.now += 5
    assert tracker.sweep() == 0
    clock.now += 6
    assert tracker.sweep() == 1
    name, seconds, error = reports[0]
    assert (name, seconds) == ("create → Active", 11.0)
    assert isinstance(error, ReconcileTimeout)
    assert "last seen phase Pending" in str(error)
    assert tracker.outstanding == 0 and tracker.failed == 1
    tracker.observe("MODIFIED", pet(observed=1))
    assert len(reports) == 1  # a late status does not count it twice


def test_fail_all_reports_everything_still_pending() -> None:
    tracker, reports, clock = make()
    for name in ("a", "b"):
        tracker.expect(Expectation(("ns", name), "create → Active", "Active", 1, clock(), ""))
    assert tracker.fail_all("run over") == 2
    assert all(isinstance(r[2], ReconcileTimeout) for r in reports)
    assert tracker.outstanding == 0

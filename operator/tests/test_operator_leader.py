"""Leader election against an in-memory Lease that behaves like the API server's."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import pytest

from pet_operator.leader import LeaderElector, LeaseRecord


class FakeLeases:
    """One Lease: create if absent, update only with the current resourceVersion."""

    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self._versions = itertools.count(1)
        self.writes: list[tuple[str, str]] = []  # (operation, holder)
        self.fail = False

    def _store(self, spec: dict[str, Any]) -> LeaseRecord:
        self.record = LeaseRecord(
            holder=spec["holderIdentity"], lease_duration=spec["leaseDurationSeconds"],
            acquire_time=spec["acquireTime"], renew_time=spec["renewTime"],
            transitions=spec["leaseTransitions"], resource_version=str(next(self._versions)), uid="u-1",
        )
        return self.record

    async def read_lease(self, namespace: str, name: str) -> LeaseRecord | None:
        if self.fail:
            raise OSError("connection refused")
        return self.record

    async def create_lease(self, namespace: str, name: str, spec: dict[str, Any]) -> LeaseRecord | None:
        if self.fail:
            raise OSError("connection refused")
        if self.record is not None:
            return None
        self.writes.append(("create", spec["holderIdentity"]))
        return self._store(spec)

    async def update_lease(
        self, namespace: str, name: str, spec: dict[str, Any], resource_version: str
    ) -> LeaseRecord | None:
        if self.fail:
            raise OSError("connection refused")
        if self.record is None or self.record.resource_version != resource_version:
            return None
        self.writes.append(("update", spec["holderIdentity"]))
        return self._store(spec)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def leases() -> FakeLeases:
    return FakeLeases()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def elector(leases: FakeLeases, clock: Clock, identity: str) -> LeaderElector:
    return LeaderElector(leases, "pet-system", "pet-operator-leader", identity,
                         lease_duration=15, renew_deadline=10, retry_period=2, clock=clock)


async def test_the_first_candidate_creates_the_lease_and_leads(leases: FakeLeases, clock: Clock) -> None:
    a = elector(leases, clock, "a")
    assert await a.try_acquire_or_renew() is True
    a._leading = True
    assert a.is_leader()
    assert leases.record is not None
    assert leases.record.holder == "a"
    assert leases.record.lease_duration == 15


async def test_a_standby_waits_while_the_leader_renews_and_takes_over_after_the_lease(
    leases: FakeLeases, clock: Clock
) -> None:
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    assert await a.try_acquire_or_renew()
    for _ in range(10):  # a renews every 2 s: b never sees the record stand still long enough
        clock.now += 2
        assert await a.try_acquire_or_renew()
        assert await b.try_acquire_or_renew() is False
    # a dies: its record stops changing; b takes over only a full lease duration later, by its own clock
    clock.now += 14
    assert await b.try_acquire_or_renew() is False
    clock.now += 1
    assert await b.try_acquire_or_renew() is True
    assert leases.record is not None
    assert leases.record.holder == "b"
    assert leases.record.transitions == 1


async def test_of_two_candidates_for_an_expired_lease_exactly_one_wins(leases: FakeLeases, clock: Clock) -> None:
    a, b, c = (elector(leases, clock, n) for n in "abc")
    assert await a.try_acquire_or_renew()
    assert await b.try_acquire_or_renew() is False
    assert await c.try_acquire_or_renew() is False
    clock.now += 16
    # both read the same expired record, then both try to update it
    record = leases.record
    original = leases.read_lease

    async def stale_read(namespace: str, name: str) -> LeaseRecord | None:
        return record

    leases.read_lease = stale_read  # type: ignore[method-assign]
    results = [await b.try_acquire_or_renew(), await c.try_acquire_or_renew()]
    leases.read_lease = original  # type: ignore[method-assign]
    assert sorted(results) == [False, True]


async def test_a_leader_that_cannot_renew_stops_leading_at_the_renew_deadline(
    leases: FakeLeases, clock: Clock
) -> None:
    a = elector(leases, clock, "a")
    assert await a.try_acquire_or_renew()
    a._leading = True
    leases.fail = True
    clock.now += 9.9
    assert a.is_leader()  # still inside the renew deadline
    clock.now += 0.2
    assert not a.is_leader()  # fenced before the 15 s lease could look expired to anyone


async def test_release_empties_the_holder_so_a_standby_takes_over_at_once(leases: FakeLeases, clock: Clock) -> None:
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    assert await a.try_acquire_or_renew()
    a._leading = True
    assert await b.try_acquire_or_renew() is False
    assert await a.release() is True
    assert not a.is_leader()
    assert await b.try_acquire_or_renew() is True
    assert leases.writes[-2:] == [("update", ""), ("update", "b")]


async def test_a_deleted_lease_is_recreated_by_its_leader_not_taken_by_a_standby(
    leases: FakeLeases, clock: Clock
) -> None:
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    assert await a.try_acquire_or_renew()
    a._leading = True
    assert await b.try_acquire_or_renew() is False
    leases.record = None  # deleted by hand or by a fault
    clock.now += 0.5
    assert await b.try_acquire_or_renew() is False  # the old leader may still be writing
    clock.now += 1.5
    assert await a.try_acquire_or_renew() is True  # the leader recreates it at its next renewal
    assert leases.record is not None
    assert leases.record.holder == "a"
    assert await b.try_acquire_or_renew() is False


async def test_a_lease_gone_for_a_whole_duration_is_taken_by_a_standby(leases: FakeLeases, clock: Clock) -> None:
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    assert await a.try_acquire_or_renew()
    assert await b.try_acquire_or_renew() is False
    leases.record = None  # and a is gone too
    assert await b.try_acquire_or_renew() is False
    clock.now += 15
    assert await b.try_acquire_or_renew() is True


def test_timings_must_be_ordered(leases: FakeLeases, clock: Clock) -> None:
    with pytest.raises(ValueError, match="lease duration"):
        LeaderElector(leases, "ns", "n", "a", lease_duration=10, renew_deadline=10, retry_period=2, clock=clock)


class HangingLeases(FakeLeases):
    """Like the API server while etcd is down or the connection is blackholed: requests never answer."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = False
        self.cancelled = 0
        self.gave_up_twice = asyncio.Event()

    async def _maybe_hang(self) -> None:
        if self.hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                if self.cancelled >= 2:
                    self.gave_up_twice.set()
                raise

    async def read_lease(self, namespace: str, name: str) -> LeaseRecord | None:
        await self._maybe_hang()
        return await super().read_lease(namespace, name)

    async def update_lease(
        self, namespace: str, name: str, spec: dict[str, Any], resource_version: str
    ) -> LeaseRecord | None:
        await self._maybe_hang()
        return await super().update_lease(namespace, name, spec, resource_version)


async def test_a_leader_whose_renewal_hangs_steps_down_at_the_renew_deadline() -> None:
    leases = HangingLeases()
    started, stopped = asyncio.Event(), asyncio.Event()
    a = LeaderElector(leases, "pet-system", "pet-operator-leader", "a", lease_duration=0.6, renew_deadline=0.4,
                      retry_period=0.05, on_started_leading=started.set, on_stopped_leading=stopped.set)
    run = asyncio.create_task(a.run())
    await asyncio.wait_for(started.wait(), timeout=10)
    leases.hang = True
    # Without a bound on each attempt the hung renewal would keep the loop waiting forever,
    # a fenced "leader" that never steps down.
    await asyncio.wait_for(run, timeout=10)
    assert stopped.is_set()
    assert not a.is_leader()
    assert leases.cancelled >= 1


async def test_a_candidate_whose_read_hangs_keeps_campaigning() -> None:
    leases = HangingLeases()
    leases.hang = True
    started = asyncio.Event()
    a = LeaderElector(leases, "pet-system", "pet-operator-leader", "a", lease_duration=0.6, renew_deadline=0.4,
                      retry_period=0.05, on_started_leading=started.set)
    run = asyncio.create_task(a.run())
    await asyncio.wait_for(leases.gave_up_twice.wait(), timeout=10)  # each hung attempt given up, another made
    leases.hang = False
    await asyncio.wait_for(started.wait(), timeout=10)
    assert a.is_leader()
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run



# --- what the Lease says, and why leadership ended ----------------------------------------------


async def test_the_published_lease_duration_is_rounded_up_never_below_the_renew_deadline(
    leases: FakeLeases, clock: Clock
) -> None:
    a = LeaderElector(leases, "pet-system", "pet-operator-leader", "a",
                      lease_duration=15.4, renew_deadline=15.3, retry_period=2, clock=clock)
    assert await a.try_acquire_or_renew()
    assert leases.record is not None
    assert leases.record.lease_duration == 16  # round() would publish 15: less than the renew deadline


@pytest.fixture
def fake_sleep(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    """The elector's sleeps advance the fake clock instead of waiting."""
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        clock.now += delay
        await real_sleep(0)

    monkeypatch.setattr("pet_operator.leader.asyncio.sleep", sleep)


@pytest.mark.usefixtures("fake_sleep")
async def test_a_leader_that_cannot_renew_steps_down_without_having_stood_still(
    leases: FakeLeases, clock: Clock
) -> None:
    a = elector(leases, clock, "a")
    stopped: list[bool] = []
    a.on_stopped_leading = lambda: stopped.append(a.is_leader())
    started = asyncio.Event()
    a.on_started_leading = started.set
    run = asyncio.create_task(a.run())
    await asyncio.wait_for(started.wait(), timeout=10)
    leases.fail = True
    await asyncio.wait_for(run, timeout=10)
    assert stopped == [False]
    assert a.stalled == 0.0  # it ran on time and could not renew: it may campaign again


@pytest.mark.usefixtures("fake_sleep")
async def test_a_leader_that_stood_still_longer_than_its_lease_says_so(leases: FakeLeases, clock: Clock) -> None:
    a = elector(leases, clock, "a")
    started = asyncio.Event()
    a.on_started_leading = started.set
    run = asyncio.create_task(a.run())
    await asyncio.wait_for(started.wait(), timeout=10)
    clock.now += 20  # frozen for 20 s (SIGSTOP, a starved machine); meanwhile b took the Lease
    b = elector(leases, clock, "b")
    b._observed_at = clock.now - 16
    b._observed = leases.record
    assert await b.try_acquire_or_renew()
    await asyncio.wait_for(run, timeout=10)
    assert a.stalled >= 20
    assert not a.is_leader()

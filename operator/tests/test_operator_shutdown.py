"""shutdown: the order of a stop, its deadlines, and which tasks Kopf's shutdown may touch."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from pet_operator import shutdown
from pet_operator.shutdown import Deadlines, NotKopfs, Shutdown, Stopper, Watchdog


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A Stopper whose parts record, in order, what they were asked to do."""

    def __init__(self, clock: FakeClock, kopf_hangs: bool = False, release_hangs: bool = False) -> None:
        self.clock = clock
        self.events: list[str] = []
        self.kopf_hangs = kopf_hangs
        self.release_hangs = release_hangs
        self.stop_flag = asyncio.Event()
        self.kopf: asyncio.Task[None] = asyncio.create_task(self._kopf())
        self.webhook_within: float | None = None

    async def _kopf(self) -> None:
        await self.stop_flag.wait()
        self.events.append("kopf draining")
        if self.kopf_hangs:
            await asyncio.Event().wait()
        self.events.append("kopf drained")

    def stopper(self, with_webhook: bool = True) -> Stopper:
        async def stop_campaign() -> None:
            self.events.append("campaign stopped")

        async def release() -> bool:
            self.events.append("lease release")
            if self.release_hangs:
                await asyncio.Event().wait()
            return True

        async def webhook_stop(within: float) -> bool:
            self.events.append("webhook closed")
            self.webhook_within = within
            return True

        async def close() -> None:
            self.events.append("health closed")

        return Stopper(
            unready=lambda: self.events.append("unready"),
            stop_kopf=lambda: (self.events.append("stop kopf"), self.stop_flag.set())[0],
            kopf=self.kopf,
            stop_campaign=stop_campaign,
            release_lease=release,
            webhook_stop=webhook_stop if with_webhook else None,
            closers=(close,),
        )


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """asyncio.sleep in the shutdown module records its delay and returns at once."""
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(shutdown.asyncio, "sleep", sleep)
    return delays


async def test_the_webhook_closes_last_after_kopf_drained_and_the_lease_was_released(sleeps: list[float]) -> None:
    clock = FakeClock()
    parts = Recorder(clock)
    stop = Shutdown(Deadlines(grace=20, drain_delay=5), clock=clock)
    stop.request("SIGTERM received")
    assert await stop.run(parts.stopper()) == 0
    assert parts.events == ["unready", "stop kopf", "kopf draining", "kopf drained", "campaign stopped",
                            "lease release", "webhook closed", "health closed"]
    assert sleeps == [5]  # the drain delay, counted from the request (no time passed on the fake clock)
    assert stop.abandoned == []


async def test_the_drain_delay_counts_from_the_signal_not_from_the_end_of_kopfs_work(sleeps: list[float]) -> None:
    clock = FakeClock()
    parts = Recorder(clock)
    stop = Shutdown(Deadlines(grace=20, drain_delay=5), clock=clock)
    stop.request("SIGTERM received")
    clock.now += 3.5  # Kopf took 3.5 s
    assert await stop.run(parts.stopper()) == 0
    assert sleeps == [1.5]


async def test_without_a_webhook_there_is_no_drain(sleeps: list[float]) -> None:
    clock = FakeClock()
    parts = Recorder(clock)
    stop = Shutdown(Deadlines(grace=20, drain_delay=5), clock=clock)
    assert await stop.run(parts.stopper(with_webhook=False)) == 0
    assert sleeps == []
    assert "webhook closed" not in parts.events


async def test_a_kopf_that_does_not_drain_is_abandoned_at_its_deadline_and_the_exit_code_says_so() -> None:
    clock = FakeClock()
    parts = Recorder(clock, kopf_hangs=True)
    stop = Shutdown(Deadlines(grace=0.4, drain_delay=0), clock=clock)
    stop.request("SIGTERM received")
    assert await stop.run(parts.stopper()) == 1
    assert parts.kopf.cancelled()
    assert stop.abandoned == ["Kopf's in-flight work"]
    assert parts.events[-3:] == ["lease release", "webhook closed", "health closed"]  # still tried, in order


async def test_a_lease_release_that_hangs_is_given_up_and_the_servers_still_close() -> None:
    clock = FakeClock()
    parts = Recorder(clock, release_hangs=True)
    stop = Shutdown(Deadlines(grace=0.4, drain_delay=0), clock=clock)
    stop.request("SIGTERM received")
    assert await stop.run(parts.stopper()) == 1
    assert stop.abandoned == ["releasing the leader Lease"]
    assert parts.events[-2:] == ["webhook closed", "health closed"]


async def test_an_untrusted_process_stops_with_the_exit_code_it_was_asked_for() -> None:
    stop = Shutdown(Deadlines(grace=20))
    stop.request("stood still", exit_code=1)
    stop.request("SIGTERM received")  # a later signal changes nothing
    assert stop.reason == "stood still"
    assert await stop.run(Recorder(FakeClock()).stopper(with_webhook=False)) == 1


def test_deadlines_keep_a_reserve_for_the_lease_and_the_servers() -> None:
    d = Deadlines(grace=20, drain_delay=30)
    assert (d.reserve, d.kopf, d.closing, d.drain_delay) == (2.0, 18.0, 1.0, 20)
    small = Deadlines(grace=2)
    assert (small.reserve, small.kopf, small.closing) == (0.5, 1.5, 0.25)
    assert Deadlines(grace=0).kopf == 0


async def test_request_runs_its_hook_once() -> None:
    calls: list[int] = []
    stop = Shutdown(Deadlines(grace=1), on_request=lambda: calls.append(1))
    stop.request("a")
    stop.request("b")
    assert calls == [1]


# --- which tasks are Kopf's -------------------------------------------------------------------


async def test_tasks_started_in_own_tasks_and_their_children_are_kept_from_kopf() -> None:
    shutdown.install_task_factory(asyncio.get_running_loop())
    children: list[asyncio.Task[None]] = []
    hold = asyncio.Event()

    async def child() -> None:
        await hold.wait()

    async def server() -> None:  # as a server's accept loop starts one task per connection
        children.append(asyncio.create_task(child()))
        await hold.wait()

    before = asyncio.create_task(child())
    with shutdown.own_tasks():
        ours = asyncio.create_task(server())
    kopfs = asyncio.create_task(child())
    await asyncio.sleep(0)
    ignored = NotKopfs({before})
    try:
        assert before in ignored
        assert ours in ignored and shutdown.is_own(ours)
        assert children[0] in ignored
        assert kopfs not in ignored
        assert len(ignored) >= 3
        assert set(ignored) >= {before, ours, children[0]}
    finally:
        hold.set()
        await asyncio.gather(before, ours, kopfs, *children)
        asyncio.get_running_loop().set_task_factory(None)


def test_the_watchdog_ends_the_process_when_armed_and_not_disarmed() -> None:
    fired = threading.Event()
    codes: list[int] = []

    def exit_now(code: int) -> None:
        codes.append(code)
        fired.set()

    dog = Watchdog(0.01, exit_now)
    dog.arm()
    assert fired.wait(10)
    assert codes == [1]


def test_a_disarmed_watchdog_does_nothing() -> None:
    codes: list[Any] = []
    dog = Watchdog(3600, codes.append)
    dog.arm()
    dog.disarm()
    assert codes == []
    assert dog._timer is None

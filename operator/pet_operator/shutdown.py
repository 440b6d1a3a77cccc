"""Stopping in order, within ``--shutdown-grace`` on every path.

On SIGTERM (or SIGINT), or when the process can no longer be trusted:

1. ``/readyz`` turns 503 at once, so a Service stops sending this replica new work;
2. Kopf is told to stop: it stops watching and gives in-flight work until the Kopf
   deadline (the grace minus a reserve for the steps below);
3. once Kopf has drained, the leader Lease is released, so a successor takes over at
   its next retry instead of waiting out the lease;
4. the admission webhook keeps serving until the drain delay has passed *and* Kopf has
   drained: a replica still listed in the Service's endpoints is not refused, and the
   operator's own finalizer patches of step 2 never meet a closed webhook;
5. the webhook and the health server are closed (idle keep-alive connections aborted).

The grace is a hard deadline: work still running when it is reached is abandoned, the
Lease release is tried for what time is left, and the process exits with code 1 without
waiting for anything else. A watchdog thread ends the process if the event loop itself
stops turning (a blocking call) a second past the grace.

Tasks the operator starts for its own servers (every connection to the webhook and the
health port) and its own background work are kept out of Kopf's shutdown: Kopf waits
up to 5 s for, and then cancels, every task started after it that it does not know,
which would cut the webhook's connections in the middle of step 4.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Collection, Iterator
from typing import Any

log = logging.getLogger(__name__)

#: True in the context of tasks the operator starts for itself (its servers, its background work)
_OWN = contextvars.ContextVar("pet_operator_own_task", default=False)
_own_tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


def _task_factory(loop: asyncio.AbstractEventLoop, coro: Any, context: contextvars.Context | None = None) -> Any:
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
    created_in = context if context is not None else contextvars.copy_context()
    if created_in.get(_OWN):
        _own_tasks.add(task)
    return task


def install_task_factory(loop: asyncio.AbstractEventLoop) -> None:
    """Let the loop tell the operator's own tasks from Kopf's (see :func:`own_tasks`)."""
    loop.set_task_factory(_task_factory)


@contextlib.contextmanager
def own_tasks() -> Iterator[None]:
    """Tasks created in this block, and every task they or their servers create, are the
    operator's own: Kopf's shutdown leaves them alone (:class:`NotKopfs`)."""
    token = _OWN.set(True)
    try:
        yield
    finally:
        _OWN.reset(token)


def is_own(task: asyncio.Task[Any]) -> bool:
    return task in _own_tasks


class NotKopfs(Collection["asyncio.Task[Any]"]):
    """The ``ignored`` tasks for ``kopf.run_tasks``: those older than Kopf, and the operator's own."""

    def __init__(self, existing: Collection[asyncio.Task[Any]]) -> None:
        self.existing = frozenset(existing)

    def __contains__(self, task: object) -> bool:
        return task in self.existing or task in _own_tasks

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(self.existing | set(_own_tasks))

    def __len__(self) -> int:
        return len(self.existing | set(_own_tasks))


class Deadlines:
    """The shutdown's time budget, from the grace and the drain delay (seconds)."""

    def __init__(self, grace: float, drain_delay: float = 0.0) -> None:
        self.grace = grace
        self.drain_delay = min(drain_delay, grace)
        #: kept from Kopf for releasing the Lease and closing the servers
        self.reserve = min(2.0, grace / 4)

    @property
    def kopf(self) -> float:
        """How long Kopf's in-flight work may take (its ``exit_timeout``)."""
        return max(0.0, self.grace - self.reserve)

    @property
    def closing(self) -> float:
        """Kept for closing the servers at the very end."""
        return self.reserve / 2


class Stopper:
    """What a shutdown stops, in order; every part optional."""

    def __init__(
        self,
        *,
        unready: Callable[[], None],
        stop_kopf: Callable[[], None],
        kopf: asyncio.Future[Any] | None = None,
        background: Collection[asyncio.Task[Any]] = (),
        stop_campaign: Callable[[], Awaitable[None]] | None = None,
        release_lease: Callable[[], Awaitable[bool]] | None = None,
        webhook_stop: Callable[[float], Awaitable[bool]] | None = None,
        closers: Collection[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self.unready = unready
        self.stop_kopf = stop_kopf
        self.kopf = kopf
        self.background = background
        self.stop_campaign = stop_campaign
        self.release_lease = release_lease
        self.webhook_stop = webhook_stop
        self.closers = closers


class Shutdown:
    """Requested once (a second signal changes nothing); run once, within the grace."""

    def __init__(
        self, deadlines: Deadlines, clock: Callable[[], float] = time.monotonic,
        on_request: Callable[[], None] | None = None,
    ) -> None:
        self.deadlines = deadlines
        self.clock = clock
        self.on_request = on_request  # e.g. arm the watchdog
        self.requested = asyncio.Event()
        self.reason = ""
        self.exit_code = 0
        self.started_at: float | None = None
        self.abandoned: list[str] = []  # what the deadline cut short

    def request(self, reason: str, exit_code: int = 0) -> None:
        if self.requested.is_set():
            log.info("%s: already stopping", reason)
            return
        self.reason = reason
        self.exit_code = exit_code
        self.started_at = self.clock()
        self.requested.set()
        if self.on_request is not None:
            self.on_request()

    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else self.clock() - self.started_at

    def left(self, until: float) -> float:
        """Seconds from now to ``until`` seconds after the request (never negative)."""
        return max(0.0, until - self.elapsed())

    async def _bounded(self, what: str, call: Awaitable[Any], within: float) -> Any:
        try:
            return await asyncio.wait_for(call, within)
        except TimeoutError:
            self.abandoned.append(what)
            log.warning("shutdown grace: gave up %s after %.1fs", what, within)
        except Exception as exc:  # noqa: BLE001 - shutting down: report and go on
            log.warning("shutdown: %s failed: %s", what, exc)
        return None

    async def run(self, stopper: Stopper) -> int:
        """Stop everything in order; returns the exit code (1 if the grace cut anything short)."""
        if self.started_at is None:
            self.request("stop")
        d = self.deadlines
        log.info("%s: stopping (grace %.0fs, webhook drain %.0fs)", self.reason, d.grace, d.drain_delay)
        stopper.unready()
        stopper.stop_kopf()
        for task in stopper.background:
            task.cancel()
        if stopper.kopf is not None and not stopper.kopf.done():
            done, _ = await asyncio.wait({stopper.kopf}, timeout=self.left(d.kopf))
            if not done:
                self.abandoned.append("Kopf's in-flight work")
                log.warning("shutdown grace: Kopf did not finish its in-flight work within %.1fs; abandoning it",
                            d.kopf)
                stopper.kopf.cancel()
            else:
                log.info("Kopf has stopped, %.1fs after the signal", self.elapsed())
        if stopper.stop_campaign is not None:
            await self._bounded("the leader election loop", stopper.stop_campaign(),
                                self.left(d.grace - d.closing))
        if stopper.release_lease is not None:
            await self._bounded("releasing the leader Lease", stopper.release_lease(),
                                self.left(d.grace - d.closing))
        if stopper.webhook_stop is not None:
            drain = self.left(min(d.drain_delay, d.grace - d.closing))
            if drain > 0:
                log.info("webhook: serving %.1fs more while unready (drain delay)", drain)
                await asyncio.sleep(drain)
            if not await stopper.webhook_stop(max(0.1, self.left(d.grace))):
                self.abandoned.append("closing the webhook")
        for close in stopper.closers:
            await self._bounded("closing", close(), max(0.1, self.left(d.grace)))
        if self.abandoned:
            log.error("shutdown grace of %.0fs reached: abandoned %s", d.grace, ", ".join(self.abandoned))
            return 1
        return self.exit_code


def flush_logs() -> None:
    """Write out what the log handlers hold (before a hard exit, which skips that)."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()


class Watchdog:
    """Ends the process if it is still alive ``after`` seconds from :meth:`arm` (a wedged loop)."""

    def __init__(self, after: float, exit_now: Callable[[int], None] = os._exit) -> None:
        self.after = after
        self.exit_now = exit_now
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.after, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        log.error("shutdown grace exceeded by the event loop itself (blocked?): exiting now")
        flush_logs()
        self.exit_now(1)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

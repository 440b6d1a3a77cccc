"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go does it.

Every replica watches and serves the webhook; only the leader writes. The algorithm:

* A candidate reads the Lease. If there is none it creates it; if the record has not
  changed for ``lease_duration`` seconds *by the candidate's own clock* (it never
  compares its clock with another replica's), it takes the Lease over with an update
  that carries the resourceVersion it read, so of several candidates exactly one wins.
* The leader renews every ``retry_period`` seconds. If it has not renewed successfully
  for ``renew_deadline`` seconds (less than ``lease_duration``) it stops leading at once:
  :meth:`LeaderElector.is_leader` turns false before any other replica could see the
  Lease expire, and every write of the operator checks it first (fencing).
* On graceful shutdown the leader releases the Lease (empty holder, duration 1 s) so a
  successor takes over at its next retry instead of waiting out the lease.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pet_operator.model import LeaseRecord

log = logging.getLogger(__name__)


class LeaseApi(Protocol):
    async def read_lease(self, namespace: str, name: str) -> LeaseRecord | None: ...

    async def create_lease(self, namespace: str, name: str, spec: dict[str, Any]) -> LeaseRecord | None:
        """None if it exists already."""

    async def update_lease(
        self, namespace: str, name: str, spec: dict[str, Any], resource_version: str
    ) -> LeaseRecord | None:
        """None if the resourceVersion no longer matches (someone else wrote)."""


def micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


Callback = Callable[[], Awaitable[None] | None]


class LeaderElector:
    def __init__(
        self,
        api: LeaseApi,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callback | None = None,
        on_stopped_leading: Callback | None = None,
        on_new_leader: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not lease_duration > renew_deadline > retry_period > 0:
            raise ValueError(
                f"leader election needs lease duration ({lease_duration}) > renew deadline ({renew_deadline}) "
                f"> retry period ({retry_period}) > 0"
            )
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.on_new_leader = on_new_leader
        self.clock = clock
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None  # last successful acquire/renew, our clock
        self._leading = False
        self._absent_since: float | None = None  # when a Lease we had seen was found missing
        self.holder = ""  # the holder we last saw
        self.transitions = 0
        self.acquisitions = 0  # times this replica became the leader (metrics hook)
        #: seconds since the last renewal when leadership was last lost, if that was a whole lease
        #: duration or more: the process stood still (frozen, starved) instead of failing to renew
        self.stalled = 0.0

    # --- state ------------------------------------------------------------------------------

    def is_leader(self) -> bool:
        """True only while our last successful renewal is younger than the renew deadline."""
        return (
            self._leading
            and self._renewed_at is not None
            and self.clock() - self._renewed_at < self.renew_deadline
        )

    @property
    def lease_uid(self) -> str:
        """The UID of the Lease as last seen ("" before it was seen)."""
        return self._observed.uid if self._observed is not None else ""

    def status(self) -> dict[str, Any]:
        return {"identity": self.identity, "leader": self.is_leader(), "holder": self.holder,
                "lease": f"{self.namespace}/{self.name}"}

    # --- one attempt ------------------------------------------------------------------------

    def _spec(self, acquire_time: str | None, transitions: int) -> dict[str, Any]:
        now = micro_time()
        return {
            "holderIdentity": self.identity,
            # whole seconds, rounded up: what others wait for is never less than our renew deadline
            "leaseDurationSeconds": math.ceil(self.lease_duration),
            "acquireTime": acquire_time or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _observe(self, record: LeaseRecord | None) -> None:
        if record is None:
            return
        self._absent_since = None
        if self._observed is None or record.resource_version != self._observed.resource_version:
            self._observed = record
            self._observed_at = self.clock()
        if record.holder != self.holder:
            self.holder = record.holder
            if self.on_new_leader is not None and record.holder:
                self.on_new_leader(record.holder)

    async def try_acquire_or_renew(self) -> bool:
        """One round: True if we hold the Lease afterwards."""
        started = self.clock()
        record = await self.api.read_lease(self.namespace, self.name)
        if record is None:
            # A Lease we never saw: the first replica to come creates it. A Lease that was there
            # and vanished (deleted by hand or by a fault) may still be led: its leader recreates
            # it at its next renewal, while a standby waits a whole lease duration of absence
            # before it creates one, so the old leader cannot still be writing by then.
            if self._observed is not None and not self._leading:
                if self._absent_since is None:
                    self._absent_since = started
                if started - self._absent_since < self.lease_duration:
                    return False
            created = await self.api.create_lease(self.namespace, self.name, self._spec(None, 0))
            self._observe(created)
            if created is not None:
                self._renewed_at = started
                return True
            return False
        self._observe(record)
        ours = record.holder == self.identity
        expired = (
            not record.holder
            or self.clock() - self._observed_at >= max(record.lease_duration, 1)
        )
        if not ours and not expired:
            return False
        transitions = record.transitions if ours else record.transitions + 1
        acquire = record.acquire_time if ours else None
        updated = await self.api.update_lease(
            self.namespace, self.name, self._spec(acquire, transitions), record.resource_version
        )
        self._observe(updated)
        if updated is None:
            return False
        self._renewed_at = started
        self.transitions = transitions
        return True

    async def release(self) -> bool:
        """Give the Lease up (graceful shutdown) if we hold it; True if released."""
        was_leading = self._leading
        self._leading = False
        if not was_leading or self._observed is None or self._observed.holder != self.identity:
            return False
        spec = {
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "acquireTime": self._observed.acquire_time,
            "renewTime": micro_time(),
            "leaseTransitions": self._observed.transitions,
        }
        try:
            released = await self.api.update_lease(self.namespace, self.name, spec, self._observed.resource_version)
        except Exception:  # the lease expires anyway
            log.exception("could not release the leader lease")
            return False
        if released is not None:
            log.info("released the leader lease %s/%s", self.namespace, self.name)
        return released is not None

    # --- the loop -----------------------------------------------------------------------------

    async def _call(self, callback: Callback | None) -> None:
        if callback is not None:
            result = callback()
            if result is not None:
                await result

    def _attempt_timeout(self) -> float:
        """How long one attempt may take: a leader's until its renew deadline, a candidate's a
        renew deadline. A request that hangs (API server waiting for etcd, a blackholed
        connection) must not keep a fenced leader from stepping down, nor a candidate waiting."""
        if self._leading and self._renewed_at is not None:
            return max(0.0, self.renew_deadline - (self.clock() - self._renewed_at))
        return self.renew_deadline

    async def _attempt(self) -> bool:
        timeout = self._attempt_timeout()
        try:
            return await asyncio.wait_for(self.try_acquire_or_renew(), timeout=timeout)
        except TimeoutError:
            log.warning("leader election: no answer about the lease within %.1fs", timeout)
            return False

    def _step_down(self, why: str) -> None:
        self._leading = False
        since = self.clock() - self._renewed_at if self._renewed_at is not None else 0.0
        self.stalled = since if since >= self.lease_duration else 0.0
        log.error("%s; stopping leadership", why)

    async def run(self) -> None:
        """Campaign, lead, and return when leadership is lost (the caller decides what then:
        :attr:`stalled` tells a process that stood still from one that could not renew)."""
        self.stalled = 0.0
        while not self._leading:
            try:
                acquired = await self._attempt()
            except Exception as exc:  # noqa: BLE001 - keep campaigning
                log.warning("leader election: cannot reach the lease: %s", exc)
                acquired = False
            if acquired:
                self._leading = True
                self.acquisitions += 1
                log.info("became the leader (lease %s/%s, identity %s)", self.namespace, self.name, self.identity)
                await self._call(self.on_started_leading)
                break
            await asyncio.sleep(self.retry_period)
        while True:
            await asyncio.sleep(self.retry_period)
            try:
                renewed = await self._attempt()
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried until the deadline
                log.warning("leader election: renewal failed: %s", exc)
                renewed = False
            if renewed:
                continue
            if not self.is_leader():
                self._step_down(f"lost the leader lease (no renewal for {self.renew_deadline:.0f}s)")
                await self._call(self.on_stopped_leading)
                return
            if self._observed is not None and self._observed.holder not in ("", self.identity):
                self._step_down(f"the leader lease was taken by {self._observed.holder}")
                await self._call(self.on_stopped_leading)
                return

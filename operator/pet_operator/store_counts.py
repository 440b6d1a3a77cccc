"""Store counts: a store's status counts the pets that name it (:class:`StoreRecount`), and the
recounts are amortized (:class:`StoreCounts`): at most one recount (and one status write) per store
per window.

A store's ``petCount``/``activeCount`` change with every pet event that names it. Counting and
writing on each of those events costs a status write per pet and a walk over the store's pets per
event (N² for N pets created in a burst). Instead, a pet event only *requests* a count: the first
request starts a task for that store which waits ``window`` seconds, counts once from the indexes
(which hold every request made meanwhile), writes if the counts changed, and goes round again only
if more requests came in while it counted. The counts lag the pets by about one window; nothing
depends on them being instant (they are a summary for people and dashboards).

A recount reads the pets' statuses as this replica last wrote them (the watch may lag its own
writes), and is coalesced: while one recount of a store runs, further requests only mark it dirty
and the running one goes round again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pet_operator import model
from pet_operator.fencing import Fence, NotLeader
from pet_operator.kube import NotFound
from pet_operator.metrics import WorkItem
from pet_operator.model import Key, PetIndex, PetsByStore, PetSnapshot, StoreIndex, StoreSnapshot, first
from pet_operator.recent_writes import RecentWrites, StatusWriter, caught_up
from pet_operator.shutdown import own_tasks

log = logging.getLogger(__name__)

WINDOW = 1.0  # seconds between two counts of one store

Retry = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[None]]


class StoreRecount:
    """Recounts a store's pets into its status, writing only when the counts change."""

    def __init__(
        self, writer: StatusWriter, clock: Callable[[], str], pet_status: Callable[[PetSnapshot], dict[str, Any]],
        fence: Fence,
    ) -> None:
        """``pet_status``: a pet's status as this replica knows it (its own write while the watch lags)."""
        self.writer = writer
        self.clock = clock
        self.pet_status = pet_status
        self.fence = fence
        self.writes = 0  # status writes made
        self._locks: dict[Key, asyncio.Lock] = {}
        self._dirty: set[Key] = set()
        self._seen: dict[Key, tuple[str, int]] = {}  # (uid, generation) of each store when last seen
        self._written: RecentWrites[Key] = RecentWrites()

    def observe(self, key: Key, resource_version: str) -> None:
        self._written.seen(key, resource_version)

    def changed(self, snap: StoreSnapshot | None, key: Key) -> bool:
        """Whether a store event changes what its pets see (new, deleted, or new spec)."""
        if snap is None:
            self._seen.pop(key, None)
            self._written.pop(key, None)
            return True
        seen = (snap.uid, snap.generation)
        if self._seen.get(key) == seen:
            return False
        self._seen[key] = seen
        return True

    async def sync(self, key: Key, pets: PetIndex, stores: StoreIndex, by_store: PetsByStore) -> None:
        """Recount a store's pets; coalesces concurrent requests for the same store."""
        self._dirty.add(key)
        lock = self._locks.setdefault(key, asyncio.Lock())
        if lock.locked():
            return  # the running recount goes round again and sees our request
        async with lock:
            while key in self._dirty:
                self._dirty.discard(key)
                try:
                    await self._sync_once(key, pets, stores, by_store)
                except NotLeader:
                    self._dirty.discard(key)
                    return

    async def _sync_once(self, key: Key, pets: PetIndex, stores: StoreIndex, by_store: PetsByStore) -> None:
        snap: StoreSnapshot | None = first(stores.get(key))
        if snap is None:
            return
        phases: list[str | None] = []
        for pet_key in by_store.get(key, ()):
            pet: PetSnapshot | None = first(pets.get(pet_key))
            if pet is not None and pet.store == key[1]:
                phases.append(self.pet_status(pet).get("phase"))
        written = self._written.get(key)
        current = written.status if written is not None else snap.status
        desired = model.store_status(current, phases, snap.generation, self.clock())
        if not model.status_differs(current, desired):
            return
        try:
            self.fence.check()
            version = snap.resource_version
            if written is not None and caught_up(version, written.resource_version):
                version = written.resource_version
            obj = await self.writer.patch_status(
                model.PETSTORES, snap.namespace, snap.name, desired, resource_version=version or None
            )
        except NotFound:
            return
        self.writes += 1
        meta = obj.get("metadata", {})
        if meta.get("uid") == snap.uid:
            self._written.remember(key, str(meta.get("resourceVersion", "")), obj.get("status", desired))


class StoreCounts:
    def __init__(self, recount: StoreRecount, retry: Retry, window: float = WINDOW,
                 enqueue: Callable[[], WorkItem] | None = None) -> None:
        """``enqueue``: a store's request entering the petstore queue of the metrics (its wait ends when
        its count starts; requests for a store already waiting join it, as in a Go work queue)."""
        self.recount = recount
        self.retry = retry  # handlers.with_retries
        self.window = window
        self.enqueue = enqueue
        self._waiting: dict[Key, WorkItem] = {}  # metrics hook: the queued request of each dirty store
        self._dirty: set[Key] = set()
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self.counts = 0  # recounts made

    def request(self, key: Key, pets: PetIndex, stores: StoreIndex, by_store: PetsByStore) -> None:
        """Ask for ``key`` to be counted within about a window; cheap, never waits."""
        if self.enqueue is not None and key not in self._dirty:
            self._waiting[key] = self.enqueue()
        self._dirty.add(key)
        if key not in self._tasks:
            with own_tasks():  # the operator's, not Kopf's: its shutdown closes them (close())
                task = asyncio.get_running_loop().create_task(self._run(key, pets, stores, by_store),
                                                              name=f"count store {key[0]}/{key[1]}")
            self._tasks[key] = task

    async def _run(self, key: Key, pets: PetIndex, stores: StoreIndex, by_store: PetsByStore) -> None:
        try:
            while key in self._dirty:
                await asyncio.sleep(self.window)
                self._dirty.discard(key)  # requests from now on need another round
                waiting = self._waiting.pop(key, None)
                if waiting is not None:
                    waiting.start()
                self.counts += 1
                await self.retry(f"count pets of store {key[0]}/{key[1]}",
                                 lambda: self.recount.sync(key, pets, stores, by_store))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("counting the pets of store %s/%s failed", *key)
        finally:
            self._tasks.pop(key, None)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def idle(self) -> None:
        """Wait until no count is pending (tests; a resync that wants settled counts)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
        self._tasks.clear()
        self._dirty.clear()
        for waiting in self._waiting.values():
            waiting.drop()
        self._waiting.clear()

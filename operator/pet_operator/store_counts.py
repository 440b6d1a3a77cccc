"""Store counts, amortized: at most one recount (and one status write) per store per window.

A store's ``petCount``/``activeCount`` change with every pet event that names it. Counting and
writing on each of those events costs a status write per pet and a walk over the store's pets per
event (N² for N pets created in a burst). Instead, a pet event only *requests* a count: the first
request starts a task for that store which waits ``window`` seconds, counts once from the indexes
(which hold every request made meanwhile), writes if the counts changed, and goes round again only
if more requests came in while it counted. The counts lag the pets by about one window; nothing
depends on them being instant (they are a summary for people and dashboards).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pet_operator.metrics import WorkItem
from pet_operator.reconciler import Key, PetIndex, PetsByStore, Reconciler, StoreIndex
from pet_operator.shutdown import own_tasks

log = logging.getLogger(__name__)

WINDOW = 1.0  # seconds between two counts of one store

Retry = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[None]]


class StoreCounts:
    def __init__(self, rec: Reconciler, retry: Retry, window: float = WINDOW,
                 enqueue: Callable[[], WorkItem] | None = None) -> None:
        """``enqueue``: a store's request entering the petstore queue of the metrics (its wait ends when
        its count starts; requests for a store already waiting join it, as in a Go work queue)."""
        self.rec = rec
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
                                 lambda: self.rec.sync_store(key, pets, stores, by_store))
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

"""Level-based reconciliation of Pets and PetStores.

Kopf delivers every watch event; the reconciler looks at the newest state it knows
(Kopf's in-memory indexes, filled from the watch streams before any handler runs),
decides with :mod:`pet_operator.model`, and writes a status only when it would change.
So every call is idempotent: replaying an event, restarting the operator, or
resyncing everything writes nothing new.

Concurrency: a pet is reconciled under its own lock and reads the indexes inside the
lock, so a pet event and a store event racing for the same pet cannot leave an older
decision written last. Store counts are coalesced: while one recount runs, further
requests for that store only mark it dirty and the running one goes round again.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from pet_operator import model
from pet_operator.kube import NotFound

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)


@dataclasses.dataclass(frozen=True)
class PetSnapshot:
    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    spec: dict[str, Any]
    status: dict[str, Any]

    @property
    def store(self) -> str | None:
        store = self.spec.get("store")
        return str(store) if store else None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PetSnapshot:
        meta = body.get("metadata", {})
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            resource_version=str(meta.get("resourceVersion", "")),
            spec=copy.deepcopy(dict(body.get("spec") or {})),
            status=copy.deepcopy(dict(body.get("status") or {})),
        )


@dataclasses.dataclass(frozen=True)
class StoreSnapshot:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: dict[str, Any]
    status: dict[str, Any]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> StoreSnapshot:
        meta = body.get("metadata", {})
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            spec=copy.deepcopy(dict(body.get("spec") or {})),
            status=copy.deepcopy(dict(body.get("status") or {})),
        )

    def view(self) -> model.StoreView:
        return model.StoreView.from_body(self.name, self.spec)


#: The three indexes the reconciler reads; Kopf's ``Index`` objects satisfy these.
PetIndex = Mapping[Key, Collection[PetSnapshot]]
StoreIndex = Mapping[Key, Collection[StoreSnapshot]]
PetsByStore = Mapping[Key, Collection[Key]]


class StatusWriter(Protocol):
    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]: ...


PhaseListener = Callable[[PetSnapshot, str | None, model.Verdict], None]


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _first(values: Collection[Any] | None) -> Any:
    if not values:
        return None
    return next(iter(values))


def _caught_up(written: str, seen: str) -> bool:
    """Whether a watched object is at least as new as the one our write returned.

    resourceVersions are opaque to clients, but every API server backed by etcd hands out
    etcd revisions, which grow; when both look numeric they are compared as numbers, so a
    watch that resumed past our write (after a relist) still releases the cache.
    """
    if written == seen:
        return True
    if written.isdigit() and seen.isdigit():
        return int(seen) >= int(written)
    return False


@dataclasses.dataclass
class _Written:
    resource_version: str
    status: dict[str, Any]


class Reconciler:
    def __init__(
        self,
        writer: StatusWriter,
        clock: Callable[[], str] = utc_now,
        on_phase_change: PhaseListener | None = None,
    ) -> None:
        self.writer = writer
        self.clock = clock
        self.on_phase_change = on_phase_change
        self._pet_locks: dict[Key, asyncio.Lock] = {}
        self._store_locks: dict[Key, asyncio.Lock] = {}
        self._store_dirty: set[Key] = set()
        # What we last wrote, until the watch shows it back to us (the index may lag).
        self._written: dict[str, _Written] = {}
        self._store_seen: dict[Key, tuple[str, int]] = {}
        self._store_written: dict[Key, _Written] = {}
        self._pet_store: dict[Key, str | None] = {}
        self._moved_from: dict[Key, str] = {}
        self.writes = 0  # status writes made, for metrics and tests
        self.observed: set[str] = set()  # uids seen on the watch streams, for readiness

    # --- observation (called from Kopf's index functions, before any handler) ---------

    def observe_pet(self, snap: PetSnapshot) -> None:
        """Note a pet seen on the watch (before its handler runs)."""
        self.observed.add(snap.uid)
        written = self._written.get(snap.uid)
        if written is not None and _caught_up(written.resource_version, snap.resource_version):
            del self._written[snap.uid]  # the watch caught up: the snapshot is the truth again
        key = (snap.namespace, snap.name)
        if key in self._pet_store and self._pet_store[key] != snap.store:
            previous = self._pet_store[key]
            if previous:
                self._moved_from[key] = previous
        self._pet_store[key] = snap.store

    def moved_from(self, key: Key) -> str | None:
        """The store a pet named before its latest change, once, if it changed stores."""
        return self._moved_from.pop(key, None)

    def forget_pet(self, namespace: str, name: str, uid: str) -> str | None:
        self._written.pop(uid, None)
        self.observed.discard(uid)
        lock = self._pet_locks.get((namespace, name))
        if lock is not None and not lock.locked():
            del self._pet_locks[(namespace, name)]
        self._moved_from.pop((namespace, name), None)
        return self._pet_store.pop((namespace, name), None)

    def effective_status(self, snap: PetSnapshot) -> dict[str, Any]:
        written = self._written.get(snap.uid)
        return written.status if written is not None else snap.status

    # --- pets ---------------------------------------------------------------------------

    async def sync_pet(self, key: Key, pets: PetIndex, stores: StoreIndex) -> model.Verdict | None:
        """Bring one pet's status in line with the newest known state; None if it is gone."""
        lock = self._pet_locks.setdefault(key, asyncio.Lock())
        async with lock:
            snap: PetSnapshot | None = _first(pets.get(key))
            if snap is None:
                return None
            store_snap: StoreSnapshot | None = (
                _first(stores.get((snap.namespace, snap.store))) if snap.store else None
            )
            verdict = model.evaluate_pet(snap.name, snap.spec, store_snap.view() if store_snap else None)
            current = self.effective_status(snap)
            desired = model.pet_status(current, verdict, snap.generation, self.clock())
            if not model.status_differs(current, desired):
                return verdict
            try:
                obj = await self.writer.patch_status(model.PETS, snap.namespace, snap.name, desired)
            except NotFound:
                return None
            self.writes += 1
            meta = obj.get("metadata", {})
            if meta.get("uid") == snap.uid:
                self._written[snap.uid] = _Written(str(meta.get("resourceVersion", "")), obj.get("status", desired))
            previous_phase = current.get("phase")
            if previous_phase != verdict.phase.value:
                log.info(
                    "pet %s/%s: %s -> %s (%s)",
                    snap.namespace, snap.name, previous_phase or "-", verdict.phase.value, verdict.reason,
                )
                if self.on_phase_change is not None:
                    self.on_phase_change(snap, previous_phase, verdict)
            return verdict

    # --- stores -------------------------------------------------------------------------

    def observe_store(self, key: Key, uid: str, resource_version: str) -> None:
        self.observed.add(uid)
        written = self._store_written.get(key)
        if written is not None and _caught_up(written.resource_version, resource_version):
            del self._store_written[key]

    def store_changed(self, snap: StoreSnapshot | None, key: Key) -> bool:
        """Whether a store event changes what its pets see (new, deleted, or new spec)."""
        if snap is None:
            self._store_seen.pop(key, None)
            self._store_written.pop(key, None)
            return True
        seen = (snap.uid, snap.generation)
        if self._store_seen.get(key) == seen:
            return False
        self._store_seen[key] = seen
        return True

    async def sync_store(self, key: Key, pets: PetIndex, stores: StoreIndex, by_store: PetsByStore) -> None:
        """Recount a store's pets; coalesces concurrent requests for the same store."""
        self._store_dirty.add(key)
        lock = self._store_locks.setdefault(key, asyncio.Lock())
        if lock.locked():
            return  # the running recount goes round again and sees our request
        async with lock:
            while key in self._store_dirty:
                self._store_dirty.discard(key)
                await self._sync_store_once(key, pets, stores, by_store)

    async def _sync_store_once(
        self, key: Key, pets: PetIndex, stores: StoreIndex, by_store: PetsByStore
    ) -> None:
        snap: StoreSnapshot | None = _first(stores.get(key))
        if snap is None:
            return
        phases: list[str | None] = []
        for pet_key in by_store.get(key, ()):
            pet: PetSnapshot | None = _first(pets.get(pet_key))
            if pet is not None and pet.store == key[1]:
                phases.append(self.effective_status(pet).get("phase"))
        written = self._store_written.get(key)
        current = written.status if written is not None else snap.status
        desired = model.store_status(current, phases, snap.generation, self.clock())
        if not model.status_differs(current, desired):
            return
        try:
            obj = await self.writer.patch_status(model.PETSTORES, snap.namespace, snap.name, desired)
        except NotFound:
            return
        self.writes += 1
        meta = obj.get("metadata", {})
        if meta.get("uid") == snap.uid:
            self._store_written[key] = _Written(str(meta.get("resourceVersion", "")), obj.get("status", desired))

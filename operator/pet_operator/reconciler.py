"""Level-based reconciliation of Pets and PetStores.

Kopf delivers every watch event; the reconciler looks at the newest state it knows
(the in-memory indexes, filled from the watch streams before any handler runs),
decides with :mod:`pet_operator.model`, and writes a status only when it would change.
So every call is idempotent: replaying an event, restarting the operator, or
resyncing everything writes nothing new.

Concurrency: a pet is reconciled under its own lock and reads the indexes inside the
lock, so a pet event and a store event racing for the same pet cannot leave an older
decision written last.

The reconciler's collaborators, each given to its constructor: the id claims
(:mod:`id_claims`), the store recount (:mod:`store_counts`), its own recent status
writes (:mod:`recent_writes`), the pets that moved between stores (:mod:`store_moves`),
the fence (:mod:`fencing`) and, in namespace mode, the RoleBinding guard (:mod:`bindings`).
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pet_operator import model
from pet_operator.bindings import BindingGuard
from pet_operator.fencing import Fence, NotLeader
from pet_operator.id_claims import IdLedger
from pet_operator.keyed_locks import KeyedLocks
from pet_operator.kube import NotFound
from pet_operator.model import Key, PetIndex, PetsByStore, PetSnapshot, StoreIndex, StoreSnapshot, first
from pet_operator.recent_writes import RecentWrites, StatusWriter, caught_up, newer
from pet_operator.store_counts import StoreRecount
from pet_operator.store_moves import StoreMoves

log = logging.getLogger(__name__)

PhaseListener = Callable[[PetSnapshot, str | None, model.Verdict], Awaitable[None] | None]


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    def __init__(
        self,
        writer: StatusWriter,
        ids: IdLedger,
        clock: Callable[[], str] = utc_now,
        on_phase_change: PhaseListener | None = None,
        fence: Fence | None = None,
        bindings: BindingGuard | None = None,
    ) -> None:
        """``ids``: the id claims (:class:`id_claims.IdClaims`); ``fence``: refuses writes on a replica
        that does not lead (share it with ``ids`` and ``bindings``); ``bindings``: namespace mode's
        finalizer on the operator's RoleBinding in each served namespace."""
        self.writer = writer
        self.ids = ids
        self.clock = clock
        self.on_phase_change = on_phase_change
        self.fence = fence if fence is not None else Fence()
        self.bindings = bindings
        self.recount = StoreRecount(writer, clock, self.effective_status, self.fence)
        self.moves = StoreMoves()
        self.written: RecentWrites[str] = RecentWrites()  # pets' statuses by uid, until the watch shows them
        self.pet_writes = 0
        self.id_conflicts = 0  # metrics hook: pets this replica turned Conflict (DuplicateId)
        self.observed: set[str] = set()  # uids seen on the watch streams, for readiness
        self._pet_locks: KeyedLocks[Key] = KeyedLocks()

    @property
    def writes(self) -> int:
        """Status writes made (pets and stores), for metrics and tests."""
        return self.pet_writes + self.recount.writes

    @property
    def fenced(self) -> int:
        """Writes refused because this replica did not lead."""
        return self.fence.refused

    def may_write(self) -> bool:
        return self.fence.may_write()

    # --- observation (called from the event handlers, before they reconcile) ----------

    def observe_pet(self, snap: PetSnapshot) -> None:
        """Note a pet seen on the watch (before its handler runs)."""
        self.observed.add(snap.uid)
        self.written.seen(snap.uid, snap.resource_version)  # once the watch caught up, the snapshot is the truth
        self.ids.observe(snap)
        self.moves.observe(snap.key, snap.store)

    def pets_with_id(self, pet_id: int, pets: PetIndex) -> list[PetSnapshot]:
        """The live pets seen with this id, oldest first (the order the contract promotes in)."""
        return self.ids.pets_with_id(pet_id, pets)

    def moved_from(self, key: Key) -> str | None:
        """The store a pet named before its latest change, once, if it changed stores."""
        return self.moves.moved_from(key)

    def forget_pet(self, namespace: str, name: str, uid: str) -> str | None:
        """A pet deleted from the watch; returns the store it named last."""
        self.written.pop(uid, None)
        self.ids.forget((namespace, name), uid)
        self.observed.discard(uid)
        return self.moves.forget((namespace, name))

    def _newest_version(self, snap: PetSnapshot) -> str:
        """The newest resourceVersion known for a pet: the watch's, or one of our own writes'."""
        newest = newer(snap.resource_version, self.written.version(snap.uid))
        return newer(newest, self.ids.metadata_version(snap.uid))

    def effective_status(self, snap: PetSnapshot) -> dict[str, Any]:
        return self.written.status(snap.uid, snap.status)

    # --- pets ---------------------------------------------------------------------------

    async def sync_pet(self, key: Key, pets: PetIndex, stores: StoreIndex) -> model.Verdict | None:
        """Bring one pet's status in line with the newest known state; None if it is gone."""
        try:
            async with self._pet_locks.hold(key):
                snap: PetSnapshot | None = first(pets.get(key))
                if snap is None:
                    return None
                if snap.deleting:
                    await self.ids.finalize(snap, pets)
                    return None
                return await self._sync_live_pet(snap, pets, stores)
        except NotLeader:
            return None  # the leader reconciles it; this replica only watches
        finally:
            await self._promote_released(pets, stores)

    async def _promote_released(self, pets: PetIndex, stores: StoreIndex) -> None:
        # ids released by a finalizer are handed on even if removing the finalizer failed;
        # a promotion that fails (a conflict, say) stays queued for the retry of the call
        while (pet_id := self.ids.pop_released()) is not None:
            try:
                await self.promote_waiting(pet_id, pets, stores)
            except BaseException:
                self.ids.mark_released(pet_id)
                raise

    async def finalize_unwatched(self, body: Mapping[str, Any], pets: PetIndex, stores: StoreIndex) -> None:
        """Finalize a deleted pet that no watch delivers: Kopf does not watch a namespace that was already
        being deleted when this replica started, and its pets would wait on the operator for good. A pet
        the watch index holds is left to :meth:`sync_pet`."""
        snap = PetSnapshot.from_body(body)
        if not snap.deleting or first(pets.get(snap.key)) is not None:
            return
        try:
            async with self._pet_locks.hold(snap.key):
                await self.ids.finalize(snap, pets)
        except NotLeader:
            return
        finally:
            await self._promote_released(pets, stores)

    async def _sync_live_pet(self, snap: PetSnapshot, pets: PetIndex, stores: StoreIndex) -> model.Verdict | None:
        if self.bindings is not None and snap.namespace in self.bindings.terminating:
            # its namespace is being deleted, and the pet with it: no new claim or finalizer, which
            # would come after the operator's RoleBinding there may have been let go
            return None
        store_snap: StoreSnapshot | None = first(stores.get((snap.namespace, snap.store))) if snap.store else None
        claim = await self.ids.claim(snap, pets)
        if claim is None:
            return None
        verdict = model.evaluate_pet(snap.name, snap.spec, store_snap.view() if store_snap else None, claim)
        current = self.effective_status(snap)
        desired = model.pet_status(current, verdict, snap.generation, self.clock())
        if not model.status_differs(current, desired):
            return verdict
        try:
            self.fence.check()
            obj = await self.writer.patch_status(
                model.PETS, snap.namespace, snap.name, desired, resource_version=self._newest_version(snap)
            )
        except NotFound:
            return None
        self.pet_writes += 1
        meta = obj.get("metadata", {})
        written_version = str(meta.get("resourceVersion", ""))
        seen: PetSnapshot | None = first(pets.get(snap.key))
        # the watch may have shown our write before its answer came back: then nothing to remember
        if meta.get("uid") == snap.uid and not (seen is not None and seen.uid == snap.uid
                                                and caught_up(written_version, seen.resource_version)):
            self.written.remember(snap.uid, written_version, obj.get("status", desired))
        previous_phase = current.get("phase")
        if previous_phase != verdict.phase.value:
            log.info(
                "pet %s/%s: %s -> %s (%s)",
                snap.namespace, snap.name, previous_phase or "-", verdict.phase.value, verdict.reason,
            )
            if verdict.phase is model.Phase.CONFLICT:
                self.id_conflicts += 1  # metrics hook
            if self.on_phase_change is not None:
                result = self.on_phase_change(snap, previous_phase, verdict)
                if inspect.isawaitable(result):
                    await result
        return verdict

    async def promote_waiting(self, pet_id: int, pets: PetIndex, stores: StoreIndex) -> None:
        """After a release, let the oldest pet waiting for the id take it; the rest stay Conflict."""
        for snap in self.ids.pets_with_id(pet_id, pets):
            await self.sync_pet(snap.key, pets, stores)

    async def collect_orphans(self, pets: PetIndex, stores: StoreIndex) -> int:
        """Delete claims whose holder is gone; promote pets waiting for those ids."""
        collected = 0
        async with contextlib.aclosing(self.ids.collect_orphans(pets)) as freed:
            async for pet_id in freed:
                collected += 1
                await self.promote_waiting(pet_id, pets, stores)
        return collected

    # --- stores (counted by :class:`store_counts.StoreRecount`) --------------------------------

    def observe_store(self, key: Key, uid: str, resource_version: str) -> None:
        self.observed.add(uid)
        self.recount.observe(key, resource_version)

    def store_changed(self, snap: StoreSnapshot | None, key: Key) -> bool:
        """Whether a store event changes what its pets see (new, deleted, or new spec)."""
        return self.recount.changed(snap, key)

    async def sync_store(self, key: Key, pets: PetIndex, stores: StoreIndex, by_store: PetsByStore) -> None:
        """Recount a store's pets; coalesces concurrent requests for the same store."""
        await self.recount.sync(key, pets, stores, by_store)

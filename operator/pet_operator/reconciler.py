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
import contextlib
import dataclasses
import datetime
import inspect
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping
from typing import Any, Protocol

from pet_operator import model
from pet_operator.bindings import BindingGuard
from pet_operator.claims import FINALIZER, Claim, ClaimStore, claim_outcome
from pet_operator.indexes import Members
from pet_operator.kube import NotFound
from pet_operator.rest import ApiError

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)


#: Strings at most this long are interned when a snapshot copies them: the keys, phases, reasons,
#: condition types and timestamps of thousands of statuses are the same few strings, and each
#: decoded watch event carries its own copies (a few KB per pet in the index, measured).
INTERN_UP_TO = 64

#: Deletes of a deleted pet's claim, each after a fresh read, before the release is left to the next try.
RELEASE_ATTEMPTS = 3


def _copy(value: Any) -> Any:
    """A deep copy of decoded JSON, short strings interned (the watch's objects stay untouched)."""
    if isinstance(value, str):
        return sys.intern(value) if len(value) <= INTERN_UP_TO else value
    if isinstance(value, Mapping):
        return {sys.intern(str(k)): _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value  # numbers, booleans, None: immutable


def _common_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields both snapshots take from an object, copied so the watch's dicts stay untouched."""
    meta = body.get("metadata", {})
    return {
        "namespace": sys.intern(str(meta.get("namespace", ""))),
        "name": str(meta.get("name", "")),
        "uid": str(meta.get("uid", "")),
        "generation": int(meta.get("generation") or 0),
        "spec": _copy(body.get("spec") or {}),
        "status": _copy(body.get("status") or {}),
    }


@dataclasses.dataclass(frozen=True)
class PetSnapshot:
    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    spec: dict[str, Any]
    status: dict[str, Any]
    created: str = ""
    deleting: bool = False
    finalizers: tuple[str, ...] = ()

    @property
    def pet_id(self) -> int | None:
        """The id to claim; None if the pet has none the operator can use (it is then Invalid)."""
        return model.usable_id(self.spec.get("id"))

    @property
    def store(self) -> str | None:
        store = self.spec.get("store")
        return str(store) if store else None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PetSnapshot:
        meta = body.get("metadata", {})
        return cls(
            **_common_fields(body),
            resource_version=str(meta.get("resourceVersion", "")),
            created=sys.intern(str(meta.get("creationTimestamp", ""))),
            deleting=bool(meta.get("deletionTimestamp")),
            finalizers=tuple(meta.get("finalizers") or ()),
        )


@dataclasses.dataclass(frozen=True)
class StoreSnapshot:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: dict[str, Any]
    status: dict[str, Any]
    resource_version: str = ""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> StoreSnapshot:
        version = str(body.get("metadata", {}).get("resourceVersion", ""))
        return cls(**_common_fields(body), resource_version=version)

    def view(self) -> model.StoreView:
        return model.StoreView.from_body(self.name, self.spec)


#: The three indexes the reconciler reads; Kopf's ``Index`` objects satisfy these.
PetIndex = Mapping[Key, Collection[PetSnapshot]]
StoreIndex = Mapping[Key, Collection[StoreSnapshot]]
PetsByStore = Mapping[Key, Collection[Key]]


class StatusWriter(Protocol):
    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]: ...


class FinalizerWriter(Protocol):
    async def set_finalizers(
        self, plural: str, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> dict[str, Any]:
        """Replace metadata.finalizers, failing with a conflict if the object changed."""


class PetReader(Protocol):
    async def read_uid(self, namespace: str, name: str) -> str | None:
        """The UID of the pet at ``namespace/name`` now, from the API server; None if there is none."""

    async def namespace_exists(self, namespace: str) -> bool:
        """Whether the namespace exists now (a read the operator may make in every namespace)."""

    async def can_inherit(self, namespace: str, name: str, uid: str) -> bool:
        """Whether the pet ``namespace/name`` with this UID exists now, is not being deleted and
        carries the operator's finalizer: one a claim may be handed to."""


PhaseListener = Callable[[PetSnapshot, str | None, model.Verdict], Awaitable[None] | None]


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(snap: PetSnapshot) -> tuple[str, str, str]:
    """Oldest first: creation time, then namespace and name (creation times have 1 s resolution)."""
    return (snap.created, snap.namespace, snap.name)


def _first(values: Collection[Any] | None) -> Any:
    if not values:
        return None
    return next(iter(values))


class NotLeader(Exception):
    """A write was about to happen on a replica that does not (or no longer) lead."""


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


class KeyedLocks:
    """One lock per key, kept only while a task holds or waits for it (not one per pet forever)."""

    def __init__(self) -> None:
        self._locks: dict[Key, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: Key) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]


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
        claims: ClaimStore | None = None,
        finalizers: FinalizerWriter | None = None,
        served: frozenset[str] | None = None,
        may_write: Callable[[], bool] = lambda: True,
        pet_reader: PetReader | None = None,
    ) -> None:
        """``claims`` and ``finalizers`` turn on cluster-wide unique ids (both or neither);
        ``served`` is the set of namespaces served (None: all), for telling orphaned claims;
        ``pet_reader`` confirms with the API server that a claim's holder is gone before the
        claim is taken as orphaned (without it, the watch index is trusted)."""
        if (claims is None) != (finalizers is None):
            raise ValueError("claims and finalizers go together")
        self.claims = claims
        self.finalizers = finalizers
        self.may_write = may_write  # false on a replica that does not lead (fencing)
        self.fenced = 0  # writes refused because this replica did not lead
        self.served = served
        self.pet_reader = pet_reader
        self._claims: dict[int, Claim] = {}
        self._finalized: set[str] = set()  # uids we added our finalizer to, until the watch shows it
        self._forbidden_logged: set[str] = set()  # namespaces whose 403 on a holder lookup was logged
        self._to_promote: set[int] = set()  # ids released, whose waiting pets are still to be promoted
        self._versions: dict[str, str] = {}  # uid -> resourceVersion of our last metadata write
        self.writer = writer
        self.clock = clock
        self.on_phase_change = on_phase_change
        self._pet_locks = KeyedLocks()
        # releases of one id, one at a time: a deleted holder handing its claim to a twin and that
        # twin's own finalizer (deleted meanwhile) must not interleave, or the claim would go to a
        # pet whose finalizer had just been removed on a read made before the hand-over landed
        self._id_locks = KeyedLocks()
        self._store_locks: dict[Key, asyncio.Lock] = {}
        self._store_dirty: set[Key] = set()
        # What we last wrote, until the watch shows it back to us (the index may lag).
        self._written: dict[str, _Written] = {}
        self._store_seen: dict[Key, tuple[str, int]] = {}
        self._store_written: dict[Key, _Written] = {}
        self._pet_store: dict[Key, str | None] = {}
        self._moved_from: dict[Key, str] = {}
        # pets by id, from the watch: who waits for an id, without a pass over every pet
        self._by_id: Members[int] = Members()
        self.writes = 0  # status writes made, for metrics and tests
        # metrics hook: counters pet_operator.metrics reads when scraped
        self.id_conflicts = 0  # pets this replica turned Conflict (DuplicateId)
        self.orphans_collected = 0  # orphaned id claims this replica deleted
        self.observed: set[str] = set()  # uids seen on the watch streams, for readiness
        # namespace mode: the finalizer on the operator's RoleBinding in each served namespace
        self.bindings: BindingGuard | None = None

    # --- observation (called from Kopf's index functions, before any handler) ---------

    def observe_pet(self, snap: PetSnapshot) -> None:
        """Note a pet seen on the watch (before its handler runs)."""
        self.observed.add(snap.uid)
        if FINALIZER in snap.finalizers:
            self._finalized.discard(snap.uid)
        written = self._written.get(snap.uid)
        if written is not None and _caught_up(written.resource_version, snap.resource_version):
            del self._written[snap.uid]  # the watch caught up: the snapshot is the truth again
        version = self._versions.get(snap.uid)
        if version is not None and _caught_up(version, snap.resource_version):
            del self._versions[snap.uid]
        key = (snap.namespace, snap.name)
        if key in self._pet_store and self._pet_store[key] != snap.store:
            previous = self._pet_store[key]
            if previous:
                self._moved_from[key] = previous
        self._pet_store[key] = snap.store
        self._by_id.place(key, snap.pet_id)

    def pets_with_id(self, pet_id: int, pets: PetIndex) -> list[PetSnapshot]:
        """The live pets seen with this id, oldest first (the order the contract promotes in)."""
        found: list[PetSnapshot] = []
        for key in self._by_id.get(pet_id, ()) or ():
            snap: PetSnapshot | None = _first(pets.get(key))
            if snap is not None and snap.pet_id == pet_id and not snap.deleting:
                found.append(snap)
        return sorted(found, key=_age)

    def _heir(self, snap: PetSnapshot, pets: PetIndex) -> PetSnapshot | None:
        """The oldest pet waiting for ``snap``'s id that is older than ``snap`` and already carries
        our finalizer (so a delete of it releases the id), or None: a free id goes to it first."""
        for other in self._waiting_for(snap, pets):
            return other if _age(other) < _age(snap) else None
        return None

    def _waiting_for(self, snap: PetSnapshot, pets: PetIndex) -> Iterator[PetSnapshot]:
        """The other live pets with ``snap``'s id that already carry our finalizer (so that a delete
        of one releases the id in turn), oldest first."""
        for other in self.pets_with_id(snap.pet_id, pets) if snap.pet_id is not None else ():
            if other.uid != snap.uid and (FINALIZER in other.finalizers or other.uid in self._finalized):
                yield other

    def moved_from(self, key: Key) -> str | None:
        """The store a pet named before its latest change, once, if it changed stores."""
        return self._moved_from.pop(key, None)

    def forget_pet(self, namespace: str, name: str, uid: str) -> str | None:
        self._written.pop(uid, None)
        self._versions.pop(uid, None)
        self._finalized.discard(uid)
        self.observed.discard(uid)
        self._moved_from.pop((namespace, name), None)
        self._by_id.place((namespace, name), None)
        return self._pet_store.pop((namespace, name), None)

    def _newest_version(self, snap: PetSnapshot) -> str:
        """The newest resourceVersion known for a pet: the watch's, or one of our own writes'."""
        newest = snap.resource_version
        written = self._written.get(snap.uid)
        for version in (written.resource_version if written else "", self._versions.get(snap.uid, "")):
            if version and _caught_up(newest, version):
                newest = version
        return newest

    def effective_status(self, snap: PetSnapshot) -> dict[str, Any]:
        written = self._written.get(snap.uid)
        return written.status if written is not None else snap.status

    # --- pets ---------------------------------------------------------------------------

    async def sync_pet(self, key: Key, pets: PetIndex, stores: StoreIndex) -> model.Verdict | None:
        """Bring one pet's status in line with the newest known state; None if it is gone."""
        try:
            async with self._pet_locks.hold(key):
                snap: PetSnapshot | None = _first(pets.get(key))
                if snap is None:
                    return None
                if snap.deleting:
                    await self._finalize(snap, pets)
                    return None
                return await self._sync_live_pet(snap, pets, stores)
        except NotLeader:
            return None  # the leader reconciles it; this replica only watches
        finally:
            await self._promote_released(pets, stores)

    async def _promote_released(self, pets: PetIndex, stores: StoreIndex) -> None:
        # ids released by a finalizer are handed on even if removing the finalizer failed;
        # a promotion that fails (a conflict, say) stays queued for the retry of the call
        while self._to_promote:
            pet_id = self._to_promote.pop()
            try:
                await self.promote_waiting(pet_id, pets, stores)
            except BaseException:
                self._to_promote.add(pet_id)
                raise

    async def finalize_unwatched(self, body: Mapping[str, Any], pets: PetIndex, stores: StoreIndex) -> None:
        """Finalize a deleted pet that no watch delivers: Kopf does not watch a namespace that was already
        being deleted when this replica started, and its pets would wait on the operator for good. A pet
        the watch index holds is left to :meth:`sync_pet`."""
        snap = PetSnapshot.from_body(body)
        key = (snap.namespace, snap.name)
        if not snap.deleting or _first(pets.get(key)) is not None:
            return
        try:
            async with self._pet_locks.hold(key):
                await self._finalize(snap, pets)
        except NotLeader:
            return
        finally:
            await self._promote_released(pets, stores)

    async def _sync_live_pet(self, snap: PetSnapshot, pets: PetIndex, stores: StoreIndex) -> model.Verdict | None:
        if self.bindings is not None and snap.namespace in self.bindings.terminating:
            # its namespace is being deleted, and the pet with it: no new claim or finalizer, which
            # would come after the operator's RoleBinding there may have been let go
            return None
        store_snap: StoreSnapshot | None = (
            _first(stores.get((snap.namespace, snap.store))) if snap.store else None
        )
        claim = await self._claim(snap, pets)
        if claim is None:
            return None
        verdict = model.evaluate_pet(snap.name, snap.spec, store_snap.view() if store_snap else None, claim)
        current = self.effective_status(snap)
        desired = model.pet_status(current, verdict, snap.generation, self.clock())
        if not model.status_differs(current, desired):
            return verdict
        try:
            self.fence()
            obj = await self.writer.patch_status(
                model.PETS, snap.namespace, snap.name, desired, resource_version=self._newest_version(snap)
            )
        except NotFound:
            return None
        self.writes += 1
        meta = obj.get("metadata", {})
        written_version = str(meta.get("resourceVersion", ""))
        seen: PetSnapshot | None = _first(pets.get((snap.namespace, snap.name)))
        # the watch may have shown our write before its answer came back: then nothing to remember
        if meta.get("uid") == snap.uid and not (seen is not None and seen.uid == snap.uid
                                                and _caught_up(written_version, seen.resource_version)):
            self._written[snap.uid] = _Written(written_version, obj.get("status", desired))
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

    def fence(self) -> None:
        """Refuse to write unless this replica may (it leads, or leader election is off)."""
        if not self.may_write():
            self.fenced += 1
            raise NotLeader

    # --- id claims ------------------------------------------------------------------------

    def prime_claims(self, claims: list[Claim]) -> None:
        """Fill the claim cache from a listing (at start-up), sparing a read per pet."""
        for claim in claims:
            self._claims[claim.pet_id] = claim

    @property
    def claims_held(self) -> int:
        """Id claims in the cache (metrics hook: ``pet_operator_id_claims_held``)."""
        return len(self._claims)

    def forget_claims(self) -> None:
        """Drop the claim cache (leadership lost: another leader may change claims meanwhile)."""
        self._claims.clear()

    async def _is_orphan(self, claim: Claim, pets: PetIndex, forbidden: set[str] | None = None) -> bool:
        """A claim whose holder is gone: no pet with the holder's UID exists any more.

        The watch index may lag (a replica that just started or just became leader has not
        seen every pet yet), so a holder missing from it is looked up in the API server
        before the claim is called orphaned: deleting a live claim would let a twin take
        the id while its holder is Active. A holder in a namespace this replica does not
        serve is looked up too: the API server's answer by UID is the truth whoever serves
        that namespace (a namespace no longer served, its pet deleted since). Where the
        lookup is forbidden (403: no rights there, as a namespace-scoped install has in
        namespaces it does not serve, or a served namespace whose RoleBinding went), a
        namespace that no longer exists still tells (no namespace, no pet in it); otherwise
        nothing can be told: the claim stands, its pet's twins are Conflict naming the holder, and
        the 403 is logged once per namespace. ``forbidden`` (one orphan pass) collects the
        namespaces that answered 403, which are then not asked again in that pass."""
        namespace, name = claim.holder_key
        if not namespace or not name:
            return True  # names no pet: no pet holds it
        served = self.served is None or namespace in self.served
        if served:
            holder: PetSnapshot | None = _first(pets.get((namespace, name)))
            if holder is not None and holder.uid == claim.holder_uid:
                return False
        if self.pet_reader is None:
            return served  # the watch index is trusted, where there is one
        if forbidden is not None and namespace in forbidden:
            return False
        try:
            uid = await self.pet_reader.read_uid(namespace, name)
        except ApiError as exc:
            if exc.status != 403:
                raise
            if not await self.pet_reader.namespace_exists(namespace):
                return True  # the namespace is gone, and every pet in it: the holder too
            if forbidden is not None:
                forbidden.add(namespace)
            if namespace not in self._forbidden_logged:
                self._forbidden_logged.add(namespace)
                log.warning(
                    "cannot read pets in namespace %s (403 %s): whether the holders of claims there are gone "
                    "cannot be told, so those claims are left alone (first: id %d, held by %s); %s",
                    namespace, exc.message, claim.pet_id, claim.holder,
                    "its RoleBinding may be gone" if served else
                    "it is not served here (another instance may serve it); a claim whose pet is gone there "
                    "is collected by an instance that may read it, or deleted by hand (the Lease pet-id-<id>)",
                )
            return False
        return uid != claim.holder_uid

    async def _claim(self, snap: PetSnapshot, pets: PetIndex) -> model.IdClaim | None:
        """Claim the pet's id (finalizer first, so a delete always releases); None if the pet is gone."""
        if self.claims is None or self.finalizers is None:
            return model.ID_CLAIM_NOT_ENFORCED
        pet_id = snap.pet_id
        if pet_id is None:
            return model.IdClaim("Unknown", "NoId", "The pet has no integer spec.id to claim.")
        if FINALIZER not in snap.finalizers and snap.uid not in self._finalized:
            try:
                self.fence()
                result = await self.finalizers.set_finalizers(
                    model.PETS, snap.namespace, snap.name, [*snap.finalizers, FINALIZER], snap.resource_version
                )
            except NotFound:
                return None
            self._finalized.add(snap.uid)
            version = str(((result or {}).get("metadata") or {}).get("resourceVersion") or "")
            if version:
                self._versions[snap.uid] = version
        cached = self._claims.get(pet_id)
        if cached is not None and cached.holder_uid == snap.uid:
            return claim_outcome(pet_id, snap.namespace, snap.name, snap.uid, cached)
        for _ in range(3):
            self.fence()
            # A free id goes to the oldest pet waiting for it, whichever pet's sync finds it free
            # (the contract's order; a younger twin racing a release must not win it).
            heir = self._heir(snap, pets)
            claimant = heir or snap
            claim = await self.claims.create_claim(pet_id, claimant.namespace, claimant.name, claimant.uid)
            if claim is not None and heir is not None:
                log.info(
                    "id %d was free: claimed for %s, the oldest pet waiting for it (not %s/%s)",
                    pet_id, claim.holder, snap.namespace, snap.name,
                )
                self._to_promote.add(pet_id)  # the heir's status follows once this pet's lock is free
            if claim is None:
                claim = await self.claims.read_claim(pet_id)
            if claim is None:
                continue  # released between our create and read: try again
            if claim.holder_uid != snap.uid and await self._is_orphan(claim, pets):
                log.info("collecting orphaned claim of id %d (holder %s is gone)", pet_id, claim.holder)
                self.fence()
                if await self.claims.delete_claim(claim):
                    self.orphans_collected += 1  # metrics hook
                self._claims.pop(pet_id, None)
                continue
            self._claims[pet_id] = claim
            return claim_outcome(pet_id, snap.namespace, snap.name, snap.uid, claim)
        return claim_outcome(pet_id, snap.namespace, snap.name, snap.uid, None)

    async def _finalize(self, snap: PetSnapshot, pets: PetIndex) -> None:
        """Release a deleted pet's claim (handing it to the oldest waiting pet, or queueing its id
        for promotion), then its finalizer."""
        if FINALIZER not in snap.finalizers or self.claims is None or self.finalizers is None:
            return
        pet_id = snap.pet_id
        async with self._id_locks.hold(("id", str(pet_id))):
            if pet_id is not None and not await self._release(snap, pet_id, pets):
                return  # the finalizer stays: the next event or resync tries the release again
            remaining = [f for f in snap.finalizers if f != FINALIZER]
            with contextlib.suppress(NotFound):  # already gone: nothing left to release
                self.fence()
                await self.finalizers.set_finalizers(
                    model.PETS, snap.namespace, snap.name, remaining, snap.resource_version
                )
        self._finalized.discard(snap.uid)

    async def _successor(self, snap: PetSnapshot, pets: PetIndex) -> PetSnapshot | None:
        """The oldest pet waiting for a deleted pet's id that may inherit its claim, or None.

        The watch index may lag a delete (a mass delete: the waiting twin's own deletion, even its
        finalizer's removal, not seen yet), and a claim handed to a pet that is gone would be an
        orphan until the next pass: so the candidate is confirmed by a fresh read (only when pets
        wait, i.e. duplicates)."""
        for other in self._waiting_for(snap, pets):
            if self.pet_reader is None or await self.pet_reader.can_inherit(other.namespace, other.name, other.uid):
                return other
        return None

    async def _release(self, snap: PetSnapshot, pet_id: int, pets: PetIndex) -> bool:
        """Give up a deleted pet's claim, if it still holds one; True once no claim of this pet is left.

        With a pet waiting for the id, the claim is handed over in place: the same Lease is given
        to the oldest waiting pet under a resourceVersion precondition, so the id is never free
        for a moment (a create by anyone else would have won it in between). Without one, the
        claim is deleted, under the same precondition.

        The precondition goes stale whenever anything writes the Lease (a label, an annotation, a
        cached read): a refused write (409, or 404 if it is gone) is not a release. The claim is
        read afresh and the write tried again, and the finalizer is removed only once the claim is
        gone or is not this pet's. Otherwise the id would stay held by a pet that no longer exists
        (and the webhook would name it) until an orphan pass, with the waiting twin in Conflict
        meanwhile."""
        claims = self.claims
        if claims is None:
            raise RuntimeError("releasing an id claim needs a claims client (Reconciler(claims=...))")
        claim = self._claims.get(pet_id)
        if claim is None or claim.holder_uid != snap.uid:
            claim = await claims.read_claim(pet_id)
        held = False  # whether this pet's claim was seen: its going frees the id for the waiting pets
        for _ in range(RELEASE_ATTEMPTS):
            if claim is None or claim.holder_uid != snap.uid:
                break
            held = True
            self.fence()
            heir = await self._successor(snap, pets)
            if heir is not None:
                moved = await claims.move_claim(claim, heir.namespace, heir.name, heir.uid)
                if moved is not None:
                    log.info("pet %s/%s deleted: id %d handed over to %s, the oldest pet waiting for it",
                             snap.namespace, snap.name, pet_id, moved.holder)
                    self._claims[pet_id] = moved
                    self._to_promote.add(pet_id)  # the heir's (and the others') status follows
                    return True
            elif await claims.delete_claim(claim):
                log.info("pet %s/%s deleted: released id %d", snap.namespace, snap.name, pet_id)
                claim = None
                break
            claim = await claims.read_claim(pet_id)  # changed since (409) or gone (404): look again
        self._claims.pop(pet_id, None)
        if claim is not None and claim.holder_uid == snap.uid:
            log.warning("pet %s/%s deleted: its claim of id %d changed under every release (%d tries); "
                        "the finalizer stays until the release succeeds", snap.namespace, snap.name, pet_id,
                        RELEASE_ATTEMPTS)
            return False
        if held:
            self._to_promote.add(pet_id)
        return True

    async def promote_waiting(self, pet_id: int, pets: PetIndex, stores: StoreIndex) -> None:
        """After a release, let the oldest pet waiting for the id take it; the rest stay Conflict."""
        for snap in self.pets_with_id(pet_id, pets):
            await self.sync_pet((snap.namespace, snap.name), pets, stores)

    async def collect_orphans(self, pets: PetIndex, stores: StoreIndex) -> int:
        """Delete claims whose holder is gone; promote pets waiting for those ids."""
        if self.claims is None:
            return 0
        collected = 0
        if not self.may_write():
            return 0
        listing = await self.claims.list_claims()
        # The listing is the truth: a cached claim missing from it (deleted by hand, or lost) is
        # forgotten, so the next sync of its pet claims the id again instead of believing it held.
        # Only removals: a claim created since the listing is merely read again when next needed.
        listed = {claim.pet_id for claim in listing}
        forbidden: set[str] = set()  # namespaces that answered 403 in this pass: not asked again
        for pet_id in [p for p in self._claims if p not in listed]:
            log.info("claim of id %d is gone from the cluster; it will be taken again", pet_id)
            self._claims.pop(pet_id, None)
        for claim in listing:
            if not await self._is_orphan(claim, pets, forbidden):
                continue
            if not self.may_write():
                break
            if await self.claims.delete_claim(claim):
                log.info("collected orphaned claim of id %d (holder %s is gone)", claim.pet_id, claim.holder)
                self._claims.pop(claim.pet_id, None)
                collected += 1
                self.orphans_collected += 1  # metrics hook
                await self.promote_waiting(claim.pet_id, pets, stores)
        return collected

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
                try:
                    await self._sync_store_once(key, pets, stores, by_store)
                except NotLeader:
                    self._store_dirty.discard(key)
                    return

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
            self.fence()
            version = snap.resource_version
            if written is not None and _caught_up(version, written.resource_version):
                version = written.resource_version
            obj = await self.writer.patch_status(
                model.PETSTORES, snap.namespace, snap.name, desired, resource_version=version or None
            )
        except NotFound:
            return
        self.writes += 1
        meta = obj.get("metadata", {})
        if meta.get("uid") == snap.uid:
            self._store_written[key] = _Written(str(meta.get("resourceVersion", "")), obj.get("status", desired))

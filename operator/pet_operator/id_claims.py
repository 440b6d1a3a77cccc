"""Cluster-wide unique ids: claiming a pet's id, handing it over when its holder is deleted, and
collecting claims whose holder is gone (the Lease objects ``pet-id-<id>``, see :mod:`claims`).

:class:`IdClaims` is given what it needs (the claim and finalizer APIs, a reader of pets, the
served namespaces, the fence) and is asked by the reconciler for a pet's claim; it never calls the
reconciler back. Ids whose claim was released or handed over are queued (:meth:`IdClaims.pop_released`)
for the reconciler to promote the pets waiting for them.

Order of a claim's life: the pet's finalizer first (so a delete always comes back to release the id),
then the claim (a create: exactly one wins); on delete the claim is handed to the oldest pet waiting
for the id, or deleted, and only then the finalizer removed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Iterator
from typing import Any, Protocol

from pet_operator import model
from pet_operator.claims import FINALIZER, ClaimStore, claim_outcome
from pet_operator.fencing import Fence
from pet_operator.indexes import Members
from pet_operator.keyed_locks import KeyedLocks
from pet_operator.kube import NotFound
from pet_operator.model import Claim, Key, PetIndex, PetSnapshot, first
from pet_operator.recent_writes import caught_up
from pet_operator.rest import ApiError

log = logging.getLogger(__name__)

#: Deletes of a deleted pet's claim, each after a fresh read, before the release is left to the next try.
RELEASE_ATTEMPTS = 3
#: Creates of a claim (each followed by a read) before the pet is left Claiming until the next try.
CLAIM_ATTEMPTS = 3


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


def _age(snap: PetSnapshot) -> tuple[str, str, str]:
    """Oldest first: creation time, then namespace and name (creation times have 1 s resolution)."""
    return (snap.created, snap.namespace, snap.name)


class IdLedger(Protocol):
    """What the reconciler asks of id claims (:class:`IdClaims`; the unit tests' fakes)."""

    def observe(self, snap: PetSnapshot) -> None: ...

    def forget(self, key: Key, uid: str) -> None: ...

    def pets_with_id(self, pet_id: int, pets: PetIndex) -> list[PetSnapshot]: ...

    def metadata_version(self, uid: str) -> str: ...

    async def claim(self, snap: PetSnapshot, pets: PetIndex) -> model.IdClaim | None: ...

    async def finalize(self, snap: PetSnapshot, pets: PetIndex) -> None: ...

    def pop_released(self) -> int | None: ...

    def mark_released(self, pet_id: int) -> None: ...

    def collect_orphans(self, pets: PetIndex) -> AsyncGenerator[int, None]: ...


class IdClaims:
    def __init__(
        self,
        claims: ClaimStore,
        finalizers: FinalizerWriter,
        pet_reader: PetReader | None = None,
        served: frozenset[str] | None = None,
        fence: Fence | None = None,
    ) -> None:
        """``served`` is the set of namespaces served (None: all), for telling orphaned claims;
        ``pet_reader`` confirms with the API server that a claim's holder is gone before the
        claim is taken as orphaned (without it, the watch index is trusted)."""
        self.claims = claims
        self.finalizers = finalizers
        self.pet_reader = pet_reader
        self.served = served
        self.fence = fence if fence is not None else Fence()
        self.cache: dict[int, Claim] = {}
        self.versions: dict[str, str] = {}  # uid -> resourceVersion of our last metadata (finalizer) write
        self._finalized: set[str] = set()  # uids we added our finalizer to, until the watch shows it
        self._forbidden_logged: set[str] = set()  # namespaces whose 403 on a holder lookup was logged
        self._released: set[int] = set()  # ids released, whose waiting pets are still to be promoted
        # releases of one id, one at a time: a deleted holder handing its claim to a twin and that
        # twin's own finalizer (deleted meanwhile) must not interleave, or the claim would go to a
        # pet whose finalizer had just been removed on a read made before the hand-over landed
        self._locks: KeyedLocks[tuple[str, str]] = KeyedLocks()
        # pets by id, from the watch: who waits for an id, without a pass over every pet
        self._by_id: Members[int] = Members()
        self.orphans_collected = 0  # metrics hook: orphaned claims this replica deleted

    # --- what the watch shows ------------------------------------------------------------------

    def observe(self, snap: PetSnapshot) -> None:
        """Note a pet seen on the watch (before its handler runs)."""
        if FINALIZER in snap.finalizers:
            self._finalized.discard(snap.uid)
        version = self.versions.get(snap.uid)
        if version is not None and caught_up(version, snap.resource_version):
            del self.versions[snap.uid]
        self._by_id.place(snap.key, snap.pet_id)

    def forget(self, key: Key, uid: str) -> None:
        """A pet deleted from the watch."""
        self.versions.pop(uid, None)
        self._finalized.discard(uid)
        self._by_id.place(key, None)

    def metadata_version(self, uid: str) -> str:
        """The resourceVersion our last finalizer write of this pet returned, until the watch shows it."""
        return self.versions.get(uid, "")

    def pets_with_id(self, pet_id: int, pets: PetIndex) -> list[PetSnapshot]:
        """The live pets seen with this id, oldest first (the order the contract promotes in)."""
        found: list[PetSnapshot] = []
        for key in self._by_id.get(pet_id, ()) or ():
            snap: PetSnapshot | None = first(pets.get(key))
            if snap is not None and snap.pet_id == pet_id and not snap.deleting:
                found.append(snap)
        return sorted(found, key=_age)

    def _waiting_for(self, snap: PetSnapshot, pets: PetIndex) -> Iterator[PetSnapshot]:
        """The other live pets with ``snap``'s id that already carry our finalizer (so that a delete
        of one releases the id in turn), oldest first."""
        for other in self.pets_with_id(snap.pet_id, pets) if snap.pet_id is not None else ():
            if other.uid != snap.uid and (FINALIZER in other.finalizers or other.uid in self._finalized):
                yield other

    def _heir(self, snap: PetSnapshot, pets: PetIndex) -> PetSnapshot | None:
        """The oldest pet waiting for ``snap``'s id that is older than ``snap`` and already carries
        our finalizer (so a delete of it releases the id), or None: a free id goes to it first."""
        for other in self._waiting_for(snap, pets):
            return other if _age(other) < _age(snap) else None
        return None

    # --- the claim cache -------------------------------------------------------------------------

    def prime_claims(self, claims: list[Claim]) -> None:
        """Fill the claim cache from a listing (at start-up), sparing a read per pet."""
        for claim in claims:
            self.cache[claim.pet_id] = claim

    @property
    def claims_held(self) -> int:
        """Id claims in the cache (metrics hook: ``pet_operator_id_claims_held``)."""
        return len(self.cache)

    def forget_claims(self) -> None:
        """Drop the claim cache (leadership lost: another leader may change claims meanwhile)."""
        self.cache.clear()

    # --- ids to promote ----------------------------------------------------------------------------

    def pop_released(self) -> int | None:
        """An id released or handed over, whose waiting pets are still to be reconciled; None if none."""
        return self._released.pop() if self._released else None

    def mark_released(self, pet_id: int) -> None:
        """Queue an id again (its promotion failed)."""
        self._released.add(pet_id)

    # --- claiming ------------------------------------------------------------------------------------

    async def claim(self, snap: PetSnapshot, pets: PetIndex) -> model.IdClaim | None:
        """Claim the pet's id (finalizer first, so a delete always releases); None if the pet is gone."""
        pet_id = snap.pet_id
        if pet_id is None:
            return model.IdClaim("Unknown", "NoId", "The pet has no integer spec.id to claim.")
        if FINALIZER not in snap.finalizers and snap.uid not in self._finalized:
            try:
                self.fence.check()
                result = await self.finalizers.set_finalizers(
                    model.PETS, snap.namespace, snap.name, [*snap.finalizers, FINALIZER], snap.resource_version
                )
            except NotFound:
                return None
            self._finalized.add(snap.uid)
            version = str(((result or {}).get("metadata") or {}).get("resourceVersion") or "")
            if version:
                self.versions[snap.uid] = version
        cached = self.cache.get(pet_id)
        if cached is not None and cached.holder_uid == snap.uid:
            return claim_outcome(pet_id, snap.namespace, snap.name, snap.uid, cached)
        for _ in range(CLAIM_ATTEMPTS):
            self.fence.check()
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
                self._released.add(pet_id)  # the heir's status follows once this pet's lock is free
            if claim is None:
                claim = await self.claims.read_claim(pet_id)
            if claim is None:
                continue  # released between our create and read: try again
            if claim.holder_uid != snap.uid and await self._is_orphan(claim, pets):
                log.info("collecting orphaned claim of id %d (holder %s is gone)", pet_id, claim.holder)
                self.fence.check()
                if await self.claims.delete_claim(claim):
                    self.orphans_collected += 1  # metrics hook
                self.cache.pop(pet_id, None)
                continue
            self.cache[pet_id] = claim
            return claim_outcome(pet_id, snap.namespace, snap.name, snap.uid, claim)
        return claim_outcome(pet_id, snap.namespace, snap.name, snap.uid, None)

    # --- releasing -----------------------------------------------------------------------------------

    async def finalize(self, snap: PetSnapshot, pets: PetIndex) -> None:
        """Release a deleted pet's claim (handing it to the oldest waiting pet, or queueing its id
        for promotion), then its finalizer."""
        if FINALIZER not in snap.finalizers:
            return
        pet_id = snap.pet_id
        async with self._locks.hold(("id", str(pet_id))):
            if pet_id is not None and not await self._release(snap, pet_id, pets):
                return  # the finalizer stays: the next event or resync tries the release again
            remaining = [f for f in snap.finalizers if f != FINALIZER]
            with contextlib.suppress(NotFound):  # already gone: nothing left to release
                self.fence.check()
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
        claim = self.cache.get(pet_id)
        if claim is None or claim.holder_uid != snap.uid:
            claim = await claims.read_claim(pet_id)
        held = False  # whether this pet's claim was seen: its going frees the id for the waiting pets
        for _ in range(RELEASE_ATTEMPTS):
            if claim is None or claim.holder_uid != snap.uid:
                break
            held = True
            self.fence.check()
            heir = await self._successor(snap, pets)
            if heir is not None:
                moved = await claims.move_claim(claim, heir.namespace, heir.name, heir.uid)
                if moved is not None:
                    log.info("pet %s/%s deleted: id %d handed over to %s, the oldest pet waiting for it",
                             snap.namespace, snap.name, pet_id, moved.holder)
                    self.cache[pet_id] = moved
                    self._released.add(pet_id)  # the heir's (and the others') status follows
                    return True
            elif await claims.delete_claim(claim):
                log.info("pet %s/%s deleted: released id %d", snap.namespace, snap.name, pet_id)
                claim = None
                break
            claim = await claims.read_claim(pet_id)  # changed since (409) or gone (404): look again
        self.cache.pop(pet_id, None)
        if claim is not None and claim.holder_uid == snap.uid:
            log.warning("pet %s/%s deleted: its claim of id %d changed under every release (%d tries); "
                        "the finalizer stays until the release succeeds", snap.namespace, snap.name, pet_id,
                        RELEASE_ATTEMPTS)
            return False
        if held:
            self._released.add(pet_id)
        return True

    # --- orphans ---------------------------------------------------------------------------------------

    async def collect_orphans(self, pets: PetIndex) -> AsyncGenerator[int, None]:
        """Delete claims whose holder is gone; yields each id so freed (its waiting pets are then
        to be promoted, before the next claim is looked at)."""
        if not self.fence.may_write():
            return
        listing = await self.claims.list_claims()
        # The listing is the truth: a cached claim missing from it (deleted by hand, or lost) is
        # forgotten, so the next sync of its pet claims the id again instead of believing it held.
        # Only removals: a claim created since the listing is merely read again when next needed.
        listed = {claim.pet_id for claim in listing}
        forbidden: set[str] = set()  # namespaces that answered 403 in this pass: not asked again
        for pet_id in [p for p in self.cache if p not in listed]:
            log.info("claim of id %d is gone from the cluster; it will be taken again", pet_id)
            self.cache.pop(pet_id, None)
        for claim in listing:
            if not await self._is_orphan(claim, pets, forbidden):
                continue
            if not self.fence.may_write():
                break
            if await self.claims.delete_claim(claim):
                log.info("collected orphaned claim of id %d (holder %s is gone)", claim.pet_id, claim.holder)
                self.cache.pop(claim.pet_id, None)
                self.orphans_collected += 1  # metrics hook
                yield claim.pet_id

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
            holder: PetSnapshot | None = first(pets.get((namespace, name)))
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

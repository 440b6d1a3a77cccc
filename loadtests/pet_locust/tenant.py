"""What a tenant of the pet API does under load, and what the contract says must follow.

One :class:`LoadProcess` per Locust process holds the pets that process created, hands out
unique ids, bounds the number of creates, and registers with the tracker what each write
must lead to. The operations are plain functions of it and an :class:`~pet_locust.api.Api`,
so that a user class is a thin list of tasks.

Predictions (the contract, ``pet-api.md``): the load's stores allow every tag it uses and
every store it names exists, so a create with a free id, a tag update and a store move all
end ``Active`` with ``observedGeneration`` caught up; a create that reuses a live pet's id is
refused at admission when the webhook runs (``duplicates="reject"``), or ends ``Conflict``
naming the holder (``duplicates="conflict"``); a delete ends with the pet gone (finalizers
released).
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import random
from collections.abc import Sequence
from typing import Any

from pet_locust.api import CLAIM_PREFIX, GROUP, Api, ApiError, pet_body
from pet_locust.tracker import GONE, Expectation, Tracker

TAGS = ("dog", "cat", "bird", "fish", "small", "large", "indoor", "outdoor")
ID_STRIDE = 10_000_000  # ids per load process within one run
WRITERS = ("operator", "client", "client-chain")
FINALIZER = f"{GROUP}/id-claim"  # as operator/pet_operator/claims.py


class QuotaReached(Exception):
    """This process has made all the creates it may."""


@dataclasses.dataclass
class Pet:
    namespace: str
    name: str
    uid: str
    pet_id: int
    store: str | None
    tags: list[str]
    generation: int
    phase: str
    duplicate_of: int | None = None  # the id it shares with a holder, if it is a waiting duplicate


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def predicted_status(phase: str, generation: int, holder: str | None = None) -> dict[str, Any]:
    """The status an operator writes for the load's pets (what the raw writer writes itself)."""
    now = _now()
    active = phase == "Active"
    reason = "Reconciled" if active else "DuplicateId"
    message = "The pet is reconciled." if active else f"Id is already held by pet {holder}."
    conditions = [
        {"type": "Ready", "status": "True" if active else "False", "reason": reason, "message": message,
         "lastTransitionTime": now, "observedGeneration": generation},
        {"type": "IdClaimed", "status": "True" if active else "False", "reason": "Claimed" if active else reason,
         "message": message, "lastTransitionTime": now, "observedGeneration": generation},
        {"type": "TagsValid", "status": "True", "reason": "TagsAllowed", "message": "Every tag is allowed.",
         "lastTransitionTime": now, "observedGeneration": generation},
    ]
    return {"phase": phase, "reason": reason, "message": message, "observedGeneration": generation,
            "lastTransitionTime": now, "conditions": conditions}


class LoadProcess:
    def __init__(
        self, tracker: Tracker, namespaces: Sequence[str], stores: int, max_creates: int, id_base: int,
        worker_index: int = 0, duplicate_share: float = 0.0, duplicates: str = "reject",
        writer: str = "operator", no_store_share: float = 0.1, claims_namespace: str = "",
        rng: random.Random | None = None,
    ) -> None:
        if not namespaces:
            raise ValueError("the load needs at least one namespace (--pet-namespaces)")
        if duplicates not in ("reject", "conflict"):
            raise ValueError(f"duplicates={duplicates!r}: must be 'reject' (a webhook refuses them) or 'conflict'")
        if writer not in WRITERS:
            raise ValueError(f"writer={writer!r}: must be one of {', '.join(WRITERS)}")
        if not 0 <= duplicate_share < 1:
            raise ValueError(f"duplicate share {duplicate_share} must be in [0, 1)")
        self.tracker = tracker
        self.namespaces = list(namespaces)
        self.stores = [f"store-{i}" for i in range(stores)]
        self.max_creates = max_creates
        self.duplicate_share = duplicate_share
        self.duplicates = duplicates
        self.writer = writer
        self.no_store_share = no_store_share
        self.claims_namespace = claims_namespace
        self.rng = rng or random.Random()  # nosec B311 # load-test draws, not secrets
        self.first_id = id_base + worker_index * ID_STRIDE
        self._ids = itertools.count(self.first_id)
        self._names = itertools.count()
        self.prefix = f"p{worker_index}-{id_base % 100_000}-"
        self.creates = 0  # creates attempted (the quota counts these)
        self.pets: dict[tuple[str, str], Pet] = {}  # live pets this process made
        self._keys: list[tuple[str, str]] = []  # the same keys, for drawing at random
        self._index: dict[tuple[str, str], int] = {}
        self.waiting: dict[int, int] = {}  # id -> duplicates of this process waiting for it
        self.busy: set[tuple[str, str]] = set()  # pets a user is writing right now (not to be picked)

    # --- choosing ------------------------------------------------------------------------------

    def _is_settled(self, pet: Pet, phase: str | None) -> bool:
        key = (pet.namespace, pet.name)
        seen = self.tracker.latest.get(key)
        return ((phase is None or pet.phase == phase) and seen is not None and seen.phase == pet.phase
                and seen.observed_generation >= pet.generation and key not in self.tracker.pending
                and key not in self.busy)

    def pick(self, phase: str | None = "Active", tries: int = 32,
             exclude_ids: frozenset[int] = frozenset()) -> Pet | None:
        """A live pet of this process in ``phase`` whose last write has settled and that no other user
        is writing, drawn at random (``tries`` draws, so the cost does not grow with the number of
        pets); None if none was found. The caller owns it until :meth:`release`."""
        for _ in range(min(tries, len(self._keys))):
            pet = self.pets[self.rng.choice(self._keys)]
            if pet.pet_id not in exclude_ids and self._is_settled(pet, phase):
                self.busy.add((pet.namespace, pet.name))
                return pet
        return None

    def release(self, pet: Pet | None) -> None:
        if pet is not None:
            self.busy.discard((pet.namespace, pet.name))

    def add(self, pet: Pet) -> None:
        key = (pet.namespace, pet.name)
        self.pets[key] = pet
        self._index[key] = len(self._keys)
        self._keys.append(key)
        if pet.duplicate_of is not None:
            self.waiting[pet.duplicate_of] = self.waiting.get(pet.duplicate_of, 0) + 1

    def remove(self, pet: Pet) -> None:
        key = (pet.namespace, pet.name)
        del self.pets[key]
        index = self._index.pop(key)
        last = self._keys.pop()
        if last != key:  # move the last key into the hole
            self._keys[index] = last
            self._index[last] = index
        if pet.duplicate_of is not None:
            left = self.waiting[pet.duplicate_of] - 1
            if left:
                self.waiting[pet.duplicate_of] = left
            else:
                del self.waiting[pet.duplicate_of]

    def _take_quota(self) -> None:
        if self.creates >= self.max_creates:
            raise QuotaReached(f"{self.creates} creates made, the quota of this process")
        self.creates += 1

    def _store(self) -> str | None:
        if not self.stores or self.rng.random() < self.no_store_share:
            return None
        return self.rng.choice(self.stores)

    def _tags(self) -> list[str]:
        return sorted(self.rng.sample(TAGS, self.rng.randint(0, 3)))


# --- operations -------------------------------------------------------------------------------


def create(load: LoadProcess, api: Api, status_api: Api | None = None) -> Pet | None:
    """Create a pet with a fresh id (or, for a share of creates, a live pet's id)."""
    holder = load.pick("Active") if load.duplicate_share and load.rng.random() < load.duplicate_share else None
    if holder is not None:
        try:
            return create_duplicate(load, api, holder, status_api)
        finally:
            load.release(holder)
    load._take_quota()
    namespace = load.rng.choice(load.namespaces)
    name = f"{load.prefix}{next(load._names)}"
    pet_id = next(load._ids)
    store = load._store()
    tags = load._tags()
    body = pet_body(name, pet_id, tags, store)
    if load.writer == "client-chain":  # as our mutating webhook does: the finalizer comes with the create
        body["metadata"]["finalizers"] = [FINALIZER]
    _, obj = api.create_pet(namespace, body)
    return _created(load, api, status_api, obj, namespace, name, pet_id, store, tags, "Active", "create → Active")


def create_duplicate(load: LoadProcess, api: Api, holder: Pet, status_api: Api | None = None) -> Pet | None:
    """Create a pet reusing ``holder``'s id: refused at admission, or ``Conflict`` naming the holder."""
    load._take_quota()
    namespace = load.rng.choice(load.namespaces)
    name = f"{load.prefix}{next(load._names)}"
    body = pet_body(name, holder.pet_id, holder.tags, holder.store if namespace == holder.namespace else None)
    if load.duplicates == "reject":
        api.create_pet(namespace, body, name="POST pets (duplicate id, refused)", expect=(400, 403, 409, 422))
        return None
    _, obj = api.create_pet(namespace, body, name="POST pets (duplicate id)")
    return _created(load, api, status_api, obj, namespace, name, holder.pet_id, body["spec"].get("store"),
                    holder.tags, "Conflict", "duplicate → Conflict", holder=f"{holder.namespace}/{holder.name}")


def _created(
    load: LoadProcess, api: Api, status_api: Api | None, obj: dict[str, Any], namespace: str, name: str,
    pet_id: int, store: str | None, tags: list[str], phase: str, what: str, holder: str | None = None,
) -> Pet:
    meta = obj.get("metadata") or {}
    pet = Pet(namespace, name, str(meta.get("uid", "")), pet_id, store, tags, int(meta.get("generation") or 1), phase,
              duplicate_of=pet_id if phase == "Conflict" else None)
    load.add(pet)
    load.tracker.expect(Expectation((namespace, name), what, phase, pet.generation, load.tracker.clock(), pet.uid))
    _client_writes(load, status_api or api, pet, holder, first=True)
    return pet


def update_tags(load: LoadProcess, api: Api, status_api: Api | None = None) -> Pet | None:
    pet = load.pick("Active")
    if pet is None:
        return None
    try:
        tags = load._tags()
        if tags == pet.tags:
            tags = [] if tags else ["dog"]
        obj = api.patch_pet(pet.namespace, pet.name, {"spec": {"tags": tags}}, name="PATCH pets (tags)")
        return _updated(load, api, status_api, pet, obj, "update tags → Active", tags=tags)
    finally:
        load.release(pet)


def move_store(load: LoadProcess, api: Api, status_api: Api | None = None) -> Pet | None:
    if len(load.stores) < 2:
        return None
    pet = load.pick("Active")
    if pet is None:
        return None
    try:
        store = load.rng.choice([s for s in load.stores if s != pet.store])
        obj = api.patch_pet(pet.namespace, pet.name, {"spec": {"store": store}}, name="PATCH pets (store)")
        return _updated(load, api, status_api, pet, obj, "move store → Active", store=store)
    finally:
        load.release(pet)


def _updated(load: LoadProcess, api: Api, status_api: Api | None, pet: Pet, obj: dict[str, Any], what: str,
             **changes: Any) -> Pet:
    for field, value in changes.items():
        setattr(pet, field, value)
    pet.generation = int((obj.get("metadata") or {}).get("generation") or pet.generation + 1)
    load.tracker.expect(Expectation((pet.namespace, pet.name), what, pet.phase, pet.generation,
                                    load.tracker.clock(), pet.uid))
    _client_writes(load, status_api or api, pet, None, first=False)
    return pet


def delete(load: LoadProcess, api: Api) -> Pet | None:
    """Delete a waiting duplicate (half the time, when there is one) or an Active pet that no
    duplicate waits for (so that no promotion follows, which the load does not predict)."""
    pet = load.pick("Conflict") if load.waiting and load.rng.random() < 0.5 else None
    if pet is None:
        pet = load.pick("Active", exclude_ids=frozenset(load.waiting))
    if pet is None and load.waiting:
        pet = load.pick("Conflict")
    if pet is None:
        return None
    try:
        api.delete_pet(pet.namespace, pet.name)
        if load.writer == "client-chain":  # no operator: the client releases what its chain took
            api.patch_pet(pet.namespace, pet.name, {"metadata": {"finalizers": None}}, name="PATCH pets (finalizer)")
            if pet.phase == "Active":
                api.call("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/{load.claims_namespace}/leases/"
                         f"{CLAIM_PREFIX}{pet.pet_id}", "DELETE leases", expect=(200, 404))
        load.remove(pet)
        load.tracker.expect(Expectation((pet.namespace, pet.name), "delete → gone", GONE, 0,
                                        load.tracker.clock(), pet.uid))
        return pet
    finally:
        load.release(pet)


# --- the raw writer: the client does what an operator must ------------------------------------


def _client_writes(load: LoadProcess, api: Api, pet: Pet, holder: str | None, first: bool) -> None:
    """``client``: one status patch (the minimum any operator writes); ``client-chain``: the writes our
    operator makes for a new pet, in its order (id claim, status, event, store count; the finalizer came
    with the create, as our mutating webhook puts it there)."""
    if load.writer == "operator":
        return
    if load.writer == "client-chain" and first and pet.phase == "Active":
        api.create_lease(load.claims_namespace or pet.namespace, {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": f"{CLAIM_PREFIX}{pet.pet_id}",
                         "labels": {f"{GROUP}/id-claim": "true"},
                         "annotations": {f"{GROUP}/pet-uid": pet.uid}},
            "spec": {"holderIdentity": f"{pet.namespace}/{pet.name}"}})
    api.patch_pet_status(pet.namespace, pet.name, predicted_status(pet.phase, pet.generation, holder))
    if load.writer == "client-chain" and first:
        now = _now()
        api.create_event(pet.namespace, {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{pet.name}.{pet.uid[:8]}", "namespace": pet.namespace},
            "involvedObject": {"apiVersion": "petstore.example.com/v1", "kind": "Pet", "name": pet.name,
                               "namespace": pet.namespace, "uid": pet.uid},
            "type": "Normal" if pet.phase == "Active" else "Warning", "reason": "Reconciled",
            "message": "load", "count": 1, "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "pet-load"}})
        if pet.store:
            api.patch_store_status(pet.namespace, pet.store, {"observedGeneration": 1})


def describe_error(exc: Exception) -> str:
    return str(exc) if isinstance(exc, ApiError) else repr(exc)

"""The operator's data and decisions: the API's names, the records it reads (snapshots of pets
and stores, id claims, the leader Lease), and as pure functions what phase a Pet is in, and why.

Nothing here talks to the API; the handlers feed it what they know and write what it
returns. That keeps every rule of the contract unit-testable in milliseconds.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

#: The API group and version of Pets and PetStores, and their plurals (the API contract).
GROUP = "petstore.example.com"
VERSION = "v1"
PETS = "pets"
PETSTORES = "petstores"
#: An id claim is the ``coordination.k8s.io/v1`` Lease named this prefix and the id (``pet-id-7``).
CLAIM_PREFIX = "pet-id-"


#: The largest id the contract allows (2^53 - 1: exact in every JSON implementation).
MAX_ID = 9007199254740991


def usable_id(value: Any) -> int | None:
    """``value`` as a pet id if it is one the operator can claim: an integer (not a bool) in
    1..MAX_ID. The CRD schema says so too, but the operator does not rely on it (an older or
    edited CRD, a pet stored before the schema had the rule)."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID:
        return value
    return None


class Phase(enum.StrEnum):
    PENDING = "Pending"
    ACTIVE = "Active"
    INVALID = "Invalid"
    CONFLICT = "Conflict"


class Reason(enum.StrEnum):
    RECONCILED = "Reconciled"
    STORE_NOT_FOUND = "StoreNotFound"
    TAGS_NOT_ALLOWED = "TagsNotAllowed"
    DUPLICATE_ID = "DuplicateId"
    INVALID_ID = "InvalidId"


@dataclasses.dataclass(frozen=True)
class StoreView:
    """What a Pet's reconciliation needs to know of its PetStore."""

    name: str
    #: None: any tag is allowed; an empty tuple: no tag is allowed.
    allowed_tags: tuple[str, ...] | None

    @classmethod
    def from_body(cls, name: str, spec: Mapping[str, Any]) -> StoreView:
        allowed = spec.get("allowedTags")
        return cls(name, None if allowed is None else tuple(allowed))


@dataclasses.dataclass(frozen=True)
class IdClaim:
    """The outcome of claiming a Pet's id cluster-wide.

    ``holder`` is ``namespace/name`` of the pet that holds the id when it is not this one.
    """

    status: str  # "True", "False" or "Unknown"
    reason: str
    message: str
    holder: str | None = None


#: Until cluster-wide claims exist the claim is honestly unknown, never faked as held.
ID_CLAIM_NOT_ENFORCED = IdClaim(
    "Unknown",
    "NotEnforced",
    "Cluster-wide id uniqueness is not enforced by this operator version.",
)


@dataclasses.dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Verdict:
    phase: Phase
    reason: str
    message: str
    conditions: tuple[Condition, ...]


def disallowed_tags(tags: Sequence[str], allowed: Sequence[str] | None) -> list[str]:
    """Tags not in ``allowed``, in the pet's order; ``allowed=None`` allows everything."""
    if allowed is None:
        return []
    allowed_set = set(allowed)
    return [tag for tag in tags if tag not in allowed_set]


def describe_allowed(allowed: Sequence[str] | None) -> str:
    if allowed is None:
        return "any tag"
    if not allowed:
        return "no tags at all"
    return "[" + ", ".join(sorted(allowed)) + "]"


def evaluate_pet(
    name: str,
    spec: Mapping[str, Any],
    store: StoreView | None,
    claim: IdClaim = ID_CLAIM_NOT_ENFORCED,
) -> Verdict:
    """Decide a Pet's phase from its spec, its store (None: not found) and its id claim.

    Precedence when several things are wrong: an id the operator cannot use (``Invalid``,
    ``InvalidId``: never ``Active`` without an id) first; then an id held elsewhere (``Conflict``),
    since nothing else matters until the id is this pet's; then a missing store
    (``Pending``), which fixes itself; then tags the store does not allow (``Invalid``).
    """
    store_name = spec.get("store")
    tags: list[str] = list(spec.get("tags") or [])

    if claim.status == "False":
        id_cond = Condition("IdClaimed", "False", Reason.DUPLICATE_ID.value, claim.message)
    else:
        id_cond = Condition("IdClaimed", claim.status, claim.reason, claim.message)

    if store_name and store is None:
        tags_cond = Condition(
            "TagsValid", "Unknown", Reason.STORE_NOT_FOUND.value,
            f"Tags cannot be checked until PetStore {store_name!r} exists.",
        )
    else:
        bad = disallowed_tags(tags, store.allowed_tags if store else None)
        if bad and store is not None:  # disallowed_tags finds none without a store
            tags_cond = Condition(
                "TagsValid", "False", Reason.TAGS_NOT_ALLOWED.value,
                f"Tags {', '.join(repr(t) for t in bad)} are not allowed by PetStore {store.name!r}, "
                f"which allows {describe_allowed(store.allowed_tags)}.",
            )
        elif store is not None:
            tags_cond = Condition(
                "TagsValid", "True", "TagsAllowed", f"All tags are allowed by PetStore {store.name!r}."
            )
        else:
            tags_cond = Condition("TagsValid", "True", "NoStore", "The pet names no store, so any tag is allowed.")

    if usable_id(spec.get("id")) is None:
        # fail closed: without an id the pet cannot hold one, whatever the claim says
        phase, reason = Phase.INVALID, Reason.INVALID_ID.value
        message = (f"spec.id {spec.get('id')!r} is not an integer from 1 to {MAX_ID}, so no id can be held; "
                   "delete the pet and create it again with a valid id.")
        id_cond = Condition("IdClaimed", "False", reason, message)
    elif claim.status == "False":
        phase, reason = Phase.CONFLICT, Reason.DUPLICATE_ID.value
        message = f"{claim.message} Change spec.id (delete and recreate the pet) or delete the holder."
    elif claim.status == "Unknown" and claim.reason == "Claiming":
        phase, reason = Phase.PENDING, "IdClaimPending"
        message = f"{claim.message} The operator retries until the claim is settled."
    elif store_name and store is None:
        phase, reason = Phase.PENDING, Reason.STORE_NOT_FOUND.value
        message = (
            f"PetStore {store_name!r} does not exist in this namespace; create it or change "
            "spec.store, and the pet becomes Active by itself."
        )
    elif tags_cond.status == "False":
        phase, reason = Phase.INVALID, Reason.TAGS_NOT_ALLOWED.value
        message = f"{tags_cond.message} Remove those tags or widen the store's allowedTags."
    else:
        phase, reason = Phase.ACTIVE, Reason.RECONCILED.value
        message = f"Pet {name!r} is reconciled and active."

    ready = Condition("Ready", "True" if phase is Phase.ACTIVE else "False", reason, message)
    return Verdict(phase, reason, message, (ready, id_cond, tags_cond))


def merge_conditions(
    current: Iterable[Mapping[str, Any]] | None,
    desired: Iterable[Condition],
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """Desired conditions in Kubernetes form, keeping ``lastTransitionTime`` while status holds."""
    previous = {c.get("type"): c for c in (current or [])}
    merged: list[dict[str, Any]] = []
    for cond in desired:
        old = previous.get(cond.type)
        changed = old is None or old.get("status") != cond.status
        merged.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message,
                "observedGeneration": generation,
                "lastTransitionTime": now if changed or not old or not old.get("lastTransitionTime")
                else old["lastTransitionTime"],
            }
        )
    return merged


def pet_status(
    current: Mapping[str, Any] | None, verdict: Verdict, generation: int, now: str
) -> dict[str, Any]:
    """The full status a Pet should have; ``lastTransitionTime`` moves only with the phase."""
    current = current or {}
    phase_changed = current.get("phase") != verdict.phase.value
    return {
        "phase": verdict.phase.value,
        "reason": verdict.reason,
        "message": verdict.message,
        "observedGeneration": generation,
        "lastTransitionTime": now if phase_changed or not current.get("lastTransitionTime")
        else current["lastTransitionTime"],
        "conditions": merge_conditions(current.get("conditions"), verdict.conditions, generation, now),
    }


def store_status(
    current: Mapping[str, Any] | None, pet_phases: Iterable[str | None], generation: int, now: str
) -> dict[str, Any]:
    """A PetStore's status from the phases of the pets that name it."""
    phases = list(pet_phases)
    active = sum(1 for p in phases if p == Phase.ACTIVE.value)
    ready = Condition("Ready", "True", "Reconciled", f"{len(phases)} pets name this store, {active} active.")
    return {
        "petCount": len(phases),
        "activeCount": active,
        "observedGeneration": generation,
        "conditions": merge_conditions((current or {}).get("conditions"), [ready], generation, now),
    }


def status_differs(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Whether writing ``desired`` would change anything the operator owns."""
    current = current or {}
    return any(current.get(key) != value for key, value in desired.items())


# --- records: what the operator reads of the cluster -----------------------------------------------

Key = tuple[str, str]  # (namespace, name)

#: Strings at most this long are interned when a snapshot copies them: the keys, phases, reasons,
#: condition types and timestamps of thousands of statuses are the same few strings, and each
#: decoded watch event carries its own copies (a few KB per pet in the index, measured).
INTERN_UP_TO = 64


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
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def pet_id(self) -> int | None:
        """The id to claim; None if the pet has none the operator can use (it is then Invalid)."""
        return usable_id(self.spec.get("id"))

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

    def view(self) -> StoreView:
        return StoreView.from_body(self.name, self.spec)


#: The three indexes the reconciler reads; Kopf's ``Index`` objects satisfy these.
PetIndex = Mapping[Key, Collection[PetSnapshot]]
StoreIndex = Mapping[Key, Collection[StoreSnapshot]]
PetsByStore = Mapping[Key, Collection[Key]]


def first(values: Collection[Any] | None) -> Any:
    """The one value an index holds under a key, or None."""
    if not values:
        return None
    return next(iter(values))


@dataclasses.dataclass(frozen=True)
class Claim:
    """An id claim as read from the cluster (the Lease ``pet-id-<id>``, see :mod:`claims`)."""

    pet_id: int
    holder: str  # namespace/name
    holder_uid: str
    resource_version: str

    @property
    def holder_key(self) -> Key:
        namespace, _, name = self.holder.partition("/")
        return namespace, name


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """The leader-election Lease as read from the cluster (see :mod:`leader`)."""

    holder: str
    lease_duration: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str
    uid: str = ""

"""Fakes for id claims, finalizers and Events that answer like the API server.

Not a test module (the name does not match ``test_*.py``); the tests import it directly,
like :mod:`operator_fakes`, which this extends without changing it.

Every fake awaits ``asyncio.sleep(0)`` before and after its atomic step, so concurrent
callers really interleave (the step itself never yields, like one request at the server).
All of them can share a :class:`Journal`, which records the order of calls across fakes.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
from collections.abc import Callable, Mapping
from typing import Any

from operator_fakes import NS, pet_body

from pet_operator.claims import Claim, claim_body, claim_from_body
from pet_operator.kube import NotFound
from pet_operator.model import PetSnapshot
from pet_operator.rest import ApiError


class Journal(list[tuple[Any, ...]]):
    """Calls made to the fakes that share it, in order: ``(operation, *arguments)``."""

    def ops(self, *names: str) -> list[str]:
        return [entry[0] for entry in self if not names or entry[0] in names]


def api_error(status: int, reason: str = "") -> ApiError:
    return ApiError(status=status, reason=reason or {404: "Not Found", 409: "Conflict"}.get(status, "Error"))


class FakeClaimStore:
    """A ``ClaimStore`` backed by a dict keyed by id: Leases in the claims namespace.

    - create is create-if-absent (None when the name exists), like a POST that may 409;
    - delete carries the resourceVersion precondition (False when changed or gone);
    - every stored claim gets a fresh resourceVersion from a shared counter.
    - ``before_delete``: called with the claim about to be deleted or moved (to change the store
      between a caller's read and its write, as another client would).
    - ``scripted_creates`` / ``scripted_reads``: answers given instead of the store's, in order.
    """

    def __init__(self, journal: Journal | None = None) -> None:
        self.claims: dict[int, Claim] = {}
        self.journal = journal if journal is not None else Journal()
        self.resource_version = 1000
        self.creates = 0
        self.reads = 0
        self.deletes: list[Claim] = []  # successful deletes
        self.lists = 0
        self.before_delete: Callable[[Claim], None] | None = None
        self.scripted_creates: list[Claim | None] = []
        self.scripted_reads: list[Claim | None] = []
        self.move_latency = 1  # yields before a move's atomic step (more: a slower request)

    def put(self, pet_id: int, namespace: str, name: str, uid: str) -> Claim:
        """Store a claim directly (one made earlier, by any operator)."""
        self.resource_version += 1
        body = claim_body(pet_id, namespace, name, uid)
        body["metadata"]["resourceVersion"] = str(self.resource_version)
        claim = claim_from_body(body)
        assert claim is not None
        self.claims[pet_id] = claim
        return claim

    async def create_claim(self, pet_id: int, namespace: str, name: str, uid: str) -> Claim | None:
        await asyncio.sleep(0)
        self.creates += 1
        self.journal.append(("create_claim", pet_id, f"{namespace}/{name}", uid))
        if self.scripted_creates:
            return self.scripted_creates.pop(0)
        # the atomic step: no await between the check and the insert
        result = None if pet_id in self.claims else self.put(pet_id, namespace, name, uid)
        await asyncio.sleep(0)
        return result

    async def read_claim(self, pet_id: int) -> Claim | None:
        await asyncio.sleep(0)
        self.reads += 1
        self.journal.append(("read_claim", pet_id))
        if self.scripted_reads:
            return self.scripted_reads.pop(0)
        return self.claims.get(pet_id)

    async def delete_claim(self, claim: Claim) -> bool:
        await asyncio.sleep(0)
        self.journal.append(("delete_claim", claim.pet_id, claim.holder, claim.resource_version))
        if self.before_delete is not None:
            self.before_delete(claim)
        current = self.claims.get(claim.pet_id)
        if current is None or current.resource_version != claim.resource_version:
            return False
        del self.claims[claim.pet_id]
        self.deletes.append(claim)
        await asyncio.sleep(0)
        return True

    async def move_claim(self, claim: Claim, namespace: str, name: str, uid: str) -> Claim | None:
        """Give exactly this claim to another pet (resourceVersion precondition); None if it changed
        or is gone."""
        for _ in range(self.move_latency):
            await asyncio.sleep(0)
        self.journal.append(("move_claim", claim.pet_id, claim.holder, f"{namespace}/{name}"))
        if self.before_delete is not None:
            self.before_delete(claim)
        current = self.claims.get(claim.pet_id)
        if current is None or current.resource_version != claim.resource_version:
            return None
        moved = self.put(claim.pet_id, namespace, name, uid)  # the atomic step
        await asyncio.sleep(0)
        return moved

    async def list_claims(self) -> list[Claim]:
        await asyncio.sleep(0)
        self.lists += 1
        self.journal.append(("list_claims",))
        return list(self.claims.values())

    def holder(self, pet_id: int) -> str | None:
        claim = self.claims.get(pet_id)
        return claim.holder if claim is not None else None


@dataclasses.dataclass
class FinalizerCall:
    plural: str
    namespace: str
    name: str
    finalizers: list[str]
    resource_version: str


class FakeFinalizers:
    """A ``FinalizerWriter`` that records every ``set_finalizers`` call.

    ``errors``: exceptions raised by the next calls, in order (after recording them).
    """

    def __init__(self, journal: Journal | None = None) -> None:
        self.calls: list[FinalizerCall] = []
        self.journal = journal if journal is not None else Journal()
        self.errors: list[BaseException] = []
        self.resource_version = 500

    async def set_finalizers(
        self, plural: str, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> dict[str, Any]:
        await asyncio.sleep(0)
        self.calls.append(FinalizerCall(plural, namespace, name, list(finalizers), resource_version))
        self.journal.append(("set_finalizers", f"{namespace}/{name}", tuple(finalizers)))
        if self.errors:
            raise self.errors.pop(0)
        self.resource_version += 1
        return {
            "metadata": {
                "namespace": namespace,
                "name": name,
                "finalizers": list(finalizers),
                "resourceVersion": str(self.resource_version),
            }
        }


def not_found(namespace: str, name: str) -> NotFound:
    return NotFound(f"pets {namespace}/{name}")


def claim_pet(
    name: str,
    *,
    namespace: str = NS,
    pet_id: int = 7,
    created: str = "2024-01-01T00:00:00Z",
    finalizers: tuple[str, ...] = (),
    deleting: bool = False,
    rv: str = "1",
    uid: str | None = None,
    status: dict[str, Any] | None = None,
) -> PetSnapshot:
    """A pet snapshot with the metadata claims care about: id, creation time, finalizers, deletion."""
    body = pet_body(name, namespace=namespace, rv=rv, uid=uid, status=status)
    body["spec"]["id"] = pet_id
    meta = body["metadata"]
    meta["creationTimestamp"] = created
    if finalizers:
        meta["finalizers"] = list(finalizers)
    if deleting:
        meta["deletionTimestamp"] = "2024-01-02T00:00:00Z"
    return PetSnapshot.from_body(body)


class FakeEventApi:
    """An ``EventApi`` over a dict keyed by ``(namespace, name)``, like the API server.

    create answers None when the name exists (409); read answers None when gone (404);
    patch merges into the stored Event and fails with a 404 ApiError when it is gone,
    as ``kube.Kube.patch_event`` does. ``errors[operation]`` raises on the next such call.
    """

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str, dict[str, Any] | None]] = []  # (op, namespace, name, payload)
        self.errors: dict[str, list[BaseException]] = {}
        self._versions = itertools.count(1)

    def _fail(self, op: str) -> None:
        queued = self.errors.get(op)
        if queued:
            raise queued.pop(0)

    def _view(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"count": event.get("count"), "resourceVersion": event["metadata"]["resourceVersion"]}

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        name = body["metadata"]["name"]
        self.calls.append(("create", namespace, name, copy.deepcopy(dict(body))))
        self._fail("create")
        if (namespace, name) in self.events:
            return None
        event = copy.deepcopy(dict(body))
        event["metadata"] = {**event["metadata"], "resourceVersion": str(next(self._versions))}
        self.events[(namespace, name)] = event
        return self._view(event)

    async def read_event(self, namespace: str, name: str) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        self.calls.append(("read", namespace, name, None))
        self._fail("read")
        event = self.events.get((namespace, name))
        return None if event is None else self._view(event)

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        self.calls.append(("patch", namespace, name, copy.deepcopy(dict(patch))))
        self._fail("patch")
        event = self.events.get((namespace, name))
        if event is None:
            raise api_error(404)
        precondition = (patch.get("metadata") or {}).get("resourceVersion")
        if precondition is not None and precondition != event["metadata"]["resourceVersion"]:
            raise api_error(409)
        event.update(copy.deepcopy({k: v for k, v in patch.items() if k != "metadata"}))
        event["metadata"]["resourceVersion"] = str(next(self._versions))
        return self._view(event)

    def ops(self) -> list[str]:
        return [call[0] for call in self.calls]

    def patches(self) -> list[dict[str, Any]]:
        return [call[3] or {} for call in self.calls if call[0] == "patch"]


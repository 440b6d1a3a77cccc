"""After the load: did every pet end in the status the contract predicts?

The load's stores allow every tag it uses and exist, so every pet must end ``Active`` unless
another pet holds its id (then ``Conflict``); exactly one pet per id is ``Active``; every status
describes the pet's current generation; no pet is left half-deleted; and, where id claims are
kept (ours, the naive peer, the raw chain), there is one claim per id held.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from kubernetes import client

from pet_harness.kube import GROUP, VERSION, claim_id


@dataclasses.dataclass
class Verdict:
    pets: int
    by_phase: dict[str, int]
    problems: list[str]
    seconds_waited: float

    @property
    def ok(self) -> bool:
        return not self.problems


def list_all(api: Any, plural: str, namespaces: Sequence[str], page: int = 1000) -> Iterator[dict[str, Any]]:
    custom = client.CustomObjectsApi(api)
    for ns in namespaces:
        token = None
        while True:
            kwargs: dict[str, Any] = {"limit": page}
            if token:
                kwargs["_continue"] = token
            result = custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural, **kwargs)
            yield from result.get("items", [])
            token = (result.get("metadata") or {}).get("continue")
            if not token:
                break


def _status(obj: dict[str, Any], path: Sequence[str]) -> dict[str, Any]:
    node: Any = obj
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def check(pets: list[dict[str, Any]], status_path: Sequence[str], claims: set[int] | None) -> tuple[
        dict[str, int], list[str]]:
    """The problems of a population (empty when it is as the contract says)."""
    problems: list[str] = []
    by_phase: dict[str, int] = defaultdict(int)
    holders: dict[int, list[str]] = defaultdict(list)
    for pet in pets:
        meta = pet["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        status = _status(pet, status_path)
        phase = str(status.get("phase"))
        by_phase[phase] += 1
        if meta.get("deletionTimestamp"):
            problems.append(f"{key}: still being deleted (finalizers {meta.get('finalizers')})")
            continue
        if status.get("observedGeneration") != meta.get("generation"):
            problems.append(f"{key}: observedGeneration {status.get('observedGeneration')} "
                            f"!= generation {meta.get('generation')}")
        if phase not in ("Active", "Conflict"):
            problems.append(f"{key}: phase {phase} ({status.get('reason')}: {status.get('message')})")
        if phase == "Active":
            holders[int(pet["spec"]["id"])].append(key)
    ids = {int(p["spec"]["id"]) for p in pets if not p["metadata"].get("deletionTimestamp")}
    for pet_id in sorted(ids):
        active = holders.get(pet_id, [])
        if len(active) != 1:
            problems.append(f"id {pet_id}: {len(active)} Active pets ({', '.join(active) or 'none'}); "
                            "exactly one expected")
    if claims is not None:
        held = set(holders)
        if claims != held:
            extra, missing = sorted(claims - held), sorted(held - claims)
            problems.append(f"claims differ from the ids held: {len(extra)} claims without an Active holder "
                            f"{extra[:5]}, {len(missing)} held ids without a claim {missing[:5]}")
    return dict(by_phase), problems


def claim_ids(api: Any, namespace: str) -> set[int]:
    leases = client.CoordinationV1Api(api).list_namespaced_lease(namespace)
    out = set()
    for lease in leases.items:
        pet_id = claim_id(lease.metadata.name)
        if pet_id is not None:
            out.add(pet_id)
    return out


def verify(api: Any, namespaces: Sequence[str], status_path: str, claims_namespace: str | None,
           timeout: float = 120) -> Verdict:
    """Wait (at most ``timeout``) until the population is as the contract says; the verdict either way."""
    path = status_path.split(".")
    started = time.monotonic()
    while True:
        pets = list(list_all(api, "pets", namespaces))
        claims = claim_ids(api, claims_namespace) if claims_namespace else None
        by_phase, problems = check(pets, path, claims)
        waited = time.monotonic() - started
        if not problems or waited > timeout:
            if len(problems) > 20:
                problems = [*problems[:20], f"... and {len(problems) - 20} more"]
            return Verdict(len(pets), by_phase, problems, round(waited, 1))
        time.sleep(2)

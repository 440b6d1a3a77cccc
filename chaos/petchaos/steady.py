"""The steady state of pets and id claims, from their plain dicts (pure; both targets use it)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

__all__ = ["CLAIM_PREFIX", "check_pets"]

CLAIM_PREFIX = "pet-id-"


def check_pets(pets: Sequence[dict[str, Any]], claims: Sequence[dict[str, Any]],
               namespace: str = "") -> dict[str, Any]:
    """Every pet reconciled at its generation, in phase Active or Conflict, none stuck deleting;
    one non-Conflict pet per id (ids are unique across namespaces); the claims (``pet-id-<N>``
    Leases) are exactly the ids of the non-Conflict pets, each held by that pet
    (``namespace/name``). ``namespace`` stands in for pets whose metadata has none."""
    problems: list[str] = []
    holders: dict[int, list[str]] = {}
    for pet in pets:
        meta, status = pet.get("metadata", {}), pet.get("status") or {}
        name = f"{meta.get('namespace') or namespace}/{meta.get('name', '?')}"
        if meta.get("deletionTimestamp"):
            problems.append(f"{name}: being deleted")
            continue
        if status.get("observedGeneration") != meta.get("generation"):
            problems.append(f"{name}: observedGeneration {status.get('observedGeneration')} "
                            f"!= generation {meta.get('generation')}")
        phase = status.get("phase")
        if phase not in ("Active", "Conflict"):
            problems.append(f"{name}: phase {phase}")
        if phase != "Conflict":
            holders.setdefault(int(pet.get("spec", {}).get("id", -1)), []).append(name)
    duplicates = {pet_id: names for pet_id, names in holders.items() if len(names) > 1}
    for pet_id, names in duplicates.items():
        problems.append(f"id {pet_id}: {len(names)} non-Conflict pets {sorted(names)}")
    claimed: dict[int, str] = {}
    for claim in claims:
        claim_name = claim.get("metadata", {}).get("name", "")
        if not claim_name.startswith(CLAIM_PREFIX):
            continue
        with contextlib.suppress(ValueError):
            claimed[int(claim_name[len(CLAIM_PREFIX):])] = str((claim.get("spec") or {}).get("holderIdentity") or "")
    orphans = sorted(set(claimed) - set(holders))
    unclaimed = sorted(set(holders) - set(claimed))
    if orphans:
        problems.append(f"orphaned claims: {orphans}")
    if unclaimed:
        problems.append(f"ids without a claim: {unclaimed}")
    for pet_id, names in holders.items():
        holder = claimed.get(pet_id)
        if holder is not None and len(names) == 1 and holder != names[0]:
            problems.append(f"claim of id {pet_id} held by {holder}, not {names[0]}")
    return {"ok": not problems, "pets": len(pets), "problems": problems[:20],
            "duplicate_ids": len(duplicates), "orphaned_claims": len(orphans)}

"""Cluster-wide unique pet ids: one claim object per id, created if absent.

A claim is a ``coordination.k8s.io/v1`` Lease named ``pet-id-<id>`` in the claims
namespace (the operator's own namespace, where a namespace-scoped operator's RBAC
reaches). Creating it is the atomic step: the API server accepts exactly one create
of a name, whatever the number of operator replicas or clients racing. The holder is
recorded in ``spec.holderIdentity`` (``namespace/name``) and the pet's UID in an
annotation, so a restarted operator recognises its own claims and can tell orphans.

A claim is released (deleted, with the holder's UID and resourceVersion as
preconditions) by the pet's finalizer; orphans, whose pet UID is gone, are collected
at start-up and periodically.
"""

from __future__ import annotations

from typing import Any, Protocol

from pet_operator.model import CLAIM_PREFIX, GROUP, Claim, IdClaim

__all__ = ["CLAIM_LABEL", "FINALIZER", "UID_ANNOTATION", "Claim", "ClaimStore", "claim_body", "claim_from_body",
           "claim_name", "claim_outcome"]

CLAIM_LABEL = f"{GROUP}/id-claim"
UID_ANNOTATION = f"{GROUP}/pet-uid"
FINALIZER = f"{GROUP}/id-claim"


def claim_name(pet_id: int) -> str:
    return f"{CLAIM_PREFIX}{pet_id}"


def claim_body(pet_id: int, namespace: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": claim_name(pet_id),
            "labels": {CLAIM_LABEL: "true"},
            "annotations": {UID_ANNOTATION: uid},
        },
        "spec": {"holderIdentity": f"{namespace}/{name}"},
    }


def claim_from_body(body: dict[str, Any]) -> Claim | None:
    """The claim a Lease describes, or None if the Lease is not one of ours."""
    meta = body.get("metadata") or {}
    name = str(meta.get("name", ""))
    number = name.removeprefix(CLAIM_PREFIX)
    if number == name or not number.isdigit():
        return None
    return Claim(
        pet_id=int(number),
        holder=str((body.get("spec") or {}).get("holderIdentity") or ""),
        holder_uid=str((meta.get("annotations") or {}).get(UID_ANNOTATION, "")),
        resource_version=str(meta.get("resourceVersion", "")),
    )


class ClaimStore(Protocol):
    """What :class:`id_claims.IdClaims` needs from the API to manage claims (see ``kube.Kube``)."""

    async def create_claim(self, pet_id: int, namespace: str, name: str, uid: str) -> Claim | None:
        """Create the claim; None if one with that name already exists."""

    async def read_claim(self, pet_id: int) -> Claim | None:
        """The current claim for the id, or None if there is none."""

    async def delete_claim(self, claim: Claim) -> bool:
        """Delete exactly this claim (UID/resourceVersion preconditions); False if it changed or is gone."""

    async def move_claim(self, claim: Claim, namespace: str, name: str, uid: str) -> Claim | None:
        """Give exactly this claim (resourceVersion precondition) to another pet; None if it
        changed or is gone."""

    async def list_claims(self) -> list[Claim]:
        """Every claim in the claims namespace."""


def claim_outcome(pet_id: int, namespace: str, name: str, uid: str, claim: Claim | None) -> IdClaim:
    """What a pet's ``IdClaimed`` condition says, given the claim for its id."""
    if claim is not None and claim.holder_uid == uid:
        return IdClaim("True", "Claimed", f"Id {pet_id} is held by this pet.")
    if claim is None:
        return IdClaim("Unknown", "Claiming", f"Id {pet_id} is being claimed.")
    return IdClaim(
        "False",
        "DuplicateId",
        f"Id {pet_id} is already held by pet {claim.holder}.",
        holder=claim.holder,
    )

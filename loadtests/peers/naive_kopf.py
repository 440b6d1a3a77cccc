"""The naive peer: the Pet contract written the way Kopf's documentation shows it.

This is what a user would write before learning what the project's operator does differently:
``on.create``/``on.update``/``on.resume`` handlers that read what they need with the synchronous
``kubernetes`` client and *return* the status, which Kopf stores under ``status.<handler id>``
(here ``status.reconcile``); an ``on.delete`` handler (so Kopf adds its own finalizer) that
releases the id; an Event per phase change through ``kopf.info``/``kopf.warn``; Kopf's default
settings: its progress and diff-base annotations and its finalizer. Store counts come from a Kopf index and a
timer per store, as the documentation's index example does.

It follows the same contract as far as the load needs (Active, StoreNotFound, TagsNotAllowed,
DuplicateId with an id claim Lease per id), so the two operators do the same work. Run with
``kopf run --standalone --namespace NS ... loadtests/peers/naive_kopf.py``; the claims namespace
comes from ``PET_CLAIMS_NAMESPACE``. It needs a copy of the Pet CRD whose status keeps unknown
fields (``pet-harness load`` installs one).
"""

from __future__ import annotations

import os
from typing import Any

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException

GROUP, VERSION = "petstore.example.com", "v1"
CLAIMS_NAMESPACE = os.environ.get("PET_CLAIMS_NAMESPACE", "pet-system")


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_kubeconfig(**kwargs)  # type: ignore[no-any-return]


@kopf.on.startup()
def startup(**_: Any) -> None:
    kubernetes.config.load_kube_config()


def _read_store(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return kubernetes.client.CustomObjectsApi().get_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, namespace, "petstores", name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _claim(pet_id: int, namespace: str, name: str, uid: str) -> str | None:
    """Take the id; returns the holder ``namespace/name`` when another pet holds it."""
    leases = kubernetes.client.CoordinationV1Api()
    lease_name = f"pet-id-{pet_id}"
    body = {"metadata": {"name": lease_name, "annotations": {f"{GROUP}/pet-uid": uid}},
            "spec": {"holderIdentity": f"{namespace}/{name}"}}
    try:
        leases.create_namespaced_lease(CLAIMS_NAMESPACE, body)
        return None
    except ApiException as exc:
        if exc.status != 409:
            raise
    lease = leases.read_namespaced_lease(lease_name, CLAIMS_NAMESPACE)
    if (lease.metadata.annotations or {}).get(f"{GROUP}/pet-uid") == uid:
        return None
    return str(lease.spec.holder_identity)


@kopf.on.resume(GROUP, VERSION, "pets")
@kopf.on.create(GROUP, VERSION, "pets")
@kopf.on.update(GROUP, VERSION, "pets")
def reconcile(body: Any, spec: Any, status: Any, **_: Any) -> dict[str, Any]:
    result = decide(spec, body["metadata"])
    if (status.get("reconcile") or {}).get("phase") != result["phase"]:
        # the contract's Event per phase change, posted the way Kopf's docs show
        post = kopf.info if result["phase"] == "Active" else kopf.warn
        post(body, reason=result["reason"], message=result["message"])
    return result


def decide(spec: Any, meta: Any) -> dict[str, Any]:
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    generation = meta.get("generation")
    holder = _claim(int(spec["id"]), namespace, name, uid)
    if holder is not None:
        return {"phase": "Conflict", "reason": "DuplicateId", "observedGeneration": generation,
                "message": f"Id {spec['id']} is already held by pet {holder}."}
    store_name = spec.get("store")
    if store_name:
        store = _read_store(namespace, store_name)
        if store is None:
            return {"phase": "Pending", "reason": "StoreNotFound", "observedGeneration": generation,
                    "message": f"PetStore {store_name} does not exist."}
        allowed = (store.get("spec") or {}).get("allowedTags")
        bad = [t for t in spec.get("tags") or [] if allowed is not None and t not in allowed]
        if bad:
            return {"phase": "Invalid", "reason": "TagsNotAllowed", "observedGeneration": generation,
                    "message": f"Tags {bad} are not allowed by store {store_name}."}
    return {"phase": "Active", "reason": "Reconciled", "observedGeneration": generation,
            "message": "The pet is reconciled."}


@kopf.on.delete(GROUP, VERSION, "pets")
def release(spec: Any, uid: str, **_: Any) -> None:
    leases = kubernetes.client.CoordinationV1Api()
    lease_name = f"pet-id-{spec.get('id')}"
    try:
        lease = leases.read_namespaced_lease(lease_name, CLAIMS_NAMESPACE)
    except ApiException as exc:
        if exc.status == 404:
            return
        raise
    if (lease.metadata.annotations or {}).get(f"{GROUP}/pet-uid") == uid:
        try:
            leases.delete_namespaced_lease(lease_name, CLAIMS_NAMESPACE)
        except ApiException as exc:
            if exc.status != 404:
                raise


@kopf.index(GROUP, VERSION, "pets")
def pets_by_store(namespace: str, spec: Any, name: str, **_: Any) -> dict[tuple[str, str], str] | None:
    store = spec.get("store")
    return {(namespace, store): name} if store else None


@kopf.timer(GROUP, VERSION, "petstores", interval=10)
def count(namespace: str, name: str, pets_by_store: kopf.Index[tuple[str, str], str], **_: Any) -> dict[str, int]:
    return {"petCount": len(pets_by_store.get((namespace, name), []))}

"""Remove the operator's traces when it is gone for good (uninstalling it).

Pets carry the finalizer ``petstore.example.com/id-claim`` so that deleting one always
releases its id claim. Without the operator such pets can never be deleted; this strips
the finalizer from them and, when told where, deletes the id claims too. In namespace mode
the operator's RoleBinding in each served namespace carries ``petstore.example.com/pets-finalized``
(kept until the namespace's pets are finalized): that one is stripped too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pet_harness.kube import GROUP, VERSION
from pet_operator.bindings import BINDING_FINALIZER
from pet_operator.claims import CLAIM_LABEL as CLAIM_LABEL_KEY
from pet_operator.claims import FINALIZER

CLAIM_LABEL = f"{CLAIM_LABEL_KEY}=true"


def strip(api: Any, namespaces: Sequence[str] | None, claims_namespace: str | None = None) -> tuple[int, int]:
    """Strip the finalizer from pets in ``namespaces`` (None: all); returns (pets, claims) changed."""
    custom = client.CustomObjectsApi(api)
    if namespaces is None:
        items = custom.list_cluster_custom_object(GROUP, VERSION, "pets")["items"]
    else:
        items = [
            item for ns in namespaces
            for item in custom.list_namespaced_custom_object(GROUP, VERSION, ns, "pets")["items"]
        ]
    stripped = 0
    for pet in items:
        meta = pet["metadata"]
        finalizers = meta.get("finalizers") or []
        if FINALIZER not in finalizers:
            continue
        patch = {"metadata": {"finalizers": [f for f in finalizers if f != FINALIZER] or None,
                              "resourceVersion": meta["resourceVersion"]}}
        try:
            custom.patch_namespaced_custom_object(GROUP, VERSION, meta["namespace"], "pets", meta["name"], patch,
                                                  _content_type="application/merge-patch+json")
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
            continue
        stripped += 1
    _strip_bindings(api, namespaces)
    claims = 0
    if claims_namespace:
        coordination = client.CoordinationV1Api(api)
        for lease in coordination.list_namespaced_lease(claims_namespace, label_selector=CLAIM_LABEL).items:
            try:
                coordination.delete_namespaced_lease(lease.metadata.name, claims_namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                continue
            claims += 1
    return stripped, claims


def _strip_bindings(api: Any, namespaces: Sequence[str] | None) -> int:
    """Remove the operator's finalizer from RoleBindings in ``namespaces`` (None: all); returns how many."""
    rbac = client.RbacAuthorizationV1Api(api)
    items = (rbac.list_role_binding_for_all_namespaces().items if namespaces is None
             else [b for ns in namespaces for b in rbac.list_namespaced_role_binding(ns).items])
    stripped = 0
    for binding in items:
        meta = binding.metadata
        finalizers = list(meta.finalizers or [])
        if BINDING_FINALIZER not in finalizers:
            continue
        patch = {"metadata": {"finalizers": [f for f in finalizers if f != BINDING_FINALIZER] or None,
                              "resourceVersion": meta.resource_version}}
        try:
            rbac.patch_namespaced_role_binding(meta.name, meta.namespace, patch)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
            continue
        stripped += 1
    return stripped

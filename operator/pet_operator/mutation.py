"""The mutating admission decision for Pets (pure): our finalizer put on a pet as it is created.

With the finalizer already on the pet when the API server stores it, the operator skips its
own PATCH that would add it (:meth:`pet_operator.id_claims.IdClaims.claim`): one API write
fewer per created pet. That PATCH stays as the fallback, for pets created while the mutating
webhook was not called (down, not installed yet, failurePolicy Ignore) and for pets from which
someone removed the finalizer, so this decision is only an optimization and never refuses.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from pet_operator.claims import FINALIZER
from pet_operator.model import GROUP, PETS

PATH = "/mutate-pets"

JsonPatch = list[dict[str, Any]]


def finalizer_patch(req: Mapping[str, Any], served: frozenset[str] | None = None) -> JsonPatch | None:
    """The JSON Patch adding :data:`FINALIZER` to the pet an AdmissionReview request creates, or
    None when there is nothing to add: not a CREATE, not a pet (or a subresource of one), a pet
    being deleted, a pet that carries the finalizer already, or a namespace outside ``served``
    (None: all). A finalizer on a pet no operator serves would keep it from ever being deleted.

    ``req`` is the review's request as the API server sent it; anything of an unexpected shape
    means no patch, never an error."""
    if req.get("operation") != "CREATE":
        return None
    resource = req.get("resource")
    if not isinstance(resource, Mapping) or (resource.get("group"), resource.get("resource")) != (GROUP, PETS):
        return None
    if req.get("subResource"):
        return None
    if served is not None and req.get("namespace") not in served:
        return None
    obj = req.get("object")
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping) or meta.get("deletionTimestamp"):
        return None
    finalizers = meta.get("finalizers")
    if finalizers is None:
        return [{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]
    if not isinstance(finalizers, list) or FINALIZER in finalizers:
        return None
    return [{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}]


def review_response(uid: str, patch: JsonPatch | None) -> dict[str, Any]:
    """The AdmissionReview answer: always allowed, with the patch (base64 JSON) if there is one."""
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}

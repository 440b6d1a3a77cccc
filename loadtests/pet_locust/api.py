"""The Kubernetes API calls of the load, over a Locust HTTP session (so each shows in Locust's stats).

Every call names itself as ``VERB resource`` (``POST pets``, ``PATCH pets/status``...), which is
what Locust's tables, CSVs and charts group by.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

GROUP = "petstore.example.com"
VERSION = "v1"
CLAIM_PREFIX = "pet-id-"  # the Lease that claims an id: pet-id-<id>
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON = {"Content-Type": "application/json"}


class ApiError(Exception):
    """A call answered with an unexpected status; the message carries the API server's own."""

    def __init__(self, what: str, status: int, text: str) -> None:
        message = text
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(text).get("message", text)
        super().__init__(f"{what}: HTTP {status}: {message[:500]}")
        self.status = status
        self.message = message


def pets_path(namespace: str, name: str = "", sub: str = "") -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/pets"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


def stores_path(namespace: str, name: str = "", sub: str = "") -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/petstores"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


def pet_body(name: str, pet_id: int, tags: list[str], store: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"id": pet_id, "name": name, "tags": tags}
    if store:
        spec["store"] = store
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Pet", "metadata": {"name": name}, "spec": spec}


class Api:
    """Calls through one Locust session (a FastHttpSession or an HttpSession)."""

    def __init__(self, session: Any, headers: dict[str, str] | None = None) -> None:
        self.session = session
        self.headers = dict(headers or {})

    def call(
        self, method: str, path: str, name: str, body: Any = None, content: dict[str, str] = JSON,
        expect: tuple[int, ...] = (200, 201),
    ) -> tuple[int, dict[str, Any]]:
        """One request; a status outside ``expect`` is a failure in Locust's stats and raises ApiError.
        Returns the status and the decoded body."""
        headers = {**self.headers, **(content if body is not None else {})}
        data = json.dumps(body).encode() if body is not None else None
        with self.session.request(method, path, name=name, data=data, headers=headers,
                                  catch_response=True) as resp:
            status = int(resp.status_code or 0)
            text = resp.text or ""
            if status in expect:
                resp.success()
                try:
                    decoded = json.loads(text) if text else {}
                except ValueError:
                    decoded = {}
                return status, decoded
            error = ApiError(name, status, text) if status else ApiError(name, 0, repr(resp.error))
            resp.failure(error)
        raise error

    # --- pets -------------------------------------------------------------------------------

    def create_pet(self, namespace: str, body: dict[str, Any], name: str = "POST pets",
                   expect: tuple[int, ...] = (201,)) -> tuple[int, dict[str, Any]]:
        return self.call("POST", pets_path(namespace), name, body, expect=expect)

    def patch_pet(self, namespace: str, pet: str, patch: dict[str, Any], name: str = "PATCH pets") -> dict[str, Any]:
        return self.call("PATCH", pets_path(namespace, pet), name, patch, MERGE)[1]

    def patch_pet_status(self, namespace: str, pet: str, status: dict[str, Any]) -> dict[str, Any]:
        return self.call("PATCH", pets_path(namespace, pet, "status"), "PATCH pets/status", {"status": status},
                         MERGE)[1]

    def delete_pet(self, namespace: str, pet: str) -> dict[str, Any]:
        return self.call("DELETE", pets_path(namespace, pet), "DELETE pets", expect=(200, 202, 404))[1]

    # --- what an operator writes besides the status (the raw writer's "chain" variant) -------

    def patch_store_status(self, namespace: str, store: str, status: dict[str, Any]) -> dict[str, Any]:
        return self.call("PATCH", stores_path(namespace, store, "status"), "PATCH petstores/status",
                         {"status": status}, MERGE)[1]

    def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", "POST leases",
                         body, expect=(201, 409))[1]

    def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", f"/api/v1/namespaces/{namespace}/events", "POST events", body,
                         expect=(201, 409))[1]

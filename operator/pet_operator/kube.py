"""The operator's own API calls (status patches, claims, Events, Leases), over :mod:`rest`.

Kopf watches and runs handlers; every write the operator decides on goes through this
module, so that it is explicit which subresource is written and how. Every call is bounded
in time (:class:`Timeouts`); an error status is a :class:`rest.ApiError` with the server's message.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from pet_operator import rest
from pet_operator.api_reachability import ApiReachability
from pet_operator.claims import CLAIM_LABEL, FINALIZER, Claim, claim_body, claim_from_body, claim_name
from pet_operator.model import GROUP, PETS, PETSTORES, VERSION, LeaseRecord, StoreView
from pet_operator.rest import JSON_PATCH, MERGE_PATCH, ApiError

log = logging.getLogger(__name__)

LIST_PAGE = 500  # objects per page when listing claims
#: Connections to the API server at most: each TLS connection costs a 256 KB read buffer in asyncio
#: plus OpenSSL's state; at 100 (aiohttp's default) a burst left ~80 open. Calls beyond wait for one.
API_CONNECTIONS = 32
COORDINATION = ("apis", "coordination.k8s.io", "v1")
CUSTOM = ("apis", GROUP, VERSION)
ADMISSION = ("apis", "admissionregistration.k8s.io", "v1")
RBAC = ("apis", "rbac.authorization.k8s.io", "v1")


class NotFound(Exception):
    """The object is gone (deleted while we worked on it)."""


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Seconds each kind of call may take in all before it is given up (TimeoutError)."""

    read: float = 10.0
    write: float = 10.0
    list: float = 30.0


def load_credentials(kubeconfig: str | None) -> rest.Credentials:
    """From ``kubeconfig`` if given; else the pod's service account; else ``$KUBECONFIG`` or ``~/.kube/config``."""
    return rest.load(kubeconfig)


class Kube:
    """A small typed facade over the calls the operator makes."""

    def __init__(
        self, credentials: rest.Credentials, claims_namespace: str = "pet-system", timeouts: Timeouts = Timeouts(),
        reachability: ApiReachability | None = None,
    ) -> None:
        self.rest = rest.RestClient(credentials, pool=API_CONNECTIONS, reachability=reachability)
        self.claims_namespace = claims_namespace
        self.timeouts = timeouts

    async def close(self) -> None:
        await self.rest.close()

    async def server_version(self) -> dict[str, Any]:
        """``GET /version``: the cheapest question every client may ask (the reachability probe)."""
        return await self.rest.request("GET", "/version", timeout=self.timeouts.read)

    async def _get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any] | None:
        """The object at ``path``; None if there is none (404)."""
        try:
            return await self.rest.request("GET", path, timeout=self.timeouts.read, params=params)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def _write(
        self, method: str, path: str, body: Any, content_type: str = rest.JSON, gone: str | None = None,
    ) -> dict[str, Any]:
        """A write; a 404 becomes NotFound(``gone``) when ``gone`` names what would be gone."""
        try:
            return await self.rest.request(method, path, timeout=self.timeouts.write, body=body,
                                           content_type=content_type)
        except ApiError as exc:
            if exc.status == 404 and gone is not None:
                raise NotFound(gone) from exc
            raise

    # --- pets and stores ---------------------------------------------------------------------

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch the ``status`` subresource and return the object as the server has it.

        With ``resource_version`` the write is conditional: the API server refuses it (409)
        if the object changed since, so a decision made on an older view, or by a replica
        frozen mid-write while another took over, cannot land.
        """
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        path = rest.path_of(*CUSTOM, "namespaces", namespace, plural, name, "status")
        return await self._write("PATCH", path, body, MERGE_PATCH, gone=f"{plural} {namespace}/{name}")

    async def read_uid(self, namespace: str, name: str) -> str | None:
        """The UID of the pet ``namespace/name`` now; None if there is none."""
        body = await self._get(rest.path_of(*CUSTOM, "namespaces", namespace, PETS, name))
        return None if body is None else str(body["metadata"]["uid"])

    async def can_inherit(self, namespace: str, name: str, uid: str) -> bool:
        """Whether the pet exists now with this UID, is not being deleted, and has our finalizer."""
        body = await self._get(rest.path_of(*CUSTOM, "namespaces", namespace, PETS, name))
        if body is None:
            return False
        meta = body.get("metadata") or {}
        return (meta.get("uid") == uid and not meta.get("deletionTimestamp")
                and FINALIZER in (meta.get("finalizers") or []))

    async def namespace_exists(self, namespace: str) -> bool:
        """Whether ``namespace`` exists now (terminating counts: its pets may still be there)."""
        return await self._get(rest.path_of("api", "v1", "namespaces", namespace)) is not None

    async def list_uids(self, plural: str, namespaces: tuple[str, ...] | None) -> set[str]:
        """UIDs of every object of ``plural`` in ``namespaces`` (None: all namespaces), listed in pages of
        metadata only (the bodies would cost most of the time at start-up, at thousands of pets)."""
        paths = ([rest.path_of(*CUSTOM, plural)] if namespaces is None
                 else [rest.path_of(*CUSTOM, "namespaces", ns, plural) for ns in namespaces])
        uids: set[str] = set()
        for path in paths:
            async for item in self._pages(path, {}, accept=rest.METADATA_ONLY):
                uids.add(str(item["metadata"]["uid"]))
        return uids

    async def _pages(self, path: str, params: Mapping[str, str], accept: str = rest.JSON) -> Any:
        """Every item of a listing, ``LIST_PAGE`` at a time (a large population is never one response)."""
        list_cursor = ""
        while True:
            query = {**params, "limit": str(LIST_PAGE)}
            if list_cursor:
                query["continue"] = list_cursor
            page = await self.rest.request("GET", path, timeout=self.timeouts.list, params=query, accept=accept)
            for item in page.get("items") or []:
                yield item
            list_cursor = str((page.get("metadata") or {}).get("continue") or "")
            if not list_cursor:
                return

    async def set_finalizers(
        self, plural: str, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> dict[str, Any]:
        """Replace ``metadata.finalizers``; the resourceVersion makes it fail (409) if the object moved."""
        body = {"metadata": {"finalizers": finalizers or None, "resourceVersion": resource_version}}
        path = rest.path_of(*CUSTOM, "namespaces", namespace, plural, name)
        return await self._write("PATCH", path, body, MERGE_PATCH, gone=f"{plural} {namespace}/{name}")

    async def pets_with_finalizer(self, namespace: str, finalizer: str) -> list[dict[str, Any]]:
        """The pets in ``namespace`` that carry ``finalizer`` now (whole objects: one that no watch delivers
        is finalized from this)."""
        path = rest.path_of(*CUSTOM, "namespaces", namespace, PETS)
        return [
            item async for item in self._pages(path, {})
            if finalizer in ((item.get("metadata") or {}).get("finalizers") or ())
        ]

    async def namespace_terminating(self, name: str) -> bool:
        """Whether the namespace ``name`` is being deleted now (False if there is none)."""
        body = await self._get(rest.path_of("api", "v1", "namespaces", name))
        return body is not None and bool((body.get("metadata") or {}).get("deletionTimestamp"))

    # --- the operator's own RoleBinding in a served namespace (bindings.py) ---------------------

    async def read_role_binding(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get(rest.path_of(*RBAC, "namespaces", namespace, "rolebindings", name))

    async def set_role_binding_finalizers(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> dict[str, Any]:
        """Replace the RoleBinding's ``metadata.finalizers`` only (so RBAC's escalation check does not
        apply); the resourceVersion makes it fail (409) if the binding moved."""
        body = {"metadata": {"finalizers": finalizers or None, "resourceVersion": resource_version}}
        path = rest.path_of(*RBAC, "namespaces", namespace, "rolebindings", name)
        return await self._write("PATCH", path, body, MERGE_PATCH, gone=f"rolebinding {namespace}/{name}")

    async def read_store(self, namespace: str, name: str) -> StoreView | None:
        """The store as the API server's watch cache has it (``resourceVersion=0``: no etcd read;
        the webhook's check is early advice, the operator's reconcile is the judge)."""
        body = await self._get(rest.path_of(*CUSTOM, "namespaces", namespace, PETSTORES, name),
                               {"resourceVersion": "0"})
        return None if body is None else StoreView.from_body(name, body.get("spec") or {})

    # --- id claims (Leases in the claims namespace) -------------------------------------

    def _lease_path(self, namespace: str, name: str = "") -> str:
        return rest.path_of(*COORDINATION, "namespaces", namespace, "leases", name)

    async def create_claim(self, pet_id: int, namespace: str, name: str, uid: str) -> Claim | None:
        try:
            lease = await self._write("POST", self._lease_path(self.claims_namespace),
                                      claim_body(pet_id, namespace, name, uid))
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise
        return claim_from_body(lease)

    async def read_claim(self, pet_id: int, cached: bool = False) -> Claim | None:
        """The claim now (a quorum read), or with ``cached`` as the API server's watch cache has it."""
        lease = await self._get(self._lease_path(self.claims_namespace, claim_name(pet_id)),
                                {"resourceVersion": "0"} if cached else None)
        return None if lease is None else claim_from_body(lease)

    async def read_claim_cached(self, pet_id: int) -> Claim | None:
        return await self.read_claim(pet_id, cached=True)

    async def delete_claim(self, claim: Claim) -> bool:
        options = {"preconditions": {"resourceVersion": claim.resource_version}}
        try:
            await self._write("DELETE", self._lease_path(self.claims_namespace, claim_name(claim.pet_id)), options)
        except ApiError as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def move_claim(self, claim: Claim, namespace: str, name: str, uid: str) -> Claim | None:
        """Hand exactly this claim to another pet: one update (PUT, the ``update`` verb the claims
        role has anyway) of the whole Lease, conditional on the claim's resourceVersion (the API
        server refuses it with 409 if the Lease changed since)."""
        body = claim_body(claim.pet_id, namespace, name, uid)
        body["metadata"]["resourceVersion"] = claim.resource_version
        try:
            lease = await self._write("PUT", self._lease_path(self.claims_namespace, claim_name(claim.pet_id)), body)
        except ApiError as exc:
            if exc.status in (404, 409):
                return None
            raise
        return claim_from_body(lease)

    async def list_claims(self) -> list[Claim]:
        """Every claim, listed in pages of ``LIST_PAGE``."""
        found: list[Claim] = []
        selector = {"labelSelector": f"{CLAIM_LABEL}=true"}
        async for lease in self._pages(self._lease_path(self.claims_namespace), selector):
            claim = claim_from_body(lease)
            if claim is not None:
                found.append(claim)
        return found

    # --- events ----------------------------------------------------------------------------

    @staticmethod
    def _event_summary(event: Mapping[str, Any]) -> dict[str, Any]:
        return {"count": event.get("count"), "resourceVersion": (event.get("metadata") or {}).get("resourceVersion")}

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            event = await self._write("POST", rest.path_of("api", "v1", "namespaces", namespace, "events"), dict(body))
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise
        return self._event_summary(event)

    async def read_event(self, namespace: str, name: str) -> dict[str, Any] | None:
        event = await self._get(rest.path_of("api", "v1", "namespaces", namespace, "events", name))
        return None if event is None else self._event_summary(event)

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        event = await self._write("PATCH", rest.path_of("api", "v1", "namespaces", namespace, "events", name),
                                  dict(patch), MERGE_PATCH)
        return self._event_summary(event)

    # --- webhook support ---------------------------------------------------------------------

    async def publish_ca_bundle(self, configuration: str, ca_pem: bytes) -> None:
        """Write the CA into every webhook of a ValidatingWebhookConfiguration."""
        await self._publish_ca("validatingwebhookconfigurations", configuration, ca_pem)

    async def publish_mutating_ca_bundle(self, configuration: str, ca_pem: bytes) -> None:
        """Write the CA into every webhook of a MutatingWebhookConfiguration."""
        await self._publish_ca("mutatingwebhookconfigurations", configuration, ca_pem)

    async def _publish_ca(self, kind: str, configuration: str, ca_pem: bytes) -> None:
        path = rest.path_of(*ADMISSION, kind, configuration)
        current = await self.rest.request("GET", path, timeout=self.timeouts.read)
        bundle = base64.b64encode(ca_pem).decode()
        patch = [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
            for i in range(len(current.get("webhooks") or []))
        ]
        if patch:
            await self._write("PATCH", path, patch, JSON_PATCH)

    # --- leader election Lease --------------------------------------------------------------

    @staticmethod
    def _lease_record(lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        return LeaseRecord(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str(meta.get("resourceVersion", "")),
            uid=str(meta.get("uid") or ""),
        )

    async def read_lease(self, namespace: str, name: str) -> LeaseRecord | None:
        lease = await self._get(self._lease_path(namespace, name))
        return None if lease is None else self._lease_record(lease)

    async def create_lease(self, namespace: str, name: str, spec: dict[str, Any]) -> LeaseRecord | None:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        try:
            lease = await self._write("POST", self._lease_path(namespace), body)
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise
        return self._lease_record(lease)

    async def update_lease(
        self, namespace: str, name: str, spec: dict[str, Any], resource_version: str
    ) -> LeaseRecord | None:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace, "resourceVersion": resource_version},
                "spec": spec}
        try:
            lease = await self._write("PUT", self._lease_path(namespace, name), body)
        except ApiError as exc:
            if exc.status in (404, 409):
                return None
            raise
        return self._lease_record(lease)

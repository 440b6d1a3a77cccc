"""The operator's own API calls (status patches), made with kubernetes_asyncio.

Kopf watches and runs handlers; every write the operator decides on goes through this
module, so that it is explicit which subresource is written and how.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from pet_operator.claims import CLAIM_LABEL, Claim, claim_body, claim_from_body, claim_name
from pet_operator.leader import LeaseRecord
from pet_operator.model import GROUP, VERSION, StoreView

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
LIST_PAGE = 500  # objects per page when listing claims


class NotFound(Exception):
    """The object is gone (deleted while we worked on it)."""


async def load_credentials(kubeconfig: str | None) -> None:
    """Configure kubernetes_asyncio from a kubeconfig, else from the in-cluster service account."""
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig)
        return
    try:
        config.load_incluster_config()
    except config.ConfigException:
        await config.load_kube_config()


class Kube:
    """A small typed facade over the calls the operator makes."""

    def __init__(self, claims_namespace: str = "pet-system") -> None:
        self._api_client = client.ApiClient()
        self._custom = client.CustomObjectsApi(self._api_client)
        self._coordination = client.CoordinationV1Api(self._api_client)
        self._core = client.CoreV1Api(self._api_client)
        self.claims_namespace = claims_namespace

    async def close(self) -> None:
        await self._api_client.close()

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
        try:
            result: dict[str, Any] = await self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, body, _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status == 404:
                raise NotFound(f"{plural} {namespace}/{name}") from exc
            raise
        return result

    async def read_uid(self, namespace: str, name: str) -> str | None:
        """The UID of the pet ``namespace/name`` now; None if there is none."""
        try:
            body = await self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "pets", name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return str(body["metadata"]["uid"])

    async def list_uids(self, plural: str, namespaces: tuple[str, ...] | None) -> set[str]:
        """UIDs of every object of ``plural`` in ``namespaces`` (None: all namespaces)."""
        bodies: list[dict[str, Any]] = []
        if namespaces is None:
            result = await self._custom.list_cluster_custom_object(GROUP, VERSION, plural)
            bodies.extend(result.get("items", []))
        else:
            for ns in namespaces:
                result = await self._custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)
                bodies.extend(result.get("items", []))
        return {str(b["metadata"]["uid"]) for b in bodies}

    async def set_finalizers(
        self, plural: str, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> dict[str, Any]:
        """Replace ``metadata.finalizers``; the resourceVersion makes it fail (409) if the object moved."""
        body = {"metadata": {"finalizers": finalizers or None, "resourceVersion": resource_version}}
        try:
            result: dict[str, Any] = await self._custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, body, _content_type=MERGE_PATCH
            )
        except ApiException as exc:
            if exc.status == 404:
                raise NotFound(f"{plural} {namespace}/{name}") from exc
            raise
        return result

    # --- id claims (Leases in the claims namespace) -------------------------------------

    @staticmethod
    def _lease_dict(lease: Any) -> dict[str, Any]:
        meta = lease.metadata
        return {
            "metadata": {"name": meta.name, "annotations": meta.annotations or {},
                         "resourceVersion": meta.resource_version, "uid": meta.uid},
            "spec": {"holderIdentity": lease.spec.holder_identity if lease.spec else None},
        }

    async def create_claim(self, pet_id: int, namespace: str, name: str, uid: str) -> Claim | None:
        try:
            lease = await self._coordination.create_namespaced_lease(
                self.claims_namespace, claim_body(pet_id, namespace, name, uid)
            )
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise
        return claim_from_body(self._lease_dict(lease))

    async def read_claim(self, pet_id: int) -> Claim | None:
        try:
            lease = await self._coordination.read_namespaced_lease(claim_name(pet_id), self.claims_namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return claim_from_body(self._lease_dict(lease))

    async def delete_claim(self, claim: Claim) -> bool:
        options = {"preconditions": {"resourceVersion": claim.resource_version}}
        try:
            await self._coordination.delete_namespaced_lease(
                claim_name(claim.pet_id), self.claims_namespace, body=options
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def list_claims(self) -> list[Claim]:
        """Every claim, listed in pages of ``LIST_PAGE`` (a large population is never one response)."""
        found: list[Claim] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"label_selector": f"{CLAIM_LABEL}=true", "limit": LIST_PAGE}
            if token:
                kwargs["_continue"] = token
            leases = await self._coordination.list_namespaced_lease(self.claims_namespace, **kwargs)
            for lease in leases.items:
                claim = claim_from_body(self._lease_dict(lease))
                if claim is not None:
                    found.append(claim)
            token = getattr(leases.metadata, "_continue", None) if leases.metadata is not None else None
            if not token:
                return found

    # --- events ----------------------------------------------------------------------------

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            event = await self._core.create_namespaced_event(namespace, dict(body))
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise
        return {"count": event.count, "resourceVersion": event.metadata.resource_version}

    async def read_event(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            event = await self._core.read_namespaced_event(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {"count": event.count, "resourceVersion": event.metadata.resource_version}

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        event = await self._core.patch_namespaced_event(name, namespace, dict(patch), _content_type=MERGE_PATCH)
        return {"count": event.count, "resourceVersion": event.metadata.resource_version}

    # --- webhook support ---------------------------------------------------------------------

    async def read_store(self, namespace: str, name: str) -> StoreView | None:
        try:
            body = await self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "petstores", name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return StoreView.from_body(name, body.get("spec") or {})

    async def publish_ca_bundle(self, configuration: str, ca_pem: bytes) -> None:
        """Write the CA into every webhook of a ValidatingWebhookConfiguration."""
        import base64

        api = client.AdmissionregistrationV1Api(self._api_client)
        current = await api.read_validating_webhook_configuration(configuration)
        bundle = base64.b64encode(ca_pem).decode()
        patch = [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
            for i in range(len(current.webhooks or []))
        ]
        if patch:
            await api.patch_validating_webhook_configuration(
                configuration, patch, _content_type="application/json-patch+json"
            )

    async def publish_mutating_ca_bundle(self, configuration: str, ca_pem: bytes) -> None:
        """Write the CA into every webhook of a MutatingWebhookConfiguration."""
        import base64

        api = client.AdmissionregistrationV1Api(self._api_client)
        current = await api.read_mutating_webhook_configuration(configuration)
        bundle = base64.b64encode(ca_pem).decode()
        patch = [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
            for i in range(len(current.webhooks or []))
        ]
        if patch:
            await api.patch_mutating_webhook_configuration(
                configuration, patch, _content_type="application/json-patch+json"
            )

    # --- leader election Lease --------------------------------------------------------------

    @staticmethod
    def _lease_record(lease: Any) -> LeaseRecord:
        spec = lease.spec

        def stamp(value: Any) -> str | None:
            if value is None:
                return None
            return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if hasattr(value, "strftime") else str(value)

        return LeaseRecord(
            holder=(spec.holder_identity or "") if spec else "",
            lease_duration=int((spec.lease_duration_seconds or 0) if spec else 0),
            acquire_time=stamp(spec.acquire_time) if spec else None,
            renew_time=stamp(spec.renew_time) if spec else None,
            transitions=int((spec.lease_transitions or 0) if spec else 0),
            resource_version=str(lease.metadata.resource_version),
            uid=str(lease.metadata.uid or ""),
        )

    async def read_lease(self, namespace: str, name: str) -> LeaseRecord | None:
        try:
            lease = await self._coordination.read_namespaced_lease(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._lease_record(lease)

    async def create_lease(self, namespace: str, name: str, spec: dict[str, Any]) -> LeaseRecord | None:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        try:
            lease = await self._coordination.create_namespaced_lease(namespace, body)
        except ApiException as exc:
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
            lease = await self._coordination.replace_namespaced_lease(name, namespace, body)
        except ApiException as exc:
            if exc.status in (404, 409):
                return None
            raise
        return self._lease_record(lease)

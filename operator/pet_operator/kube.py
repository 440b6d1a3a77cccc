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

from pet_operator.model import GROUP, VERSION

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"


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

    def __init__(self) -> None:
        self._api_client = client.ApiClient()
        self._custom = client.CustomObjectsApi(self._api_client)

    async def close(self) -> None:
        await self._api_client.close()

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the ``status`` subresource and return the object as the server has it."""
        try:
            result: dict[str, Any] = await self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": dict(status)},
                _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status == 404:
                raise NotFound(f"{plural} {namespace}/{name}") from exc
            raise
        return result

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

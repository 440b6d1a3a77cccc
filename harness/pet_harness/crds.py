"""Install CustomResourceDefinitions and wait until the API server serves them (any operator's)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pet_harness.waiting import wait_for


def install(api: client.ApiClient, documents: Sequence[dict[str, Any]], timeout: float = 60) -> None:
    """Create or replace each CRD, then wait until each is Established and its resources list."""
    ext = client.ApiextensionsV1Api(api)
    for doc in documents:
        name = doc["metadata"]["name"]
        try:
            ext.create_custom_resource_definition(doc)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = ext.read_custom_resource_definition(name)
            doc = {**doc, "metadata": {**doc["metadata"], "resourceVersion": current.metadata.resource_version}}
            ext.replace_custom_resource_definition(name, doc)

    def established(name: str) -> bool:
        crd = ext.read_custom_resource_definition(name)
        return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))

    custom = client.CustomObjectsApi(api)

    def served(group: str, version: str, plural: str) -> bool:
        try:
            custom.list_cluster_custom_object(group, version, plural, limit=1)
        except ApiException as exc:
            if exc.status in (404, 429, 503):
                return False
            raise
        return True

    for doc in documents:
        name = doc["metadata"]["name"]
        wait_for(partial(established, name), bool, timeout, f"CRD {name} Established")
        spec = doc["spec"]
        version = next(v["name"] for v in spec["versions"] if v.get("served", True))
        wait_for(partial(served, spec["group"], version, spec["names"]["plural"]), bool, timeout,
                 f"{spec['names']['plural']}.{spec['group']} served")

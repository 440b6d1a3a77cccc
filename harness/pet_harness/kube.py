"""The harness's API helpers (synchronous ``kubernetes`` client): CRDs, pets, namespaces."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from pet_harness.waiting import wait_for

GROUP = "petstore.example.com"
VERSION = "v1"
def _repo_root() -> Path:
    """The checkout holding ``deploy/``: ``PET_REPO_ROOT``, else the one this file sits in
    (the harness is installed editable from its checkout, as tox does)."""
    env = os.environ.get("PET_REPO_ROOT")
    root = Path(env) if env else Path(__file__).resolve().parents[2]
    if not (root / "deploy" / "crds").is_dir():
        raise RuntimeError(
            f"cannot find deploy/crds under {root}: install the harness editable from its checkout "
            "(pip install -e .) or set PET_REPO_ROOT to the checkout"
        )
    return root


REPO_ROOT = _repo_root()
CRD_DIR = REPO_ROOT / "deploy" / "crds"
CRD_NAMES = ("pets.petstore.example.com", "petstores.petstore.example.com")


def api_client(kubeconfig: Path | str) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def install_crds(api: client.ApiClient, crd_dir: Path = CRD_DIR, timeout: float = 60) -> None:
    """Create or replace the CRDs, then wait until they are Established and pets can be listed."""
    ext = client.ApiextensionsV1Api(api)
    for path in sorted(crd_dir.glob("*.yaml")):
        for doc in load_yaml_documents(path):
            name = doc["metadata"]["name"]
            try:
                ext.create_custom_resource_definition(doc)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                current = ext.read_custom_resource_definition(name)
                doc["metadata"]["resourceVersion"] = current.metadata.resource_version
                ext.replace_custom_resource_definition(name, doc)

    def established(name: str) -> bool:
        crd = ext.read_custom_resource_definition(name)
        return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))

    for name in CRD_NAMES:
        wait_for(partial(established, name), bool, timeout, f"CRD {name} Established")
    custom = client.CustomObjectsApi(api)

    def served(plural: str) -> bool:
        try:
            custom.list_cluster_custom_object(GROUP, VERSION, plural, limit=1)
        except ApiException as exc:
            if exc.status in (404, 429, 503):
                return False
            raise
        return True

    for plural in ("pets", "petstores"):
        wait_for(partial(served, plural), bool, timeout, f"{plural} served")


class PetApi:
    """Pets and PetStores in one namespace, as plain dicts."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)

    def in_namespace(self, namespace: str) -> PetApi:
        return PetApi(self.api, namespace)

    # pets
    def create_pet(self, name: str, spec: Mapping[str, Any], **meta: Any) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Pet",
                "metadata": {"name": name, **meta}, "spec": dict(spec)}
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "pets", body
        )
        return result

    def get_pet(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "pets", name)
        return result

    def patch_pet(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "pets", name, dict(patch), _content_type="application/merge-patch+json"
        )
        return result

    def delete_pet(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, "pets", name)

    def list_pets(self) -> list[dict[str, Any]]:
        return list(self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "pets")["items"])

    # stores
    def create_store(self, name: str, spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PetStore",
                "metadata": {"name": name}, "spec": dict(spec or {})}
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "petstores", body
        )
        return result

    def get_store(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "petstores", name
        )
        return result

    def patch_store(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "petstores", name, dict(patch),
            _content_type="application/merge-patch+json",
        )
        return result

    def delete_store(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, "petstores", name)

    def list_stores(self) -> list[dict[str, Any]]:
        return list(self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "petstores")["items"])


def unique_namespace_name(prefix: str) -> str:
    clean = "".join(c if c.isalnum() else "-" for c in prefix.lower()).strip("-")[:40].strip("-") or "t"
    return f"{clean}-{uuid.uuid4().hex[:6]}"


def create_namespace(api: client.ApiClient, name: str, labels: Mapping[str, str] | None = None) -> str:
    labels = {"pet-harness/owned": "true", **(labels or {})}
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name, "labels": labels}})
    return name


def delete_namespace(api: client.ApiClient, name: str, timeout: float = 30) -> None:
    """Delete a namespace and everything the harness put in it.

    The embedded cluster has no namespace controller: a deleted namespace would stay
    Terminating forever with its objects. So the harness deletes the objects itself,
    strips finalizers of objects whose operator is gone, and finalizes the namespace.
    """
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    for plural in ("pets", "petstores"):
        with contextlib.suppress(ApiException):
            for item in custom.list_namespaced_custom_object(GROUP, VERSION, name, plural)["items"]:
                obj = item["metadata"]["name"]
                with contextlib.suppress(ApiException):
                    if item["metadata"].get("finalizers"):
                        custom.patch_namespaced_custom_object(
                            GROUP, VERSION, name, plural, obj, {"metadata": {"finalizers": None}},
                            _content_type="application/merge-patch+json",
                        )
                    custom.delete_namespaced_custom_object(GROUP, VERSION, name, plural, obj)
    with contextlib.suppress(ApiException):
        core.delete_collection_namespaced_event(name)
    for kind in ("config_map", "secret", "service_account"):
        with contextlib.suppress(ApiException):
            getattr(core, f"delete_collection_namespaced_{kind}")(name)
    with contextlib.suppress(ApiException):
        client.CoordinationV1Api(api).delete_collection_namespaced_lease(name)
    rbac = client.RbacAuthorizationV1Api(api)
    with contextlib.suppress(ApiException):  # the operator's finalizer on its RoleBinding (bindings.py)
        for binding in rbac.list_namespaced_role_binding(name).items:
            if binding.metadata.finalizers:
                with contextlib.suppress(ApiException):
                    rbac.patch_namespaced_role_binding(binding.metadata.name, name, {"metadata": {"finalizers": None}})
    for kind in ("role_binding", "role"):
        with contextlib.suppress(ApiException):
            getattr(rbac, f"delete_collection_namespaced_{kind}")(name)
    try:
        core.delete_namespace(name)
    except ApiException as exc:
        if exc.status == 404:
            return
        raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ns = core.read_namespace(name)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        if ns.spec and ns.spec.finalizers:
            with contextlib.suppress(ApiException):
                core.replace_namespace_finalize(
                    name, {"metadata": {"name": name}, "spec": {"finalizers": []}}
                )
        time.sleep(0.1)
    raise TimeoutError(f"namespace {name} still exists {timeout:.0f}s after its deletion")


def get_text(api: client.ApiClient, path: str, accept: str = "application/json") -> str:
    """GET an API path (``/metrics``, a Table view...) and return the answer's text."""
    method, url, headers, body, post = api.param_serialize(
        "GET", path, header_params={"Accept": accept}, auth_settings=["BearerToken"]
    )
    response = api.call_api(method, url, header_params=headers, body=body, post_params=post)
    response.read()
    if not 200 <= response.status < 300:
        raise ApiException(status=response.status, reason=response.reason)
    return str(response.data.decode())


def get_raw(api: client.ApiClient, path: str, accept: str = "application/json") -> Any:
    """GET an API path and decode the JSON answer (for Tables and other raw views)."""
    import json

    return json.loads(get_text(api, path, accept))


TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"

"""The pet suite's API helpers (synchronous ``kubernetes`` client): the pet CRDs, ``PetApi``, namespaces
cleared of pets; the generic client helpers are re-exported from :mod:`pet_harness.kubeclient`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from pet_harness import crds, namespaces
from pet_harness.kubeclient import api_client as api_client
from pet_harness.kubeclient import get_raw as get_raw
from pet_harness.kubeclient import get_text as get_text

#: The pet API's names, once in the harness (the operator's own are in ``pet_operator.model``; this
#: module does not import the operator, so a copy of the harness can talk to any build of it).
GROUP = "petstore.example.com"
VERSION = "v1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
PETS = "pets"
PETSTORES = "petstores"
#: An id claim is the Lease named this prefix and the id (``pet-id-7``) in the claims namespace.
CLAIM_PREFIX = "pet-id-"


def claim_id(lease_name: str) -> int | None:
    """The id a Lease of this name claims, or None if it is not a claim."""
    number = lease_name.removeprefix(CLAIM_PREFIX)
    return int(number) if number != lease_name and number.isdigit() else None

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


def __getattr__(name: str) -> Path:
    """``REPO_ROOT`` and ``CRD_DIR``, found when first asked for (PEP 562), so that importing the
    harness from an installed wheel, with no checkout around it, works."""
    if name == "REPO_ROOT":
        return _repo_root()
    if name == "CRD_DIR":
        return _repo_root() / "deploy" / "crds"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

CRD_NAMES = (f"{PETS}.{GROUP}", f"{PETSTORES}.{GROUP}")


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def install_crds(api: client.ApiClient, crd_dir: Path | None = None, timeout: float = 60) -> None:
    """Create or replace the pet CRDs (or those in ``crd_dir``), then wait until they are
    Established and served."""
    folder = crd_dir if crd_dir is not None else _repo_root() / "deploy" / "crds"
    docs = [doc for path in sorted(folder.glob("*.yaml")) for doc in load_yaml_documents(path)]
    crds.install(api, docs, timeout)


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
            GROUP, VERSION, self.namespace, PETS, body
        )
        return result

    def get_pet(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PETS, name)
        return result

    def patch_pet(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PETS, name, dict(patch), _content_type="application/merge-patch+json"
        )
        return result

    def delete_pet(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PETS, name)

    def list_pets(self) -> list[dict[str, Any]]:
        return list(self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PETS)["items"])

    # stores
    def create_store(self, name: str, spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PetStore",
                "metadata": {"name": name}, "spec": dict(spec or {})}
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PETSTORES, body
        )
        return result

    def get_store(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PETSTORES, name
        )
        return result

    def patch_store(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PETSTORES, name, dict(patch),
            _content_type="application/merge-patch+json",
        )
        return result

    def delete_store(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PETSTORES, name)

    def list_stores(self) -> list[dict[str, Any]]:
        return list(self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PETSTORES)["items"])


PET_RESOURCES = ((GROUP, VERSION, "pets"), (GROUP, VERSION, "petstores"))


def unique_namespace_name(prefix: str) -> str:
    return namespaces.unique_name(prefix)


def create_namespace(api: client.ApiClient, name: str, labels: Mapping[str, str] | None = None) -> str:
    return namespaces.create(api, name, labels)


def delete_namespace(api: client.ApiClient, name: str, timeout: float = 30) -> None:
    """Delete a namespace and everything in it, pets and stores included (:func:`namespaces.delete`)."""
    namespaces.delete(api, name, PET_RESOURCES, timeout)


TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"

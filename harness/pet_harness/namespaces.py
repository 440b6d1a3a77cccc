"""Namespaces for tests: made with a unique name, and deleted with everything in them.

Generic: the custom resources to clear come from the caller (an operator profile's
:meth:`~pet_harness.profile.OperatorProfile.resources`).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence

from kubernetes import client
from kubernetes.client.exceptions import ApiException

Resource = tuple[str, str, str]  # group, version, plural


def unique_name(prefix: str) -> str:
    clean = "".join(c if c.isalnum() else "-" for c in prefix.lower()).strip("-")[:40].strip("-") or "t"
    return f"{clean}-{uuid.uuid4().hex[:6]}"


def create(api: client.ApiClient, name: str, labels: Mapping[str, str] | None = None) -> str:
    labels = {"pet-harness/owned": "true", **(labels or {})}
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name, "labels": labels}})
    return name


def delete(api: client.ApiClient, name: str, resources: Sequence[Resource] = (), timeout: float = 30) -> None:
    """Delete a namespace and everything the harness put in it.

    The embedded cluster runs no namespace controller unless asked: a deleted namespace would
    stay Terminating for ever with its objects. So the harness deletes the objects itself
    (``resources``: the custom resources to clear, finalizers stripped, since their operator may
    be gone), strips finalizers of role bindings (an operator may guard its own), and finalizes
    the namespace.
    """
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    for group, version, plural in resources:
        with contextlib.suppress(ApiException):
            for item in custom.list_namespaced_custom_object(group, version, name, plural)["items"]:
                obj = item["metadata"]["name"]
                with contextlib.suppress(ApiException):
                    if item["metadata"].get("finalizers"):
                        custom.patch_namespaced_custom_object(
                            group, version, name, plural, obj, {"metadata": {"finalizers": None}},
                            _content_type="application/merge-patch+json",
                        )
                    custom.delete_namespaced_custom_object(group, version, name, plural, obj)
    with contextlib.suppress(ApiException):
        core.delete_collection_namespaced_event(name)
    for kind in ("config_map", "secret", "service_account"):
        with contextlib.suppress(ApiException):
            getattr(core, f"delete_collection_namespaced_{kind}")(name)
    with contextlib.suppress(ApiException):
        client.CoordinationV1Api(api).delete_collection_namespaced_lease(name)
    rbac = client.RbacAuthorizationV1Api(api)
    with contextlib.suppress(ApiException):
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
                core.replace_namespace_finalize(name, {"metadata": {"name": name}, "spec": {"finalizers": []}})
        time.sleep(0.1)
    raise TimeoutError(f"namespace {name} still exists {timeout:.0f}s after its deletion")

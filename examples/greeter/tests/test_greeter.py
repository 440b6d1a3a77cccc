"""e2e tests of the greeter on a real API server, using only pet-harness's public API."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from pet_harness import OperatorFactory, wait_for

GROUP, VERSION, PLURAL = "example.org", "v1", "greetings"


def greeting(api: Any, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name)
    return result


def wait_message(api: Any, namespace: str, name: str, message: str) -> dict[str, Any]:
    def answered(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        return status.get("message") == message and status.get("observedGeneration") == obj["metadata"]["generation"]

    return wait_for(lambda: greeting(api, namespace, name), answered, 30, f"greeting {name}: {message!r}")


def test_a_greeting_is_answered(kube_api: Any, namespace: str, operators: OperatorFactory) -> None:
    operators.start([namespace])
    client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL,
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Greeting", "metadata": {"name": "ada"}, "spec": {"name": "Ada"}})
    wait_message(kube_api, namespace, "ada", "Hello, Ada!")


def test_a_change_made_while_the_operator_was_killed_is_answered_after_its_restart(
    kube_api: Any, namespace: str, operators: OperatorFactory,
) -> None:
    op = operators.start([namespace])
    custom = client.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL,
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Greeting", "metadata": {"name": "bob"}, "spec": {"name": "Bob"}})
    wait_message(kube_api, namespace, "bob", "Hello, Bob!")
    op.kill()
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "bob", {"spec": {"name": "Robert"}})
    op.start()
    wait_message(kube_api, namespace, "bob", "Hello, Robert!")


def test_the_schema_of_the_profile_crd_is_enforced(kube_api: Any, namespace: str) -> None:
    """The harness installed the profile's CRD: its schema is the API server's to enforce."""
    custom = client.CustomObjectsApi(kube_api)
    with pytest.raises(client.exceptions.ApiException) as refused:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL,
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Greeting", "metadata": {"name": "x"}, "spec": {}})
    assert refused.value.status == 422 and "spec.name" in str(refused.value.body)

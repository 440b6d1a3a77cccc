"""Issue 13, finding 1: deleting a namespace the operator serves (namespace mode).

These tests need a namespace controller: on the local backend kube-controller-manager runs
(``controller_manager`` marker), so the namespace's content is deleted as in a real cluster,
the operator's RoleBinding there included, while the pets still wait on their finalizer.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from helpers import record, wait_phase
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pet_harness.kube import PetApi
from pet_harness.waiting import wait_for

pytestmark = pytest.mark.controller_manager

CLAIM_LABEL = "petstore.example.com/id-claim=true"
FINALIZER = "petstore.example.com/id-claim"
BINDING_FINALIZER = "petstore.example.com/pets-finalized"
#: a namespace being deleted must be gone within this many seconds
GONE_WITHIN = 60.0


def _claims(kube_api: Any, namespace: str) -> dict[str, Any]:
    leases = client.CoordinationV1Api(kube_api).list_namespaced_lease(namespace, label_selector=CLAIM_LABEL)
    return {lease.metadata.name: lease for lease in leases.items}


def _namespace_or_none(kube_api: Any, name: str) -> Any:
    try:
        return client.CoreV1Api(kube_api).read_namespace(name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _binding_deleted(kube_api: Any, namespace: str) -> bool:
    """The namespace controller has deleted the operator's RoleBinding (it is gone, or waits on a finalizer)."""
    try:
        binding = client.RbacAuthorizationV1Api(kube_api).read_namespaced_role_binding("pet-operator", namespace)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return binding.metadata.deletion_timestamp is not None


def _binding_finalizers(kube_api: Any, namespace: str) -> list[str]:
    binding = client.RbacAuthorizationV1Api(kube_api).read_namespaced_role_binding("pet-operator", namespace)
    return list(binding.metadata.finalizers or [])


def _wait_guarded(kube_api: Any, namespace: str) -> None:
    wait_for(lambda: _binding_finalizers(kube_api, namespace), lambda f: BINDING_FINALIZER in f, 30,
             f"the operator's finalizer on its RoleBinding in {namespace}")


def _wait_gone(kube_api: Any, namespace: str) -> None:
    wait_for(lambda: _namespace_or_none(kube_api, namespace), lambda ns: ns is None, GONE_WITHIN,
             f"namespace {namespace} to be gone")


def _pet_deleted(pets: PetApi, name: str) -> bool:
    try:
        return bool(pets.get_pet(name)["metadata"].get("deletionTimestamp"))
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise


@pytest.mark.parametrize("operator_pace", ["running", "frozen-until-the-binding-is-deleted"])
def test_deleting_a_served_namespace_with_an_active_pet(
    make_namespace: Any, operator_factory: Any, kube_api: Any, claims_namespace: str, operator_pace: str,
    request: Any,
) -> None:
    doomed = PetApi(kube_api, make_namespace("doomed"))
    other = PetApi(kube_api, make_namespace("other"))
    op = operator_factory([doomed.namespace, other.namespace])
    doomed.create_pet("rex", {"id": 611, "name": "Rex"})
    wait_phase(doomed, "rex", "Active")
    assert _claims(kube_api, claims_namespace)["pet-id-611"].spec.holder_identity == f"{doomed.namespace}/rex"
    _wait_guarded(kube_api, doomed.namespace)

    frozen = operator_pace != "running"
    if frozen:
        # the namespace controller deletes the namespace's content in no set order; freezing the operator
        # makes the order of the report certain: its RoleBinding is deleted while the pet still waits
        op.process.signal(signal.SIGSTOP)
    try:
        deleted_at = time.monotonic()
        client.CoreV1Api(kube_api).delete_namespace(doomed.namespace)
        if frozen:
            wait_for(lambda: _pet_deleted(doomed, "rex") and _binding_deleted(kube_api, doomed.namespace),
                     bool, 30, "the namespace controller to delete the pet and the operator's RoleBinding")
    finally:
        if frozen:
            op.process.signal(signal.SIGCONT)

    _wait_gone(kube_api, doomed.namespace)
    record(request, f"namespace-deletion-{operator_pace}",
           {"seconds_from_delete_to_gone": round(time.monotonic() - deleted_at, 2)})
    assert "pet-id-611" not in _claims(kube_api, claims_namespace)
    other.create_pet("rex", {"id": 611, "name": "Rex again"})
    wait_phase(other, "rex", "Active")
    assert _claims(kube_api, claims_namespace)["pet-id-611"].spec.holder_identity == f"{other.namespace}/rex"
    assert BINDING_FINALIZER in _binding_finalizers(kube_api, other.namespace)  # the live one keeps it


def test_deleting_an_empty_served_namespace(make_namespace: Any, operator_factory: Any, kube_api: Any) -> None:
    """No pet to wait for: the namespace's own deletion lets the RoleBinding go."""
    empty = make_namespace("empty")
    operator_factory([empty])
    _wait_guarded(kube_api, empty)
    client.CoreV1Api(kube_api).delete_namespace(empty)
    _wait_gone(kube_api, empty)


def test_a_namespace_deleted_while_the_operator_is_down_goes_once_it_is_back(
    make_namespace: Any, operator_factory: Any, kube_api: Any, claims_namespace: str
) -> None:
    doomed = PetApi(kube_api, make_namespace("doomed"))
    op = operator_factory([doomed.namespace], webhook=False)
    for number in range(3):
        doomed.create_pet(f"pet-{number}", {"id": 621 + number, "name": f"pet {number}"})
    for number in range(3):
        wait_phase(doomed, f"pet-{number}", "Active")
    _wait_guarded(kube_api, doomed.namespace)
    assert op.stop() == 0
    client.CoreV1Api(kube_api).delete_namespace(doomed.namespace)
    wait_for(lambda: all(_pet_deleted(doomed, f"pet-{n}") for n in range(3))
             and _binding_deleted(kube_api, doomed.namespace), bool, 30,
             "the namespace controller to delete the pets and the operator's RoleBinding")
    assert _namespace_or_none(kube_api, doomed.namespace) is not None, "the pets still wait on the operator"
    op.start()
    _wait_gone(kube_api, doomed.namespace)
    assert not {f"pet-id-{621 + n}" for n in range(3)} & set(_claims(kube_api, claims_namespace))

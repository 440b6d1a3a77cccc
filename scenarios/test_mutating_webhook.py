"""The mutating webhook puts the id-claim finalizer on a pet at CREATE, saving the operator's
PATCH; without it (hook unreachable, or not installed) the operator still adds the finalizer.

Who wrote what is read from the embedded cluster's audit log, never from the operator."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import wait_phase

from pet_harness import audit, webhooks
from pet_harness.clusters.local import LocalCluster, free_port
from pet_harness.kube import PetApi
from pet_harness.waiting import wait_for
from pet_operator.claims import FINALIZER

FAILED_OPEN = "failed-open.mutation.webhook.admission.k8s.io/"


@pytest.fixture
def local_only(pet_cluster: Any) -> LocalCluster:
    if not isinstance(pet_cluster, LocalCluster):
        pytest.skip("the audit log needs the embedded (local) backend")
    return pet_cluster


def operator_writes_to(cluster: LocalCluster, user: str, namespace: str, name: str) -> list[audit.AuditEvent]:
    """The successful writes ``user`` made to pet ``namespace/name`` and its status."""
    return [e for e in audit.load(cluster.audit_log_path)
            if e.ok and e.is_write and e.user == user and e.resource == "pets"
            and (e.namespace, e.name) == (namespace, name)]


def wait_status_written(cluster: LocalCluster, user: str, namespace: str, name: str) -> list[audit.AuditEvent]:
    """The operator's writes to the pet once its status write is in the log. A finalizer PATCH comes
    first (the claim is taken, then the status written), so it would be in the log by then too."""
    return wait_for(lambda: operator_writes_to(cluster, user, namespace, name),
                    lambda writes: any(e.subresource == "status" for e in writes), 30,
                    f"the operator's status write of pet {namespace}/{name} in the audit log")


def creates_failed_open(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    """The audited creates of pet ``namespace/name`` during which a mutating webhook failed open."""
    found = []
    for line in cluster.audit_log_path.read_text().splitlines():
        if f'"{name}"' not in line:
            continue
        entry = json.loads(line)
        ref = entry.get("objectRef") or {}
        if (entry.get("verb"), ref.get("resource"), ref.get("namespace"), ref.get("name")) != (
                "create", "pets", namespace, name):
            continue
        if any(key.startswith(FAILED_OPEN) for key in entry.get("annotations") or {}):
            found.append(entry)
    return found


def test_a_created_pet_carries_the_finalizer_and_the_operator_does_not_patch_it(
    pets: PetApi, pet_operator: Any, local_only: LocalCluster
) -> None:
    created = pets.create_pet("rex", {"id": 1301, "name": "Rex"})
    assert FINALIZER in created["metadata"].get("finalizers", []), created["metadata"]
    wait_phase(pets, "rex", "Active")
    writes = wait_status_written(local_only, pet_operator.username, pets.namespace, "rex")
    own = [e.to_dict() for e in writes if e.subresource == ""]
    assert own == [], f"the operator wrote the pet itself: {own}"
    assert pets.get_pet("rex")["metadata"]["finalizers"] == [FINALIZER]


def test_other_finalizers_are_kept_and_ours_is_added_after_them(pets: PetApi, pet_operator: Any) -> None:
    created = pets.create_pet("fido", {"id": 1302, "name": "Fido"}, finalizers=["example.com/keep"])
    try:
        assert created["metadata"]["finalizers"] == ["example.com/keep", FINALIZER]
        wait_phase(pets, "fido", "Active")
    finally:  # nobody else removes this one: let the test's namespace go
        pets.custom.patch_namespaced_custom_object(
            "petstore.example.com", "v1", pets.namespace, "pets", "fido",
            [{"op": "test", "path": "/metadata/finalizers/0", "value": "example.com/keep"},
             {"op": "remove", "path": "/metadata/finalizers/0"}],
            _content_type="application/json-patch+json")


@pytest.mark.parametrize("hook", ["unreachable", "absent"])
def test_without_the_mutating_hook_the_operator_adds_the_finalizer(
    pets: PetApi, operator_factory: Any, kube_api: Any, local_only: LocalCluster, hook: str
) -> None:
    """failurePolicy Ignore: a hook nobody answers lets the create through unchanged; the operator's
    own PATCH (the fallback) then adds the finalizer, as it does when no hook is installed."""
    op = operator_factory([pets.namespace], webhook=False)  # no configuration installed, no webhook served
    name = f"mutating-{pets.namespace}"[:253]
    if hook == "unreachable":
        dead = f"https://127.0.0.1:{free_port()}/mutate-pets"  # nothing listens there
        webhooks.install(kube_api, webhooks.mutating_configuration(name, [pets.namespace], dead, None))
    try:
        if hook == "unreachable":  # wait until the API server calls the hook (and fails open)
            def probe() -> list[dict[str, Any]]:
                pets.custom.create_namespaced_custom_object(
                    "petstore.example.com", "v1", pets.namespace, "pets",
                    {"apiVersion": "petstore.example.com/v1", "kind": "Pet", "metadata": {"name": "probe"},
                     "spec": {"id": 1399, "name": "probe"}}, dry_run="All")
                return creates_failed_open(local_only, pets.namespace, "probe")

            wait_for(probe, bool, 30, "the API server to call the unreachable mutating hook")
        created = pets.create_pet("rex", {"id": 1303, "name": "Rex"})
        assert FINALIZER not in (created["metadata"].get("finalizers") or [])
        if hook == "unreachable":
            assert creates_failed_open(local_only, pets.namespace, "rex")
        active = wait_phase(pets, "rex", "Active")
        assert FINALIZER in active["metadata"]["finalizers"]
        writes = wait_status_written(local_only, op.username, pets.namespace, "rex")
        assert [e.verb for e in writes if e.subresource == ""] == ["patch"]  # the fallback: one PATCH
    finally:
        webhooks.uninstall(kube_api, name)

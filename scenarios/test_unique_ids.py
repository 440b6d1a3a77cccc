"""Contract behaviours 4 and 5: cluster-wide unique ids held by claims in the cluster."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from helpers import phase_of, record, wait_pet, wait_phase
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pet_harness.kube import PetApi, api_client
from pet_harness.waiting import wait_for

CLAIM_LABEL = "petstore.example.com/id-claim=true"
FINALIZER = "petstore.example.com/id-claim"


def claims(kube_api: Any, namespace: str) -> dict[str, Any]:
    leases = client.CoordinationV1Api(kube_api).list_namespaced_lease(namespace, label_selector=CLAIM_LABEL)
    return {lease.metadata.name: lease for lease in leases.items}


def test_claim_is_recorded_in_the_cluster_and_released_on_delete(
    pets: PetApi, pet_operator: Any, kube_api: Any, claims_namespace: str
) -> None:
    pets.create_pet("rex", {"id": 501, "name": "Rex"})
    pet = wait_phase(pets, "rex", "Active")
    assert FINALIZER in pet["metadata"]["finalizers"]
    conditions = {c["type"]: c for c in pet["status"]["conditions"]}
    assert conditions["IdClaimed"]["status"] == "True"
    lease = claims(kube_api, claims_namespace)["pet-id-501"]
    assert lease.spec.holder_identity == f"{pets.namespace}/rex"
    assert lease.metadata.annotations["petstore.example.com/pet-uid"] == pet["metadata"]["uid"]
    pets.delete_pet("rex")
    wait_for(pets.list_pets, lambda items: items == [], 20, "the pet to be gone")
    assert "pet-id-501" not in claims(kube_api, claims_namespace)


def test_a_claim_deleted_by_hand_is_taken_again_at_the_next_resync(
    pets: PetApi, operator_factory: Any, kube_api: Any, claims_namespace: str
) -> None:
    operator_factory([pets.namespace], webhook=False, extra_args=("--resync-period", "1"))
    pets.create_pet("rex", {"id": 509, "name": "Rex"})
    wait_phase(pets, "rex", "Active")
    client.CoordinationV1Api(kube_api).delete_namespaced_lease("pet-id-509", claims_namespace)
    taken = wait_for(lambda: claims(kube_api, claims_namespace), lambda found: "pet-id-509" in found, 20,
                     "the deleted claim to be taken again")
    assert taken["pet-id-509"].spec.holder_identity == f"{pets.namespace}/rex"


def test_duplicate_id_in_another_namespace_conflicts_then_takes_over(
    pets: PetApi, make_namespace: Any, operator_factory: Any, kube_api: Any, claims_namespace: str,
    request: Any,
) -> None:
    other = pets.in_namespace(make_namespace("other"))
    # no webhook: it would reject the duplicates at admission; here they race past it
    operator_factory([pets.namespace, other.namespace], webhook=False)
    pets.create_pet("holder", {"id": 502, "name": "holder"})
    wait_phase(pets, "holder", "Active")
    other.create_pet("older-twin", {"id": 502, "name": "older twin"})
    first = wait_phase(other, "older-twin", "Conflict", "DuplicateId")
    assert f"{pets.namespace}/holder" in first["status"]["message"]
    assert {c["type"]: c for c in first["status"]["conditions"]}["IdClaimed"]["status"] == "False"
    other.create_pet("younger-twin", {"id": 502, "name": "younger twin"})
    wait_phase(other, "younger-twin", "Conflict", "DuplicateId")

    deleted_at = time.monotonic()
    pets.delete_pet("holder")
    wait_phase(other, "older-twin", "Active", "Reconciled")
    takeover = time.monotonic() - deleted_at
    # the younger twin was Conflict already (naming the old holder): wait for its status to name the heir
    young = wait_pet(other, "younger-twin",
                     lambda p: f"{other.namespace}/older-twin" in ((p.get("status") or {}).get("message") or ""),
                     "its Conflict names the new holder")
    assert (young["status"]["phase"], young["status"]["reason"]) == ("Conflict", "DuplicateId")
    assert f"{other.namespace}/older-twin" in young["status"]["message"]
    assert claims(kube_api, claims_namespace)["pet-id-502"].spec.holder_identity == f"{other.namespace}/older-twin"
    record(request, "unique-ids-takeover", {"seconds_from_delete_to_active": round(takeover, 3)})


def test_a_claim_changed_after_it_was_taken_is_released_when_its_holder_goes(
    pets: PetApi, make_namespace: Any, operator_factory: Any, kube_api: Any, claims_namespace: str,
    request: Any,
) -> None:
    """Finding 7: a label added to the claim Lease (by anyone: a policy engine, an admin) changes its
    resourceVersion under the operator's cached copy. Deleting the holder must still release the id
    before the finalizer goes, and the waiting twin must take it at once (before: the claim stayed,
    the twin stayed Conflict until the next orphan pass, 5 minutes by default)."""
    other = pets.in_namespace(make_namespace("other"))
    operator_factory([pets.namespace, other.namespace], webhook=False)  # the twin races past admission
    pets.create_pet("holder", {"id": 512, "name": "holder"})
    wait_phase(pets, "holder", "Active")
    other.create_pet("twin", {"id": 512, "name": "twin"})
    wait_phase(other, "twin", "Conflict", "DuplicateId")
    client.CoordinationV1Api(kube_api).patch_namespaced_lease(
        "pet-id-512", claims_namespace, {"metadata": {"labels": {"example.com/audited": "yes"}}})

    deleted_at = time.monotonic()
    pets.delete_pet("holder")
    wait_phase(other, "twin", "Active", "Reconciled", timeout=10)
    takeover = time.monotonic() - deleted_at
    assert claims(kube_api, claims_namespace)["pet-id-512"].spec.holder_identity == f"{other.namespace}/twin"
    wait_for(pets.list_pets, lambda items: items == [], 10, "the holder to be gone")
    record(request, "unique-ids-takeover-after-claim-changed", {"seconds_from_delete_to_active": round(takeover, 3)})


def test_a_holder_the_operator_may_not_read_leaves_the_claim_and_the_twin_conflicts(
    pets: PetApi, make_namespace: Any, operator_factory: Any, kube_api: Any, claims_namespace: str,
) -> None:
    """Finding 9: a claim's holder is in a served namespace whose RoleBinding is gone, so the lookup
    of the holder is forbidden (403). Whether it lives cannot be told: the claim stands, and the
    twin still gets its status, Conflict naming the holder; the 403 is logged once (before: the 403
    ended the reconciliation, the twin never got a status)."""
    other = make_namespace("other")
    op = operator_factory([pets.namespace, other], webhook=False)  # the twin races past admission
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.delete_namespaced_role_binding("pet-operator", other)
    # the operator guards its binding with a finalizer (finding 1): take the rights away for real
    rbac.patch_namespaced_role_binding("pet-operator", other, {"metadata": {"finalizers": None}})
    client.CoordinationV1Api(kube_api).create_namespaced_lease(claims_namespace, {
        "metadata": {"name": "pet-id-513", "labels": {"petstore.example.com/id-claim": "true"},
                     "annotations": {"petstore.example.com/pet-uid": "0000-unknown"}},
        "spec": {"holderIdentity": f"{other}/holder"},
    })
    wait_for(lambda: _forbidden(op.kubeconfig, other),
             bool, 20, f"the operator's rights in {other} to be gone")
    pets.create_pet("twin", {"id": 513, "name": "twin"})
    twin = wait_phase(pets, "twin", "Conflict", "DuplicateId", timeout=20)
    assert f"{other}/holder" in twin["status"]["message"]
    assert claims(kube_api, claims_namespace)["pet-id-513"].spec.holder_identity == f"{other}/holder"
    pets.patch_pet("twin", {"metadata": {"labels": {"again": "yes"}}})  # one more reconciliation
    wait_for(op.log_text, lambda text: text.count(f"cannot read pets in namespace {other}") == 1, 10,
             "the 403 logged")
    time.sleep(1)
    assert op.log_text().count(f"cannot read pets in namespace {other}") == 1


def test_a_claim_held_in_a_namespace_that_is_gone_is_collected(
    pets: PetApi, operator_factory: Any, kube_api: Any, claims_namespace: str,
) -> None:
    """Finding 9: a claim left by a pet of a namespace that no longer exists (no longer served, then
    deleted). The namespace-scoped operator may not read pets there (403), but it may read
    namespaces: no namespace, no pet, so the claim is an orphan and the twin takes the id (before:
    an unserved holder was never looked up, the twin stayed Conflict for ever)."""
    gone = f"{pets.namespace[:40]}-gone"
    client.CoordinationV1Api(kube_api).create_namespaced_lease(claims_namespace, {
        "metadata": {"name": "pet-id-514", "labels": {"petstore.example.com/id-claim": "true"},
                     "annotations": {"petstore.example.com/pet-uid": "0000-gone"}},
        "spec": {"holderIdentity": f"{gone}/holder"},
    })
    operator_factory([pets.namespace], webhook=False)
    pets.create_pet("heir", {"id": 514, "name": "heir"})
    wait_phase(pets, "heir", "Active", "Reconciled", timeout=20)
    assert claims(kube_api, claims_namespace)["pet-id-514"].spec.holder_identity == f"{pets.namespace}/heir"


def _forbidden(kubeconfig: Any, namespace: str) -> bool:
    """Whether the identity of ``kubeconfig`` is refused a read of pets in ``namespace``."""
    api = api_client(kubeconfig)
    try:
        PetApi(api, namespace).get_pet("anything")
    except ApiException as exc:
        return exc.status == 403
    finally:
        api.close()
    return False


def test_pet_deleted_while_the_operator_is_down_goes_away_when_it_is_back(
    pets: PetApi, operator_factory: Any, kube_api: Any, claims_namespace: str
) -> None:
    pet_operator = operator_factory([pets.namespace], webhook=False)
    pets.create_pet("rex", {"id": 503, "name": "Rex"})
    wait_phase(pets, "rex", "Active")
    pet_operator.kill()
    pets.delete_pet("rex")
    held = pets.get_pet("rex")
    assert held["metadata"].get("deletionTimestamp")
    assert "pet-id-503" in claims(kube_api, claims_namespace)
    pet_operator.start()
    wait_for(pets.list_pets, lambda items: items == [], 30, "the deleted pet to go away")
    assert "pet-id-503" not in claims(kube_api, claims_namespace)


def test_orphaned_claims_are_collected_at_start(
    pets: PetApi, operator_factory: Any, kube_api: Any, claims_namespace: str
) -> None:
    coordination = client.CoordinationV1Api(kube_api)
    coordination.create_namespaced_lease(claims_namespace, {
        "metadata": {"name": "pet-id-504", "labels": {"petstore.example.com/id-claim": "true"},
                     "annotations": {"petstore.example.com/pet-uid": "0000-gone"}},
        "spec": {"holderIdentity": f"{pets.namespace}/ghost"},
    })
    operator_factory([pets.namespace])
    wait_for(lambda: claims(kube_api, claims_namespace), lambda found: "pet-id-504" not in found, 30,
             "the orphaned claim to be collected")
    pets.create_pet("heir", {"id": 504, "name": "heir"})
    wait_phase(pets, "heir", "Active")


def test_racing_creates_leave_exactly_one_holder_per_id(
    pet_cluster: Any, make_namespace: Any, operator_factory: Any, kube_api: Any, claims_namespace: str,
    request: Any,
) -> None:
    rounds, namespaces_n, clients_per_namespace = 8, 3, 2
    namespaces = [make_namespace(f"race{i}") for i in range(namespaces_n)]
    operator_factory(namespaces, webhook=False)  # creates that race past admission
    apis = [api_client(pet_cluster.kubeconfig_path) for _ in range(namespaces_n * clients_per_namespace)]
    outcomes: list[dict[str, int]] = []
    try:
        with ThreadPoolExecutor(len(apis)) as pool:
            for r in range(rounds):
                pet_id = 600 + r
                barrier = threading.Barrier(len(apis))

                def create(i: int, pet_id: int = pet_id, barrier: threading.Barrier = barrier) -> tuple[str, str]:
                    ns = namespaces[i % namespaces_n]
                    name = f"r{pet_id}-c{i}"
                    barrier.wait(10)
                    PetApi(apis[i], ns).create_pet(name, {"id": pet_id, "name": name})
                    return ns, name

                created = list(pool.map(create, range(len(apis))))
                phases = {}
                for ns, name in created:
                    pet = wait_for(lambda ns=ns, name=name: PetApi(kube_api, ns).get_pet(name),
                                   lambda p: phase_of(p) in ("Active", "Conflict"), 30, f"{ns}/{name} settled")
                    phases[(ns, name)] = phase_of(pet)
                active = [k for k, v in phases.items() if v == "Active"]
                assert len(active) == 1, f"round {r}: {phases}"
                holder = f"{active[0][0]}/{active[0][1]}"
                for (ns, name), phase in phases.items():
                    if phase == "Conflict":
                        assert holder in PetApi(kube_api, ns).get_pet(name)["status"]["message"]
                outcomes.append({"active": len(active), "conflict": len(phases) - len(active)})
    finally:
        for api in apis:
            api.close()
    for ns in namespaces:
        for pet in PetApi(kube_api, ns).list_pets():
            PetApi(kube_api, ns).delete_pet(pet["metadata"]["name"])
    for ns in namespaces:
        wait_for(PetApi(kube_api, ns).list_pets, lambda items: items == [], 60, f"pets of {ns} deleted")
    assert claims(kube_api, claims_namespace) == {}
    record(request, "unique-ids-race", {"rounds": rounds, "namespaces": namespaces_n, "clients": len(apis),
                              "pets_per_round": len(apis), "outcomes": outcomes,
                              "claims_left_after_delete": 0})


def test_a_conflicting_pet_cannot_change_its_id(pets: PetApi, operator_factory: Any) -> None:
    """A pet whose id was taken keeps its id: spec.id stays immutable even in Conflict."""
    operator_factory([pets.namespace], webhook=False)
    pets.create_pet("a", {"id": 505, "name": "a"})
    wait_phase(pets, "a", "Active")
    pets.create_pet("b", {"id": 505, "name": "b"})
    wait_phase(pets, "b", "Conflict")
    with pytest.raises(ApiException) as caught:
        pets.patch_pet("b", {"spec": {"id": 506}})
    assert caught.value.status == 422


def test_strip_finalizers_when_the_operator_is_gone_for_good(
    pets: PetApi, operator_factory: Any, kube_api: Any, claims_namespace: str, pet_cluster: Any
) -> None:
    import subprocess
    import sys

    op = operator_factory([pets.namespace])  # its webhook stays configured (failurePolicy Fail) once it is gone
    pets.create_pet("rex", {"id": 510, "name": "Rex"})
    pets.create_pet("fido", {"id": 511, "name": "Fido"})
    wait_phase(pets, "rex", "Active")
    wait_phase(pets, "fido", "Active")
    rbac = client.RbacAuthorizationV1Api(kube_api)
    wait_for(lambda: rbac.read_namespaced_role_binding("pet-operator", pets.namespace).metadata.finalizers or [],
             lambda found: "petstore.example.com/pets-finalized" in found, 20,
             "the operator's finalizer on its RoleBinding")
    op.stop()
    # no replica answers: a spec change is refused, metadata-only updates are not reviewed at all
    with pytest.raises(ApiException) as refused:
        pets.patch_pet("fido", {"spec": {"category": "dog"}})
    assert refused.value.status == 500 and "failed calling webhook" in refused.value.body
    pets.patch_pet("fido", {"metadata": {"labels": {"kept": "yes"}}})
    pets.delete_pet("fido")
    pets.delete_pet("rex")
    assert pets.get_pet("rex")["metadata"]["deletionTimestamp"]
    done = subprocess.run(
        [sys.executable, "-m", "pet_harness.cli", "finalizers", "strip", "--kubeconfig",
         str(pet_cluster.kubeconfig_path), "--namespace", pets.namespace, "--claims-namespace", claims_namespace],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "from 2 pets; deleted 2 id claims" in done.stdout
    wait_for(pets.list_pets, lambda items: items == [], 20, "the pet to go")
    assert claims(kube_api, claims_namespace) == {}
    # and the finalizer that kept its RoleBinding (namespace mode): the namespace can be deleted
    assert not rbac.read_namespaced_role_binding("pet-operator", pets.namespace).metadata.finalizers

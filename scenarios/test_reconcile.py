"""Contract behaviours 1, 2, 6 and 8 and the PetStore counts, with the operator running."""

from __future__ import annotations

import datetime
import re
from typing import Any

from helpers import phase_of, wait_phase, wait_store_counts

from pet_harness.kube import PetApi
from pet_harness.operator_process import OperatorProcess

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj["status"]["conditions"]}


def test_pet_becomes_active_with_every_status_field(pets: PetApi, pet_operator: OperatorProcess) -> None:
    pets.create_pet("rex", {"id": 101, "name": "Rex", "tags": ["dog"]})
    pet = wait_phase(pets, "rex", "Active", "Reconciled")
    status = pet["status"]
    assert status["observedGeneration"] == pet["metadata"]["generation"] == 1
    assert RFC3339_UTC.match(status["lastTransitionTime"]), status["lastTransitionTime"]
    created = datetime.datetime.fromisoformat(pet["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    moved = datetime.datetime.fromisoformat(status["lastTransitionTime"].replace("Z", "+00:00"))
    assert abs((moved - created).total_seconds()) < 60
    assert status["message"].endswith(".") and "rex" in status["message"]
    conditions = _conditions(pet)
    assert set(conditions) == {"Ready", "IdClaimed", "TagsValid"}
    assert conditions["Ready"]["status"] == "True" and conditions["Ready"]["reason"] == "Reconciled"
    assert conditions["TagsValid"]["status"] == "True"
    for cond in conditions.values():
        assert cond["observedGeneration"] == 1
        assert RFC3339_UTC.match(cond["lastTransitionTime"])
        assert cond["message"]


def test_no_op_and_phase_keeping_updates_keep_last_transition_time(
    pets: PetApi, pet_operator: OperatorProcess
) -> None:
    pets.create_pet("rex", {"id": 102, "name": "Rex"})
    before = wait_phase(pets, "rex", "Active")["status"]
    # a no-op update: metadata only, the generation does not move
    touched = pets.patch_pet("rex", {"metadata": {"labels": {"touched": "yes"}}})
    assert touched["metadata"]["generation"] == 1
    # a spec change that keeps the phase: observedGeneration follows, the transition time stays
    pets.patch_pet("rex", {"spec": {"name": "Rex the Second"}})
    after = wait_phase(pets, "rex", "Active")["status"]
    assert after["observedGeneration"] == 2
    assert after["lastTransitionTime"] == before["lastTransitionTime"]
    assert _conditions({"status": after})["Ready"]["lastTransitionTime"] == \
        _conditions({"status": before})["Ready"]["lastTransitionTime"]


def test_pending_until_the_store_appears(pets: PetApi, pet_operator: OperatorProcess) -> None:
    pets.create_pet("rex", {"id": 103, "name": "Rex", "store": "corner-shop"})
    pending = wait_phase(pets, "rex", "Pending", "StoreNotFound")
    assert "corner-shop" in pending["status"]["message"]
    assert _conditions(pending)["Ready"]["status"] == "False"
    pets.create_store("corner-shop", {"displayName": "Corner Shop"})
    active = wait_phase(pets, "rex", "Active", "Reconciled")
    assert active["status"]["lastTransitionTime"] >= pending["status"]["lastTransitionTime"]
    wait_store_counts(pets, "corner-shop", 1, 1)


def test_deleting_a_store_sends_its_pets_pending_and_keeps_them(
    pets: PetApi, pet_operator: OperatorProcess
) -> None:
    pets.create_store("shop")
    for i, name in enumerate(["a", "b"]):
        pets.create_pet(name, {"id": 110 + i, "name": name, "store": "shop"})
    pets.create_pet("loner", {"id": 119, "name": "loner"})
    for name in ["a", "b", "loner"]:
        wait_phase(pets, name, "Active")
    pets.delete_store("shop")
    for name in ["a", "b"]:
        pet = wait_phase(pets, name, "Pending", "StoreNotFound")
        assert "shop" in pet["status"]["message"]
    assert phase_of(pets.get_pet("loner")) == "Active"
    assert {p["metadata"]["name"] for p in pets.list_pets()} == {"a", "b", "loner"}


def test_store_counts_follow_pets_and_allowed_tags(pets: PetApi, pet_operator: OperatorProcess) -> None:
    pets.create_store("shop")
    pets.create_store("other")
    pets.create_pet("p1", {"id": 121, "name": "p1", "store": "shop", "tags": ["cat"]})
    pets.create_pet("p2", {"id": 122, "name": "p2", "store": "shop", "tags": ["dog"]})
    pets.create_pet("p3", {"id": 123, "name": "p3", "store": "shop"})
    pets.create_pet("p4", {"id": 124, "name": "p4", "store": "other"})
    wait_store_counts(pets, "shop", 3, 3)
    wait_store_counts(pets, "other", 1, 1)

    # narrowing allowedTags turns the misfit Invalid: it still counts, but not as active
    pets.patch_store("shop", {"spec": {"allowedTags": ["cat"]}})
    invalid = wait_phase(pets, "p2", "Invalid", "TagsNotAllowed")
    assert "'dog'" in invalid["status"]["message"] and "[cat]" in invalid["status"]["message"]
    wait_store_counts(pets, "shop", 3, 2)

    # fixing the store brings it back
    pets.patch_store("shop", {"spec": {"allowedTags": ["cat", "dog"]}})
    wait_phase(pets, "p2", "Active")
    wait_store_counts(pets, "shop", 3, 3)

    # a pet that moves is counted by its new store only; a deleted pet by none
    pets.patch_pet("p3", {"spec": {"store": "other"}})
    wait_store_counts(pets, "shop", 2, 2)
    wait_store_counts(pets, "other", 2, 2)
    pets.delete_pet("p1")
    wait_store_counts(pets, "shop", 1, 1)
    store = pets.get_store("shop")
    assert store["status"]["observedGeneration"] == store["metadata"]["generation"]


def test_pets_in_unserved_namespaces_are_left_alone(
    pets: PetApi, make_namespace: Any, operator_factory: Any
) -> None:
    outside = pets.in_namespace(make_namespace("unserved"))
    outside.create_pet("stray", {"id": 131, "name": "stray"})
    operator_factory([pets.namespace])
    pets.create_pet("served", {"id": 132, "name": "served"})
    wait_phase(pets, "served", "Active")
    stray = outside.get_pet("stray")
    assert "status" not in stray
    assert stray["metadata"]["resourceVersion"] == outside.list_pets()[0]["metadata"]["resourceVersion"]
    assert not stray["metadata"].get("annotations") and not stray["metadata"].get("finalizers")


def test_namespaces_from_kopf_namespace_env(pets: PetApi, make_namespace: Any, operator_factory: Any) -> None:
    second = pets.in_namespace(make_namespace("second"))
    operator_factory(env={"KOPF_NAMESPACE": f"{pets.namespace},{second.namespace}"})
    pets.create_pet("one", {"id": 141, "name": "one"})
    second.create_pet("two", {"id": 142, "name": "two"})
    wait_phase(pets, "one", "Active")
    wait_phase(second, "two", "Active")


def test_health_endpoints(pet_operator: OperatorProcess) -> None:
    assert pet_operator.healthz() == (200, "ok\n")
    code, body = pet_operator.readyz()
    assert code == 200 and body == "ok\n"

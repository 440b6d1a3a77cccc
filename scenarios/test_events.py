"""Contract behaviour 7: one Event per phase change, repeats aggregated on one Event object."""

from __future__ import annotations

from typing import Any

from helpers import wait_phase
from kubernetes import client

from pet_harness.kube import PetApi
from pet_harness.waiting import wait_for


def pet_events(kube_api: Any, namespace: str, name: str) -> list[Any]:
    events = client.CoreV1Api(kube_api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind=Pet,involvedObject.name={name}"
    ).items
    return sorted(events, key=lambda e: (e.type, e.reason))


def test_phase_changes_post_events_and_repeats_are_aggregated(
    pets: PetApi, pet_operator: Any, kube_api: Any
) -> None:
    pets.create_pet("rex", {"id": 701, "name": "Rex", "store": "shop", "tags": ["dog"]})
    wait_phase(pets, "rex", "Pending", "StoreNotFound")
    pets.create_store("shop")
    wait_phase(pets, "rex", "Active")
    repeats = 4
    for _ in range(repeats):
        pets.patch_store("shop", {"spec": {"allowedTags": ["cat"]}})
        wait_phase(pets, "rex", "Invalid", "TagsNotAllowed")
        pets.patch_store("shop", {"spec": {"allowedTags": None}})
        wait_phase(pets, "rex", "Active")

    def summary() -> list[tuple[str, str, int]]:
        return [(e.type, e.reason, e.count) for e in pet_events(kube_api, pets.namespace, "rex")]

    expected = [("Normal", "Reconciled", repeats + 1), ("Warning", "StoreNotFound", 1),
                ("Warning", "TagsNotAllowed", repeats)]
    wait_for(summary, lambda got: got == expected, 20, f"events {expected}")
    for event in pet_events(kube_api, pets.namespace, "rex"):
        assert event.involved_object.uid == pets.get_pet("rex")["metadata"]["uid"]
        assert event.source.component == "pet-operator"
        assert event.message


def test_event_level_filters_out_normal_events(pets: PetApi, operator_factory: Any, kube_api: Any) -> None:
    operator_factory([pets.namespace], extra_args=("--event-level", "Warning"))
    # max first: by the time rex's warning is visible, max's event would have been posted long before
    pets.create_pet("max", {"id": 703, "name": "Max"})
    wait_phase(pets, "max", "Active")
    pets.create_pet("rex", {"id": 702, "name": "Rex", "store": "missing"})
    wait_phase(pets, "rex", "Pending")
    wait_for(lambda: pet_events(kube_api, pets.namespace, "rex"), lambda es: len(es) == 1, 20, "the warning")
    assert pet_events(kube_api, pets.namespace, "max") == []

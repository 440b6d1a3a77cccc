"""The tenant's operations: unique ids, quotas, predictions, and no two users on one pet."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pet_locust import tenant
from pet_locust.api import ApiError
from pet_locust.tracker import GONE, Tracker


class FakeApi:
    """Records calls; creates answer with a uid and generation 1, patches bump the generation."""

    def __init__(self, refuse_duplicates: bool = False) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.generation: dict[str, int] = {}
        self.ids: dict[int, str] = {}
        self.refuse_duplicates = refuse_duplicates

    def create_pet(self, namespace: str, body: dict[str, Any], name: str = "POST pets",
                   expect: tuple[int, ...] = (201,)) -> tuple[int, dict[str, Any]]:
        pet_id = body["spec"]["id"]
        if pet_id in self.ids and self.refuse_duplicates:
            assert 422 in expect
            self.calls.append((name, namespace, body))
            return 422, {}
        self.ids.setdefault(pet_id, body["metadata"]["name"])
        key = f"{namespace}/{body['metadata']['name']}"
        self.generation[key] = 1
        self.calls.append((name, namespace, body))
        return 201, {"metadata": {"uid": "uid-" + key, "generation": 1}}

    def patch_pet(self, namespace: str, pet: str, patch: dict[str, Any], name: str = "PATCH pets") -> dict[str, Any]:
        key = f"{namespace}/{pet}"
        if "spec" in patch:
            self.generation[key] += 1
        self.calls.append((name, namespace, patch))
        return {"metadata": {"generation": self.generation[key]}}

    def patch_pet_status(self, namespace: str, pet: str, status: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("PATCH pets/status", namespace, status))
        return {}

    def delete_pet(self, namespace: str, pet: str) -> dict[str, Any]:
        self.calls.append(("DELETE pets", namespace, pet))
        return {}


def load(**kwargs: Any) -> tuple[tenant.LoadProcess, list[Any]]:
    reports: list[Any] = []
    tracker = Tracker(lambda *r: reports.append(r))
    defaults: dict[str, Any] = {"namespaces": ["a", "b"], "stores": 2, "max_creates": 100, "id_base": 1000,
                                "rng": random.Random(4)}
    defaults.update(kwargs)
    return tenant.LoadProcess(tracker, **defaults), reports


def settle(proc: tenant.LoadProcess) -> None:
    """Show every pet of the process on the 'watch' with its predicted status."""
    for pet in proc.pets.values():
        proc.tracker.observe("MODIFIED", {"metadata": {"namespace": pet.namespace, "name": pet.name, "uid": pet.uid},
                                          "status": {"phase": pet.phase, "observedGeneration": pet.generation}})


def test_creates_use_fresh_ids_per_process_and_stop_at_the_quota() -> None:
    proc, _ = load(max_creates=5, worker_index=2)
    other, _ = load(max_creates=5, worker_index=3)
    api = FakeApi()
    for _ in range(5):
        tenant.create(proc, api)
        tenant.create(other, api)
    ids = [body["spec"]["id"] for _, _, body in api.calls]
    assert len(set(ids)) == 10
    assert all(i < 2**53 for i in ids)
    with pytest.raises(tenant.QuotaReached):
        tenant.create(proc, api)
    assert proc.tracker.outstanding == 5  # each create waits for its Active


def test_a_duplicate_is_expected_refused_with_the_webhook_or_conflict_without() -> None:
    proc, _ = load(duplicate_share=0.999, duplicates="conflict")
    api = FakeApi()
    tenant.create(proc, api)
    settle(proc)
    dup = tenant.create(proc, api)
    assert dup is not None and dup.phase == "Conflict" and dup.duplicate_of == api.calls[0][2]["spec"]["id"]
    assert proc.waiting == {dup.pet_id: 1}
    refusing, _ = load(duplicate_share=0.999, duplicates="reject")
    api = FakeApi(refuse_duplicates=True)
    tenant.create(refusing, api)
    settle(refusing)
    assert tenant.create(refusing, api) is None
    assert api.calls[-1][0] == "POST pets (duplicate id, refused)"


def test_only_settled_pets_are_picked_and_a_picked_pet_is_nobody_elses_until_released() -> None:
    proc, _ = load()
    api = FakeApi()
    tenant.create(proc, api)
    assert proc.pick() is None  # not settled yet
    settle(proc)
    first = proc.pick()
    assert first is not None
    assert proc.pick() is None  # the only pet is busy
    proc.release(first)
    assert proc.pick() is first


def test_an_update_expects_the_new_generation() -> None:
    proc, _ = load()
    api = FakeApi()
    tenant.create(proc, api)
    settle(proc)
    pet = tenant.update_tags(proc, api)
    assert pet is not None and pet.generation == 2
    (expectation,) = proc.tracker.pending[(pet.namespace, pet.name)]
    assert (expectation.name, expectation.generation) == ("update tags → Active", 2)
    assert proc.busy == set()


def test_a_delete_never_takes_a_holder_that_a_duplicate_waits_for() -> None:
    proc, _ = load(duplicate_share=0.999, duplicates="conflict", rng=random.Random(1))
    api = FakeApi()
    holder = tenant.create(proc, api)
    settle(proc)
    duplicate = tenant.create(proc, api)
    settle(proc)
    assert holder is not None and duplicate is not None
    proc.busy.add((duplicate.namespace, duplicate.name))  # another user is writing the duplicate
    for _ in range(10):
        assert tenant.delete(proc, api) is None  # the holder is never taken while its duplicate waits
    proc.busy.clear()
    first = tenant.delete(proc, api)
    assert first is duplicate  # the only deletable pet
    assert proc.waiting == {}
    assert tenant.delete(proc, api) is holder  # nobody waits for its id any more
    pending = [e for es in proc.tracker.pending.values() for e in es if e.phase == GONE]
    assert len(pending) == 2


def test_the_raw_writer_patches_the_predicted_status_itself() -> None:
    proc, _ = load(writer="client")
    api = FakeApi()
    tenant.create(proc, api)
    names = [c[0] for c in api.calls]
    assert names == ["POST pets", "PATCH pets/status"]
    status = api.calls[1][2]
    assert status["phase"] == "Active" and status["observedGeneration"] == 1
    assert {c["type"] for c in status["conditions"]} == {"Ready", "IdClaimed", "TagsValid"}


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("namespaces", [], "at least one namespace"),
    ("duplicates", "maybe", "'reject'"),
    ("writer", "someone", "one of operator"),
    ("duplicate_share", 1.0, "[0, 1)"),
])
def test_bad_settings_are_refused_naming_the_rule(field: str, value: Any, rule: str) -> None:
    with pytest.raises(ValueError, match=rule.replace("[", r"\[").replace(")", r"\)")):
        load(**{field: value})


def test_api_error_keeps_the_api_servers_message() -> None:
    err = ApiError("POST pets", 422, '{"message": "tags [x] not allowed"}')
    assert err.status == 422 and "tags [x] not allowed" in str(err)

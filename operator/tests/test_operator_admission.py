"""admission: the pure rules of the Pet webhook (behaviour 3 and 4 at admission) and its response shape."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pet_operator.admission import ALLOW, Decision, review_pet, review_response, tags_changed
from pet_operator.claims import Claim
from pet_operator.model import StoreView

NS = "default"
SHOP = StoreView("shop", ("dog", "cat"))  # listed unsorted: the message sorts them


def pet(
    name: str = "rex",
    *,
    tags: list[str] | None = None,
    pet_id: int = 7,
    store: str | None = "shop",
    deleting: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"id": pet_id, "name": name}
    if store is not None:
        spec["store"] = store
    if tags is not None:
        spec["tags"] = tags
    metadata: dict[str, Any] = {"name": name, "namespace": NS}
    if deleting:
        metadata["deletionTimestamp"] = "2024-05-01T10:00:00Z"
        metadata["finalizers"] = ["petstore.example.com/id-claim"]
    return {"apiVersion": "petstore.example.com/v1", "kind": "Pet", "metadata": metadata, "spec": spec}


def claim(holder: str, pet_id: int = 7) -> Claim:
    return Claim(pet_id=pet_id, holder=holder, holder_uid="uid-holder", resource_version="42")


def create(new: dict[str, Any], store: StoreView | None = SHOP, held: Claim | None = None) -> Decision:
    return review_pet("CREATE", NS, new["metadata"]["name"], new, None, store, held)


def update(
    old: dict[str, Any], new: dict[str, Any], store: StoreView | None = SHOP, held: Claim | None = None
) -> Decision:
    return review_pet("UPDATE", NS, new["metadata"]["name"], new, old, store, held)


# --- tags -------------------------------------------------------------------------------------


def test_create_with_allowed_tags_is_allowed() -> None:
    assert create(pet(tags=["cat", "dog"])) == Decision(True, "", 200)
    assert create(pet(tags=["cat", "dog"])) is ALLOW


def test_create_with_tags_outside_allowed_tags_is_denied_with_422_naming_each_tag_and_the_set() -> None:
    decision = create(pet(tags=["cat", "snake", "spider"]))
    assert decision.allowed is False
    assert decision.code == 422
    assert decision.message == (
        "tags 'snake', 'spider' are not allowed by PetStore 'shop', which allows [cat, dog]"
    )
    # an allowed tag of the pet is not named as offending
    assert "'cat'" not in decision.message


def test_offending_tags_are_named_in_the_pets_order() -> None:
    message = create(pet(tags=["zebra", "ant"])).message
    assert message.index("'zebra'") < message.index("'ant'")


def test_empty_allowed_tags_allows_no_tag_at_all() -> None:
    decision = create(pet(tags=["cat"]), store=StoreView("strict", ()))
    assert (decision.allowed, decision.code) == (False, 422)
    assert decision.message == "tags 'cat' are not allowed by PetStore 'strict', which allows no tags at all"


def test_empty_allowed_tags_still_admits_a_pet_without_tags() -> None:
    assert create(pet(tags=[]), store=StoreView("strict", ())).allowed is True
    assert create(pet(tags=None), store=StoreView("strict", ())).allowed is True


def test_absent_allowed_tags_allows_any_tag() -> None:
    assert create(pet(tags=["anything", "at-all"]), store=StoreView("open", None)) is ALLOW


def test_no_store_allows_any_tag() -> None:
    # no spec.store, or a store that does not exist (yet): the controller makes it Pending
    assert create(pet(tags=["snake"], store=None), store=None) is ALLOW
    assert create(pet(tags=["snake"]), store=None) is ALLOW


def test_update_not_changing_tags_passes_although_the_store_narrowed() -> None:
    old = pet(tags=["snake", "cat"])
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = {"edited": "yes"}
    new["spec"]["name"] = "renamed"
    new["spec"]["tags"] = ["cat", "snake"]  # reordered is not changed: tags are a set
    assert update(old, new) is ALLOW


def test_update_adding_a_disallowed_tag_is_denied() -> None:
    decision = update(pet(tags=["cat"]), pet(tags=["cat", "snake"]))
    assert (decision.allowed, decision.code) == (False, 422)
    assert "'snake'" in decision.message
    assert "[cat, dog]" in decision.message


def test_update_changing_tags_into_allowed_ones_fixes_an_invalid_pet() -> None:
    assert update(pet(tags=["snake"]), pet(tags=["dog"])) is ALLOW


def test_update_without_old_object_is_checked_like_a_create() -> None:
    decision = review_pet("UPDATE", NS, "rex", pet(tags=["snake"]), None, SHOP, None)
    assert decision.allowed is False
    assert "'snake'" in decision.message


def test_object_being_deleted_always_passes() -> None:
    # finalizer removal of a pet whose tags (even newly changed ones) the store forbids
    assert update(pet(tags=["cat"]), pet(tags=["snake"], deleting=True)) is ALLOW
    assert create(pet(tags=["snake"], deleting=True), held=claim("other/rex")) is ALLOW


@pytest.mark.parametrize("operation", ["DELETE", "CONNECT", "", "create"])
def test_operations_other_than_create_and_update_pass(operation: str) -> None:
    bad = pet(tags=["snake"])
    decision = review_pet(operation, NS, "rex", bad, bad, SHOP, claim("other/rex"))
    assert decision is ALLOW


def test_no_new_object_passes() -> None:
    assert review_pet("CREATE", NS, "rex", None, None, SHOP, claim("other/rex")) is ALLOW
    assert review_pet("UPDATE", NS, "rex", None, pet(tags=["snake"]), SHOP, None) is ALLOW


# --- ids --------------------------------------------------------------------------------------


def test_create_whose_id_is_held_in_the_same_namespace_is_denied_naming_the_holder() -> None:
    decision = create(pet(tags=["cat"]), held=claim(f"{NS}/fido"))
    assert (decision.allowed, decision.code) == (False, 422)
    assert decision.message == (
        f"spec.id 7 is already held by pet {NS}/fido; ids are unique across all namespaces"
    )


def test_create_whose_id_is_held_in_another_namespace_is_denied_without_naming_the_holder() -> None:
    """The requester may not read that namespace: the denial says the id is taken, not by whom."""
    decision = create(pet(tags=["cat"]), held=claim("other-ns/fido"))
    assert (decision.allowed, decision.code) == (False, 422)
    assert decision.message == (
        "spec.id 7 is already held by a pet in another namespace; ids are unique across all namespaces"
    )
    assert "other-ns" not in decision.message and "fido" not in decision.message


@pytest.mark.parametrize("holder", [f"{NS}/fido", "other-ns/rex"], ids=["same-namespace", "same-name"])
def test_holder_differing_in_namespace_or_name_only_is_another_pet(holder: str) -> None:
    decision = create(pet("rex"), held=claim(holder))
    assert decision.allowed is False
    assert "already held by" in decision.message


def test_claim_of_this_very_pet_is_allowed() -> None:
    # a stale claim of a pet being recreated under the same namespace/name
    assert create(pet("rex"), held=claim(f"{NS}/rex")) is ALLOW


def test_update_ignores_claims() -> None:
    assert update(pet(tags=["cat"]), pet(tags=["cat", "dog"]), held=claim("other-ns/fido")) is ALLOW


def test_tag_and_id_problems_make_one_message_joined_by_semicolon() -> None:
    decision = create(pet(tags=["snake"]), held=claim("other-ns/fido"))
    assert (decision.allowed, decision.code) == (False, 422)
    assert decision.message == (
        "tags 'snake' are not allowed by PetStore 'shop', which allows [cat, dog]; "
        "spec.id 7 is already held by a pet in another namespace; ids are unique across all namespaces"
    )


# --- tags_changed -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "changed"),
    [
        (None, {}, True),
        (None, {"tags": ["a"]}, True),
        ({}, {}, False),
        ({"tags": None}, {"tags": []}, False),
        ({}, {"tags": []}, False),
        ({"tags": ["a", "b"]}, {"tags": ["b", "a"]}, False),
        ({"tags": ["a"]}, {"tags": ["a", "b"]}, True),
        ({"tags": ["a", "b"]}, {"tags": ["a"]}, True),
        ({"tags": ["a"]}, {"tags": ["b"]}, True),
        ({"tags": ["a"]}, {}, True),
    ],
)
def test_tags_changed(old: dict[str, Any] | None, new: dict[str, Any], changed: bool) -> None:
    assert tags_changed(old, new) is changed


# --- review_response --------------------------------------------------------------------------


def test_review_response_allowed_has_no_status() -> None:
    assert review_response("uid-1", ALLOW) == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "uid-1", "allowed": True},
    }


def test_review_response_denied_carries_code_and_message() -> None:
    response = review_response("uid-2", Decision(False, "tags 'snake' are not allowed", 422))
    assert response["apiVersion"] == "admission.k8s.io/v1"
    assert response["kind"] == "AdmissionReview"
    assert response["response"]["uid"] == "uid-2"
    assert response["response"]["allowed"] is False
    status = response["response"]["status"]
    assert status["code"] == 422
    assert status["message"] == "tags 'snake' are not allowed"


def test_review_response_of_a_real_denial() -> None:
    response = review_response("abc", create(pet(tags=["snake"])))["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    assert "'snake'" in response["status"]["message"]


def test_decision_defaults() -> None:
    assert Decision(True) == Decision(True, "", 200)
    assert ALLOW.allowed is True

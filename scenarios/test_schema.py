"""Every schema rule of the contract, enforced by the real API server (no operator needed)."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import api_error
from kubernetes import client

from pet_harness.kube import GROUP, TABLE, VERSION, PetApi, get_raw

VALID: dict[str, Any] = {"id": 1, "name": "Rex"}
MAX_ID = 9007199254740991


def spec(**changes: Any) -> dict[str, Any]:
    out = dict(VALID)
    for key, value in changes.items():
        if value is _DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


_DROP = object()

# (test id, spec, field path the error must name, words the message must contain)
PET_REJECTIONS = [
    ("id-required", spec(id=_DROP), "spec.id", "Required value"),
    ("id-below-1", spec(id=0), "spec.id", "greater than or equal to 1"),
    ("id-above-max-safe-integer", spec(id=MAX_ID + 1), "spec.id", "less than or equal to 9007199254740991"),
    ("id-not-integer", spec(id="seven"), "spec.id", "must be of type integer"),
    ("name-required", spec(name=_DROP), "spec.name", "Required value"),
    ("name-empty", spec(name=""), "spec.name", "at least 1 chars long"),
    ("name-too-long", spec(name="n" * 64), "spec.name", "63"),
    ("category-too-long", spec(category="c" * 64), "spec.category", "63"),
    ("tags-too-many", spec(tags=[f"t{i}" for i in range(17)]), "spec.tags", "16"),
    ("tags-not-unique", spec(tags=["dog", "dog"]), "spec.tags[1]", "Duplicate value"),
    ("tag-uppercase", spec(tags=["Dog"]), "spec.tags[0]", "should match"),
    ("tag-leading-dash", spec(tags=["-dog"]), "spec.tags[0]", "should match"),
    ("tag-too-long", spec(tags=["t" * 64]), "spec.tags[0]", "63"),
    ("photo-urls-too-many", spec(photoUrls=[f"https://p/{i}" for i in range(11)]), "spec.photoUrls", "10"),
    ("photo-url-too-long", spec(photoUrls=["https://p/" + "x" * 2039]), "spec.photoUrls[0]", "2048"),
    ("availability-not-in-enum", spec(availability="lost"), "spec.availability", "Unsupported value"),
    ("store-not-a-name", spec(store="Not_A_Name"), "spec.store", "should match"),
]


@pytest.mark.parametrize(("case", "body", "field", "words"), PET_REJECTIONS, ids=[c[0] for c in PET_REJECTIONS])
def test_pet_schema_rejects(pets: PetApi, case: str, body: dict[str, Any], field: str, words: str) -> None:
    exc = api_error(lambda: pets.create_pet(f"bad-{case}", body))
    assert exc.status == 422, exc.body
    assert field in exc.body, f"error does not name {field}: {exc.body}"
    assert words in exc.body, f"error does not say {words!r}: {exc.body}"
    assert pets.list_pets() == [], "a rejected pet was stored"


def test_pet_bounds_accepted(pets: PetApi) -> None:
    """The edges of every rule are inside it: the rejections above are not over-eager."""
    pets.create_pet("edge-max", spec(id=MAX_ID, name="n" * 63, category="c" * 63,
                                     tags=[f"t{i}" for i in range(16)],
                                     photoUrls=["https://p/" + "x" * 2038] * 10,
                                     availability="sold", store="a.b-c"))
    pets.create_pet("edge-min", spec(id=1, name="n", tags=["a", "0-9"]))
    assert {p["metadata"]["name"] for p in pets.list_pets()} == {"edge-max", "edge-min"}


def test_availability_defaults_to_available(pets: PetApi) -> None:
    created = pets.create_pet("defaulted", VALID)
    assert created["spec"]["availability"] == "available"


def test_id_is_immutable(pets: PetApi) -> None:
    pets.create_pet("fixed", VALID)
    exc = api_error(lambda: pets.patch_pet("fixed", {"spec": {"id": 2}}))
    assert exc.status == 422
    assert "spec.id" in exc.body and "immutable" in exc.body, exc.body
    assert pets.get_pet("fixed")["spec"]["id"] == 1
    # other fields stay mutable
    assert pets.patch_pet("fixed", {"spec": {"name": "Max"}})["spec"]["name"] == "Max"


def test_status_is_a_subresource(pets: PetApi) -> None:
    """Status sent with the main resource is ignored: only the status subresource writes it."""
    created = pets.create_pet("sneaky", VALID, labels={"x": "y"})
    assert "status" not in created
    body = dict(created)
    body["status"] = {"phase": "Active"}
    updated = pets.custom.replace_namespaced_custom_object(GROUP, VERSION, pets.namespace, "pets", "sneaky", body)
    assert "status" not in updated


STORE_REJECTIONS = [
    ("allowed-tag-pattern", {"allowedTags": ["Bad Tag"]}, "spec.allowedTags[0]", "should match"),
    ("allowed-tags-not-unique", {"allowedTags": ["a", "a"]}, "spec.allowedTags[1]", "Duplicate value"),
    ("display-name-too-long", {"displayName": "d" * 254}, "spec.displayName", "253"),
]


@pytest.mark.parametrize(("case", "body", "field", "words"), STORE_REJECTIONS, ids=[c[0] for c in STORE_REJECTIONS])
def test_store_schema_rejects(pets: PetApi, case: str, body: dict[str, Any], field: str, words: str) -> None:
    exc = api_error(lambda: pets.create_store(f"bad-{case}", body))
    assert exc.status == 422, exc.body
    assert field in exc.body and words in exc.body, exc.body
    assert pets.list_stores() == []


def test_store_allowed_tags_absent_and_empty_stay_distinct(pets: PetApi) -> None:
    assert "allowedTags" not in pets.create_store("open", {})["spec"]
    assert pets.create_store("closed", {"allowedTags": []})["spec"]["allowedTags"] == []


def test_discovery_names_and_printer_columns(kube_api: Any, pets: PetApi) -> None:
    resources = client.CustomObjectsApi(kube_api).get_api_resources(GROUP, VERSION).resources
    by_name = {r.name: r for r in resources}
    assert by_name["pets"].short_names == ["pt"]
    assert by_name["petstores"].short_names == ["ps"]
    assert by_name["pets"].namespaced and by_name["petstores"].namespaced
    assert {"pets/status", "petstores/status"} <= set(by_name)

    pets.create_pet("tabled", spec(store="shop"))
    table = get_raw(kube_api, f"/apis/{GROUP}/{VERSION}/namespaces/{pets.namespace}/pets", TABLE)
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "ID", "Name", "Store", "Phase", "Age"]
    assert table["rows"][0]["cells"][1:4] == [1, "Rex", "shop"]

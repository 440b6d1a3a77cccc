"""mutation: the finalizer a pet gets at CREATE from the mutating webhook (pure decision)."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonpatch  # a dependency of kopf
import pytest

from pet_operator.claims import FINALIZER
from pet_operator.mutation import PATH, finalizer_patch, review_response

PETS = {"group": "petstore.example.com", "version": "v1", "resource": "pets"}


def request(operation: str = "CREATE", obj: Any = None, **extra: Any) -> dict[str, Any]:
    if obj is None:
        obj = {"metadata": {"name": "rex", "namespace": "default"}, "spec": {"id": 1, "name": "Rex"}}
    return {"uid": "u", "operation": operation, "namespace": "default", "name": "rex", "resource": PETS,
            "object": obj, **extra}


def with_finalizers(finalizers: Any) -> dict[str, Any]:
    return {"metadata": {"name": "rex", "finalizers": finalizers}, "spec": {"id": 1}}


def applied(obj: dict[str, Any], patch: list[dict[str, Any]] | None) -> dict[str, Any]:
    assert patch is not None
    result: dict[str, Any] = jsonpatch.apply_patch(obj, patch)
    return result


def test_a_pet_without_finalizers_gets_ours_as_the_whole_list() -> None:
    req = request()
    patch = finalizer_patch(req)
    assert patch == [{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]
    assert applied(req["object"], patch)["metadata"]["finalizers"] == [FINALIZER]


@pytest.mark.parametrize("finalizers", [[], ["example.com/other"]], ids=["empty", "another"])
def test_a_pet_with_other_finalizers_gets_ours_appended(finalizers: list[str]) -> None:
    obj = with_finalizers(finalizers)
    patch = finalizer_patch(request(obj=obj))
    assert patch == [{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}]
    assert applied(obj, patch)["metadata"]["finalizers"] == [*finalizers, FINALIZER]


def test_null_finalizers_are_replaced_by_ours() -> None:
    obj = with_finalizers(None)
    assert applied(obj, finalizer_patch(request(obj=obj)))["metadata"]["finalizers"] == [FINALIZER]


@pytest.mark.parametrize("finalizers", [[FINALIZER], ["example.com/other", FINALIZER]])
def test_a_pet_that_carries_ours_already_gets_no_patch(finalizers: list[str]) -> None:
    assert finalizer_patch(request(obj=with_finalizers(finalizers))) is None


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "CONNECT", "", None])
def test_only_creates_are_patched(operation: Any) -> None:
    assert finalizer_patch(request(operation)) is None


def test_a_pet_being_deleted_gets_no_patch() -> None:
    obj = {"metadata": {"name": "rex", "deletionTimestamp": "2024-05-01T10:00:00Z"}}
    assert finalizer_patch(request(obj=obj)) is None


@pytest.mark.parametrize("resource", [
    {"group": "petstore.example.com", "version": "v1", "resource": "petstores"},
    {"group": "other.example.com", "version": "v1", "resource": "pets"},
    {"group": "", "version": "v1", "resource": "pods"},
    None, "pets", [],
], ids=["petstores", "other-group", "pods", "none", "string", "list"])
def test_other_resources_get_no_patch(resource: Any) -> None:
    assert finalizer_patch(request(resource=resource)) is None


def test_a_subresource_gets_no_patch() -> None:
    assert finalizer_patch(request(subResource="status")) is None


def test_namespaces_not_served_get_no_patch() -> None:
    """Nothing would ever remove the finalizer from a pet no operator serves: it could not be deleted."""
    assert finalizer_patch(request(), frozenset({"other"})) is None
    assert finalizer_patch(request(), frozenset({"default"})) is not None
    assert finalizer_patch(request(), None) is not None


@pytest.mark.parametrize("obj", [
    "x", [], {"metadata": None}, {"metadata": "x"}, {"spec": {}}, with_finalizers("x"), with_finalizers({}),
], ids=["string", "list", "null-metadata", "string-metadata", "no-metadata", "string-finalizers",
        "object-finalizers"])
def test_objects_of_an_unexpected_shape_get_no_patch(obj: Any) -> None:
    assert finalizer_patch(request(obj=obj)) is None


def test_the_response_allows_and_carries_the_patch_as_base64_json() -> None:
    patch = [{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]
    answer = review_response("uid-9", patch)
    assert (answer["apiVersion"], answer["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    response = answer["response"]
    assert (response["uid"], response["allowed"], response["patchType"]) == ("uid-9", True, "JSONPatch")
    assert json.loads(base64.b64decode(response["patch"])) == patch


@pytest.mark.parametrize("patch", [None, []])
def test_the_response_without_a_patch_only_allows(patch: Any) -> None:
    assert review_response("uid-9", patch)["response"] == {"uid": "uid-9", "allowed": True}


def test_the_path() -> None:
    assert PATH == "/mutate-pets"

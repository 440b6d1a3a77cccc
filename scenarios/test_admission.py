"""Contract behaviour 3 (and 4 at admission): the validating webhook, over TLS, for real."""

from __future__ import annotations

import base64
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import api_error, wait_phase
from kubernetes import client

from pet_harness import webhooks
from pet_harness.clusters.local import free_port
from pet_harness.kube import PetApi
from pet_harness.waiting import wait_for


def test_tags_outside_allowed_tags_are_rejected_naming_each_and_the_allowed_set(
    pets: PetApi, pet_operator: Any
) -> None:
    pets.create_store("shop", {"allowedTags": ["dog", "cat"]})
    exc = api_error(lambda: pets.create_pet("rex", {"id": 801, "name": "Rex", "store": "shop",
                                                    "tags": ["cat", "bird", "fish"]}))
    assert exc.status == 422
    assert "denied the request" in exc.body
    assert "'bird'" in exc.body and "'fish'" in exc.body and "'cat'" not in exc.body.split("allows")[0]
    assert "[cat, dog]" in exc.body
    assert pets.list_pets() == []
    pets.create_pet("ok", {"id": 802, "name": "ok", "store": "shop", "tags": ["cat"]})


def test_empty_allowed_tags_allow_none_and_absent_allow_any(pets: PetApi, pet_operator: Any) -> None:
    pets.create_store("closed", {"allowedTags": []})
    pets.create_store("open", {})
    exc = api_error(lambda: pets.create_pet("a", {"id": 803, "name": "a", "store": "closed", "tags": ["x"]}))
    assert exc.status == 422
    assert "no tags at all" in exc.body
    pets.create_pet("b", {"id": 804, "name": "b", "store": "closed"})
    pets.create_pet("c", {"id": 805, "name": "c", "store": "open", "tags": ["any", "tag"]})


def test_adding_a_forbidden_tag_by_update_is_rejected_but_other_updates_of_an_invalid_pet_pass(
    pets: PetApi, pet_operator: Any
) -> None:
    pets.create_store("shop", {"allowedTags": ["dog", "cat"]})
    pets.create_pet("rex", {"id": 806, "name": "Rex", "store": "shop", "tags": ["dog"]})
    wait_phase(pets, "rex", "Active")
    exc = api_error(lambda: pets.patch_pet("rex", {"spec": {"tags": ["dog", "wolf"]}}))
    assert exc.status == 422
    assert "'wolf'" in exc.body
    # the store narrows: the pet turns Invalid, and stays updatable and deletable
    pets.patch_store("shop", {"spec": {"allowedTags": ["cat"]}})
    wait_phase(pets, "rex", "Invalid", "TagsNotAllowed")
    pets.patch_pet("rex", {"metadata": {"labels": {"note": "still-editable"}}})
    pets.patch_pet("rex", {"spec": {"tags": ["cat"]}})  # fixing the pet brings it back
    wait_phase(pets, "rex", "Active")
    pets.delete_pet("rex")
    wait_for(pets.list_pets, lambda items: items == [], 20, "the pet to be deleted")


def test_a_create_with_an_id_held_elsewhere_is_rejected_naming_the_holder_only_in_its_namespace(
    pets: PetApi, make_namespace: Any, operator_factory: Any
) -> None:
    """The denial tells the requester what it may read anyway: a holder in the same namespace by
    name, one in another namespace only as such."""
    other = pets.in_namespace(make_namespace("other"))
    operator_factory([pets.namespace, other.namespace])
    pets.create_pet("holder", {"id": 807, "name": "holder"})
    wait_phase(pets, "holder", "Active")
    exc = api_error(lambda: other.create_pet("copycat", {"id": 807, "name": "copycat"}))
    assert exc.status == 422
    assert "already held by a pet in another namespace" in exc.body
    assert pets.namespace not in exc.body and "holder" not in exc.body
    assert other.list_pets() == []
    exc = api_error(lambda: pets.create_pet("twin", {"id": 807, "name": "twin"}))
    assert exc.status == 422
    assert f"already held by pet {pets.namespace}/holder" in exc.body


def test_pets_of_unserved_namespaces_are_not_reviewed(
    pets: PetApi, make_namespace: Any, pet_operator: Any
) -> None:
    outside = pets.in_namespace(make_namespace("outside"))
    outside.create_store("shop", {"allowedTags": []})
    outside.create_pet("free", {"id": 808, "name": "free", "store": "shop", "tags": ["any"]})


def _served_certificate(port: int) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        return tls.getpeercert(binary_form=True) or b""


def test_mounted_certificates_are_reloaded_when_they_change(
    pets: PetApi, pet_operator: Any, kube_api: Any
) -> None:
    cert_dir = Path(pet_operator.argv()[pet_operator.argv().index("--webhook-cert-dir") + 1])
    before = _served_certificate(pet_operator.webhook_port)
    new_ca = webhooks.write_serving_certificate(cert_dir)  # a new CA and certificate, as a rotation
    admission = client.AdmissionregistrationV1Api(kube_api)
    name = admission.list_validating_webhook_configuration().items
    config = next(c for c in name if c.metadata.name.startswith("pet-operator-"))
    patch = [{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle",
              "value": base64.b64encode(new_ca).decode()}]
    admission.patch_validating_webhook_configuration(config.metadata.name, patch)
    wait_for(lambda: _served_certificate(pet_operator.webhook_port), lambda cert: cert != before, 20,
             "the webhook to serve the new certificate")
    pets.create_store("shop", {"allowedTags": []})

    def rejected() -> int:
        return api_error(lambda: pets.create_pet("x", {"id": 809, "name": "x", "store": "shop",
                                                       "tags": ["t"]})).status

    # the API server may still hold connections made under the old CA for a moment
    assert wait_for(rejected, lambda code: code == 422, 20, "a rejection through the new certificate") == 422
    assert "webhook certificate reloaded" in pet_operator.log_text()


def test_self_signed_certificate_is_published_into_the_webhook_configuration(
    pets: PetApi, operator_factory: Any, kube_api: Any
) -> None:
    port = free_port()
    name = "pet-operator"  # the one name the shipped RBAC lets the operator patch (either kind)
    for body in webhooks.configurations(name, [pets.namespace], f"https://127.0.0.1:{port}", None):
        webhooks.install(kube_api, body)
    try:
        operator_factory([pets.namespace], webhook=False, extra_args=(
            "--webhook-port", str(port), "--webhook-configuration", name,
            "--mutating-webhook-configuration", name))
        admission = client.AdmissionregistrationV1Api(kube_api)
        for read in (admission.read_validating_webhook_configuration, admission.read_mutating_webhook_configuration):
            config = wait_for(lambda read=read: read(name),
                              lambda c: bool(c.webhooks[0].client_config.ca_bundle), 20, f"the caBundle ({read})")
            assert b"BEGIN CERTIFICATE" in base64.b64decode(config.webhooks[0].client_config.ca_bundle)
        started = time.monotonic()
        waited = webhooks.wait_effective(kube_api, pets.namespace) + webhooks.wait_mutating(kube_api, pets.namespace)
        assert waited <= time.monotonic() - started + 0.1
    finally:
        webhooks.uninstall(kube_api, name)


def _post_review(port: int, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST straight to a replica's webhook port, as anyone who can reach it could."""
    import http.client
    import json

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("POST", "/validate-pets", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_a_forged_review_for_a_namespace_not_served_reveals_nothing(
    pets: PetApi, make_namespace: Any, pet_operator: Any
) -> None:
    """Reviews for namespaces the operator does not serve are refused before anything is read:
    no claim holder, no store's allowedTags, whatever the forger asks."""
    import json

    pets.create_store("shop", {"allowedTags": ["secret-tag"]})
    pets.create_pet("holder", {"id": 812, "name": "holder", "store": "shop", "tags": ["secret-tag"]})
    wait_phase(pets, "holder", "Active")
    unserved = make_namespace("unserved")
    for namespace, spec in ((unserved, {"id": 812, "name": "x"}),
                            (unserved, {"id": 813, "name": "x", "store": "shop", "tags": ["other"]})):
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "forged", "operation": "CREATE", "namespace": namespace, "name": "x",
            "object": {"apiVersion": "petstore.example.com/v1", "kind": "Pet",
                       "metadata": {"name": "x", "namespace": namespace}, "spec": spec}}}
        status, answer = _post_review(pet_operator.webhook_port, json.dumps(review).encode())
        assert status == 200
        response = answer["response"]
        assert (response["allowed"], response["status"]["code"]) == (False, 403)
        assert response["status"]["message"] == f"namespace '{namespace}' is not served by this pet-operator"
    assert "secret-tag" not in json.dumps(answer)


@pytest.mark.parametrize("bad", [b"not a review", b"{}"])
def test_malformed_reviews_get_a_400(pet_operator: Any, bad: bytes) -> None:
    import http.client

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", pet_operator.webhook_port, context=ctx, timeout=5)
    try:
        conn.request("POST", "/validate-pets", body=bad, headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 400
    finally:
        conn.close()


def test_moving_a_pet_to_a_store_that_forbids_its_tags_is_rejected(pets: PetApi, pet_operator: Any) -> None:
    pets.create_store("dogs", {"allowedTags": ["dog"]})
    pets.create_store("cats", {"allowedTags": ["cat"]})
    pets.create_pet("rex", {"id": 810, "name": "Rex", "store": "dogs", "tags": ["dog"]})
    exc = api_error(lambda: pets.patch_pet("rex", {"spec": {"store": "cats"}}))
    assert exc.status == 422
    assert "'dog'" in exc.body
    assert "PetStore 'cats'" in exc.body
    assert pets.get_pet("rex")["spec"]["store"] == "dogs"


def test_a_pet_with_a_large_escaped_annotation_can_be_updated_and_deleted(pets: PetApi, pet_operator: Any) -> None:
    """The API server writes '<' as six bytes (\\u003c) in a review, and an UPDATE carries the old
    and the new object: 120 KB of '<' make a 1.4 MB review, above aiohttp's default 1 MiB limit."""
    pets.create_store("shop", {"allowedTags": ["dog", "cat"]})
    pets.create_pet("rex", {"id": 811, "name": "Rex", "store": "shop", "tags": ["dog"]})
    pets.patch_pet("rex", {"metadata": {"annotations": {"note": "<" * 120_000}}})  # not reviewed (spec alone)
    wait_phase(pets, "rex", "Active")
    pets.patch_pet("rex", {"spec": {"tags": ["dog", "cat"]}})  # reviewed: old and new, each 720 KB
    exc = api_error(lambda: pets.patch_pet("rex", {"spec": {"tags": ["dog", "wolf"]}}))
    assert exc.status == 422 and "'wolf'" in exc.body  # decided by the webhook, not refused for its size
    wait_phase(pets, "rex", "Active")
    pets.delete_pet("rex")
    wait_for(pets.list_pets, lambda items: items == [], 30, "the pet (and its finalizer) to go")

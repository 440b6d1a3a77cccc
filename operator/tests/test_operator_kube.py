"""kube.Kube over a fake REST transport: paths, verbs, content types, bounds, and how answers map."""

from __future__ import annotations

from typing import Any

import pytest

from pet_operator import kube, rest
from pet_operator.claims import Claim, claim_body
from pet_operator.rest import ApiError


class FakeRest:
    """Records each request; answers from ``answers`` (a callable or a value per call, in order)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    async def request(self, method: str, path: str, *, timeout: float, body: Any = None,  # noqa: ASYNC109
                      content_type: str = rest.JSON, params: Any = None, accept: str = rest.JSON) -> dict[str, Any]:
        call = {"method": method, "path": path, "timeout": timeout, "body": body, "content_type": content_type,
                "params": dict(params or {})}
        if accept != rest.JSON:
            call["accept"] = accept
        self.calls.append(call)
        answer = self.answers.pop(0)
        if callable(answer):
            answer = answer(call)
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    async def close(self) -> None:
        return None


def api(*answers: Any) -> tuple[kube.Kube, FakeRest]:
    client = kube.Kube(rest.Credentials("https://127.0.0.1:1", False), claims_namespace="pet-system",
                       timeouts=kube.Timeouts(read=1.0, write=2.0, list=3.0))
    fake = FakeRest(*answers)
    client.rest = fake  # type: ignore[assignment]
    return client, fake


def paged(total: int) -> Any:
    bodies = [claim_body(i, "default", f"pet-{i}", f"uid-{i}") for i in range(total)]

    def answer(call: dict[str, Any]) -> dict[str, Any]:
        start = int(call["params"].get("continue") or 0)
        page = bodies[start:start + int(call["params"]["limit"])]
        following = start + len(page)
        return {"items": page, "metadata": {"continue": str(following) if following < total else ""}}

    return answer


async def test_list_claims_reads_every_page() -> None:
    total = kube.LIST_PAGE * 2 + 3
    client, fake = api(paged(total), paged(total), paged(total))

    claims = await client.list_claims()

    assert sorted(c.pet_id for c in claims) == list(range(total))
    assert [c["params"].get("continue") for c in fake.calls] == [None, str(kube.LIST_PAGE), str(kube.LIST_PAGE * 2)]
    assert all(c["params"]["labelSelector"] == "petstore.example.com/id-claim=true" for c in fake.calls)
    assert {c["path"] for c in fake.calls} == {"/apis/coordination.k8s.io/v1/namespaces/pet-system/leases"}
    assert {c["timeout"] for c in fake.calls} == {3.0}


async def test_patch_status_is_a_bounded_merge_patch_of_the_subresource_with_a_precondition() -> None:
    client, fake = api({"metadata": {"resourceVersion": "8"}})
    result = await client.patch_status("pets", "ns", "rex", {"phase": "Active"}, resource_version="7")
    assert result["metadata"]["resourceVersion"] == "8"
    assert fake.calls == [{
        "method": "PATCH", "path": "/apis/petstore.example.com/v1/namespaces/ns/pets/rex/status", "timeout": 2.0,
        "body": {"status": {"phase": "Active"}, "metadata": {"resourceVersion": "7"}},
        "content_type": rest.MERGE_PATCH, "params": {},
    }]


async def test_a_write_to_a_gone_object_is_not_found_and_a_conflict_stays_an_api_error() -> None:
    client, _ = api(ApiError(404, "NotFound"), ApiError(409, "Conflict"))
    with pytest.raises(kube.NotFound, match="pets ns/rex"):
        await client.set_finalizers("pets", "ns", "rex", [], "3")
    with pytest.raises(ApiError) as caught:
        await client.set_finalizers("pets", "ns", "rex", [], "3")
    assert caught.value.status == 409


async def test_claims_create_if_absent_read_and_delete_with_a_precondition() -> None:
    held = claim_body(7, "ns", "rex", "uid-rex") | {}
    held["metadata"] = {**held["metadata"], "resourceVersion": "5"}
    client, fake = api(held, ApiError(409, "AlreadyExists"), held, ApiError(404, "NotFound"), {},
                       ApiError(409, "Conflict"))

    assert await client.create_claim(7, "ns", "rex", "uid-rex") == Claim(7, "ns/rex", "uid-rex", "5")
    assert await client.create_claim(7, "ns", "twin", "uid-twin") is None
    assert await client.read_claim_cached(7) == Claim(7, "ns/rex", "uid-rex", "5")
    assert await client.read_claim(8) is None
    assert await client.delete_claim(Claim(7, "ns/rex", "uid-rex", "5")) is True
    assert await client.delete_claim(Claim(7, "ns/rex", "uid-rex", "5")) is False

    assert fake.calls[0]["method"] == "POST"
    assert fake.calls[2]["params"] == {"resourceVersion": "0"}  # the webhook's read: the watch cache
    assert fake.calls[3]["params"] == {}  # the reconciler's read: a quorum read
    assert fake.calls[4]["method"] == "DELETE"
    assert fake.calls[4]["path"] == "/apis/coordination.k8s.io/v1/namespaces/pet-system/leases/pet-id-7"
    assert fake.calls[4]["body"] == {"preconditions": {"resourceVersion": "5"}}


async def test_the_leader_lease_record_keeps_the_servers_timestamps() -> None:
    lease = {"metadata": {"resourceVersion": "12", "uid": "u1"},
             "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15, "leaseTransitions": 2,
                      "acquireTime": "2026-12-05T20:00:00.123456Z", "renewTime": "2026-12-05T20:00:10.000001Z"}}
    client, fake = api(lease, ApiError(409, "Conflict"))
    record = await client.read_lease("pet-system", "pet-operator-leader")
    assert record is not None
    assert (record.holder, record.lease_duration, record.transitions) == ("pod-a", 15, 2)
    assert record.renew_time == "2026-12-05T20:00:10.000001Z"
    assert (record.resource_version, record.uid) == ("12", "u1")
    assert await client.update_lease("pet-system", "pet-operator-leader", {}, "12") is None
    assert fake.calls[1]["method"] == "PUT"
    assert fake.calls[1]["body"]["metadata"]["resourceVersion"] == "12"


@pytest.mark.parametrize(("method", "kind"), [
    ("publish_ca_bundle", "validatingwebhookconfigurations"),
    ("publish_mutating_ca_bundle", "mutatingwebhookconfigurations"),
])
async def test_the_ca_is_written_into_every_hook_of_the_configuration(method: str, kind: str) -> None:
    import base64

    client, fake = api({"webhooks": [{}, {}]}, {})
    await getattr(client, method)("pet-operator", b"CA PEM")

    bundle = base64.b64encode(b"CA PEM").decode()
    path = f"/apis/admissionregistration.k8s.io/v1/{kind}/pet-operator"
    assert [(c["method"], c["path"]) for c in fake.calls] == [("GET", path), ("PATCH", path)]
    assert fake.calls[1]["content_type"] == rest.JSON_PATCH
    assert fake.calls[1]["body"] == [
        {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle},
        {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": bundle},
    ]


async def test_uids_are_listed_as_metadata_only_in_pages() -> None:
    pages = [{"items": [{"metadata": {"uid": "a"}}], "metadata": {"continue": "t1"}},
             {"items": [{"metadata": {"uid": "b"}}], "metadata": {}},
             {"items": [{"metadata": {"uid": "c"}}], "metadata": {}}]
    client, fake = api(*pages)
    assert await client.list_uids("pets", ("ns1", "ns2")) == {"a", "b", "c"}
    assert [c["path"] for c in fake.calls] == ["/apis/petstore.example.com/v1/namespaces/ns1/pets"] * 2 + [
        "/apis/petstore.example.com/v1/namespaces/ns2/pets"]
    assert fake.calls[1]["params"]["continue"] == "t1"
    assert all(c.get("accept") == rest.METADATA_ONLY for c in fake.calls)


async def test_namespace_exists_is_a_bounded_read_of_the_namespace() -> None:
    client, fake = api({"metadata": {"name": "gone-soon"}}, ApiError(404, "NotFound"))
    assert await client.namespace_exists("gone-soon") is True
    assert await client.namespace_exists("gone") is False
    assert [(c["method"], c["path"], c["timeout"]) for c in fake.calls] == [
        ("GET", "/api/v1/namespaces/gone-soon", 1.0), ("GET", "/api/v1/namespaces/gone", 1.0),
    ]


async def test_the_operators_role_binding_is_read_and_only_its_finalizers_patched() -> None:
    binding = {"metadata": {"name": "pet-operator", "resourceVersion": "4"}}
    client, fake = api(binding, ApiError(404, "NotFound"), {"metadata": {"resourceVersion": "5"}},
                       ApiError(404, "NotFound"))
    assert await client.read_role_binding("shop", "pet-operator") == binding
    assert await client.read_role_binding("shop", "pet-operator") is None
    await client.set_role_binding_finalizers("shop", "pet-operator", ["petstore.example.com/pets-finalized"], "4")
    path = "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings/pet-operator"
    assert [c["path"] for c in fake.calls] == [path] * 3
    assert fake.calls[2]["method"] == "PATCH"
    assert fake.calls[2]["content_type"] == rest.MERGE_PATCH
    # metadata.finalizers and the precondition only: nothing that RBAC's escalation check looks at
    assert fake.calls[2]["body"] == {"metadata": {"finalizers": ["petstore.example.com/pets-finalized"],
                                                  "resourceVersion": "4"}}
    with pytest.raises(kube.NotFound, match="rolebinding shop/pet-operator"):
        await client.set_role_binding_finalizers("shop", "pet-operator", [], "5")


async def test_pets_with_a_finalizer_are_listed_whole() -> None:
    rex = {"metadata": {"name": "rex", "finalizers": ["petstore.example.com/id-claim"]}, "spec": {"id": 1}}
    page = {"items": [rex, {"metadata": {"name": "tom", "finalizers": ["other/one"]}},
                      {"metadata": {"name": "kit"}}], "metadata": {}}
    client, fake = api(page)
    assert await client.pets_with_finalizer("shop", "petstore.example.com/id-claim") == [rex]
    assert fake.calls[0]["path"] == "/apis/petstore.example.com/v1/namespaces/shop/pets"
    assert "accept" not in fake.calls[0], "whole objects: a pet no watch delivers is finalized from them"


async def test_namespace_terminating() -> None:
    client, fake = api({"metadata": {"name": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"}},
                       {"metadata": {"name": "b"}}, ApiError(404, "NotFound"))
    assert await client.namespace_terminating("a") is True
    assert await client.namespace_terminating("b") is False
    assert await client.namespace_terminating("c") is False
    assert [c["path"] for c in fake.calls] == ["/api/v1/namespaces/a", "/api/v1/namespaces/b", "/api/v1/namespaces/c"]


async def test_a_claim_is_moved_by_one_update_conditional_on_its_resource_version() -> None:
    lease = {"metadata": {"name": "pet-id-7", "resourceVersion": "12",
                          "annotations": {"petstore.example.com/pet-uid": "u-2"}},
             "spec": {"holderIdentity": "b/tom"}}
    client, fake = api(lease, ApiError(409, "Conflict"))
    old = Claim(pet_id=7, holder="a/rex", holder_uid="u-1", resource_version="11")
    moved = await client.move_claim(old, "b", "tom", "u-2")
    assert moved == Claim(pet_id=7, holder="b/tom", holder_uid="u-2", resource_version="12")
    call = fake.calls[0]
    assert call["method"] == "PUT"
    assert call["path"] == "/apis/coordination.k8s.io/v1/namespaces/pet-system/leases/pet-id-7"
    want = claim_body(7, "b", "tom", "u-2")
    want["metadata"]["resourceVersion"] = "11"  # the precondition: refused if the Lease changed
    assert call["body"] == want
    assert await client.move_claim(old, "b", "tom", "u-2") is None  # changed since: refused


async def test_can_inherit_reads_the_pet_afresh() -> None:
    def pet(uid: str, **meta: Any) -> dict[str, Any]:
        return {"metadata": {"name": "tom", "uid": uid, "finalizers": ["petstore.example.com/id-claim"], **meta}}

    client, fake = api(pet("u-2"), pet("u-9"), pet("u-2", deletionTimestamp="2026-01-01T00:00:00Z"),
                       pet("u-2", finalizers=[]), ApiError(404, "NotFound"))
    answers = [await client.can_inherit("b", "tom", "u-2") for _ in range(5)]
    assert answers == [True, False, False, False, False]  # alive; another pet; deleting; no finalizer; gone
    assert {c["path"] for c in fake.calls} == {"/apis/petstore.example.com/v1/namespaces/b/pets/tom"}

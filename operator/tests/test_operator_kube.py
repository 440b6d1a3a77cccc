"""kube.Kube: the claim listing pages through a large population; the CA written into a mutating hook."""

from __future__ import annotations

import types
from typing import Any

from pet_operator import kube
from pet_operator.claims import claim_body


class PagedLeases:
    """Answers list_namespaced_lease like the API server: ``limit`` items, then a continue token."""

    def __init__(self, count: int) -> None:
        self.bodies = [claim_body(i, "default", f"pet-{i}", f"uid-{i}") for i in range(count)]
        self.calls: list[dict[str, Any]] = []

    async def list_namespaced_lease(self, namespace: str, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        start = int(kwargs.get("_continue") or 0)
        page = self.bodies[start:start + kwargs["limit"]]
        following = start + len(page)
        token = str(following) if following < len(self.bodies) else None
        return types.SimpleNamespace(items=page, metadata=types.SimpleNamespace(_continue=token))


async def test_list_claims_reads_every_page() -> None:
    api = object.__new__(kube.Kube)
    leases = PagedLeases(kube.LIST_PAGE * 2 + 3)
    api._coordination = leases  # type: ignore[assignment]
    api._lease_dict = lambda lease: lease  # type: ignore[method-assign]
    api.claims_namespace = "pet-system"

    claims = await api.list_claims()

    assert sorted(c.pet_id for c in claims) == list(range(kube.LIST_PAGE * 2 + 3))
    assert len(leases.calls) == 3
    assert all(call["limit"] == kube.LIST_PAGE for call in leases.calls)
    assert [call.get("_continue") for call in leases.calls] == [None, str(kube.LIST_PAGE), str(kube.LIST_PAGE * 2)]


class MutatingConfigurations:
    """read/patch_mutating_webhook_configuration of AdmissionregistrationV1Api, recorded."""

    def __init__(self, hooks: int) -> None:
        self.hooks = hooks
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, _api_client: Any) -> MutatingConfigurations:
        return self

    async def read_mutating_webhook_configuration(self, name: str) -> Any:
        self.calls.append(("read", name))
        return types.SimpleNamespace(webhooks=[object()] * self.hooks)

    async def patch_mutating_webhook_configuration(self, name: str, patch: Any, **kwargs: Any) -> None:
        self.calls.append(("patch", name, patch, kwargs))


async def test_publish_mutating_ca_bundle_writes_the_ca_into_every_hook(monkeypatch: Any) -> None:
    import base64

    fake = MutatingConfigurations(hooks=2)
    monkeypatch.setattr(kube.client, "AdmissionregistrationV1Api", fake)
    api = object.__new__(kube.Kube)
    api._api_client = None  # type: ignore[assignment]

    await api.publish_mutating_ca_bundle("pet-operator", b"CA PEM")

    bundle = base64.b64encode(b"CA PEM").decode()
    assert fake.calls == [
        ("read", "pet-operator"),
        ("patch", "pet-operator", [
            {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle},
            {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": bundle},
        ], {"_content_type": "application/json-patch+json"}),
    ]

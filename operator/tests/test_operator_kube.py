"""kube.Kube: the claim listing pages through a large population."""

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

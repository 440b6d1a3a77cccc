"""Fakes shared by the operator's unit tests: a status writer, indexes, bodies and a clock.

Not a test module (the name does not match ``test_*.py``); the tests import it directly,
which works because pytest puts this directory on ``sys.path`` (no ``__init__.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

from aiohttp import web

from pet_operator import model
from pet_operator.model import Key, PetIndex, PetSnapshot, StoreSnapshot

NS = "default"


def uid_of(namespace: str, name: str) -> str:
    return f"uid-{namespace}-{name}"


@dataclasses.dataclass
class Call:
    plural: str
    namespace: str
    name: str
    status: dict[str, Any]


class FakeWriter:
    """A ``StatusWriter`` that records every patch and answers like the API server.

    - ``gate``: when set to an ``asyncio.Event``, every call waits on it (after recording
      itself and setting ``entered``), to hold a write in flight.
    - ``errors``: exceptions raised by the next calls, in order.
    - ``uids``: the uid the "server" reports for an object (default: :func:`uid_of`).
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.resource_version = 100
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.errors: list[BaseException] = []
        self.uids: dict[tuple[str, str, str], str] = {}

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        self.calls.append(Call(plural, namespace, name, copy.deepcopy(dict(status))))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        self.resource_version += 1
        return {
            "metadata": {
                "namespace": namespace,
                "name": name,
                "uid": self.uids.get((plural, namespace, name), uid_of(namespace, name)),
                "resourceVersion": str(self.resource_version),
            },
            "status": copy.deepcopy(dict(status)),
        }

    def of(self, plural: str) -> list[Call]:
        return [c for c in self.calls if c.plural == plural]


class IdsNotEnforced:
    """An ``id_claims.IdLedger`` for the tests that are not about ids: every pet's id claim is
    reported not enforced (``model.ID_CLAIM_NOT_ENFORCED``); no finalizer, no claim, nothing to
    release or collect. The id tests use :class:`id_claims.IdClaims` over :mod:`claim_fakes`."""

    def observe(self, snap: PetSnapshot) -> None:
        return None

    def forget(self, key: Key, uid: str) -> None:
        return None

    def pets_with_id(self, pet_id: int, pets: PetIndex) -> list[PetSnapshot]:
        return []

    def metadata_version(self, uid: str) -> str:
        return ""

    async def claim(self, snap: PetSnapshot, pets: PetIndex) -> model.IdClaim | None:
        return model.ID_CLAIM_NOT_ENFORCED

    async def finalize(self, snap: PetSnapshot, pets: PetIndex) -> None:
        return None

    def pop_released(self) -> int | None:
        return None

    def mark_released(self, pet_id: int) -> None:
        return None

    async def collect_orphans(self, pets: PetIndex) -> AsyncGenerator[int, None]:
        return
        yield  # an async generator that yields nothing


class Clock:
    """A clock that moves one second on every reading, so kept timestamps are visible."""

    def __init__(self) -> None:
        self.ticks = 0

    def __call__(self) -> str:
        self.ticks += 1
        minutes, seconds = divmod(self.ticks, 60)
        return f"2024-01-01T00:{minutes:02d}:{seconds:02d}Z"


class CountingIndex(Mapping[Any, Any]):
    """A dict-backed index that counts ``get`` calls (one per reconciliation pass)."""

    def __init__(self, data: dict[Any, Any] | None = None) -> None:
        self.data: dict[Any, Any] = data if data is not None else {}
        self.gets = 0

    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def get(self, key: Any, default: Any = None) -> Any:
        self.gets += 1
        return self.data.get(key, default)


def pet_body(
    name: str,
    *,
    namespace: str = NS,
    store: str | None = None,
    tags: list[str] | None = None,
    generation: int = 1,
    rv: str = "1",
    status: dict[str, Any] | None = None,
    uid: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"id": 1, "name": name}
    if store is not None:
        spec["store"] = store
    if tags is not None:
        spec["tags"] = tags
    return _body("Pet", name, namespace, spec, generation, rv, status, uid)


def store_body(
    name: str,
    *,
    namespace: str = NS,
    allowed: list[str] | None = None,
    generation: int = 1,
    rv: str = "1",
    status: dict[str, Any] | None = None,
    uid: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if allowed is not None:
        spec["allowedTags"] = allowed
    return _body("PetStore", name, namespace, spec, generation, rv, status, uid)


def _body(kind: str, name: str, namespace: str, spec: dict[str, Any], generation: int, rv: str,
          status: dict[str, Any] | None, uid: str | None) -> dict[str, Any]:
    return {
        "apiVersion": "petstore.example.com/v1",
        "kind": kind,
        "metadata": {
            "namespace": namespace,
            "name": name,
            "uid": uid or uid_of(namespace, name),
            "generation": generation,
            "resourceVersion": rv,
        },
        "spec": spec,
        "status": status or {},
    }


def pet(name: str, **kwargs: Any) -> PetSnapshot:
    return PetSnapshot.from_body(pet_body(name, **kwargs))


def store(name: str, **kwargs: Any) -> StoreSnapshot:
    return StoreSnapshot.from_body(store_body(name, **kwargs))


def index_of(*snaps: PetSnapshot | StoreSnapshot) -> CountingIndex:
    return CountingIndex({(s.namespace, s.name): [s] for s in snaps})


def seen(rec: Any, *snaps: PetSnapshot) -> CountingIndex:
    """The index of these pets, each first observed by ``rec`` as the watch would show it."""
    for snap in snaps:
        rec.observe_pet(snap)
    return index_of(*snaps)


def by_store_of(*pets: PetSnapshot) -> CountingIndex:
    data: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for p in pets:
        if p.store:
            data.setdefault((p.namespace, p.store), []).append((p.namespace, p.name))
    return CountingIndex(data)


@contextlib.asynccontextmanager
async def plain_http(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """A plain-HTTP stand-in for the API server on a free loopback port, every path and method to
    ``handler``; yields its base URL and stops it after the block."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()

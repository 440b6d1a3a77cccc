"""health: /healthz and /readyz served on real loopback sockets, driven by app.Readiness."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from pet_operator.app import Readiness
from pet_operator.health import HealthServer


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
async def base_url(readiness: Readiness) -> AsyncIterator[str]:
    server = HealthServer(0, readiness.check, host="127.0.0.1")  # port 0: the kernel picks a free one
    await server.start()
    assert server._runner is not None
    port = server._runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.stop()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_healthz_answers_ok(base_url: str) -> None:
    assert await get(base_url + "/healthz") == (200, "ok\n")


async def test_readyz_503_with_reason_until_synced_then_200(base_url: str, readiness: Readiness) -> None:
    assert await get(base_url + "/readyz") == (503, "starting\n")
    readiness.detail = "waiting for the watch streams: 2 of 5 objects not seen yet"
    assert await get(base_url + "/readyz") == (
        503,
        "waiting for the watch streams: 2 of 5 objects not seen yet\n",
    )
    readiness.synced = True
    assert await get(base_url + "/readyz") == (200, "ok\n")
    # liveness never depended on readiness
    assert await get(base_url + "/healthz") == (200, "ok\n")


async def test_readyz_503_when_shutting_down(base_url: str, readiness: Readiness) -> None:
    readiness.synced = True
    readiness.stopping = True
    assert await get(base_url + "/readyz") == (503, "shutting down\n")
    assert await get(base_url + "/healthz") == (200, "ok\n")


async def test_other_paths_and_methods(base_url: str) -> None:
    assert (await get(base_url + "/metrics"))[0] == 404
    async with aiohttp.ClientSession() as session, session.post(base_url + "/healthz") as response:
        assert response.status == 405


async def test_stop_closes_the_port_and_is_idempotent() -> None:
    server = HealthServer(0, lambda: (True, "ok"), host="127.0.0.1")
    await server.start()
    assert server._runner is not None
    port = server._runner.addresses[0][1]
    assert await get(f"http://127.0.0.1:{port}/readyz") == (200, "ok\n")
    await server.stop()
    await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(f"http://127.0.0.1:{port}/healthz")


def test_default_host_is_loopback() -> None:
    server = HealthServer(8080, lambda: (True, "ok"))
    assert (server.hosts, server.port) == (("127.0.0.1",), 8080)


async def test_by_default_only_loopback_is_served() -> None:
    """Finding 12: the health port listened on every interface (0.0.0.0); another local address of
    the machine (127.0.0.2 stands in for it) reached it before."""
    server = HealthServer(0, lambda: (True, "ok"))
    await server.start()
    try:
        assert server._runner is not None
        port = server._runner.addresses[0][1]
        assert await get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(f"http://127.0.0.2:{port}/healthz")
    finally:
        await server.stop()


async def test_every_address_given_is_served() -> None:
    server = HealthServer(0, lambda: (True, "ok"), host=("127.0.0.1", "::1"))
    await server.start()
    try:
        assert server._runner is not None
        ports = {address[1] for address in server._runner.addresses}
        assert len(ports) == 2  # port 0: each site gets its own; a real port is shared
        for address in server._runner.addresses:
            host = f"[{address[0]}]" if ":" in address[0] else address[0]
            assert (await get(f"http://{host}:{address[1]}/healthz"))[0] == 200
    finally:
        await server.stop()

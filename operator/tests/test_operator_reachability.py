"""Whether a replica reaches its API server: what its own requests say, the grace before it counts,
the probe that brings readiness back, and readiness turning 503 while it cannot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from operator_fakes import plain_http

from pet_operator import rest
from pet_operator.api_reachability import ApiReachability, probe_while_failing
from pet_operator.app import Readiness


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failure_counts_only_after_the_grace_and_any_answer_clears_it() -> None:
    clock = Clock()
    reach = ApiReachability(grace=3.0, clock=clock)
    assert reach.problem() is None and not reach.failing
    reach.failed("ClientConnectorError: connection refused")
    clock.now += 2.9
    assert reach.failing and reach.problem() is None, "within the grace"
    reach.failed("TimeoutError: GET /x: no answer within 10s")  # a later failure keeps the first time
    clock.now += 0.2
    assert reach.problem() == ("no answer from the API server for 3.1s (last: TimeoutError: GET /x: no answer "
                               "within 10s)")
    reach.answered()
    assert reach.problem() is None and not reach.failing
    reach.failed("again")
    clock.now += 3.5
    assert reach.problem() is not None and "3.5s" in str(reach.problem()), "the clock starts anew"


@pytest.mark.parametrize("grace", [-1.0, float("nan")])
def test_a_bad_grace_is_refused_by_name(grace: float) -> None:
    with pytest.raises(ValueError, match=r"grace.*>= 0"):
        ApiReachability(grace=grace)


def test_readiness_turns_503_while_the_api_server_does_not_answer_and_back() -> None:
    clock = Clock()
    reach = ApiReachability(grace=3.0, clock=clock)
    readiness = Readiness(reach)
    readiness.synced = True
    assert readiness.check() == (True, "ok")
    reach.failed("ServerDisconnectedError: Server disconnected")
    clock.now += 5
    ready, why = readiness.check()
    assert not ready and why.startswith("no answer from the API server for 5.0s"), why
    reach.answered()
    assert readiness.check() == (True, "ok")
    readiness.stopping = True
    assert readiness.check() == (False, "shutting down"), "stopping still wins"


class Api:
    """A plain-HTTP stand-in for the API server that can refuse connections."""

    def __init__(self) -> None:
        self.status = 200

    async def handle(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "Status"}, status=self.status)


@pytest.fixture
async def api() -> AsyncIterator[tuple[Api, str]]:
    fake = Api()
    async with plain_http(fake.handle) as url:
        yield fake, url


async def test_the_rest_client_tells_answers_from_requests_that_got_none(
    api: tuple[Api, str], unused_tcp_port: int
) -> None:
    fake, url = api
    reach = ApiReachability(grace=0)
    client = rest.RestClient(rest.Credentials(url, False), reachability=reach)
    dead = rest.RestClient(rest.Credentials(f"http://127.0.0.1:{unused_tcp_port}", False), reachability=reach)
    try:
        with pytest.raises(aiohttp.ClientConnectorError):
            await dead.request("GET", "/version", timeout=5)
        assert reach.failing and "/version" in str(reach.problem())
        fake.status = 500  # an error status is an answer: the server is reachable
        with pytest.raises(rest.ApiError):
            await client.request("GET", "/version", timeout=5)
        assert not reach.failing
        fake.status = 200
        with pytest.raises(TimeoutError):
            await dead.request("GET", "/slow", timeout=0)  # given up before any answer
        assert reach.failing
        await client.request("GET", "/version", timeout=5)
        assert not reach.failing
    finally:
        await client.close()
        await dead.close()


async def test_a_cancelled_request_says_nothing_about_the_server(api: tuple[Api, str]) -> None:
    _, url = api
    reach = ApiReachability(grace=0)
    client = rest.RestClient(rest.Credentials(url, False), reachability=reach)
    try:
        task = asyncio.create_task(client.request("GET", "/version", timeout=5))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not reach.failing
    finally:
        await client.close()


async def test_the_probe_asks_only_while_failing_and_its_answer_clears_the_failure() -> None:
    reach = ApiReachability(grace=0)
    asked: list[bool] = []

    async def probe() -> None:
        asked.append(True)
        if len(asked) == 1:
            raise OSError("still cut")  # the request itself records failures; the probe goes on
        reach.answered()

    task = asyncio.create_task(probe_while_failing(reach, probe, interval=0.01))
    try:
        await asyncio.sleep(0.05)
        assert asked == [], "nothing asked while requests are answered"
        reach.failed("cut")
        for _ in range(200):
            if not reach.failing:
                break
            await asyncio.sleep(0.01)
        assert not reach.failing and len(asked) == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

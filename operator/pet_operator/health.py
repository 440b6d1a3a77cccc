"""Liveness (``/healthz``) and readiness (``/readyz``) over plain HTTP.

Liveness answers while the event loop runs. Readiness answers 200 once Kopf has
listed every watched resource (its indexes are filled) and the operator is not
shutting down; otherwise 503 with the reason in the body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web


class HealthServer:
    def __init__(
        self, port: int, ready: Callable[[], tuple[bool, str]], host: str = "0.0.0.0",  # noqa: S104
        leader: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.port = port
        self.host = host
        self._ready = ready
        self._leader = leader
        self._runner: web.AppRunner | None = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, why = self._ready()
        return web.Response(status=200 if ready else 503, text=why + "\n")

    async def _leader_status(self, request: web.Request) -> web.Response:
        if self._leader is None:
            return web.json_response({"leaderElection": False, "leader": True})
        return web.json_response({"leaderElection": True, **self._leader()})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/leader", self._leader_status)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await asyncio.shield(self._runner.cleanup())
            self._runner = None

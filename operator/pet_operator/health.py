"""Liveness (``/healthz``) and readiness (``/readyz``) over plain HTTP.

Liveness answers while the event loop runs. Readiness answers 200 once Kopf has
listed every watched resource (its indexes are filled), the operator is not
shutting down and the API server answers its requests (api_reachability.py);
otherwise 503 with the reason in the body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from pet_operator.connections import serve_plain


class HealthServer:
    def __init__(
        self, port: int, ready: Callable[[], tuple[bool, str]], host: str | Sequence[str] = "127.0.0.1",
        leader: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """``host``: the address(es) to listen on; in a pod, its own (the kubelet probes it) and
        loopback (``kubectl port-forward`` arrives there), never every interface unless asked."""
        self.port = port
        self.hosts = (host,) if isinstance(host, str) else tuple(host)
        self.host = self.hosts[0]
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
        self._runner = await serve_plain(app, self.hosts, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await asyncio.shield(self._runner.cleanup())
            self._runner = None

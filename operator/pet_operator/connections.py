"""Time limits on the webhook's connections, whoever opens them.

aiohttp bounds an idle keep-alive connection (``keepalive_timeout``) but, depending on
its version, not a connection that never completes its first request. This module adds:

* a TLS handshake bound (``ssl_handshake_timeout`` of the listening socket);
* :class:`FirstRequestDeadline`: a new connection whose first request's headers have not
  all arrived within the limit is aborted (a client that connects and stalls, or trickles
  header bytes, holds nothing for long);
* :class:`BoundedSite`: an aiohttp site that listens with both.

Later requests on a kept-alive connection are bounded by aiohttp's keep-alive timer, which
runs from the end of each response until the next request is complete.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

_END_OF_HEADERS = b"\r\n\r\n"


class FirstRequestDeadline(asyncio.Protocol):
    """Wraps a connection's protocol; aborts the connection if the first request's header block
    (up to its blank line) is not complete within ``limit`` seconds of the connection."""

    def __init__(self, inner: asyncio.Protocol, limit: float) -> None:
        self.inner = inner
        self.limit = limit
        self._tail = b""  # the last bytes seen, to find a blank line split across reads
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None
        self.expired = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self.limit, self._expire)
        self.inner.connection_made(transport)

    def _expire(self) -> None:
        self._timer = None
        self.expired = True
        log.info("webhook: closing a connection that sent no complete request within %.0fs", self.limit)
        if self._transport is not None and isinstance(self._transport, asyncio.Transport):
            self._transport.abort()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if _END_OF_HEADERS in seen:
                self._disarm()
            self._tail = seen[-(len(_END_OF_HEADERS) - 1):]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def __getattr__(self, name: str) -> Any:  # anything else the transport or aiohttp asks the protocol
        return getattr(self.inner, name)


class BoundedSite(web.BaseSite):
    """A TLS site on one address whose connections get :class:`FirstRequestDeadline`."""

    __slots__ = ("_bound_port", "_first_request", "_host", "_port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, ssl_context: ssl.SSLContext,
        first_request: float,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._first_request = first_request
        self._bound_port: int | None = None

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"https://{host}:{self._bound_port or self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        if server is None:  # aiohttp sets it in super().start(); an explicit check survives python -O
            raise RuntimeError("the webhook's aiohttp runner has no server after start")
        factory: Callable[[], asyncio.Protocol] = server
        limit = self._first_request
        self._server = await asyncio.get_running_loop().create_server(
            lambda: FirstRequestDeadline(factory(), limit), self._host, self._port,
            ssl=self._ssl_context, ssl_handshake_timeout=limit, backlog=self._backlog, reuse_address=True,
        )
        sockets = self._server.sockets
        if sockets:
            self._bound_port = int(sockets[0].getsockname()[1])


async def serve_plain(app: web.Application, hosts: Sequence[str], port: int) -> web.AppRunner:
    """Serve ``app`` over plain HTTP on ``port`` of each of ``hosts`` (the health and metrics
    servers); nothing is left listening if one address cannot be bound."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        for host in hosts:
            await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner

"""A TCP proxy that can cut, blackhole or delay traffic, for network faults on loopback.

Put it between a client and a server (an operator replica and the API server, or the
API server and a webhook replica) by pointing the client at ``proxy.port``. TLS passes
through untouched, so certificates for 127.0.0.1 stay valid.

Modes:

* ``pass``: forward both ways;
* ``cut``: close every open connection and refuse new ones (connection reset), like a
  crashed peer or a firewall that rejects;
* ``blackhole``: keep connections open but drop every byte, and accept new ones that
  never answer, like a network partition: clients find out only by their timeouts;
* ``delay``: forward with ``delay`` seconds added to every chunk in each direction.

With several targets (:meth:`add_target`) it balances new connections round-robin and
skips a target that refuses the connection, as a Service in front of several pods would
(for instance the webhook replicas, so that the webhook survives the loss of one).

It runs its own event loop in a daemon thread; :meth:`stop` closes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from pet_harness.clusters.base import write_private

MODES = ("pass", "cut", "blackhole", "delay")


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.targets: list[tuple[str, int]] = [(target_host, target_port)]
        self._next = 0
        self.mode = "pass"
        self.delay = 0.0
        self._listen_port = listen_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    # --- control (from any thread) -------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    @property
    def target(self) -> tuple[str, int]:
        return self.targets[0]

    def add_target(self, host: str, port: int) -> None:
        """Another backend for new connections (round-robin, refused ones skipped)."""
        self.targets.append((host, port))

    def start(self) -> FaultProxy:
        self._thread.start()
        self._run(self._start())
        return self

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"fault proxy mode {mode!r} is not one of {', '.join(MODES)}")
        if mode == "delay" and delay <= 0:
            raise ValueError(f"mode 'delay' needs a positive delay, got {delay}")
        self.mode, self.delay = mode, delay
        if mode == "cut":
            self._run(self._close_all())

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the loop's side ----------------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._listen_port)
        sock: socket.socket = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])

    async def _close_all(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                transport = writer.transport
                sock = transport.get_extra_info("socket")
                if sock is not None:  # RST rather than FIN: the peer sees "connection reset"
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                transport.abort()
        self._writers.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._close_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "cut":
            self._writers.add(writer)
            await self._close_all()
            return
        self._writers.add(writer)
        upstream = None
        for attempt in range(len(self.targets)):
            host, port = self.targets[(self._next + attempt) % len(self.targets)]
            try:
                upstream = await asyncio.open_connection(host, port)
            except OSError:
                continue
            self._next = (self._next + attempt + 1) % len(self.targets)
            break
        if upstream is None:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        up_reader, up_writer = upstream
        self._writers.add(up_writer)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                with contextlib.suppress(Exception):
                    writer.write_eof()
                return
            if self.mode == "blackhole":
                continue  # swallowed: the peer waits for an answer that never comes
            if self.mode == "cut":
                return
            if self.mode == "delay" and self.delay > 0:
                await asyncio.sleep(self.delay)
            writer.write(data)
            await writer.drain()


def proxied_kubeconfig(kubeconfig: Path) -> tuple[FaultProxy, Path]:
    """Start a proxy to a kubeconfig's API server; return it and a kubeconfig that goes through it."""
    config = yaml.safe_load(kubeconfig.read_text())
    server = urlsplit(config["clusters"][0]["cluster"]["server"])
    proxy = FaultProxy(server.hostname or "127.0.0.1", server.port or 443).start()
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path = kubeconfig.with_name(kubeconfig.stem + "-proxied.kubeconfig")
    write_private(path, yaml.safe_dump(config))
    return proxy, path

"""connections: the webhook's time limits on connections that stall, over real TLS on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_operator_webhook import Lookups, client_context, pet, review

from pet_operator.webhook import MUTATE_PATH, PATH, CertificateFiles, WebhookServer, self_signed

LIMIT = 0.3  # the deadlines under test, small so that each test ends quickly
PATIENCE = 20  # how long a test waits for the server to close a connection before failing


@contextlib.asynccontextmanager
async def bounded_server(
    tmp_path: Path, body_timeout: float = 5.0, keepalive: float = 3600.0
) -> AsyncIterator[tuple[int, bytes]]:
    """A webhook with a first-request deadline of LIMIT; keep-alive only as given (an hour by
    default, so that only the deadline under test can close a connection)."""
    ca = self_signed(("localhost", "127.0.0.1"), tmp_path)
    lookups = Lookups()
    server = WebhookServer(0, CertificateFiles(tmp_path), lookups.store, lookups.claim,
                           first_request_timeout=LIMIT, keepalive_timeout=keepalive)
    server.body_timeout = body_timeout
    await server.start()
    try:
        assert server._runner is not None
        yield server._runner.addresses[0][1], ca
    finally:
        await server.stop()


def request_bytes(path: str = PATH) -> tuple[bytes, bytes]:
    body = json.dumps(review("CREATE", pet(store=None))).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head, body


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), PATIENCE):
            received += chunk
    return received


@contextlib.asynccontextmanager
async def tls_connection(port: int, ca: bytes) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(ca),
                                                   server_hostname="localhost")
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl_errors()):
            await writer.wait_closed()


def ssl_errors() -> type[Exception]:
    import ssl

    return ssl.SSLError


async def test_a_connection_that_sends_nothing_is_closed(tmp_path: Path) -> None:
    async with bounded_server(tmp_path) as (port, ca), tls_connection(port, ca) as (reader, _):
        assert await closed_by_server(reader) == b""


async def test_a_connection_that_trickles_its_first_headers_is_closed(tmp_path: Path) -> None:
    head, _ = request_bytes()
    async with bounded_server(tmp_path) as (port, ca), tls_connection(port, ca) as (reader, writer):
        writer.write(head[:20])  # a request line, and never the rest
        await writer.drain()
        assert await closed_by_server(reader) == b""


async def test_a_connection_that_never_starts_tls_is_closed(tmp_path: Path) -> None:
    async with bounded_server(tmp_path) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await closed_by_server(reader) == b""
        finally:
            writer.close()


async def test_an_idle_kept_alive_connection_is_closed_after_its_response(tmp_path: Path) -> None:
    head, body = request_bytes()
    async with bounded_server(tmp_path, keepalive=LIMIT) as (port, ca), \
            tls_connection(port, ca) as (reader, writer):
        writer.write(head + body)
        await writer.drain()
        received = await closed_by_server(reader)  # answered, then closed once idle
        assert received.startswith(b"HTTP/1.1 200 OK")
        assert b'"allowed": true' in received


async def test_headers_whose_blank_line_is_split_across_reads_count_as_complete(tmp_path: Path) -> None:
    """The first-request deadline ends with the header block, even when its last bytes arrive
    separately; the body may then take longer than that deadline (its own limit is longer)."""
    head, body = request_bytes()
    async with bounded_server(tmp_path) as (port, ca), tls_connection(port, ca) as (reader, writer):
        writer.write(head[:-1])
        await writer.drain()
        await asyncio.sleep(LIMIT / 3)
        writer.write(head[-1:])
        await writer.drain()
        await asyncio.sleep(LIMIT * 2)  # a slow client: past the first-request deadline
        writer.write(body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), PATIENCE)
        assert status_line.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("path", [PATH, MUTATE_PATH])
async def test_a_body_slower_than_its_limit_gets_408(tmp_path: Path, path: str) -> None:
    head, body = request_bytes(path)
    async with bounded_server(tmp_path, body_timeout=LIMIT) as (port, ca), \
            tls_connection(port, ca) as (reader, writer):
        writer.write(head + body[:10])
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), PATIENCE)
        assert status_line.startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize("hosts", [("127.0.0.1", "::1")], ids=["ipv4-and-ipv6"])
async def test_the_server_listens_on_each_address_given(tmp_path: Path, hosts: tuple[str, ...]) -> None:
    import socket

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    ca = self_signed(("localhost", "127.0.0.1", "::1"), tmp_path)
    lookups = Lookups()
    probe = WebhookServer(0, CertificateFiles(tmp_path), lookups.store, lookups.claim, host=hosts[0])
    await probe.start()
    assert probe._runner is not None
    port = probe._runner.addresses[0][1]
    await probe.stop()
    server = WebhookServer(port, CertificateFiles(tmp_path), lookups.store, lookups.claim, host=hosts)
    try:
        await server.start()
    except OSError as exc:
        pytest.skip(f"cannot bind {hosts}: {exc}")
    try:
        assert server._runner is not None
        assert {address[0] for address in server._runner.addresses} == set(hosts)
        for host in hosts:
            _, writer = await asyncio.open_connection(host, port, ssl=client_context(ca), server_hostname="localhost")
            writer.close()
    finally:
        await server.stop()

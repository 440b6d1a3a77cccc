"""The fault proxy against a real echo server on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pet_harness.fault_proxy import FaultProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(2)
    server.close()


def _echo(conn: socket.socket) -> None:
    conn.settimeout(None)  # accepted sockets inherit the listener's timeout
    with conn, contextlib.suppress(OSError):  # the proxy resets connections on purpose
        while data := conn.recv(4096):
            conn.sendall(data)


@pytest.fixture
def proxy(echo_port: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo_port) as running:
        yield running


def _roundtrip(port: int, payload: bytes = b"ping", timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


def _send_and_expect_answer(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    _expect_answer(sock.recv(10))


def _expect_answer(data: bytes) -> None:
    if not data:
        raise ConnectionResetError("the connection was closed without an answer")


def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    assert _roundtrip(proxy.port) == b"ping"
    assert proxy.connections == 1


def test_delay_adds_latency_per_chunk(proxy: FaultProxy) -> None:
    proxy.set_mode("delay", 0.3)
    started = time.monotonic()
    assert _roundtrip(proxy.port) == b"ping"
    assert time.monotonic() - started >= 0.6  # one delay each way


def test_cut_resets_open_and_new_connections(proxy: FaultProxy) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    sock.sendall(b"a")
    assert sock.recv(10) == b"a"
    proxy.set_mode("cut")
    with pytest.raises(ConnectionError):
        _send_and_expect_answer(sock, b"b")
    sock.close()
    with pytest.raises(ConnectionError):
        _expect_answer(_roundtrip(proxy.port))
    proxy.set_mode("pass")
    assert _roundtrip(proxy.port) == b"ping"  # healed


def test_blackhole_swallows_traffic_until_healed(proxy: FaultProxy) -> None:
    proxy.set_mode("blackhole")
    with pytest.raises(TimeoutError):
        _roundtrip(proxy.port, timeout=0.5)
    proxy.set_mode("pass")
    assert _roundtrip(proxy.port) == b"ping"


@pytest.mark.parametrize(("mode", "delay"), [("flaky", 0.0), ("delay", 0.0)])
def test_bad_modes_are_refused_with_the_rule(proxy: FaultProxy, mode: str, delay: float) -> None:
    with pytest.raises(ValueError, match=mode):
        proxy.set_mode(mode, delay)
    assert proxy.mode == "pass"


def test_stop_closes_the_port(echo_port: int) -> None:
    proxy = FaultProxy("127.0.0.1", echo_port).start()
    port = proxy.port
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        _roundtrip(port, timeout=0.5)


def test_several_targets_are_balanced_and_a_dead_one_is_skipped(echo_port: int) -> None:
    dead = socket.create_server(("127.0.0.1", 0))
    dead_port = int(dead.getsockname()[1])
    dead.close()  # nothing listens there any more: connections are refused
    with FaultProxy("127.0.0.1", dead_port) as proxy:
        proxy.add_target("127.0.0.1", echo_port)
        assert [_roundtrip(proxy.port, b"x") for _ in range(4)] == [b"x"] * 4
        assert proxy.targets == [("127.0.0.1", dead_port), ("127.0.0.1", echo_port)]

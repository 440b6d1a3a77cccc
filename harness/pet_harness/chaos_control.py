"""The embedded chaos environment's control server: what ``petchaos`` talks to on target=local.

``POST /actions/<fault>`` (a fault of :data:`petchaos.faults.FAULTS`, its arguments as JSON: 404
for an unknown fault, 400 for arguments the fault does not take, 500 if it failed),
``GET /probes/steady-state?timeout=&pause_load=``, ``GET /healthz``.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit


class Controlled(Protocol):
    """What the server needs from the environment it controls."""

    def act(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run the fault named by a path segment; KeyError if there is none, ValueError for bad arguments."""

    def steady_state(self, timeout: float = 30, pause_load: bool = True) -> dict[str, Any]: ...


class ControlServer:
    """The HTTP server on a loopback port of its own, served from a daemon thread."""

    def __init__(self, env: Controlled) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(env))
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="chaos-control", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(env: Controlled) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body, default=str).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path == "/probes/steady-state":
                timeout = float(query.get("timeout", ["30"])[0])
                pause = query.get("pause_load", ["true"])[0] != "false"
                result = env.steady_state(timeout, pause)
                self._send(200, {"ok": bool(result["ok"]), "details": result})
            elif url.path == "/healthz":
                self._send(200, {"ok": True})
            else:
                self._send(404, {"error": f"no such probe {url.path}"})

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            if not url.path.startswith("/actions/"):
                self._send(404, {"error": f"no such path {url.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                result = env.act(url.path[len("/actions/"):], body)
            except KeyError:
                self._send(404, {"error": f"no such action {url.path}"})
            except ValueError as exc:
                self._send(400, {"error": str(exc)})
            except Exception as exc:  # noqa: BLE001 - reported to the experiment, which fails the activity
                self._send(500, {"error": f"{type(exc).__name__}: {exc}"[:2000]})
            else:
                self._send(200, {"ok": True, "result": result})

    return Handler




def control_request(url: str, method: str = "GET", body: dict[str, Any] | None = None,
                    timeout: float = 120) -> dict[str, Any]:
    """A JSON request to the control server (used by tests; the provider has its own copy)."""
    data = json.dumps(body or {}).encode() if method == "POST" else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310  # nosec B310 # loopback URL built here
            result: dict[str, Any] = json.loads(resp.read())
            return result
    except urllib.error.HTTPError as exc:
        return {"error": exc.read().decode(errors="replace"), "status": exc.code}

"""The REST client: answers, errors with the server's message, time limits, credentials."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from operator_fakes import plain_http

from pet_operator import rest


class Server:
    """A plain-HTTP stand-in for the API server that records what it was sent."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.delay = 0.0
        self.answers: dict[str, tuple[int, Any]] = {}

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append({"method": request.method, "path": request.path, "query": dict(request.query),
                          "auth": request.headers.get("Authorization"),
                          "type": request.headers.get("Content-Type"), "body": json.loads(body) if body else None})
        if self.delay:
            await asyncio.sleep(self.delay)
        status, answer = self.answers.get(request.path, (200, {"kind": "Thing", "ok": True}))
        return web.json_response(answer, status=status)


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    fake = Server()
    async with plain_http(fake.handle) as url:
        yield fake, url


async def test_a_call_sends_json_and_the_token_and_returns_the_answer(server: tuple[Server, str]) -> None:
    fake, url = server
    client = rest.RestClient(rest.Credentials(url, False, lambda: "secret"))
    try:
        answer = await client.request("PATCH", rest.path_of("apis", "g", "v1", "pets", "rex", "status"), timeout=5,
                                      body={"status": {"phase": "Active"}}, content_type=rest.MERGE_PATCH,
                                      params={"fieldManager": "pet-operator"})
    finally:
        await client.close()
    assert answer == {"kind": "Thing", "ok": True}
    [seen] = fake.seen
    assert seen == {"method": "PATCH", "path": "/apis/g/v1/pets/rex/status", "query": {"fieldManager": "pet-operator"},
                    "auth": "Bearer secret", "type": rest.MERGE_PATCH, "body": {"status": {"phase": "Active"}}}


async def test_an_error_status_carries_the_servers_reason_and_message(server: tuple[Server, str]) -> None:
    fake, url = server
    fake.answers["/gone"] = (404, {"kind": "Status", "reason": "NotFound", "message": 'pets "rex" not found'})
    client = rest.RestClient(rest.Credentials(url, False))
    try:
        with pytest.raises(rest.ApiError) as caught:
            await client.request("GET", "/gone", timeout=5)
    finally:
        await client.close()
    assert (caught.value.status, caught.value.reason, caught.value.message) == (404, "NotFound", 'pets "rex" not found')
    assert fake.seen[0]["auth"] is None  # no token, no header


async def test_every_call_is_bounded_in_time(server: tuple[Server, str]) -> None:
    fake, url = server
    fake.delay = 1
    client = rest.RestClient(rest.Credentials(url, False))
    try:
        with pytest.raises(TimeoutError, match=r"GET /slow: no answer within 0.2s"):
            await client.request("GET", "/slow", timeout=0.2)
    finally:
        await client.close()


def test_a_token_file_is_read_again_when_it_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one\n")
    token = rest.TokenFile(path)
    assert token.token() == "one" and token.token() == "one"
    assert token.reads == 1  # unchanged: not read again
    replacement = tmp_path / "token.new"
    replacement.write_text("two")
    os.replace(replacement, path)  # how a rotation lands
    assert token.token() == "two"
    path.unlink()
    assert token.token() == "two"  # gone for a moment: the last one is kept


def kubeconfig(tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
           "clusters": [{"name": "k", "cluster": cluster or {"server": "https://127.0.0.1:6443/",
                                                             "insecure-skip-tls-verify": True}}],
           "users": [{"name": "u", "user": user}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_kubeconfig_with_a_token_file_follows_the_file(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("abc")
    creds = rest.from_kubeconfig(kubeconfig(tmp_path, {"tokenFile": "t"}))
    assert creds.server == "https://127.0.0.1:6443"
    assert creds.headers() == {"Authorization": "Bearer abc"}
    (tmp_path / "t").write_text("abcd")
    assert creds.headers() == {"Authorization": "Bearer abcd"}


def test_a_kubeconfig_with_a_client_certificate_loads_it(tmp_path: Path) -> None:
    from pet_harness.pki import CertificateAuthority

    ca = CertificateAuthority("test-ca")
    pair = ca.client("someone", ("group",))
    user = {"client-certificate-data": base64.b64encode(pair.cert_pem).decode(),
            "client-key-data": base64.b64encode(pair.key_pem).decode()}
    cluster = {"server": "https://127.0.0.1:6443", "certificate-authority-data": base64.b64encode(ca.cert_pem).decode()}
    creds = rest.from_kubeconfig(kubeconfig(tmp_path, user, cluster))
    assert creds.headers() == {}
    assert creds.ssl_context is not False


@pytest.mark.parametrize(("user", "cluster", "needle"), [
    ({"exec": {"command": "aws"}}, None, "exec or auth-provider plugin"),
    ({"token": "x"}, {"insecure-skip-tls-verify": True}, "has no server"),
])
def test_a_kubeconfig_the_operator_cannot_use_is_refused_saying_why(
    tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None, needle: str
) -> None:
    with pytest.raises(rest.ConfigError, match=needle):
        rest.from_kubeconfig(kubeconfig(tmp_path, user, cluster))
    with pytest.raises(rest.ConfigError, match="cannot read kubeconfig"):
        rest.from_kubeconfig(tmp_path / "missing")


def test_in_a_pod_the_service_account_is_used(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("pod-token")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    creds = rest.in_cluster(tmp_path, env)
    assert creds is not None
    assert creds.server == "https://[fd00::1]:443"
    assert creds.headers() == {"Authorization": "Bearer pod-token"}
    assert rest.in_cluster(tmp_path, {}) is None

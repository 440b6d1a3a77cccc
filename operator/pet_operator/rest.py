"""A small asynchronous client of the Kubernetes REST API, on aiohttp (which Kopf already uses).

The operator makes a handful of kinds of calls (status patches, Leases, Events, a few reads).
kubernetes_asyncio would serve them too, but importing it costs about 35 MB of memory per replica
(every generated model class is loaded) and each of its requests reads ``~/.netrc`` and the proxy
environment; this client costs a few hundred lines and nothing at import.

What it speaks: JSON bodies, merge/JSON patches by content type, a ``Status`` answer turned into
:class:`ApiError` with the server's message, a total time limit on every call. Credentials come
from a kubeconfig (client certificate, ``token`` or ``tokenFile``, CA, or
``insecure-skip-tls-verify``) or from the pod's service account; a token file is read again
whenever it changes on disk, so rotated tokens (projected service-account tokens, the harness's
rotation) are followed. Exec and auth-provider plugins are not run: such a kubeconfig is refused
with an error saying so.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import yaml

from pet_operator import metrics
from pet_operator.api_reachability import ApiReachability

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
#: A listing of metadata only (PartialObjectMetadataList): a fraction of the bytes to send and decode.
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiError(Exception):
    """The API server answered with an error status; ``message`` is its own explanation."""

    def __init__(self, status: int, reason: str = "", message: str = "") -> None:
        self.status = status
        self.reason = reason
        self.message = message or reason
        super().__init__(f"{status} {reason}: {self.message}" if self.message != reason else f"{status} {reason}")


class ConfigError(ValueError):
    """Credentials cannot be loaded; the message names the file or setting and why."""


class TokenFile:
    """A bearer token in a file that someone rotates (rewrites); read again whenever it changed
    (one ``stat`` per call)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token: str | None = None
        self.reads = 0

    def token(self) -> str | None:
        try:
            stat = self.path.stat()
        except OSError:
            return self._token  # replaced at this very moment, or gone: keep the last one
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            try:
                self._token = self.path.read_text().strip() or self._token
            except OSError:
                return self._token
            self._stamp = stamp
            self.reads += 1
        return self._token


@dataclasses.dataclass
class Credentials:
    server: str
    ssl_context: ssl.SSLContext | bool
    token: Callable[[], str | None] = lambda: None
    source: str = ""  # where they came from, for messages

    def headers(self) -> dict[str, str]:
        token = self.token()
        return {"Authorization": f"Bearer {token}"} if token else {}


def _tls(ca: bytes | None, cert: bytes | None, key: bytes | None, insecure: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca:
        ctx.load_verify_locations(cadata=ca.decode())
    if cert and key:
        with tempfile.TemporaryDirectory(prefix="pet-operator-tls-") as tmp:  # load_cert_chain wants files
            cert_path, key_path = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            cert_path.write_bytes(cert)
            key_path.touch(mode=0o600)
            key_path.write_bytes(key)
            ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx


def _field(entry: Mapping[str, Any], name: str, base: Path) -> bytes | None:
    if entry.get(f"{name}-data"):
        return base64.b64decode(entry[f"{name}-data"])
    if entry.get(name):
        path = Path(str(entry[name])).expanduser()
        return (path if path.is_absolute() else base / path).read_bytes()
    return None


def from_kubeconfig(path: str | Path) -> Credentials:
    path = Path(path).expanduser()
    try:
        doc = yaml.safe_load(path.read_text()) or {}
        name = doc.get("current-context")
        context = next(c.get("context") or {} for c in doc.get("contexts") or [] if c.get("name") == name)
        cluster = next(c.get("cluster") or {} for c in doc.get("clusters") or []
                       if c.get("name") == context.get("cluster"))
        user = next((u.get("user") or {} for u in doc.get("users") or [] if u.get("name") == context.get("user")), {})
    except OSError as exc:
        raise ConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
    except (yaml.YAMLError, StopIteration, AttributeError, TypeError) as exc:
        raise ConfigError(f"kubeconfig {path}: no usable current context, cluster and user ({exc!r})") from exc
    if user.get("exec") or user.get("auth-provider"):
        raise ConfigError(f"kubeconfig {path}: the user authenticates through an exec or auth-provider plugin, "
                          "which the operator does not run; give it a token, a tokenFile or a client certificate")
    if not cluster.get("server"):
        raise ConfigError(f"kubeconfig {path}: the current context's cluster has no server")
    base = path.parent
    try:
        ctx = _tls(_field(cluster, "certificate-authority", base), _field(user, "client-certificate", base),
                   _field(user, "client-key", base), bool(cluster.get("insecure-skip-tls-verify")))
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"kubeconfig {path}: its certificates cannot be used: {exc}") from exc
    token: Callable[[], str | None]
    if user.get("tokenFile"):
        token = TokenFile(base / Path(str(user["tokenFile"])).expanduser()).token
    else:
        fixed = user.get("token")
        token = lambda: fixed  # noqa: E731 - a constant token
    return Credentials(str(cluster["server"]).rstrip("/"), ctx, token, str(path))


def in_cluster(folder: Path = SERVICE_ACCOUNT, environ: Mapping[str, str] = os.environ) -> Credentials | None:
    """The pod's service account, or None outside a pod."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port or not (folder / "token").exists():
        return None
    if ":" in host:
        host = f"[{host}]"
    ca = folder / "ca.crt"
    ctx = _tls(ca.read_bytes() if ca.exists() else None, None, None, False)
    return Credentials(f"https://{host}:{port}", ctx, TokenFile(folder / "token").token, "in-cluster service account")


def load(kubeconfig: str | None = None) -> Credentials:
    """``kubeconfig`` if given; else the pod's service account; else ``$KUBECONFIG`` or ``~/.kube/config``."""
    if kubeconfig:
        return from_kubeconfig(kubeconfig)
    pod = in_cluster()
    if pod is not None:
        return pod
    path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube" / "config")
    return from_kubeconfig(path)


def path_of(*parts: str) -> str:
    """An API path from its parts, each escaped (names are DNS labels, but be safe)."""
    return "/" + "/".join(quote(p, safe="") for p in parts if p)


class RestClient:
    """Requests to one API server over a pooled keep-alive session."""

    def __init__(self, credentials: Credentials, pool: int = 100,
                 measure: metrics.OperatorMetrics | None = None,
                 reachability: ApiReachability | None = None) -> None:
        """``reachability``: told of every request that got an answer and every one that got none."""
        self.credentials = credentials
        self.reachability = reachability if reachability is not None else ApiReachability()
        self.pool = pool
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        self.metrics = measure if measure is not None else metrics.default()
        self.host = urlsplit(credentials.server).netloc  # client-go's host label
    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context, limit=self.pool)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self, method: str, path: str, *, timeout: float, body: Any = None, content_type: str = JSON,  # noqa: ASYNC109
        params: Mapping[str, str] | None = None, accept: str = JSON,
    ) -> dict[str, Any]:
        """One call, given up after ``timeout`` seconds in all (TimeoutError); the decoded answer, or
        ApiError for any status of 400 and above. ``accept`` asks for another representation
        (``METADATA_ONLY``: a listing of the objects' metadata alone)."""
        headers = {"Accept": accept, **self.credentials.headers()}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        self.requests += 1
        started = time.monotonic()
        code: int | None = None  # metrics hook: None while no status line came
        try:
            async with asyncio.timeout(timeout):
                async with self._open().request(method, self.credentials.server + path, data=data, headers=headers,
                                                params=params) as response:
                    code = response.status
                    text = await response.text()
        except TimeoutError:
            if code is None:
                self.reachability.failed(f"{method} {path}: no answer within {timeout:g}s")
            raise TimeoutError(f"{method} {path}: no answer within {timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            if code is None:
                self.reachability.failed(f"{method} {path}: {type(exc).__name__}: {exc}"[:300])
            raise
        finally:
            self.metrics.api_request(method, self.host, code, time.monotonic() - started)
        self.reachability.answered()
        if response.status >= 400:
            raise _error(response.status, response.reason or "", text)
        return json.loads(text) if text else {}


def _error(status: int, reason: str, text: str) -> ApiError:
    message = ""
    try:
        answer = json.loads(text)
        if isinstance(answer, dict):
            message = str(answer.get("message") or "")
            reason = str(answer.get("reason") or reason)
    except ValueError:
        message = text[:500]
    return ApiError(status, reason, message)

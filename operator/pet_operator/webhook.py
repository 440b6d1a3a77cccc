"""The admission webhooks for Pets, served over TLS by every replica.

Certificates come from ``--webhook-cert-dir`` (``tls.crt`` and ``tls.key``, as
cert-manager mounts them) and are re-read when those files change; without a folder a
self-signed CA and serving certificate are made at start, and the CA is written into
the ``caBundle`` of the ValidatingWebhookConfiguration named by
``--webhook-configuration`` and of the MutatingWebhookConfiguration named by
``--mutating-webhook-configuration`` (so only one replica should run in that mode: each
would make its own CA). The paths served are ``/validate-pets`` (the validating hook) and
``/mutate-pets`` (the mutating hook, which only adds the id-claim finalizer at CREATE and
never refuses: see :mod:`pet_operator.mutation`).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import logging
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pet_operator import admission, metrics, mutation
from pet_operator.claims import Claim
from pet_operator.connections import BoundedSite
from pet_operator.model import StoreView
from pet_operator.rest import ApiError

log = logging.getLogger(__name__)

PATH = "/validate-pets"
MUTATE_PATH = mutation.PATH  # "/mutate-pets": the id-claim finalizer added at CREATE

#: The largest body the API server accepts for a write (its MaxRequestBodyBytes, 3 MiB).
MAX_OBJECT_BYTES = 3 * 1024 * 1024
#: Go's encoding/json writes '<', '>', '&' (and control characters) as \u00XX: six bytes for one.
GO_JSON_ESCAPE_FACTOR = 6
#: The review around the objects: uid, kinds, userInfo, options; generous.
REVIEW_ENVELOPE_BYTES = 256 * 1024
#: An UPDATE review carries the new and the old object, each possibly all escapes: 36.25 MiB.
#: aiohttp's default (1 MiB) refused a pet with 120 KB of '<' in an annotation (1.4 MB reviews).
MAX_REVIEW_BYTES = 2 * MAX_OBJECT_BYTES * GO_JSON_ESCAPE_FACTOR + REVIEW_ENVELOPE_BYTES

#: A new connection completes its TLS handshake, and then its first request's headers, within this.
FIRST_REQUEST_TIMEOUT = 10.0
#: A request's body arrives within this (the API server gives up on a review after at most 30 s).
BODY_TIMEOUT = 30.0
#: An idle keep-alive connection is closed after this; above the 90 s after which the API server's
#: client (Go's default transport) closes its own idle connections, so that it is normally the
#: client that closes, never the server just as the client sends a review on the connection.
KEEPALIVE_TIMEOUT = 120.0
#: A validating review is decided (its store and claim read) within this, or denied with 503: the
#: configurations' timeoutSeconds is 5, after which the API server fails the call with its own
#: "context deadline exceeded"; answering first tells the user what happened, and cancels the reads.
DECISION_TIMEOUT = 3.0
StoreLookup = Callable[[str, str], Awaitable[StoreView | None]]
ClaimLookup = Callable[[int], Awaitable[Claim | None]]


def self_signed(dns_names: Sequence[str], directory: Path) -> bytes:
    """Make a CA and a serving certificate in ``directory``; returns the CA's PEM."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pet-operator-webhook-ca")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in dns_names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        # the names live in the SANs; a CN is limited to 64 characters, a service name is not
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pet-operator-webhook")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(directory / "tls.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(fd, 0o600)  # the mode given to open (or touch) is for a new file only
        handle.write(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))
    return ca.public_bytes(serialization.Encoding.PEM)


class CertificateFiles:
    """``tls.crt``/``tls.key`` loaded into one SSLContext, reloaded when they change."""

    def __init__(self, directory: Path, watch: bool = True) -> None:
        self.watch = watch  # whether the files are re-read when they change (mounted ones are)
        self.cert = directory / "tls.crt"
        self.key = directory / "tls.key"
        # The server keeps ``context`` for good; each handshake is switched (SNI callback,
        # called with or without a server name) to ``_current``, a fresh context per load.
        # A fresh context per load means no trace of an old pair survives a rotation, even
        # to another key type (OpenSSL keeps one certificate per key type in a context).
        self.context = self._new_context()
        self._current = self.context
        self.context.sni_callback = self._switch
        self._stamp: str | None = None
        self.reloads = 0
        self.reload()

    @staticmethod
    def _new_context() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def _switch(self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, context: ssl.SSLContext) -> None:
        if self._current is not context:
            sock.context = self._current

    def _current_stamp(self) -> str:
        """A digest of both files: any change is seen, whatever the file times say."""
        digest = hashlib.sha256(self.cert.read_bytes())
        digest.update(self.key.read_bytes())
        return digest.hexdigest()

    def reload(self) -> bool:
        """Load the files if they changed since the last load; True if they were loaded."""
        try:
            stamp = self._current_stamp()
        except OSError as exc:
            if self._stamp is None:
                raise ValueError(f"webhook certificate files missing: {exc}") from exc
            log.warning("webhook certificate files unreadable, keeping the old ones: %s", exc)
            return False
        if stamp == self._stamp:
            return False
        try:
            fresh = self._new_context()
            fresh.load_cert_chain(str(self.cert), str(self.key))
        except (ssl.SSLError, OSError) as exc:
            if self._stamp is None:
                raise ValueError(f"webhook certificate {self.cert} / {self.key} cannot be loaded: {exc}") from exc
            log.warning("new webhook certificate cannot be loaded (mid-rotation?), keeping the old one: %s", exc)
            return False
        if self._stamp is None:
            self.context.load_cert_chain(str(self.cert), str(self.key))  # for the very first handshakes
        else:
            self.reloads += 1
            log.info("webhook certificate reloaded from %s", self.cert)
        self._current = fresh
        self._stamp = stamp
        return True


class WebhookServer:
    def __init__(
        self,
        port: int,
        certificates: CertificateFiles,
        stores: StoreLookup,
        claims: ClaimLookup,
        reload_interval: float = 5.0,
        host: str | Sequence[str] = "127.0.0.1",
        served: frozenset[str] | None = None,
        first_request_timeout: float = FIRST_REQUEST_TIMEOUT,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        decision_timeout: float = DECISION_TIMEOUT,
        measure: metrics.OperatorMetrics | None = None,
    ) -> None:
        """``host``: the address(es) to listen on (in a pod, its own: ``$POD_IP``);
        ``served``: the namespaces served (None: all), reviews for others are refused."""
        self.port = port
        self.hosts = (host,) if isinstance(host, str) else tuple(host)
        self.host = self.hosts[0]
        self.served = served
        self.first_request_timeout = first_request_timeout
        self.keepalive_timeout = keepalive_timeout
        self.decision_timeout = decision_timeout  # a validating decision takes at most this, else 503
        self.certificates = certificates
        self.stores = stores
        self.claims = claims
        self.reload_interval = reload_interval
        self.max_body = MAX_REVIEW_BYTES  # larger bodies get 413
        self.body_timeout = BODY_TIMEOUT  # slower bodies get 408
        self._runner: web.AppRunner | None = None
        self._reloader: asyncio.Task[None] | None = None
        self.reviews = 0  # validating reviews answered
        self.mutations = 0  # mutating reviews answered
        self.metrics = measure if measure is not None else metrics.default()

    @web.middleware
    async def _measure(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Metrics hook: count and time every request to a webhook path, whatever its status (a 413
        from aiohttp too); a request cut off by a disconnect is not counted."""
        if request.path not in (PATH, MUTATE_PATH):
            return await handler(request)  # type: ignore[no-any-return]
        started = time.monotonic()
        code: int | None = None
        try:
            response: web.StreamResponse = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        except Exception:
            code = 500  # what aiohttp answers
            raise
        finally:
            if code is not None:
                self.metrics.webhook_request(request.path, code, time.monotonic() - started)

    async def _read_review(self, request: web.Request) -> tuple[str, dict[str, Any]] | web.Response:
        """The uid and request of the review in the body, or the error response to send: one
        path for both hooks, so they share the body limit (413), the body timeout (408) and the
        answer to a malformed body (400)."""
        try:  # over max_body: 413 from aiohttp
            data = await asyncio.wait_for(request.read(), self.body_timeout)
        except TimeoutError:
            return web.json_response({"error": f"the body did not arrive within {self.body_timeout:.0f}s"},
                                     status=408)
        try:
            return admission.parse_review(data)
        except admission.BadReview as exc:
            return web.json_response({"error": str(exc)[:500]}, status=400)

    async def _mutate(self, request: web.Request) -> web.Response:
        read = await self._read_review(request)
        if isinstance(read, web.Response):
            return read
        uid, req = read
        self.mutations += 1
        patch = mutation.finalizer_patch(req, self.served)
        self.metrics.webhook_decision(MUTATE_PATH, True, "")
        return web.json_response(mutation.review_response(uid, patch))

    async def _review(self, request: web.Request) -> web.Response:
        read = await self._read_review(request)
        if isinstance(read, web.Response):
            return read
        uid, req = read
        self.reviews += 1
        try:
            decision = await asyncio.wait_for(self.decide(req), self.decision_timeout)
        except TimeoutError:
            # fail closed, as failurePolicy Fail would, but before the API server gives up and with a
            # message that says why: a pet with forbidden tags or a held id must not get in unchecked
            log.warning("admission review %s: no decision within %gs (the API server's reads hung); denied",
                        uid, self.decision_timeout)
            decision = admission.Decision(
                False, f"the pet-operator webhook could not decide within {self.decision_timeout:g}s (the API "
                "server did not answer its reads of the pet's store and id claim in time); nothing was admitted, "
                "try again", 503, admission.RULE_TIMEOUT)
        except Exception as exc:
            log.exception("admission review %s failed", uid)
            # an API error carries headers and bodies: tell the user only what failed
            detail = f"{type(exc).__name__}: {exc}"[:200]
            reason = f"{exc.status} {exc.reason}" if isinstance(exc, ApiError) else detail
            decision = admission.Decision(False, f"the pet-operator webhook could not decide: {reason}", 500,
                                          admission.RULE_ERROR)
        self.metrics.webhook_decision(PATH, decision.allowed, decision.rule)
        return web.json_response(admission.review_response(uid, decision))

    async def decide(self, req: dict[str, Any]) -> admission.Decision:
        operation = str(req.get("operation", ""))
        namespace = str(req.get("namespace", ""))
        new = req.get("object")
        old = req.get("oldObject")
        if self.served is not None and namespace not in self.served:
            # the configuration's namespaceSelector sends only served namespaces: this is forged or
            # misconfigured; deciding would read stores and claims with the operator's rights
            return admission.not_served(namespace)
        if operation not in ("CREATE", "UPDATE") or not isinstance(new, dict):
            return admission.ALLOW
        if (new.get("metadata") or {}).get("deletionTimestamp"):
            return admission.ALLOW
        name = str((new.get("metadata") or {}).get("name") or req.get("name") or "")
        spec = new.get("spec") or {}
        store_name = spec.get("store")
        old_spec = (old or {}).get("spec") if operation == "UPDATE" and isinstance(old, dict) else None
        # read the store only when its allowedTags decide something: updates that leave the tags
        # alone (finalizers, labels) must pass even when the store cannot be read
        checks_tags = bool(store_name) and bool(spec.get("tags")) and admission.tags_or_store_changed(old_spec, spec)
        store = await self.stores(namespace, str(store_name)) if checks_tags else None
        pet_id = spec.get("id")
        claim = await self.claims(pet_id) if operation == "CREATE" and isinstance(pet_id, int) else None
        return admission.review_pet(operation, namespace, name, new, old, store, claim)

    async def _reload_forever(self) -> None:
        if not self.certificates.watch:
            return
        while True:
            await asyncio.sleep(self.reload_interval)
            self.certificates.reload()

    async def start(self) -> None:
        app = web.Application(client_max_size=self.max_body, middlewares=[self._measure])
        app.router.add_post(PATH, self._review)
        app.router.add_post(MUTATE_PATH, self._mutate)
        # reviews take milliseconds; on shutdown, in-flight ones get 3 s, idle keep-alives none
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=3.0,
                                     keepalive_timeout=self.keepalive_timeout)
        await self._runner.setup()
        try:
            for host in self.hosts:
                site = BoundedSite(self._runner, host, self.port, ssl_context=self.certificates.context,
                                   first_request=self.first_request_timeout)
                await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        self._reloader = asyncio.create_task(self._reload_forever())

    async def stop(self, within: float = 5.0) -> bool:
        """Stop listening, close idle connections, give in-flight reviews what is left of
        ``within`` seconds; False if that was not enough (the rest is abandoned)."""
        if self._reloader is not None and not self._reloader.done():
            self._reloader.cancel()
            await asyncio.wait({self._reloader})  # its end, never the caller's own cancellation
        runner, self._runner = self._runner, None
        if runner is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(runner.cleanup()), within)
        except TimeoutError:
            log.warning("webhook: connections still open after %.1fs; abandoning them", within)
            return False
        return True


def certificates_for(cert_dir: str | None, dns_names: Sequence[str]) -> tuple[CertificateFiles, bytes | None]:
    """Mounted certificates, or a self-signed set (with its CA PEM) in a private temp folder."""
    if cert_dir:
        return CertificateFiles(Path(cert_dir)), None
    directory = Path(tempfile.mkdtemp(prefix="pet-operator-webhook-"))
    try:
        ca_pem = self_signed(dns_names, directory)
        certificates = CertificateFiles(directory, watch=False)
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # loaded into memory; nothing to leave behind
    return certificates, ca_pem

"""webhook: self-signed certificates, certificate reloads, /validate-pets and /mutate-pets over real TLS
on loopback.

Every server runs on 127.0.0.1 with port 0 (the kernel picks a free one) and is stopped in a
``finally``; after the stop, the tests check that nothing listens on its port any more.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import os
import ssl
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pet_operator.claims import FINALIZER, Claim
from pet_operator.cli import parse_config
from pet_operator.model import StoreView
from pet_operator.webhook import MUTATE_PATH, PATH, CertificateFiles, WebhookServer, certificates_for, self_signed

NS = "default"
NAMES = ("localhost", "127.0.0.1")


# --- helpers ----------------------------------------------------------------------------------


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def der_of_file(directory: Path) -> bytes:
    return load_cert((directory / "tls.crt").read_bytes()).public_bytes(serialization.Encoding.DER)


def bump_mtimes(directory: Path, *names: str) -> None:
    """Move the files' mtimes a second on, as a rotation that happens later would.

    The rewrite in a test happens within milliseconds of the first write, possibly within
    the same coarse file-system clock tick and with files of the same size (P-256 keys
    always are), which ``CertificateFiles`` could not tell from no change at all.
    """
    for name in names or ("tls.crt", "tls.key"):
        path = directory / name
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def rotate(directory: Path) -> bytes:
    """Write a new CA's serving pair over the files; returns the new CA's PEM."""
    ca = self_signed(NAMES, directory)
    bump_mtimes(directory)
    return ca


def client_context(ca_pem: bytes) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca_pem.decode())


async def peer_certificate(port: int, ca_pem: bytes, server_hostname: str = "localhost") -> bytes:
    """DER of the certificate a NEW connection is shown, verified against ``ca_pem``."""
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(ca_pem), server_hostname=server_hostname
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert der is not None
        return bytes(der)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def is_listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@dataclasses.dataclass
class Lookups:
    """The store and claim lookups the server is given, answering from dicts and recording calls."""

    stores: dict[tuple[str, str], StoreView] = dataclasses.field(default_factory=dict)
    claims: dict[int, Claim] = dataclasses.field(default_factory=dict)
    calls: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    store_error: Exception | None = None
    claim_error: Exception | None = None
    hang: str | None = None  # "store" or "claim": that lookup never returns (until cancelled)
    cancelled: list[str] = dataclasses.field(default_factory=list)

    async def _hang(self, which: str) -> None:
        if self.hang == which:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(which)
                raise

    async def store(self, namespace: str, name: str) -> StoreView | None:
        self.calls.append(("store", namespace, name))
        await asyncio.sleep(0)
        await self._hang("store")
        if self.store_error is not None:
            raise self.store_error
        return self.stores.get((namespace, name))

    async def claim(self, pet_id: int) -> Claim | None:
        self.calls.append(("claim", pet_id))
        await asyncio.sleep(0)
        await self._hang("claim")
        if self.claim_error is not None:
            raise self.claim_error
        return self.claims.get(pet_id)


@dataclasses.dataclass
class Served:
    server: WebhookServer
    port: int
    ca: bytes
    directory: Path
    lookups: Lookups

    @property
    def url(self) -> str:
        return self.url_for(PATH)

    def url_for(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"


@contextlib.asynccontextmanager
async def serving(
    certificates: CertificateFiles, ca: bytes, directory: Path, reload_interval: float = 3600.0
) -> AsyncIterator[Served]:
    lookups = Lookups()
    server = WebhookServer(
        0, certificates, lookups.store, lookups.claim, reload_interval=reload_interval, host="127.0.0.1"
    )
    await server.start()
    try:
        assert server._runner is not None
        port = server._runner.addresses[0][1]
        yield Served(server, port, ca, directory, lookups)
    finally:
        await server.stop()
    assert not await is_listening(port)
    assert server._reloader is not None
    assert server._reloader.done()


@contextlib.asynccontextmanager
async def serving_files(directory: Path, reload_interval: float = 3600.0) -> AsyncIterator[Served]:
    """A server on a self-signed pair written to ``directory``, watched like mounted files."""
    ca = self_signed(NAMES, directory)
    async with serving(CertificateFiles(directory), ca, directory, reload_interval) as s:
        yield s


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving_files(tmp_path / "certs") as s:
        yield s


def pet(
    name: str = "rex", *, tags: list[str] | None = None, pet_id: Any = 7, store: str | None = "shop"
) -> dict[str, Any]:
    spec: dict[str, Any] = {"id": pet_id, "name": name}
    if store is not None:
        spec["store"] = store
    if tags is not None:
        spec["tags"] = tags
    return {
        "apiVersion": "petstore.example.com/v1",
        "kind": "Pet",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def review(
    operation: str, obj: dict[str, Any] | None, old: dict[str, Any] | None = None, uid: str = "uid-1"
) -> dict[str, Any]:
    name = (obj or old or {}).get("metadata", {}).get("name", "")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "petstore.example.com", "version": "v1", "kind": "Pet"},
            "resource": {"group": "petstore.example.com", "version": "v1", "resource": "pets"},
            "operation": operation,
            "namespace": NS,
            "name": name,
            "object": obj,
            "oldObject": old,
        },
    }


async def post(
    served: Served, body: dict[str, Any] | bytes, ca: bytes | None = None, path: str = PATH
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connector = aiohttp.TCPConnector(ssl=client_context(ca or served.ca))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(served.url_for(path), data=data, headers={"Content-Type": "application/json"}) as response,
    ):
        text = await response.text()
        return response.status, json.loads(text)


async def respond(served: Served, body: dict[str, Any], path: str = PATH) -> dict[str, Any]:
    status, answer = await post(served, body, path=path)
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response: dict[str, Any] = answer["response"]
    return response


# --- self_signed ------------------------------------------------------------------------------


def test_self_signed_serving_certificate_is_issued_by_the_returned_ca(tmp_path: Path) -> None:
    ca = load_cert(self_signed(NAMES, tmp_path))
    leaf = load_cert((tmp_path / "tls.crt").read_bytes())
    leaf.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)  # self-signed root
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    now = datetime.datetime.now(datetime.UTC)
    for cert in (ca, leaf):
        assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc


def test_self_signed_leaf_does_not_chain_to_another_ca(tmp_path: Path) -> None:
    self_signed(NAMES, tmp_path / "one")
    other_ca = load_cert(self_signed(NAMES, tmp_path / "two"))
    leaf = load_cert((tmp_path / "one" / "tls.crt").read_bytes())
    with pytest.raises((ValueError, InvalidSignature)):
        leaf.verify_directly_issued_by(other_ca)


def test_self_signed_sans_hold_the_dns_names_and_ip_addresses(tmp_path: Path) -> None:
    names = ["pet-operator-webhook.pet-system.svc", "localhost", "127.0.0.1", "::1"]
    self_signed(names, tmp_path)
    leaf = load_cert((tmp_path / "tls.crt").read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["pet-operator-webhook.pet-system.svc", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_self_signed_key_is_private_and_matches_the_certificate(tmp_path: Path) -> None:
    self_signed(NAMES, tmp_path / "certs")
    key_path = tmp_path / "certs" / "tls.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    leaf = load_cert((tmp_path / "certs" / "tls.crt").read_bytes())
    assert key.public_key() == leaf.public_key()


def test_self_signed_over_a_readable_key_makes_it_private(tmp_path: Path) -> None:
    """``touch(mode=)`` leaves an existing file's mode alone: a key written over one stayed 0644."""
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "tls.key").write_bytes(b"old")
    (folder / "tls.key").chmod(0o644)
    self_signed(NAMES, folder)
    assert stat.S_IMODE((folder / "tls.key").stat().st_mode) == 0o600


def test_self_signed_subject_is_fixed_and_the_names_are_in_the_sans(tmp_path: Path) -> None:
    names = parse_config(["-n", "a", "--claims-namespace", "a" * 39], {}).webhook_host_names
    self_signed(names, tmp_path)
    leaf = load_cert((tmp_path / "tls.crt").read_bytes())
    assert leaf.subject.rfc4514_string() == "CN=pet-operator-webhook"
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names[0] in sans.get_values_for_type(x509.DNSName)


def test_self_signed_for_a_long_valid_claims_namespace(tmp_path: Path) -> None:
    names = parse_config(["-n", "a", "--claims-namespace", "n" * 63], {}).webhook_host_names
    self_signed(names, tmp_path)
    leaf = load_cert((tmp_path / "tls.crt").read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names[0] in sans.get_values_for_type(x509.DNSName)


# --- CertificateFiles -------------------------------------------------------------------------


def test_certificate_files_load(tmp_path: Path) -> None:
    self_signed(NAMES, tmp_path)
    files = CertificateFiles(tmp_path)
    assert (files.cert, files.key) == (tmp_path / "tls.crt", tmp_path / "tls.key")
    assert files.reloads == 0
    assert files.context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_reload_is_false_while_the_files_are_unchanged(tmp_path: Path) -> None:
    self_signed(NAMES, tmp_path)
    files = CertificateFiles(tmp_path)
    context = files.context
    assert files.reload() is False
    assert files.reload() is False
    assert files.reloads == 0
    assert files.context is context


def test_reload_after_a_rotation_loads_the_new_pair_and_counts(tmp_path: Path) -> None:
    self_signed(NAMES, tmp_path)
    files = CertificateFiles(tmp_path)
    rotate(tmp_path)
    assert files.reload() is True
    assert files.reloads == 1
    assert files.reload() is False
    rotate(tmp_path)
    assert files.reload() is True
    assert files.reloads == 2


def test_reload_of_a_broken_pair_keeps_the_old_one_and_recovers_later(tmp_path: Path) -> None:
    self_signed(NAMES, tmp_path)
    files = CertificateFiles(tmp_path)
    (tmp_path / "tls.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    (tmp_path / "tls.key").write_bytes(b"not a key either")
    bump_mtimes(tmp_path)
    assert files.reload() is False
    assert files.reloads == 0
    assert files.reload() is False  # still broken: no change counted
    rotate(tmp_path)
    assert files.reload() is True
    assert files.reloads == 1


def test_reload_with_the_files_gone_keeps_the_old_pair(tmp_path: Path) -> None:
    self_signed(NAMES, tmp_path)
    files = CertificateFiles(tmp_path)
    (tmp_path / "tls.crt").unlink()
    assert files.reload() is False
    assert files.reloads == 0
    rotate(tmp_path)
    assert files.reload() is True


def test_missing_folder_at_construction_names_the_certificate_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="webhook certificate files missing") as info:
        CertificateFiles(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "tls.crt") in str(info.value)


def test_missing_key_at_construction_names_the_key_file(tmp_path: Path) -> None:
    self_signed(NAMES, tmp_path)
    (tmp_path / "tls.key").unlink()
    with pytest.raises(ValueError, match="webhook certificate files missing") as info:
        CertificateFiles(tmp_path)
    assert str(tmp_path / "tls.key") in str(info.value)


def test_broken_pair_at_construction_names_both_files(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("garbage")
    (tmp_path / "tls.key").write_text("garbage")
    with pytest.raises(ValueError, match="cannot be loaded") as info:
        CertificateFiles(tmp_path)
    assert str(tmp_path / "tls.crt") in str(info.value)
    assert str(tmp_path / "tls.key") in str(info.value)


def test_mismatched_pair_at_construction_is_refused(tmp_path: Path) -> None:
    self_signed(NAMES, tmp_path / "one")
    self_signed(NAMES, tmp_path / "two")
    (tmp_path / "one" / "tls.key").write_bytes((tmp_path / "two" / "tls.key").read_bytes())
    with pytest.raises(ValueError, match="cannot be loaded"):
        CertificateFiles(tmp_path / "one")


# --- certificates_for -------------------------------------------------------------------------


def test_certificates_for_a_mounted_folder_has_no_ca(tmp_path: Path) -> None:
    self_signed(NAMES, tmp_path)
    files, ca = certificates_for(str(tmp_path), ["ignored.example"])
    assert ca is None
    assert files.cert == tmp_path / "tls.crt"


def test_certificates_for_a_mounted_folder_without_files_fails(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tls\.crt"):
        certificates_for(str(tmp_path), NAMES)


def test_certificates_for_a_mounted_folder_is_watched(tmp_path: Path) -> None:
    self_signed(NAMES, tmp_path)
    files, _ = certificates_for(str(tmp_path), NAMES)
    assert files.watch is True
    rotate(tmp_path)
    assert files.reload() is True


@pytest.mark.parametrize("cert_dir", [None, ""])
async def test_certificates_for_no_folder_serves_a_self_signed_certificate_kept_in_memory_only(
    cert_dir: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # mkdtemp lands here, not in /tmp
    names = ["pet-operator-webhook.pets.svc", "localhost", "127.0.0.1"]
    files, ca = certificates_for(cert_dir, names)
    assert ca is not None
    assert files.watch is False
    assert os.listdir(tmp_path) == []  # the private key is left nowhere on disk
    assert files.reload() is False

    async with serving(files, ca, tmp_path) as s:
        der = await peer_certificate(s.port, ca, "pet-operator-webhook.pets.svc")
        assert await peer_certificate(s.port, ca, "127.0.0.1") == der
        assert s.server._reloader is not None
        await asyncio.wait_for(s.server._reloader, timeout=5)  # nothing to watch: the reloader ends at once
        assert (await respond(s, review("CREATE", pet(store=None))))["allowed"] is True
    leaf = x509.load_der_x509_certificate(der)
    leaf.verify_directly_issued_by(load_cert(ca))
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["pet-operator-webhook.pets.svc", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


# --- WebhookServer over TLS -------------------------------------------------------------------


async def test_allowed_create_echoes_the_uid(served: Served) -> None:
    served.lookups.stores[(NS, "shop")] = StoreView("shop", ("cat", "dog"))
    response = await respond(served, review("CREATE", pet(tags=["cat"]), uid="705ab4f5-6393-11e8"))
    assert response == {"uid": "705ab4f5-6393-11e8", "allowed": True}
    assert served.lookups.calls == [("store", NS, "shop"), ("claim", 7)]
    assert served.server.reviews == 1


async def test_create_with_disallowed_tags_is_denied_over_tls(served: Served) -> None:
    served.lookups.stores[(NS, "shop")] = StoreView("shop", ("dog", "cat"))
    response = await respond(served, review("CREATE", pet(tags=["cat", "snake"]), uid="u-tags"))
    assert response["uid"] == "u-tags"
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    assert response["status"]["message"] == (
        "tags 'snake' are not allowed by PetStore 'shop', which allows [cat, dog]"
    )


async def test_create_with_a_held_id_is_denied_naming_a_holder_only_in_its_own_namespace(served: Served) -> None:
    served.lookups.claims[7] = Claim(7, "other-ns/fido", "uid-fido", "3")
    response = await respond(served, review("CREATE", pet(store=None), uid="u-id"))
    assert (response["uid"], response["allowed"], response["status"]["code"]) == ("u-id", False, 422)
    assert "a pet in another namespace" in response["status"]["message"]
    assert "fido" not in response["status"]["message"]
    assert served.lookups.calls == [("claim", 7)]  # no store named: none read
    served.lookups.claims[7] = Claim(7, f"{NS}/fido", "uid-fido", "3")
    response = await respond(served, review("CREATE", pet(store=None), uid="u-id"))
    assert f"pet {NS}/fido" in response["status"]["message"]


async def test_a_review_for_a_namespace_not_served_is_refused_before_any_lookup(tmp_path: Path) -> None:
    """A forged review (the configuration sends only served namespaces) learns nothing: no store's
    allowedTags, no claim holder."""
    async with serving_files(tmp_path / "certs") as s:
        s.server.served = frozenset({NS})
        s.lookups.stores[("elsewhere", "shop")] = StoreView("shop", ("secret-tag",))
        s.lookups.claims[7] = Claim(7, "elsewhere/fido", "uid-fido", "3")
        body = review("CREATE", pet(tags=["x"]))
        body["request"]["namespace"] = "elsewhere"
        response = await respond(s, body)
        assert (response["allowed"], response["status"]["code"]) == (False, 403)
        assert response["status"]["message"] == "namespace 'elsewhere' is not served by this pet-operator"
        assert s.lookups.calls == []


async def test_create_of_a_recreated_pet_with_its_own_stale_claim_is_allowed(served: Served) -> None:
    served.lookups.claims[7] = Claim(7, f"{NS}/rex", "uid-old-rex", "3")
    assert (await respond(served, review("CREATE", pet("rex", store=None))))["allowed"] is True


async def test_create_naming_a_missing_store_is_allowed(served: Served) -> None:
    response = await respond(served, review("CREATE", pet(tags=["snake"], store="not-yet")))
    assert response["allowed"] is True
    assert served.lookups.calls == [("store", NS, "not-yet"), ("claim", 7)]


@pytest.mark.parametrize("tags", [None, []], ids=["no-tags", "empty-tags"])
async def test_create_without_tags_reads_no_store(served: Served, tags: list[str] | None) -> None:
    served.lookups.store_error = RuntimeError("must not be read")
    assert (await respond(served, review("CREATE", pet(tags=tags, store="shop"))))["allowed"] is True
    assert served.lookups.calls == [("claim", 7)]


async def test_update_reads_no_claim_and_passes_unchanged_tags(served: Served) -> None:
    served.lookups.stores[(NS, "shop")] = StoreView("shop", ())
    served.lookups.claims[7] = Claim(7, "other-ns/fido", "uid-fido", "3")
    old = pet(tags=["snake"])
    new = pet(tags=["snake"])
    new["metadata"]["labels"] = {"edited": "yes"}
    assert (await respond(served, review("UPDATE", new, old)))["allowed"] is True
    assert ("claim", 7) not in served.lookups.calls


async def test_update_adding_a_disallowed_tag_is_denied_over_tls(served: Served) -> None:
    served.lookups.stores[(NS, "shop")] = StoreView("shop", ("cat",))
    response = await respond(served, review("UPDATE", pet(tags=["cat", "snake"]), pet(tags=["cat"])))
    assert response["allowed"] is False
    assert "'snake'" in response["status"]["message"]


@pytest.mark.parametrize("pet_id", ["7", 7.0, None], ids=["string", "float", "missing"])
async def test_create_with_a_non_integer_id_reads_no_claim(served: Served, pet_id: Any) -> None:
    served.lookups.claims[7] = Claim(7, "other-ns/fido", "uid-fido", "3")
    assert (await respond(served, review("CREATE", pet(pet_id=pet_id, store=None))))["allowed"] is True
    assert served.lookups.calls == []


@pytest.mark.parametrize("operation", ["DELETE", "CONNECT"])
async def test_delete_and_connect_pass_without_lookups(served: Served, operation: str) -> None:
    served.lookups.store_error = RuntimeError("must not be read")
    served.lookups.claim_error = RuntimeError("must not be read")
    response = await respond(served, review(operation, None, pet(tags=["snake"]), uid="u-del"))
    assert response == {"uid": "u-del", "allowed": True}
    assert served.lookups.calls == []


@pytest.mark.parametrize(
    "body",
    [
        b"this is not json",
        b"\xff\xfe\x00",
        b"[]",
        b'"a string"',
        b"{}",
        b'{"request": null}',
        b'{"request": "x"}',
        b'{"request": []}',
        b'{"request": {"operation": "CREATE"}}',
    ],
    ids=["not-json", "not-utf8", "list", "string", "no-request", "null-request", "string-request",
         "list-request", "no-uid"],
)
@pytest.mark.parametrize("path", [PATH, MUTATE_PATH])
async def test_malformed_bodies_get_400(served: Served, body: bytes, path: str) -> None:
    status, answer = await post(served, body, path=path)
    assert status == 400
    assert answer["error"].startswith("expected an AdmissionReview with a request")
    assert (served.server.reviews, served.server.mutations) == (0, 0)
    assert served.lookups.calls == []


def _shaped(path: str, value: Any) -> bytes:
    """A CREATE review with the value at ``path`` (dotted, under request) replaced."""
    body = review("CREATE", pet(tags=["cat"]))
    *parents, last = path.split(".")
    node: Any = body["request"]
    for key in parents:
        node = node[key]
    node[last] = value
    return json.dumps(body).encode()


@pytest.mark.parametrize(("path", "value", "named"), [
    ("uid", 7, "request.uid"),
    ("operation", ["CREATE"], "request.operation"),
    ("namespace", {"a": 1}, "request.namespace"),
    ("name", 3, "request.name"),
    ("object", [], "request.object"),
    ("oldObject", "x", "request.oldObject"),
    ("object.metadata", "x", "request.object.metadata"),
    ("object.metadata.name", ["rex"], "request.object.metadata.name"),
    ("object.spec", [1, 2], "request.object.spec"),
    ("object.spec.tags", "cat", "request.object.spec.tags"),
    ("object.spec.tags", ["cat", 3], "request.object.spec.tags"),
    ("object.spec.store", {"name": "shop"}, "request.object.spec.store"),
])
@pytest.mark.parametrize("served_path", [PATH, MUTATE_PATH])
async def test_reviews_of_the_wrong_shape_get_400_naming_the_field(
    served: Served, path: str, value: Any, named: str, served_path: str
) -> None:
    served.lookups.stores[(NS, "shop")] = StoreView("shop", ("cat",))
    status, answer = await post(served, _shaped(path, value), path=served_path)
    assert status == 400, answer
    assert named in answer["error"]
    assert served.lookups.calls == []


def _envelope(change: str) -> bytes:
    body = review("CREATE", pet(tags=["cat"]))
    if change == "v1beta1":
        body["apiVersion"] = "admission.k8s.io/v1beta1"
    elif change == "no-apiVersion":
        del body["apiVersion"]
    elif change == "wrong-kind":
        body["kind"] = "Pod"
    elif change == "no-operation":
        del body["request"]["operation"]
    elif change == "unknown-operation":
        body["request"]["operation"] = "EXPLODE"
    elif change == "huge-uid":
        body["request"]["uid"] = "u" * 300
    return json.dumps(body).encode()


@pytest.mark.parametrize(("change", "named"), [
    ("v1beta1", "apiVersion"), ("no-apiVersion", "apiVersion"), ("wrong-kind", "kind"),
    ("no-operation", "request.operation"), ("unknown-operation", "request.operation"), ("huge-uid", "request.uid"),
])
@pytest.mark.parametrize("served_path", [PATH, MUTATE_PATH])
async def test_reviews_the_api_server_never_sends_get_400(
    served: Served, change: str, named: str, served_path: str
) -> None:
    """Found by fuzzing the port: a body with only a request uid (of 20 MB, echoed back) was
    answered 200 allowed; the API server sends admission.k8s.io/v1 AdmissionReviews with an
    operation and a UUID, and anything else is the sender's error."""
    status, answer = await post(served, _envelope(change), path=served_path)
    assert status == 400, answer
    assert named in answer["error"]
    assert served.lookups.calls == []


async def test_a_deeply_nested_body_gets_400_not_500(served: Served) -> None:
    depth = 100_000
    body = b'{"request": ' + b"[" * depth + b"]" * depth + b"}"
    status, answer = await post(served, body)
    assert status == 400
    assert "nested" in answer["error"]


def test_the_body_limit_is_what_the_api_server_can_send() -> None:
    from pet_operator import webhook

    # two objects of the API server's largest request, every byte escaped by Go to six, plus the envelope
    assert webhook.MAX_REVIEW_BYTES == 2 * 3 * 1024 * 1024 * 6 + webhook.REVIEW_ENVELOPE_BYTES
    assert webhook.MAX_REVIEW_BYTES > 36 * 1024 * 1024


async def test_an_update_of_a_pet_with_a_large_escaped_annotation_is_reviewed(served: Served) -> None:
    """120 KB of '<' arrive as 720 KB per object (Go writes \\u003c), 1.4 MB for old and new:
    beyond aiohttp's default 1 MiB, well within the API server's limits."""
    served.lookups.stores[(NS, "shop")] = StoreView("shop", ("cat",))
    old, new = pet(tags=["cat"]), pet(tags=["cat", "dog"])
    for obj in (old, new):
        obj["metadata"]["annotations"] = {"note": "<" * 120_000}
    data = json.dumps(review("UPDATE", new, old)).replace("<", "\\u003c").encode()
    assert len(data) > 1024 * 1024
    status, answer = await post(served, data)
    assert status == 200
    assert answer["response"]["allowed"] is False  # decided: 'dog' is not allowed
    assert "'dog'" in answer["response"]["status"]["message"]


@pytest.mark.parametrize("path", [PATH, MUTATE_PATH])
async def test_a_body_over_the_limit_gets_413(served: Served, path: str) -> None:
    served.server.max_body = 64 * 1024  # the real limit is 36 MiB: the same rule on a small scale
    await served.server.stop()
    await served.server.start()
    assert served.server._runner is not None
    served.port = served.server._runner.addresses[0][1]
    data = json.dumps(review("CREATE", pet(tags=["cat"]))).encode() + b" " * 70 * 1024
    connector = aiohttp.TCPConnector(ssl=client_context(served.ca))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(served.url_for(path), data=data, headers={"Content-Type": "application/json"}) as response,
    ):
        assert response.status == 413
    assert served.lookups.calls == []


@pytest.mark.parametrize("failing", ["store", "claim"])
async def test_a_failing_lookup_denies_with_500_and_a_message(
    served: Served, failing: str, caplog: pytest.LogCaptureFixture
) -> None:
    error = RuntimeError("apiserver said 503")
    if failing == "store":
        served.lookups.store_error = error
    else:
        served.lookups.claim_error = error
    response = await respond(served, review("CREATE", pet(tags=["cat"]), uid="u-fail"))
    assert response["uid"] == "u-fail"
    assert response["allowed"] is False
    assert response["status"]["code"] == 500
    expected = "the pet-operator webhook could not decide: RuntimeError: apiserver said 503"
    assert response["status"]["message"] == expected
    assert "admission review u-fail failed" in caplog.text


@pytest.mark.parametrize("hanging", ["store", "claim"])
async def test_a_lookup_that_never_returns_is_denied_within_the_decision_bound(
    served: Served, hanging: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 3: the decision is bounded below the API server's webhook timeout, so the user gets
    the webhook's own denial saying why (a 503 to try again) instead of the API server's "failed
    calling webhook: context deadline exceeded"; the hung lookup is cancelled, not left behind.
    Before, the review hung as long as the lookup did (here: for ever)."""
    served.server.decision_timeout = 0.3
    served.lookups.hang = hanging
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(5):
        response = await respond(served, review("CREATE", pet(tags=["cat"]), uid="u-slow"))
    took = loop.time() - started
    assert 0.3 <= took < 2
    assert (response["uid"], response["allowed"], response["status"]["code"]) == ("u-slow", False, 503)
    assert response["status"]["message"] == (
        "the pet-operator webhook could not decide within 0.3s (the API server did not answer its reads of "
        "the pet's store and id claim in time); nothing was admitted, try again"
    )
    assert served.lookups.cancelled == [hanging]
    assert "admission review u-slow: no decision within 0.3s" in caplog.text


def test_the_decision_bound_is_below_the_webhook_configurations_timeout() -> None:
    """The API server gives up at timeoutSeconds (5 in deploy/webhook/): the webhook answers first."""
    import yaml

    from pet_operator.webhook import DECISION_TIMEOUT

    root = Path(__file__).resolve().parents[2]
    doc = yaml.safe_load((root / "deploy/webhook/validatingwebhookconfiguration.yaml").read_text())
    for hook in doc["webhooks"]:
        assert hook["timeoutSeconds"] >= DECISION_TIMEOUT + 1


@pytest.mark.parametrize("deleting", [False, True], ids=["label-edit", "finalizer-removal"])
async def test_updates_that_do_not_check_tags_pass_when_the_store_cannot_be_read(
    served: Served, deleting: bool
) -> None:
    served.lookups.store_error = RuntimeError("apiserver said 503")
    old = pet(tags=["snake"])
    old["metadata"]["finalizers"] = ["petstore.example.com/id-claim"]
    new = pet(tags=["snake"])
    if deleting:
        new["metadata"]["deletionTimestamp"] = "2024-05-01T10:00:00Z"
    else:
        new["metadata"]["labels"] = {"edited": "yes"}
    assert (await respond(served, review("UPDATE", new, old)))["allowed"] is True


async def test_other_methods_and_paths(served: Served) -> None:
    connector = aiohttp.TCPConnector(ssl=client_context(served.ca))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(served.url) as response:
            assert response.status == 405
        async with session.post(f"https://127.0.0.1:{served.port}/validate", data=b"{}") as response:
            assert response.status == 404


# --- /mutate-pets: the finalizer at CREATE -------------------------------------------------------


def decoded_patch(response: dict[str, Any]) -> Any:
    assert response["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"]))


async def test_mutating_create_gets_the_finalizer_as_a_json_patch_without_any_lookup(served: Served) -> None:
    served.lookups.store_error = RuntimeError("must not be read")
    served.lookups.claim_error = RuntimeError("must not be read")
    response = await respond(served, review("CREATE", pet(tags=["snake"]), uid="u-mut"), MUTATE_PATH)
    assert (response["uid"], response["allowed"]) == ("u-mut", True)
    assert decoded_patch(response) == [{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]
    assert "status" not in response
    assert served.lookups.calls == []
    assert (served.server.mutations, served.server.reviews) == (1, 0)


async def test_mutating_create_appends_the_finalizer_to_others(served: Served) -> None:
    obj = pet()
    obj["metadata"]["finalizers"] = ["example.com/keep"]
    response = await respond(served, review("CREATE", obj), MUTATE_PATH)
    assert decoded_patch(response) == [{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}]


@pytest.mark.parametrize("case", ["carries-it", "update", "delete", "being-deleted", "not-a-pet"])
async def test_mutating_review_with_nothing_to_add_is_allowed_without_a_patch(served: Served, case: str) -> None:
    obj = pet()
    operation = {"update": "UPDATE", "delete": "DELETE"}.get(case, "CREATE")
    if case == "carries-it":
        obj["metadata"]["finalizers"] = [FINALIZER]
    if case == "being-deleted":
        obj["metadata"]["deletionTimestamp"] = "2024-05-01T10:00:00Z"
    body = review(operation, obj, pet() if operation == "UPDATE" else None, uid="u-none")
    if case == "not-a-pet":
        body["request"]["resource"] = {"group": "petstore.example.com", "version": "v1", "resource": "petstores"}
    response = await respond(served, body, MUTATE_PATH)
    assert response == {"uid": "u-none", "allowed": True}


async def test_mutating_review_for_a_namespace_not_served_is_allowed_without_a_patch(tmp_path: Path) -> None:
    """Never a denial (the validating hook answers 403 to the same review), and no finalizer that no
    operator would ever remove."""
    async with serving_files(tmp_path / "certs") as s:
        s.server.served = frozenset({NS})
        body = review("CREATE", pet(), uid="u-elsewhere")
        body["request"]["namespace"] = "elsewhere"
        assert await respond(s, body, MUTATE_PATH) == {"uid": "u-elsewhere", "allowed": True}
        body["request"]["namespace"] = NS
        assert "patch" in await respond(s, body, MUTATE_PATH)


async def test_mutate_path_takes_posts_only(served: Served) -> None:
    connector = aiohttp.TCPConnector(ssl=client_context(served.ca))
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.get(served.url_for(MUTATE_PATH)) as response:
        assert response.status == 405


async def test_plain_http_is_not_served(served: Served) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.post(f"http://127.0.0.1:{served.port}{PATH}", data=b"{}") as response:
                await response.read()


async def test_certificate_verifies_for_its_names_only(served: Served) -> None:
    expected = der_of_file(served.directory)
    assert await peer_certificate(served.port, served.ca, "localhost") == expected
    assert await peer_certificate(served.port, served.ca, "127.0.0.1") == expected
    with pytest.raises(ssl.SSLCertVerificationError):
        await peer_certificate(served.port, served.ca, "pet-operator-webhook.elsewhere.svc")


async def test_a_client_trusting_another_ca_is_refused(served: Served, tmp_path: Path) -> None:
    other_ca = self_signed(NAMES, tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        await peer_certificate(served.port, other_ca)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await post(served, review("CREATE", pet()), ca=other_ca)


async def test_rotation_then_reload_shows_new_connections_the_new_certificate(served: Served) -> None:
    old_der = der_of_file(served.directory)
    assert await peer_certificate(served.port, served.ca) == old_der

    new_ca = rotate(served.directory)
    new_der = der_of_file(served.directory)
    assert new_der != old_der
    # the files changed, but nothing is reloaded until reload() is called
    assert await peer_certificate(served.port, served.ca) == old_der

    assert served.server.certificates.reload() is True
    assert served.server.certificates.reloads == 1
    assert await peer_certificate(served.port, new_ca) == new_der
    with pytest.raises(ssl.SSLCertVerificationError):
        await peer_certificate(served.port, served.ca)
    assert (await respond(served_with_ca(served, new_ca), review("CREATE", pet(store=None))))["allowed"] is True


def served_with_ca(served: Served, ca: bytes) -> Served:
    return dataclasses.replace(served, ca=ca)


async def test_broken_rotation_keeps_serving_the_old_certificate(served: Served) -> None:
    old_der = der_of_file(served.directory)
    (served.directory / "tls.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    (served.directory / "tls.key").write_bytes(b"garbage")
    bump_mtimes(served.directory)
    assert served.server.certificates.reload() is False
    assert served.server.certificates.reloads == 0
    assert await peer_certificate(served.port, served.ca) == old_der
    assert (await respond(served, review("CREATE", pet(store=None))))["allowed"] is True


def rotate_to_rsa(directory: Path) -> bytes:
    """Write an RSA serving pair from a new RSA CA over the files (cert-manager's default key type)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa-test-ca")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    (directory / "tls.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    bump_mtimes(directory)
    return ca.public_bytes(serialization.Encoding.PEM)


async def test_rotation_to_another_key_type_shows_only_the_new_certificate(served: Served) -> None:
    old_der = der_of_file(served.directory)
    rsa_ca = rotate_to_rsa(served.directory)
    assert served.server.certificates.reload() is True
    trusting_both = client_context(served.ca)
    trusting_both.load_verify_locations(cadata=rsa_ca.decode())
    _, writer = await asyncio.open_connection("127.0.0.1", served.port, ssl=trusting_both, server_hostname="localhost")
    try:
        shown = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    assert shown != old_der
    assert shown == der_of_file(served.directory)


@pytest.mark.parametrize("key", ["old-key", "garbage-key"])
async def test_half_written_rotation_keeps_serving_the_old_certificate(
    served: Served, tmp_path: Path, key: str
) -> None:
    old_der = der_of_file(served.directory)
    self_signed(NAMES, tmp_path / "next")
    (served.directory / "tls.crt").write_bytes((tmp_path / "next" / "tls.crt").read_bytes())
    if key == "garbage-key":
        (served.directory / "tls.key").write_bytes(b"garbage")
    bump_mtimes(served.directory)
    assert served.server.certificates.reload() is False
    assert await peer_certificate(served.port, served.ca) == old_der


async def test_server_reloads_by_itself_every_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with serving_files(tmp_path / "certs", reload_interval=0.01) as s:
        files = s.server.certificates
        reload = files.reload
        reloaded = asyncio.Event()

        def spy() -> bool:
            loaded = reload()
            if loaded:
                reloaded.set()
            return loaded

        monkeypatch.setattr(files, "reload", spy)
        new_ca = rotate(s.directory)
        await asyncio.wait_for(reloaded.wait(), timeout=5)
        assert files.reloads == 1
        assert await peer_certificate(s.port, new_ca) == der_of_file(s.directory)


async def test_stop_is_idempotent_and_safe_before_start(tmp_path: Path) -> None:
    self_signed(NAMES, tmp_path)
    lookups = Lookups()
    never_started = WebhookServer(0, CertificateFiles(tmp_path), lookups.store, lookups.claim, host="127.0.0.1")
    await never_started.stop()

    async with serving_files(tmp_path / "certs") as s:
        port = s.port
        assert await is_listening(port)
        await s.server.stop()
        assert not await is_listening(port)
        await s.server.stop()  # the context manager stops once more


def test_defaults() -> None:
    async def none(*_: Any) -> None:
        return None

    server = WebhookServer(9443, certificates=None, stores=none, claims=none)  # type: ignore[arg-type]
    assert (server.hosts, server.port, server.reload_interval) == (("127.0.0.1",), 9443, 5.0)
    assert (server.first_request_timeout, server.keepalive_timeout, server.served) == (10.0, 120.0, None)
    assert server.decision_timeout == 3.0
    assert PATH == "/validate-pets"
    assert MUTATE_PATH == "/mutate-pets"

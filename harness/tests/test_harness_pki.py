"""pki.py: the throwaway CA, its serving and client certificates, the signing key."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pet_harness.pki import CertificateAuthority, CertPair, signing_key_pair

SERVING_DNS = ["localhost", "kubernetes.default.svc"]
SERVING_IPS = ["127.0.0.1", "10.0.0.1", "::1"]


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority("test-ca")


@pytest.fixture(scope="module")
def ca_cert(ca: CertificateAuthority) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.cert_pem)


def _cert(pair: CertPair) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pair.cert_pem)


def _values(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(attr.value) for attr in name.get_attributes_for_oid(oid)]


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _assert_key_matches(pair: CertPair) -> None:
    key = serialization.load_pem_private_key(pair.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    cert_public = _cert(pair).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public == cert_public


def test_ca_is_self_signed_and_a_ca(ca_cert: x509.Certificate) -> None:
    assert _values(ca_cert.subject, NameOID.COMMON_NAME) == ["test-ca"]
    assert ca_cert.issuer == ca_cert.subject
    ca_cert.verify_directly_issued_by(ca_cert)
    constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    usage = ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign


def test_ca_default_name() -> None:
    cert = x509.load_pem_x509_certificate(CertificateAuthority().cert_pem)
    assert _values(cert.subject, NameOID.COMMON_NAME) == ["pet-harness-ca"]


def test_certificates_are_valid_now_for_days(ca: CertificateAuthority, ca_cert: x509.Certificate) -> None:
    now = datetime.datetime.now(datetime.UTC)
    for cert in (ca_cert, _cert(ca.client("u")), _cert(ca.serving("s", ["localhost"], []))):
        assert cert.not_valid_before_utc <= now - datetime.timedelta(minutes=1), "allow for clock skew"
        assert cert.not_valid_after_utc >= now + datetime.timedelta(days=1)


def test_serving_certificate(ca: CertificateAuthority, ca_cert: x509.Certificate) -> None:
    pair = ca.serving("kube-apiserver", SERVING_DNS, SERVING_IPS)
    cert = _cert(pair)
    assert _values(cert.subject, NameOID.COMMON_NAME) == ["kube-apiserver"]
    assert cert.issuer == ca_cert.subject
    cert.verify_directly_issued_by(ca_cert)
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == SERVING_DNS
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(ip) for ip in SERVING_IPS]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    _assert_key_matches(pair)


def test_client_certificate_is_the_kubernetes_identity(ca: CertificateAuthority, ca_cert: x509.Certificate) -> None:
    pair = ca.client("alice", ["system:masters", "pets:admins"])
    cert = _cert(pair)
    assert _values(cert.subject, NameOID.COMMON_NAME) == ["alice"]
    assert _values(cert.subject, NameOID.ORGANIZATION_NAME) == ["system:masters", "pets:admins"]
    assert cert.issuer == ca_cert.subject
    cert.verify_directly_issued_by(ca_cert)
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    _assert_key_matches(pair)


def test_client_certificate_without_groups(ca: CertificateAuthority) -> None:
    cert = _cert(ca.client("system:serviceaccount:default:x"))
    assert _values(cert.subject, NameOID.COMMON_NAME) == ["system:serviceaccount:default:x"]
    assert _values(cert.subject, NameOID.ORGANIZATION_NAME) == []


def test_each_certificate_has_its_own_key_and_serial(ca: CertificateAuthority) -> None:
    a, b = ca.client("u"), ca.client("u")
    assert a.key_pem != b.key_pem
    assert _cert(a).serial_number != _cert(b).serial_number


def test_another_ca_did_not_issue_it(ca: CertificateAuthority) -> None:
    other = x509.load_pem_x509_certificate(CertificateAuthority("test-ca").cert_pem)
    cert = _cert(ca.client("u"))
    assert cert.issuer == other.subject  # same name ...
    with pytest.raises(InvalidSignature):  # ... but not the same key
        cert.verify_directly_issued_by(other)


def test_cert_pair_write(ca: CertificateAuthority, tmp_path: Path) -> None:
    pair = ca.client("writer")
    cert_path, key_path = pair.write(tmp_path, "writer")
    assert (cert_path, key_path) == (tmp_path / "writer.crt", tmp_path / "writer.key")
    assert cert_path.read_bytes() == pair.cert_pem
    assert key_path.read_bytes() == pair.key_pem
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_cert_pair_write_over_a_readable_key_makes_it_private(ca: CertificateAuthority, tmp_path: Path) -> None:
    """Finding 12: O_CREAT's mode applies only to a new file: a key written over an existing
    world-readable file stayed world-readable (0644 before)."""
    (tmp_path / "writer.key").write_bytes(b"old")
    (tmp_path / "writer.key").chmod(0o644)
    _, key_path = ca.client("writer").write(tmp_path, "writer")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_signing_key_pair() -> None:
    pair = signing_key_pair()
    public = serialization.load_pem_public_key(pair.cert_pem)
    private = serialization.load_pem_private_key(pair.key_pem, password=None)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert public.public_numbers() == private.public_key().public_numbers()


# --- the certificates in a real TLS handshake on loopback -------------------------------


def _handshake(tmp_path: Path, ca: CertificateAuthority, client_ctx: ssl.SSLContext, server_name: str) -> str:
    """Serve with a CA-issued certificate requiring a client certificate; return the client's CN."""
    ca.serving("kube-apiserver", ["localhost"], ["127.0.0.1"]).write(tmp_path, "server")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    server_ctx.load_verify_locations(tmp_path / "ca.crt")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    seen: dict[str, object] = {}

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    seen["peer"] = tls.getpeercert()
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError) as exc:
                seen["error"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            raw = socket.create_connection(listener.getsockname(), timeout=10)
            with client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                assert tls.recv(2) == b"ok"
        finally:
            thread.join(10)
    assert "error" not in seen, seen.get("error")
    peer = seen["peer"]
    assert isinstance(peer, dict)
    return dict(item[0] for item in peer["subject"])["commonName"]


def _client_ctx(tmp_path: Path, ca: CertificateAuthority) -> ssl.SSLContext:
    ca.client("alice", ["devs"]).write(tmp_path, "client")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    ctx.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
    return ctx


@pytest.mark.parametrize("server_name", ["127.0.0.1", "localhost"])
def test_tls_handshake_with_mutual_authentication(
    tmp_path: Path, ca: CertificateAuthority, server_name: str
) -> None:
    assert _handshake(tmp_path, ca, _client_ctx(tmp_path, ca), server_name) == "alice"


def test_tls_handshake_rejects_a_name_not_in_the_sans(tmp_path: Path, ca: CertificateAuthority) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(tmp_path, ca, _client_ctx(tmp_path, ca), "kubernetes.example")


def test_key_identifiers_link_certificates_to_the_ca(ca: CertificateAuthority, ca_cert: x509.Certificate) -> None:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ca_ski == x509.SubjectKeyIdentifier.from_public_key(ca_cert.public_key())
    for pair in (ca.client("u"), ca.serving("s", ["localhost"], [])):
        cert = _cert(pair)
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ca_ski.digest
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def test_tls_handshake_with_strict_x509_verification(tmp_path: Path, ca: CertificateAuthority) -> None:
    # the default of ssl.create_default_context() from Python 3.13 on, and of urllib3 there
    ctx = _client_ctx(tmp_path, ca)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    assert _handshake(tmp_path, ca, ctx, "127.0.0.1") == "alice"

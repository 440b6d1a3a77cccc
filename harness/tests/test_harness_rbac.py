"""rbac: the operator's kubeconfig names a token file that is kept fresh (finding 12)."""

from __future__ import annotations

import stat
import time
import types
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from pet_harness import rbac
from pet_harness.clusters.base import write_kubeconfig
from pet_harness.pki import CertificateAuthority
from pet_operator import rest


class FakeCore:
    """The TokenRequest API: a new token per request, recording the lifetimes asked for."""

    issued: list[tuple[str, str, int]] = []

    def __init__(self, api: Any) -> None:
        self.api = api

    def create_namespaced_service_account_token(self, account: str, namespace: str, body: Any) -> Any:
        FakeCore.issued.append((namespace, account, body["spec"]["expirationSeconds"]))
        return types.SimpleNamespace(status=types.SimpleNamespace(token=f"token-{len(FakeCore.issued)}"))


@pytest.fixture
def admin_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    FakeCore.issued = []
    monkeypatch.setattr(rbac.client, "CoreV1Api", FakeCore)
    ca = CertificateAuthority()
    admin = ca.client("admin", ["system:masters"])
    return write_kubeconfig(tmp_path / "admin.kubeconfig", "https://127.0.0.1:6443", ca.cert_pem, "admin",
                            admin.cert_pem, admin.key_pem)


def _poll(condition: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_the_operators_token_is_rotated_in_the_file_its_kubeconfig_names(
    admin_kubeconfig: Path, tmp_path: Path
) -> None:
    """Before: the token was written into the kubeconfig once, valid an hour, never renewed; an
    operator (or a load run, a chaos session) running longer lost its API access."""
    identity = rbac.OperatorIdentity(object(), "pet-system", "t")
    path = identity.kubeconfig(admin_kubeconfig, tmp_path / "operator.kubeconfig", seconds=600,
                               refresh_every=0.05)
    try:
        user = yaml.safe_load(path.read_text())["users"][0]["user"]
        assert "token" not in user
        token_file = Path(user["tokenFile"])
        assert token_file.is_absolute()
        reader = rest.from_kubeconfig(path)  # the operator's own client, as it runs
        first = reader.token()
        assert first is not None and first.startswith("token-")
        content = token_file.read_text()  # no newline: the kubernetes client sends it unstripped
        assert content.startswith("token-") and content == content.strip()
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(path), client_configuration=configuration)
        assert any(str(v).startswith("Bearer token-") and v == v.strip() for v in configuration.api_key.values())
        _poll(lambda: reader.token() not in (None, first), "a rotated token")
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert FakeCore.issued[0] == ("pet-system", "pet-operator", 600)
    finally:
        identity.delete()
    settled = len(FakeCore.issued)
    time.sleep(0.2)
    assert len(FakeCore.issued) == settled  # stopped with the identity
    assert not list(tmp_path.glob("*.new"))


def test_by_default_the_token_is_refreshed_at_half_its_lifetime() -> None:
    assert rbac.TokenRefresher(object(), "ns", "sa", Path("t"), 3600).every == 1800


def test_a_failed_refresh_keeps_the_old_token_and_tries_again_soon(
    admin_kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = FakeCore.create_namespaced_service_account_token

    def flaky(self: FakeCore, account: str, namespace: str, body: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("API server restarting")
        return real(self, account, namespace, body)

    monkeypatch.setattr(FakeCore, "create_namespaced_service_account_token", flaky)
    identity = rbac.OperatorIdentity(object(), "pet-system", "t")
    path = identity.kubeconfig(admin_kubeconfig, tmp_path / "operator.kubeconfig", seconds=600, refresh_every=0.2)
    token_file = Path(yaml.safe_load(path.read_text())["users"][0]["user"]["tokenFile"])
    try:
        _poll(lambda: len(calls) >= 3, "a retry after the failure", timeout=2)
        assert token_file.read_text().strip().startswith("token-")
    finally:
        identity.delete()


def test_a_kubeconfig_not_rotated_keeps_the_token_inline(admin_kubeconfig: Path, tmp_path: Path) -> None:
    """For clients that read ``token`` only (Kopf's own kubeconfig login, which the load's naive peer uses)."""
    path = rbac.service_account_kubeconfig(object(), admin_kubeconfig, "ns", "sa", tmp_path / "k", 600)
    user = yaml.safe_load(path.read_text())["users"][0]["user"]
    assert user == {"token": "token-1"}

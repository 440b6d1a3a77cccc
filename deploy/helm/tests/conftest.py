"""Chart tests over ``helm template`` (helm built from its Go module into the harness cache)."""

from __future__ import annotations

import base64
import functools
import itertools
import json
from typing import Any

import pytest

from pet_harness import binaries, helm, pet_chart
from pet_harness.pki import CertificateAuthority

#: the documented switches; every combination is rendered (2 x 3 x 2 x 2 = 24)
MODES = ("namespaced", "all-namespaces")
#: where the webhook's certificate comes from: cert-manager, the operator (self-signed), a Secret of yours
CERT_SOURCES = ("cert-manager", "operator", "secret")
CERT_IDS = {"cert-manager": "certmanager", "operator": "selfsigned", "secret": "secret"}
#: the webhookTLS values of the "secret" source: a Secret's name and a CA's PEM (base64), as an installer gives them
SECRET_TLS = {"existingSecret": "pet-operator-webhook-tls",  # pragma: allowlist secret - a name
              "caBundle": base64.b64encode(CertificateAuthority("chart-test-ca").cert_pem).decode()}


def cert_values(cert: str) -> dict[str, Any]:
    """The values of one certificate source; the operator's own certificate allows one replica only."""
    values: dict[str, Any] = {"certManager": {"enabled": cert == "cert-manager"},
                              "replicaCount": 1 if cert == "operator" else 2}
    if cert == "secret":
        values["webhookTLS"] = dict(SECRET_TLS)
    return values


def combination_values(mode: str, cert: str, monitors: bool, network_policy: bool) -> dict[str, Any]:
    return {
        "watch": {"mode": mode},
        **cert_values(cert),
        "metrics": {"serviceMonitor": {"enabled": monitors}, "prometheusRule": {"enabled": monitors}},
        "networkPolicy": {"enabled": network_policy},
    }


COMBINATIONS = [
    pytest.param(mode, cert, mon, np, id=f"{mode}-{CERT_IDS[cert]}-"
                 f"{'monitors' if mon else 'nomonitors'}-{'netpol' if np else 'nonetpol'}")
    for mode, cert, mon, np in itertools.product(MODES, CERT_SOURCES, (True, False), (True, False))
]


@functools.lru_cache(maxsize=64)
def _render(values_json: str, release: str, namespace: str) -> tuple[helm.Manifest, ...]:
    return tuple(pet_chart.render([json.loads(values_json)], release=release, namespace=namespace))


def render(values: dict[str, Any] | None = None, release: str = "pet-operator",
           namespace: str = "pet-system") -> list[dict[str, Any]]:
    """The rendered objects (cached per values, release and namespace)."""
    return [m.body for m in _render(json.dumps(values or {}, sort_keys=True), release, namespace) if m.body]


@pytest.fixture(scope="session", autouse=True)
def helm_binary() -> None:
    binaries.ensure_helm(build=True)  # built once (minutes) into the harness cache; `pet-harness binaries build`

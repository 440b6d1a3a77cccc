"""Chart tests over ``helm template`` (helm built from its Go module into the harness cache)."""

from __future__ import annotations

import functools
import itertools
import json
from typing import Any

import pytest

from pet_harness import binaries, helm, pet_chart

#: the documented switches; every combination is rendered (16)
MODES = ("namespaced", "all-namespaces")


def combination_values(mode: str, cert_manager: bool, monitors: bool, network_policy: bool) -> dict[str, Any]:
    return {
        "watch": {"mode": mode},
        "certManager": {"enabled": cert_manager},
        "replicaCount": 2 if cert_manager else 1,  # the operator's own certificate allows one replica
        "metrics": {"serviceMonitor": {"enabled": monitors}, "prometheusRule": {"enabled": monitors}},
        "networkPolicy": {"enabled": network_policy},
    }


COMBINATIONS = [
    pytest.param(mode, cm, mon, np, id=f"{mode}-{'certmanager' if cm else 'selfsigned'}-"
                 f"{'monitors' if mon else 'nomonitors'}-{'netpol' if np else 'nonetpol'}")
    for mode, cm, mon, np in itertools.product(MODES, (True, False), (True, False), (True, False))
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

"""Chaos Toolkit python provider for the pet operator's chaos experiments.

Every function takes Chaos Toolkit's ``configuration``, with these keys:

* ``control_url``: the control server (:mod:`pet_harness.chaos_control`) of a
  :class:`pet_harness.chaos_env.ChaosEnvironment`
  (``pet-harness chaos`` passes it with ``--var control_url=...``);
* ``target``: ``local`` (the embedded cluster and operator processes of a
  :class:`pet_harness.chaos_env.ChaosEnvironment`, through its control server) or
  ``kubernetes`` (a real cluster, e.g. staging, where the operator runs as the Deployment of
  ``deploy/operator``: :mod:`petchaos.staging`, pod faults through chaostoolkit-kubernetes,
  and the load of :mod:`petchaos.load`; further keys in ``petchaos.staging.DEFAULTS``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["TARGETS", "call", "on_kubernetes", "target_of"]

TARGETS = ("local", "kubernetes")

def target_of(configuration: dict[str, Any] | None) -> str:
    """The configuration's target, checked: ``local`` (the default) or ``kubernetes``."""
    target = str((configuration or {}).get("target") or "local")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: expected 'local' or 'kubernetes'")
    return target


def on_kubernetes(configuration: dict[str, Any] | None) -> bool:
    return target_of(configuration) == "kubernetes"


def call(configuration: dict[str, Any] | None, activity: str, method: str, path: str,
         body: dict[str, Any] | None = None, timeout: float = 180) -> dict[str, Any]:
    """One JSON request to the control server (target=local); raises on an error answer (the activity fails)."""
    if on_kubernetes(configuration):
        raise ValueError(f"petchaos.{activity}: the control server exists on target=local only")
    base = str((configuration or {}).get("control_url") or "").rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError("configuration control_url is missing: run with --var control_url=http://127.0.0.1:PORT")
    data = json.dumps(body or {}).encode() if method == "POST" else None
    request = urllib.request.Request(base + path, data=data, method=method,  # noqa: S310 - http(s) checked above
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310  # nosec B310 # loopback URL
            result: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        raise RuntimeError(f"{method} {path} failed with {exc.code}: {text}") from None
    return result

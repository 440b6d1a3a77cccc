"""The steady-state probe (Chaos Toolkit): on target=local through the chaos environment's
control server, on target=kubernetes read from the cluster (:mod:`petchaos.staging`).

``steady_state`` is the hypothesis probe (a bool against the tolerance); ``require_steady_state``
is the same check as an action that fails (raises) when the steady state is not reached, as
used between the rounds of a derived experiment (``pet-harness chaos --rounds``).
"""

from __future__ import annotations

import logging
from typing import Any

from petchaos import call, on_kubernetes, staging

__all__ = ["require_steady_state", "steady_state", "steady_state_details"]

logger = logging.getLogger("chaostoolkit")


def steady_state_details(timeout: float = 30, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Wait up to ``timeout`` s for the steady state: ``{"ok": bool, "details": {...}}``."""
    if on_kubernetes(configuration):
        details = staging.steady_state(timeout, configuration)
        return {"ok": bool(details["ok"]), "details": details}
    return call(configuration, "steady_state", "GET", f"/probes/steady-state?timeout={float(timeout)}",
                timeout=float(timeout) + 60)


def steady_state(timeout: float = 30, configuration: dict[str, Any] | None = None) -> bool:
    """True when, within ``timeout`` s: every pet reconciled in phase Active or Conflict, one
    non-Conflict pet per id, claims exactly for those ids, and exactly one leader."""
    answer = steady_state_details(timeout, configuration)
    if not answer.get("ok"):
        logger.warning("steady state not reached: %s", answer.get("details"))
    return bool(answer.get("ok"))


def require_steady_state(timeout: float = 30, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """The steady state as an action: the control server's details when reached within ``timeout``
    s; otherwise a ``RuntimeError`` naming the problems (Chaos Toolkit marks the activity failed)."""
    answer = steady_state_details(timeout, configuration)
    details = answer.get("details") or {}
    if not answer.get("ok"):
        problems = details.get("problems") or ["no details"]
        raise RuntimeError(f"steady state not reached within {float(timeout):g} s: {'; '.join(map(str, problems))}")
    return dict(details)

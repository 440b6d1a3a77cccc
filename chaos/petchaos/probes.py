"""The steady-state probe (Chaos Toolkit), through the chaos environment's control server."""

from __future__ import annotations

import logging
from typing import Any

from petchaos import call

__all__ = ["steady_state", "steady_state_details"]

logger = logging.getLogger("chaostoolkit")


def steady_state_details(timeout: float = 30, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Wait up to ``timeout`` s for the steady state; the control server's whole answer."""
    return call(configuration, "steady_state", "GET", f"/probes/steady-state?timeout={float(timeout)}",
                timeout=float(timeout) + 60)


def steady_state(timeout: float = 30, configuration: dict[str, Any] | None = None) -> bool:
    """True when, within ``timeout`` s: every pet reconciled in phase Active or Conflict, one
    non-Conflict pet per id, claims exactly for those ids, and exactly one leader."""
    answer = steady_state_details(timeout, configuration)
    if not answer.get("ok"):
        logger.warning("steady state not reached: %s", answer.get("details"))
    return bool(answer.get("ok"))

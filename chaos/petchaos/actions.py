"""Faults and rollbacks (Chaos Toolkit actions), one function per fault of :data:`petchaos.faults.FAULTS`:
on target=local through the chaos environment's control server, on target=kubernetes on the cluster
(:mod:`petchaos.staging`), or refused there with the reason the registry gives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from petchaos import call, on_kubernetes
from petchaos.faults import FAULTS, Fault
from petchaos.staging import NotAvailableOnTarget

Configuration = dict[str, Any] | None


def _activity(fault: Fault) -> Callable[..., dict[str, Any]]:
    def activity(*args: Any, configuration: Configuration = None, **kwargs: Any) -> dict[str, Any]:
        arguments = fault.arguments(kwargs, args)
        if on_kubernetes(configuration):
            if fault.on_cluster is None:
                raise NotAvailableOnTarget(f"petchaos {fault.name}: not available on target=kubernetes: "
                                           f"{fault.why_not}")
            on_cluster: dict[str, Any] = fault.on_cluster(**arguments, configuration=configuration)
            return on_cluster
        answer = call(configuration, fault.name, "POST", fault.path, arguments)
        result: dict[str, Any] = answer.get("result", answer)
        return result

    activity.__name__ = activity.__qualname__ = fault.name
    activity.__doc__ = fault.summary
    activity.__signature__ = fault.signature()  # type: ignore[attr-defined]  # what Chaos Toolkit validates against
    return activity


for _fault in FAULTS:
    globals()[_fault.name] = _activity(_fault)

__all__ = sorted(f.name for f in FAULTS)

"""Small shared helpers of the e2e scenarios."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from pet_harness.kube import PetApi
from pet_harness.waiting import wait_for

TIMEOUT = 30.0


def phase_of(obj: dict[str, Any]) -> str | None:
    return (obj.get("status") or {}).get("phase")


def wait_pet(pets: PetApi, name: str, predicate: Callable[[dict[str, Any]], bool], what: str,
             timeout: float = TIMEOUT) -> dict[str, Any]:
    return wait_for(lambda: pets.get_pet(name), predicate, timeout, f"pet {pets.namespace}/{name}: {what}")


def wait_phase(pets: PetApi, name: str, phase: str, reason: str | None = None,
               timeout: float = TIMEOUT) -> dict[str, Any]:
    def ok(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        return status.get("phase") == phase and (reason is None or status.get("reason") == reason) and (
            status.get("observedGeneration") == obj["metadata"]["generation"]
        )

    return wait_pet(pets, name, ok, f"phase {phase}" + (f"/{reason}" if reason else ""), timeout)


def wait_store_counts(pets: PetApi, name: str, pet_count: int, active: int,
                      timeout: float = TIMEOUT) -> dict[str, Any]:
    def ok(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        return status.get("petCount") == pet_count and status.get("activeCount") == active

    return wait_for(lambda: pets.get_store(name), ok, timeout,
                    f"store {pets.namespace}/{name} petCount={pet_count} activeCount={active}")


def api_error(call: Callable[[], Any]) -> ApiException:
    """Run a call that must fail and return the API's error."""
    try:
        call()
    except ApiException as exc:
        return exc
    raise AssertionError("the API accepted a request it should have rejected")


def record(request: Any, name: str, data: dict[str, Any]) -> None:
    """Write a measured figure to the report folder (``NAME.json``); figures are never asserted on."""
    directory = Path(str(request.config.getoption("--pet-report-dir")))
    if not directory.is_absolute():
        directory = Path(str(request.config.rootpath)) / directory
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(data, indent=2))


def assert_chaos_passed(summary: dict[str, Any]) -> None:
    """A chaos experiment's summary (chaos_runner) says it passed on every count; shows it if not."""
    shown = json.dumps({k: v for k, v in summary.items() if k != "final_steady_state"}, indent=2, default=str)
    assert summary["status"] == "completed", shown
    assert summary["deviated"] is False, shown
    assert summary["failed_activities"] == 0, shown
    assert summary["writes_by_non_leaders"] == 0, shown
    assert summary["pets_lost"] == 0, shown
    assert summary["duplicate_ids"] == 0, shown
    assert summary.get("error") is None, shown
    assert summary["passed"], shown

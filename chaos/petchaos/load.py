"""A Chaos Toolkit control that keeps pets being created and updated during an experiment on
a real cluster (``target: kubernetes``); on ``target: local`` the chaos environment runs its
own load and this control does nothing.

In an experiment: ``"controls": [{"name": "pet-load", "provider": {"type": "python",
"module": "petchaos.load"}}]``. Before the experiment it starts a load thread in
``load_namespace`` (pets ``chaos-load-<run>-<n>``, ids from ``load_id_base``, every 7th pet
reusing the previous id); the steady-state probe pauses it while it checks; after the
experiment it stops and deletes the pets it created, waiting for them to be gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets as random_source
import time
from collections.abc import Iterator
from typing import Any

from petchaos import target_of

__all__ = ["LOAD_DEFAULTS", "REPORT_ENV", "after_experiment_control", "before_experiment_control", "current",
           "paused"]

#: if set, the file where the control writes what the load did (created, deleted, lost, errors)
REPORT_ENV = "PET_CHAOS_LOAD_REPORT"

logger = logging.getLogger("chaostoolkit")

LOAD_DEFAULTS: dict[str, Any] = {
    "load_namespace": "default",  # a namespace the operator serves
    "load_max_pets": 30,
    "load_interval": 0.3,
    "load_id_base": 0,  # 0: a random base above 10**12 per run, far from hand-made ids
}

_state: dict[str, Any] = {}


def current() -> Any:
    """The running load (a :class:`pet_harness.pet_load.PetLoad`), or None."""
    return _state.get("load")


@contextlib.contextmanager
def paused() -> Iterator[None]:
    load = current()
    if load is not None:
        load.pause()
    try:
        yield
    finally:
        if load is not None:
            load.resume()


def load_settings(configuration: dict[str, Any] | None) -> dict[str, Any]:
    merged = {**LOAD_DEFAULTS, **{k: v for k, v in (configuration or {}).items() if k in LOAD_DEFAULTS and v != ""}}
    try:
        max_pets, interval, id_base = int(merged["load_max_pets"]), float(merged["load_interval"]), \
            int(merged["load_id_base"])
    except (TypeError, ValueError):
        raise ValueError(f"load configuration {merged}: load_max_pets and load_id_base must be integers, "
                         "load_interval a number of seconds") from None
    if max_pets < 1 or interval <= 0 or id_base < 0:
        raise ValueError(f"load configuration: load_max_pets {max_pets} must be >= 1, load_interval {interval} > 0, "
                         f"load_id_base {id_base} >= 0")
    if id_base == 0:
        id_base = 10**12 + random_source.randbelow(10**6) * 1000
    return {"namespace": str(merged["load_namespace"]), "max_pets": max_pets, "interval": interval,
            "id_base": id_base, "prefix": f"chaos-load-{random_source.token_hex(3)}-"}


def before_experiment_control(context: Any, configuration: dict[str, Any] | None = None, **kwargs: Any) -> None:
    if target_of(configuration) != "kubernetes" or current() is not None:
        return
    from chaosk8s import create_k8s_api_client

    from pet_harness.kube import PetApi
    from pet_harness.pet_load import PetLoad

    settings = load_settings(configuration)
    api = create_k8s_api_client()
    load = PetLoad(PetApi(api, settings["namespace"]), settings["max_pets"], settings["interval"],
                   id_base=settings["id_base"], prefix=settings["prefix"])
    _state.update(load=load, settings=settings)
    load.start()
    logger.info("pet load started in namespace %s: pets %s*, ids from %d", settings["namespace"],
                settings["prefix"], settings["id_base"])


def after_experiment_control(context: Any, state: Any = None, configuration: dict[str, Any] | None = None,
                             **kwargs: Any) -> None:
    load = _state.pop("load", None)
    if load is None:
        return
    load.stop()
    settings = _state.pop("settings")
    lost = lost_pets(load)
    left = cleanup(load)
    report = os.environ.get(REPORT_ENV)
    if report:
        with open(report, "w") as f:
            json.dump({"namespace": settings["namespace"], "prefix": settings["prefix"], "id_base": settings["id_base"],
                       "created": len(load.created), "deleted": len(load.deleted), "operations": load.ops,
                       "errors": load.errors, "error_kinds": dict(load.error_kinds.most_common(10)), "lost": lost,
                       "left_after_cleanup": left}, f, indent=2)
    if lost:
        logger.error("pets created by the load, never deleted, and missing: %s", lost[:20])
    kinds = "; ".join(f"{n} x {kind}" for kind, n in load.error_kinds.most_common(5))
    logger.info("pet load stopped: %d created, %d errors%s; %d of its pets still present after cleanup",
                len(load.created), load.errors, f" ({kinds})" if kinds else "", len(left))
    if left:
        logger.warning("pets of the load still present in %s: %s", settings["namespace"], sorted(left)[:20])


def lost_pets(load: Any) -> list[str]:
    """Created (acknowledged), never deleted by the load, and not there."""
    existing = {p["metadata"]["name"] for p in load.pets.list_pets()}
    return sorted(n for n in load.created if n not in load.deleted and n not in existing)


def cleanup(load: Any, timeout: float = 60) -> list[str]:
    """Delete the pets the load created; the names still present after ``timeout``."""
    from kubernetes.client.exceptions import ApiException

    for name in list(load.created):
        try:
            load.pets.delete_pet(name)
        except ApiException as exc:
            if exc.status != 404:
                logger.warning("could not delete pet %s: %s", name, exc.reason)
    deadline = time.monotonic() + timeout
    while True:
        mine = set(load.created)
        left = sorted(p["metadata"]["name"] for p in load.pets.list_pets() if p["metadata"]["name"] in mine)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(1.0)

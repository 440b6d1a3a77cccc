"""The operator process: killed mid-run and restarted, it converges without redoing work."""

from __future__ import annotations

from typing import Any

from helpers import wait_phase, wait_store_counts

from pet_harness.kube import PetApi
from pet_harness.waiting import wait_for


def _spec(i: int, store: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"id": 1000 + i, "name": f"pet-{i}"}
    if store:
        spec["store"] = store
    return spec


def test_killed_mid_run_and_restarted_converges_without_duplicate_work(
    pets: PetApi, operator_factory: Any
) -> None:
    op = operator_factory([pets.namespace], webhook=False)  # writes go on while it is down
    pets.create_store("shop")
    settled = [f"settled-{i}" for i in range(10)]
    for i, name in enumerate(settled):
        pets.create_pet(name, _spec(i, "shop" if i % 2 else None))
    before = {name: wait_phase(pets, name, "Active") for name in settled}
    wait_store_counts(pets, "shop", 5, 5)

    # a burst, and the operator is SIGKILLed while it is still working through it
    burst = [f"burst-{i}" for i in range(20)]
    for i, name in enumerate(burst):
        pets.create_pet(name, _spec(100 + i, "shop" if i % 2 else "late-store"))
    op.kill()

    # changes while nobody watches
    pets.patch_pet("settled-0", {"spec": {"name": "renamed while down"}})
    pets.delete_pet("settled-1")
    pets.create_store("late-store")

    op.start()
    for name in burst:
        wait_phase(pets, name, "Active")
    renamed = wait_phase(pets, "settled-0", "Active")
    assert renamed["status"]["observedGeneration"] == 2
    assert renamed["status"]["lastTransitionTime"] == before["settled-0"]["status"]["lastTransitionTime"]
    wait_store_counts(pets, "shop", 4 + 10, 4 + 10)
    wait_store_counts(pets, "late-store", 10, 10)

    # pets that were settled and untouched were not written again: same resourceVersion
    for name in settled[2:]:
        now = pets.get_pet(name)
        assert now["metadata"]["resourceVersion"] == before[name]["metadata"]["resourceVersion"], (
            f"{name} was rewritten after the restart: {before[name]['status']} -> {now['status']}"
        )
    assert op.starts == 2


def test_sigterm_stops_the_operator_cleanly(pets: PetApi, pet_operator: Any) -> None:
    pets.create_pet("rex", {"id": 2001, "name": "Rex"})
    wait_phase(pets, "rex", "Active")
    assert pet_operator.stop(grace=20) == 0
    wait_for(pet_operator.log_text, lambda text: "stopped after" in text, 5, "the operator's farewell line")
    assert "Traceback" not in pet_operator.log_text()

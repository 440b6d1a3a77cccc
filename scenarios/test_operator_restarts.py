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


def test_killed_at_random_points_of_a_busy_run_leaves_nothing_half_done(
    pets: PetApi, operator_factory: Any, kube_api: Any, claims_namespace: str, request: Any
) -> None:
    """SIGKILL lands at random moments while pets are created, changed, duplicated and deleted;
    after each restart everything converges: one holder per id, claims only for live holders,
    no pet stuck in deletion, every status current."""
    import random
    import threading

    from kubernetes import client

    seed = int(request.config.getoption("--pet-seed") or random.randrange(1 << 30))
    rng = random.Random(seed)
    op = operator_factory([pets.namespace], webhook=False)
    pets.create_store("shop")
    live: dict[str, int] = {}
    kills = 0
    for round_ in range(4):
        timer = threading.Timer(rng.uniform(0.05, 0.6), op.kill)
        timer.start()
        for i in range(8):
            name = f"r{round_}-p{i}"
            pet_id = 3000 + rng.randrange(12)  # collisions on purpose
            pets.create_pet(name, {"id": pet_id, "name": name, "store": "shop" if i % 2 else "nowhere"})
            live[name] = pet_id
        for name in rng.sample(sorted(live), 3):
            pets.delete_pet(name)
            del live[name]
        for name in rng.sample(sorted(live), 2):
            pets.patch_pet(name, {"spec": {"store": "shop", "category": f"c{round_}"}})
        timer.join()
        if not op.running:  # the kill landed (mid-round or just after it): restart
            kills += 1
            op.start()

    def settled() -> list[dict[str, Any]]:
        return pets.list_pets()

    def converged(items: list[dict[str, Any]]) -> bool:
        if {p["metadata"]["name"] for p in items} != set(live):
            return False
        for p in items:
            status = p.get("status") or {}
            if status.get("observedGeneration") != p["metadata"]["generation"]:
                return False
        return True

    items = wait_for(settled, converged, 60, f"convergence after {kills} kills (seed {seed})")
    by_id: dict[int, list[dict[str, Any]]] = {}
    for p in items:
        by_id.setdefault(p["spec"]["id"], []).append(p)
    leases = client.CoordinationV1Api(kube_api).list_namespaced_lease(
        claims_namespace, label_selector="petstore.example.com/id-claim=true").items
    holders = {lease.metadata.name: lease.spec.holder_identity for lease in leases}
    for pet_id, group in by_id.items():
        holding = [p for p in group if p["status"]["phase"] != "Conflict"]
        assert len(holding) == 1, f"id {pet_id} (seed {seed}): {[(p['metadata']['name'], p['status']) for p in group]}"
        assert holders[f"pet-id-{pet_id}"] == f"{pets.namespace}/{holding[0]['metadata']['name']}"
    assert set(holders) == {f"pet-id-{i}" for i in by_id}, f"claims without a live holder (seed {seed})"
    assert kills >= 1

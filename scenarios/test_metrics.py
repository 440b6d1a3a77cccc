"""Prometheus metrics on a real API server: two replicas under leader election, each scraped on its own
port (the harness's ``metrics_port``) and parsed with Prometheus's own parser."""

from __future__ import annotations

import collections
from typing import Any

from helpers import api_error, phase_of, wait_phase
from prometheus_client.parser import text_string_to_metric_families

from pet_harness.kube import PetApi
from pet_harness.operator_process import OperatorProcess
from pet_harness.waiting import wait_for

FAST = ("--leader-elect", "--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5")
LEASE = "pet-operator-leader"

#: the names the lead's alerts and dashboard use (docs/observability.md, "Metrics")
CONTRACT = (
    "controller_runtime_reconcile_total", "controller_runtime_reconcile_errors_total",
    "controller_runtime_reconcile_time_seconds", "controller_runtime_active_workers", "workqueue_depth",
    "workqueue_queue_duration_seconds", "leader_election_master_status", "rest_client_requests_total",
    "rest_client_request_duration_seconds", "controller_runtime_webhook_requests_total",
    "controller_runtime_webhook_latency_seconds", "pet_operator_webhook_decisions_total", "pet_operator_pets",
    "pet_operator_pet_phase_oldest_seconds", "pet_operator_id_conflicts_total", "pet_operator_id_claims_held",
    "pet_operator_orphaned_claims_collected_total", "pet_operator_events_total",
    "pet_operator_events_aggregated_total", "pet_operator_leader_transitions_total",
    "process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
)

Sample = tuple[dict[str, str], float]


class Scrape:
    """One scrape of a replica: its families' names and every sample by name."""

    def __init__(self, text: str) -> None:
        self.families: set[str] = set()
        self.samples: dict[str, list[Sample]] = collections.defaultdict(list)
        for family in text_string_to_metric_families(text):
            # the parser names a counter's family without _total; its samples keep it
            self.families.add(family.name + ("_total" if family.type == "counter" else ""))
            for sample in family.samples:
                self.samples[sample.name].append((dict(sample.labels), sample.value))

    def has(self, name: str) -> bool:
        return name in self.families or name in self.samples

    def total(self, name: str, /, **labels: str) -> float:
        return sum(v for found, v in self.samples.get(name, []) if all(found.get(k) == x for k, x in labels.items()))

    def values(self, name: str, /, **labels: str) -> list[float]:
        return [v for found, v in self.samples.get(name, []) if all(found.get(k) == x for k, x in labels.items())]


def scrape(op: OperatorProcess) -> Scrape:
    return Scrape(op.metrics_text())


def leader_and_standby(replicas: list[OperatorProcess]) -> tuple[OperatorProcess, OperatorProcess]:
    def status() -> list[float]:
        return [scrape(op).total("leader_election_master_status", name=LEASE) for op in replicas]

    flags = wait_for(status, lambda got: sorted(got) == [0.0, 1.0], 30,
                     "leader_election_master_status 1 on exactly one replica")
    leader = replicas[flags.index(1.0)]
    return leader, next(op for op in replicas if op is not leader)


def denials(op: OperatorProcess) -> float:
    return scrape(op).total("pet_operator_webhook_decisions_total", webhook="/validate-pets", decision="denied",
                            rule="TagsNotAllowed")


def pets_by_phase(pets: PetApi) -> dict[str, float]:
    counted: collections.Counter[str] = collections.Counter(phase_of(p) or "Unset" for p in pets.list_pets())
    return {phase: float(counted.get(phase, 0)) for phase in ("Pending", "Active", "Invalid", "Conflict", "Unset")}


def gauge_by_phase(op: OperatorProcess, namespace: str) -> dict[str, float]:
    return {labels["phase"]: v for labels, v in scrape(op).samples.get("pet_operator_pets", [])
            if labels["namespace"] == namespace}


def test_leader_and_standby_serve_the_metrics_and_they_follow_the_cluster(
    pets: PetApi, operator_factory: Any
) -> None:
    replicas = [operator_factory([pets.namespace], extra_args=FAST, service_account=f"pet-operator-{i}")
                for i in range(2)]
    assert all(op.metrics_port and op.metrics_port not in (9090, op.health_port) for op in replicas)
    assert replicas[0].metrics_port != replicas[1].metrics_port
    leader, standby = leader_and_standby(replicas)

    for op in replicas:  # every name on both replicas, and no _created series anywhere
        got = scrape(op)
        assert [name for name in CONTRACT if not got.has(name)] == [], op.name
        assert [name for name in got.samples if name.endswith("_created")] == [], op.name
        assert got.total("process_resident_memory_bytes") > 0
    before = scrape(leader).total("controller_runtime_reconcile_total", controller="pet")
    denied_before = sum(denials(op) for op in replicas)  # the harness's own probe of the webhook was one

    pets.create_store("shop", {"allowedTags": ["dog", "cat"]})
    pets.create_pet("rex", {"id": 7101, "name": "Rex", "store": "shop", "tags": ["dog"]})
    pets.create_pet("tom", {"id": 7102, "name": "Tom", "store": "shop", "tags": ["cat"]})
    pets.create_pet("lost", {"id": 7103, "name": "Lost", "store": "nowhere"})
    wait_phase(pets, "rex", "Active")
    wait_phase(pets, "tom", "Active")
    wait_phase(pets, "lost", "Pending", "StoreNotFound")
    pets.patch_store("shop", {"spec": {"allowedTags": ["dog"]}})  # tom's tag is no longer allowed
    wait_phase(pets, "tom", "Invalid", "TagsNotAllowed")
    denied = api_error(lambda: pets.create_pet("bird", {"id": 7104, "name": "Bird", "store": "shop",
                                                        "tags": ["parrot"]}))
    assert denied.status in (400, 422)

    # reconciles grew on the leader, and succeeded
    wait_for(lambda: scrape(leader).total("controller_runtime_reconcile_total", controller="pet"),
             lambda after: after >= before + 3, 30, "the leader's pet reconciles to grow by the three pets")
    assert scrape(leader).total("controller_runtime_reconcile_total", controller="pet", result="success") > 0
    # a store is recounted about one window (store_counts.WINDOW, 1 s) after a pet names it: waited for,
    # since everything above can take less than that
    wait_for(lambda: scrape(leader).total("controller_runtime_reconcile_total", controller="petstore"),
             lambda count: count > 0, 30, "the leader's first store recount")
    assert scrape(standby).total("controller_runtime_reconcile_total") == 0  # a standby does not reconcile

    # the leader's gauge is the cluster's pets by phase; the standby exports none (sum() stays right)
    expected = pets_by_phase(pets)
    assert expected["Active"] == 1 and expected["Pending"] == 1 and expected["Invalid"] == 1
    wait_for(lambda: gauge_by_phase(leader, pets.namespace), lambda got: got == expected, 30,
             f"pet_operator_pets of {pets.namespace} on the leader to be {expected}")
    assert gauge_by_phase(standby, pets.namespace) == {}
    wait_for(lambda: scrape(leader).values("pet_operator_pet_phase_oldest_seconds", phase="Pending"),
             lambda got: got != [] and got[0] > 0, 30, "the pending pet's age in its phase")
    assert scrape(leader).values("pet_operator_pet_phase_oldest_seconds", phase="Conflict") == [0.0]
    assert scrape(leader).total("pet_operator_id_claims_held") >= 3
    assert scrape(standby).total("pet_operator_id_claims_held") == 0

    # the denied bad tag, on whichever replica the "Service" sent it to
    both = [scrape(op) for op in replicas]
    assert sum(denials(op) for op in replicas) == denied_before + 1
    assert sum(s.total("controller_runtime_webhook_requests_total", webhook="/validate-pets", code="200")
               for s in both) >= 4  # three pets and the bird
    assert sum(s.total("pet_operator_webhook_decisions_total", webhook="/mutate-pets", decision="allowed")
               for s in both) >= 3

    # the leader's own API calls, and the events it emitted
    now = scrape(leader)
    assert now.total("rest_client_requests_total", method="PATCH") > 0
    assert now.total("rest_client_request_duration_seconds_count") > 0
    assert now.total("pet_operator_events_total", type="Warning", reason="StoreNotFound") >= 1
    assert now.total("pet_operator_events_total", type="Normal", reason="Reconciled") >= 2
    assert now.total("pet_operator_leader_transitions_total") == 1
    assert now.total("workqueue_depth") >= 0
    assert now.total("workqueue_queue_duration_seconds_count", name="pet") > 0

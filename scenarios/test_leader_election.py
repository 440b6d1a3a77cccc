"""Leader election on a Lease: one replica reconciles, a successor takes over."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest
from helpers import api_error, record, wait_phase
from kubernetes import client

from pet_harness import audit
from pet_harness.clusters.local import LocalCluster
from pet_harness.kube import PetApi
from pet_harness.waiting import wait_for

FAST = ("--leader-elect", "--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5")


def leader_status(op: Any) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.health_port}/leader", timeout=2) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def the_leader(replicas: list[Any]) -> Any:
    def leaders() -> list[Any]:
        return [op for op in replicas if op.running and leader_status(op)["leader"]]

    found = wait_for(leaders, lambda ops: len(ops) == 1, 30, "exactly one leader")
    return found[0]


def audit_proof(pet_cluster: Any, claims_namespace: str) -> dict[str, Any]:
    """From the API server's audit log: no replica wrote while another held the Lease."""
    if not isinstance(pet_cluster, LocalCluster):
        pytest.skip("the audit log needs the embedded (local) backend")
    result: dict[str, Any] = audit.analyze(pet_cluster.audit_log_path, claims_namespace)
    summary = result["summary"]
    assert summary["writes_by_non_leaders"] == 0, result["violations"]
    assert summary["writes_by_leaders"] > 0
    return result


def test_one_leader_reconciles_and_a_successor_takes_over_when_it_is_killed(
    pets: PetApi, operator_factory: Any, kube_api: Any, claims_namespace: str, request: Any, pet_cluster: Any
) -> None:
    replicas = [operator_factory([pets.namespace], webhook=False, extra_args=FAST,
                                 service_account=f"pet-operator-{i}") for i in range(2)]
    leader = the_leader(replicas)
    standby = next(op for op in replicas if op is not leader)
    assert leader_status(standby)["holder"] == leader_status(leader)["identity"]
    assert standby.readyz()[0] == 200  # a standby is ready: it serves the webhook
    pets.create_pet("before", {"id": 1101, "name": "before"})
    wait_phase(pets, "before", "Active")

    leader.kill()
    killed_at = time.monotonic()
    assert the_leader([standby]) is standby
    pets.create_pet("after", {"id": 1102, "name": "after"})
    wait_phase(pets, "after", "Active")
    took_over = time.monotonic() - killed_at
    lease = client.CoordinationV1Api(kube_api).read_namespaced_lease("pet-operator-leader", claims_namespace)
    assert lease.spec.holder_identity == leader_status(standby)["identity"]
    assert lease.spec.lease_transitions >= 1
    assert took_over < 4 + 3 + 10  # lease duration, a retry, and reconciling: generous, never asserted tight
    events = client.CoreV1Api(kube_api).list_namespaced_event(
        claims_namespace, field_selector="involvedObject.kind=Lease,reason=LeaderElected").items
    assert len(events) == 2
    proof = audit_proof(pet_cluster, claims_namespace)
    assert proof["summary"]["transitions"] >= 1
    record(request, "leader-failover-sigkill", {
        "lease_duration_s": 4, "renew_deadline_s": 3, "retry_period_s": 0.5,
        "seconds_from_kill_to_new_pet_active": round(took_over, 2),
        "audit": proof["summary"],
    })


def test_graceful_shutdown_releases_the_lease_at_once(
    pets: PetApi, operator_factory: Any, kube_api: Any, claims_namespace: str, request: Any
) -> None:
    slow = ("--leader-elect", "--lease-duration", "30", "--renew-deadline", "20", "--retry-period", "0.5")
    replicas = [operator_factory([pets.namespace], webhook=False, extra_args=slow) for _ in range(2)]
    leader = the_leader(replicas)
    standby = next(op for op in replicas if op is not leader)
    stopped_at = time.monotonic()
    assert leader.stop() == 0
    the_leader([standby])
    # released, not expired: far sooner than the 30 s lease
    handover = time.monotonic() - stopped_at
    assert handover < 15
    record(request, "leader-handover-sigterm", {"lease_duration_s": 30, "seconds_to_new_leader": round(handover, 2)})
    assert "released the leader lease" in leader.log_text()


@pytest.mark.parametrize(("fault", "pet_ids"), [("cut", (1103, 1104)), ("blackhole", (1105, 1106))])
def test_a_leader_cut_off_from_the_api_server_steps_down_before_its_lease_expires(
    fault: str, pet_ids: tuple[int, int],
    pets: PetApi, operator_factory: Any, kube_api: Any, claims_namespace: str, request: Any, pet_cluster: Any,
) -> None:
    """cut: every connection reset (requests fail at once); blackhole: connections stay open and
    nothing answers (requests hang, as while etcd is down): either way it steps down and, still
    running, campaigns again as a standby (it ran on time, so it can be trusted); it never writes
    while not leading, which the audit log proves."""
    replicas = [
        operator_factory([pets.namespace], webhook=False, extra_args=FAST, service_account=f"pet-operator-{i}",
                         via_proxy=True)
        for i in range(2)
    ]
    leader = the_leader(replicas)
    standby = next(op for op in replicas if op is not leader)
    cut_at = time.monotonic()
    leader.proxy.set_mode(fault)  # lease loss: it can no longer renew
    leader.wait_log("campaigning again as a standby", timeout=20)
    stepped_down = time.monotonic() - cut_at
    assert "lost the leader lease" in leader.log_text()
    assert leader.running  # no restart needed: a standby again
    assert leader_status(leader)["leader"] is False
    assert the_leader([standby]) is standby
    pets.create_pet("after", {"id": pet_ids[0], "name": "after"})
    wait_phase(pets, "after", "Active")
    failover = time.monotonic() - cut_at
    leader.proxy.set_mode("pass")  # healed: it sees the new leader and stays a standby
    wait_for(lambda: leader_status(leader)["holder"], lambda holder: holder == leader_status(standby)["identity"],
             20, "the healed replica to see the new leader")
    assert the_leader(replicas) is standby
    pets.create_pet("healed", {"id": pet_ids[1], "name": "healed"})
    wait_phase(pets, "healed", "Active")
    assert leader.starts == 1
    proof = audit_proof(pet_cluster, claims_namespace)
    record(request, f"leader-failover-{fault}", {
        "lease_duration_s": 4, "renew_deadline_s": 3, "retry_period_s": 0.5,
        "seconds_from_cut_to_step_down": round(stepped_down, 2),
        "seconds_from_cut_to_new_pet_active": round(failover, 2),
        "audit": proof["summary"],
    })


def test_a_frozen_leader_thawed_after_its_lease_never_writes_as_a_stale_leader(
    pets: PetApi, operator_factory: Any, claims_namespace: str, request: Any, pet_cluster: Any
) -> None:
    import signal

    replicas = [operator_factory([pets.namespace], webhook=False, extra_args=FAST,
                                 service_account=f"pet-operator-{i}") for i in range(2)]
    leader = the_leader(replicas)
    standby = next(op for op in replicas if op is not leader)
    pets.create_store("shop")
    leader.process.signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    assert the_leader([standby]) is standby
    for i in range(5):  # work the frozen one would have done, had it been awake
        pets.create_pet(f"p{i}", {"id": 1200 + i, "name": f"p{i}", "store": "shop"})
    for i in range(5):
        wait_phase(pets, f"p{i}", "Active")
    leader.process.signal(signal.SIGCONT)
    # it stood still longer than its lease: its view is stale, it cannot be trusted: exit 1, restart clean
    wait_for(lambda: leader.running, lambda running: not running, 20, "the thawed leader to step down")
    assert leader.process.returncode == 1
    assert "can no longer be trusted" in leader.log_text()
    pets.patch_store("shop", {"spec": {"allowedTags": []}})  # more work after the thaw
    pets.create_pet("late", {"id": 1210, "name": "late", "store": "shop"})
    wait_phase(pets, "late", "Active")
    proof = audit_proof(pet_cluster, claims_namespace)
    record(request, "leader-failover-freeze", {
        "lease_duration_s": 4, "frozen_for_s": round(time.monotonic() - frozen_at, 2), "audit": proof["summary"],
    })


def test_the_webhook_keeps_answering_when_the_leader_dies(
    pets: PetApi, operator_factory: Any, claims_namespace: str
) -> None:
    """Every replica serves the webhook behind one "Service": a standby answers alone."""
    replicas = [operator_factory([pets.namespace], extra_args=FAST, service_account=f"pet-operator-{i}")
                for i in range(2)]
    assert replicas[0].webhook_front is replicas[1].webhook_front is not None
    assert len(replicas[0].webhook_front.targets) == 2
    leader = the_leader(replicas)
    standby = next(op for op in replicas if op is not leader)
    pets.create_store("shop", {"allowedTags": ["dog"]})
    leader.kill()
    for attempt in range(4):  # round-robin would have sent every other review to the dead one
        exc = api_error(lambda attempt=attempt: pets.create_pet(
            f"bad-{attempt}", {"id": 1300 + attempt, "name": "bad", "store": "shop", "tags": ["cat"]}))
        assert exc.status == 422, exc.body
        assert "'cat'" in exc.body
    the_leader([standby])
    pets.create_pet("good", {"id": 1310, "name": "good", "store": "shop", "tags": ["dog"]})
    wait_phase(pets, "good", "Active")

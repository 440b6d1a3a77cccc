"""SIGTERM: the operator exits within --shutdown-grace on every path, its webhook serving to the end."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from helpers import record, wait_phase
from kubernetes import client

from pet_harness import webhooks
from pet_harness.clusters.local import free_port
from pet_harness.kube import PetApi
from pet_harness.waiting import wait_for

GRACE = 5.0
DRAIN = 2.0
MARGIN = 2.5  # the interpreter's own exit and log flushing, on a loaded machine
ELECTION = ("--leader-elect", "--lease-duration", "30", "--renew-deadline", "20", "--retry-period", "0.5")
#: the one name the shipped RBAC lets the operator patch (to publish a self-signed CA)
CONFIGURATION = "pet-operator"


def _leading(op: Any) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.health_port}/leader", timeout=2) as resp:
        return bool(json.loads(resp.read())["leader"])


def _stop_timed(op: Any) -> tuple[int | None, float]:
    started = time.monotonic()
    code = op.stop(grace=GRACE + 30)  # the harness would SIGKILL only long after the grace
    return code, time.monotonic() - started


def _lease_holder(kube_api: Any, namespace: str) -> str:
    lease = client.CoordinationV1Api(kube_api).read_namespaced_lease("pet-operator-leader", namespace)
    return str(lease.spec.holder_identity or "")


def test_sigterm_exits_within_grace_when_the_api_server_calls_the_webhook_directly(
    pets: PetApi, operator_factory: Any, kube_api: Any, claims_namespace: str, request: Any
) -> None:
    """As a user of `pet-harness cluster up` runs it: self-signed certificate published with
    --webhook-configuration, the API server calling the operator's port with no proxy between.
    SIGTERM after a few reviewed creates and a delete: exit 0 within the grace, the Lease
    released, and the operator's own finalizer work during shutdown never refused."""
    port = free_port()
    url = f"https://127.0.0.1:{port}/validate-pets"
    webhooks.install(kube_api, webhooks.webhook_configuration(CONFIGURATION, [pets.namespace], url, None))
    try:
        op = operator_factory([pets.namespace], webhook=False, extra_args=(
            "--webhook-port", str(port), "--webhook-configuration", CONFIGURATION,
            "--shutdown-grace", str(GRACE), "--shutdown-drain-delay", str(DRAIN), *ELECTION))
        webhooks.wait_effective(kube_api, pets.namespace)
        wait_for(lambda: _leading(op), bool, 30, "the replica to lead")
        pets.create_store("shop", {"allowedTags": ["dog"]})
        for i in range(4):  # each create is reviewed: the API server keeps its connections open
            pets.create_pet(f"p{i}", {"id": 1400 + i, "name": f"p{i}", "store": "shop", "tags": ["dog"]})
        for i in range(4):
            wait_phase(pets, f"p{i}", "Active")
        pets.delete_pet("p0")  # finalizer work in flight while the operator stops
        code, took = _stop_timed(op)
        log = op.log_text()
        assert code == 0, f"exit code {code} after {took:.1f}s:\n{op.log_tail()}"
        assert took < GRACE + MARGIN, f"exit took {took:.1f}s with --shutdown-grace {GRACE}:\n{op.log_tail()}"
        assert _lease_holder(kube_api, claims_namespace) == "", "the leader Lease was not released"
        assert "failed (500" not in log and "failed calling webhook" not in log, log
        record(request, "shutdown-direct-webhook", {"grace_s": GRACE, "drain_s": DRAIN, "exit_s": round(took, 2)})
    finally:
        webhooks.uninstall(kube_api, CONFIGURATION)


def test_sigterm_exits_within_grace_when_the_api_server_stops_answering(
    pets: PetApi, operator_factory: Any, kube_api: Any, claims_namespace: str, request: Any
) -> None:
    """The hard deadline: with every API call hanging (blackholed connection), in-flight work and
    the Lease release cannot finish; the operator gives them up and exits within the grace."""
    op = operator_factory([pets.namespace], via_proxy=True, extra_args=("--shutdown-grace", str(GRACE), *ELECTION))
    wait_for(lambda: _leading(op), bool, 30, "the replica to lead")
    pets.create_pet("rex", {"id": 1410, "name": "rex"})
    wait_phase(pets, "rex", "Active")
    op.proxy.set_mode("blackhole")
    pets.patch_pet("rex", {"spec": {"category": "late"}})  # work that can never finish now
    code, took = _stop_timed(op)
    assert code is not None and code >= 0, f"killed by the harness (code {code}):\n{op.log_tail()}"
    assert took < GRACE + MARGIN, f"exit took {took:.1f}s with --shutdown-grace {GRACE}:\n{op.log_tail()}"
    assert "shutdown grace" in op.log_text()
    record(request, "shutdown-blackholed", {"grace_s": GRACE, "exit_s": round(took, 2), "exit_code": code})


def test_the_webhook_keeps_serving_while_unready_for_the_drain_delay(
    pets: PetApi, operator_factory: Any, request: Any
) -> None:
    """A rollout: the pod turns unready at SIGTERM, but the Service may route to it a moment
    longer; reviews sent meanwhile are answered, not refused."""
    import signal

    from helpers import api_error

    drain = 4.0
    op = operator_factory([pets.namespace], extra_args=(
        "--shutdown-grace", str(GRACE + drain), "--shutdown-drain-delay", str(drain)))
    pets.create_store("shop", {"allowedTags": ["dog"]})
    started = time.monotonic()
    op.process.signal(signal.SIGTERM)
    wait_for(op.readyz, lambda r: r[0] == 503, 5, "the replica to turn unready")
    op.wait_log("Kopf has stopped", timeout=GRACE)  # past the point where, without a drain, it would close
    exc = api_error(lambda: pets.create_pet("cat", {"id": 1420, "name": "cat", "store": "shop", "tags": ["cat"]}))
    answered_after = time.monotonic() - started
    assert exc.status == 422, exc.body  # the webhook answered: not a refused connection (500)
    assert "'cat'" in exc.body
    code = op.process.wait(GRACE + drain + 30)
    took = time.monotonic() - started
    assert code == 0, op.log_tail()
    assert took < GRACE + drain + MARGIN, f"exit took {took:.1f}s:\n{op.log_tail()}"
    assert "drain delay" in op.log_text()
    record(request, "shutdown-drain", {"drain_s": drain, "review_answered_after_s": round(answered_after, 2),
                                       "exit_s": round(took, 2)})

"""Each shipped alert fires for its real cause on a real Prometheus, and none on a healthy run.

Prometheus (Debian's package) scrapes the replicas as the shipped ServiceMonitor says and the
API server as job="apiserver", and evaluates the shipped PrometheusRule with short ``for``
windows (pet_harness.pet_monitoring.TEST_WINDOWS). Each test causes one failure for real and
waits, through Prometheus's HTTP API, for its alert to fire; the time each took is written to
reports/alerts/<alert>.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import wait_phase
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pet_harness import prometheus
from pet_harness.kube import REPO_ROOT, PetApi
from pet_harness.pet_monitoring import TEST_WINDOWS, PetMonitoring
from pet_harness.prometheus import wait_evaluated
from pet_harness.waiting import wait_for

REPORTS = REPO_ROOT / "reports" / "alerts"
FAST_LEASE = ["--leader-elect", "--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5"]


@pytest.fixture(autouse=True)
def _prometheus_installed() -> None:
    """Without Prometheus the tests are skipped with the fix named; with ``CI`` set they fail."""
    missing = prometheus.unavailable()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)


@pytest.fixture
def monitored(pet_cluster: Any, claims_namespace: str, operator_factory: Any) -> Iterator[PetMonitoring]:
    rig = PetMonitoring(pet_cluster.kubeconfig_path, claims_namespace, operator_factory.started)
    rig.start()
    try:
        yield rig
    finally:
        rig.stop()


def _watch(rig: PetMonitoring, operators: int) -> None:
    """Scrape the replicas started so far; return once they are up and the rules have seen them
    (Prometheus started before the replicas, so PetOperatorDown may fire first: wait until it is gone)."""
    rig.refresh()
    rig.server.wait_targets_up(rig.job, operators, timeout=60)
    rig.server.wait_targets_up("apiserver", 1, timeout=60)
    wait_for(rig.active, lambda alerts: all(a["alertname"] != "PetOperatorDown" for a in alerts), 60,
             "PetOperatorDown to clear once the replicas are scraped")


def _fired(rig: PetMonitoring, alert: str, caused_at: float, timeout: float = 120) -> dict[str, Any]:
    found = rig.server.wait_alert(alert, "firing", timeout=timeout)
    took = time.monotonic() - caused_at
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / f"{alert}.json").write_text(json.dumps(
        {"alert": alert, "test_for_window": TEST_WINDOWS[alert], "seconds_to_fire": round(took, 1),
         "labels": found["labels"]}, indent=2) + "\n")
    return found


@contextlib.contextmanager
def _writing(attempt: Callable[[int], None], every: float = 0.3, limit: int = 600) -> Iterator[list[str]]:
    """Call ``attempt(i)`` in the background until the block ends (at most ``limit`` times)."""
    outcomes: list[str] = []
    stop = threading.Event()

    def run() -> None:
        for i in range(limit):
            if stop.wait(every):
                return
            try:
                attempt(i)
                outcomes.append("ok")
            except ApiException as exc:
                outcomes.append(f"{exc.status}")

    thread = threading.Thread(target=run, name="alert-load", daemon=True)
    thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        thread.join(timeout=15)


def _two_replicas(operator_factory: Any, namespace: str, extra_args: tuple[str, ...] = (), **kwargs: Any) -> list[Any]:
    return [operator_factory([namespace], extra_args=[*FAST_LEASE, *extra_args], **kwargs) for _ in range(2)]


def test_a_healthy_operator_raises_no_alert(
    monitored: PetMonitoring, operator_factory: Any, pets: PetApi, namespace: str
) -> None:
    _two_replicas(operator_factory, namespace)
    _watch(monitored, 2)
    pets.create_store("shop", {"allowedTags": ["dog"]})
    for i in range(5):
        pets.create_pet(f"healthy-{i}", {"id": 7100 + i, "name": f"h{i}", "store": "shop", "tags": ["dog"]})
    for i in range(5):
        wait_phase(pets, f"healthy-{i}", "Active")
    for name, spec in (("dup", {"id": 7100, "name": "dup"}),  # denials by the rules are not webhook failures
                       ("cat", {"id": 7199, "name": "cat", "store": "shop", "tags": ["cat"]})):
        with pytest.raises(ApiException) as denied:
            pets.create_pet(name, spec)
        assert denied.value.status in (400, 403, 422), denied.value.body
    server = monitored.server
    wait_for(lambda: server.value(f'sum(pet_operator_pets{{job="{monitored.job}",phase="Active"}})'),
             lambda v: v == 5, 60, "the pets gauge to count 5 Active pets")
    longest = max(int(w.rstrip("s")) for w in TEST_WINDOWS.values())
    wait_evaluated(server, rounds=longest + 3, timeout=120)  # every test window has passed at least once
    assert monitored.active() == []


def test_operator_down_fires_when_every_replica_is_killed(
    monitored: PetMonitoring, operator_factory: Any, namespace: str
) -> None:
    replicas = _two_replicas(operator_factory, namespace)
    _watch(monitored, 2)
    assert "PetOperatorDown" not in monitored.firing()  # _watch waited for it to clear
    caused = time.monotonic()
    for op in replicas:
        op.kill()
    alert = _fired(monitored, "PetOperatorDown", caused)
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["runbook_url"].endswith("/docs/runbooks/PetOperatorDown.md")


def test_no_leader_fires_when_every_replica_is_cut_from_the_api_server(
    monitored: PetMonitoring, operator_factory: Any, namespace: str
) -> None:
    replicas = _two_replicas(operator_factory, namespace, via_proxy=True)
    _watch(monitored, 2)
    server = monitored.server
    wait_for(lambda: server.value(f'sum(leader_election_master_status{{job="{monitored.job}"}})'),
             lambda v: v == 1, 60, "exactly one leader")
    caused = time.monotonic()
    for op in replicas:
        assert op.proxy is not None
        op.proxy.set_mode("cut")
    alert = _fired(monitored, "PetOperatorNoLeader", caused)
    assert alert["labels"]["namespace"] == monitored.namespace
    assert "PetOperatorDown" not in monitored.firing()  # they are up: only leadership is gone


def _without_status_rights(kube_api: Any) -> Callable[[], None]:
    """Take pets/status out of the shipped ClusterRoles; the undo puts them back."""
    rbac = client.RbacAuthorizationV1Api(kube_api)
    saved: dict[str, list[dict[str, Any]]] = {}
    for role in rbac.list_cluster_role().items:
        rules = kube_api.sanitize_for_serialization(role).get("rules") or []
        if not role.metadata.name.startswith("pet-operator") or not any(
                "pets/status" in r.get("resources", []) for r in rules):
            continue
        saved[role.metadata.name] = rules
        narrowed = [{**r, "resources": [x for x in r.get("resources", []) if x != "pets/status"]} for r in rules]
        rbac.patch_cluster_role(role.metadata.name, {"rules": [r for r in narrowed if r["resources"]]})
    assert saved, "no pet-operator ClusterRole grants pets/status"

    def undo() -> None:
        for name, rules in saved.items():
            rbac.patch_cluster_role(name, {"rules": rules})
    return undo


def test_reconcile_errors_and_error_rate_fire_when_status_writes_are_forbidden(
    monitored: PetMonitoring, operator_factory: Any, pets: PetApi, namespace: str, kube_api: Any
) -> None:
    # a short resync: a pet that failed its retries is taken up again by the next resync (every
    # 300 s by default) or event; here it shows the recovery once the right is back
    _two_replicas(operator_factory, namespace, extra_args=("--resync-period", "5"))
    _watch(monitored, 2)
    pets.create_pet("before", {"id": 7200, "name": "before"})
    wait_phase(pets, "before", "Active")
    undo = _without_status_rights(kube_api)
    try:
        caused = time.monotonic()
        for i in range(3):
            pets.create_pet(f"unwritable-{i}", {"id": 7201 + i, "name": f"u{i}"})
        errors = _fired(monitored, "PetOperatorReconcileErrors", caused)
        assert errors["labels"]["controller"] == "pet"
        rate = _fired(monitored, "PetOperatorHighReconcileErrorRate", caused)
        assert rate["labels"]["controller"] == "pet"
    finally:
        undo()
    for i in range(3):  # and it recovers once the right is back
        wait_phase(pets, f"unwritable-{i}", "Active", timeout=120)


def test_webhook_failing_fires_when_the_api_server_cannot_reach_it(
    monitored: PetMonitoring, operator_factory: Any, pets: PetApi, namespace: str
) -> None:
    _two_replicas(operator_factory, namespace)
    _watch(monitored, 2)
    assert operator_factory.front is not None
    operator_factory.front.set_mode("cut")
    caused = time.monotonic()
    with _writing(lambda i: pets.create_pet(f"refused-{i}", {"id": 7300 + i, "name": "r"})) as outcomes:
        alert = _fired(monitored, "PetOperatorWebhookFailing", caused)
    assert alert["labels"]["name"].endswith("pets.petstore.example.com")
    assert outcomes and "ok" not in outcomes  # failurePolicy Fail: every write was refused meanwhile
    assert "PetOperatorDown" not in monitored.firing()


def test_webhook_slow_fires_when_calls_take_over_a_second(
    monitored: PetMonitoring, operator_factory: Any, pets: PetApi, namespace: str
) -> None:
    _two_replicas(operator_factory, namespace)
    _watch(monitored, 2)
    assert operator_factory.front is not None
    operator_factory.front.set_mode("delay", delay=0.6)  # each way, per chunk: about 1.2-3 s a call, below 5 s
    caused = time.monotonic()
    with _writing(lambda i: pets.create_pet(f"slow-{i}", {"id": 7400 + i, "name": "s"}), every=0.2) as outcomes:
        alert = _fired(monitored, "PetOperatorWebhookSlow", caused, timeout=180)
    assert alert["labels"]["name"].endswith("pets.petstore.example.com")
    assert "ok" in outcomes  # slow, not failing
    assert "PetOperatorWebhookFailing" not in monitored.firing()


def test_pets_stuck_pending_fires_for_a_pet_whose_store_does_not_exist(
    monitored: PetMonitoring, operator_factory: Any, pets: PetApi, namespace: str
) -> None:
    _two_replicas(operator_factory, namespace)
    _watch(monitored, 2)
    caused = time.monotonic()
    pets.create_pet("homeless", {"id": 7500, "name": "homeless", "store": "nowhere"})
    wait_phase(pets, "homeless", "Pending")
    _fired(monitored, "PetsStuckPending", caused)
    assert "PetsStuckConflict" not in monitored.firing()


def test_pets_stuck_conflict_fires_for_a_duplicate_id(
    monitored: PetMonitoring, operator_factory: Any, pets: PetApi, namespace: str, make_namespace: Any
) -> None:
    # no webhook: duplicates reach the API (as two racing creates would), and one turns Conflict
    operator_factory([namespace], extra_args=FAST_LEASE, webhook=False)
    _watch(monitored, 1)
    pets.create_pet("first", {"id": 7600, "name": "first"})
    wait_phase(pets, "first", "Active")
    caused = time.monotonic()
    pets.create_pet("second", {"id": 7600, "name": "second"})
    wait_phase(pets, "second", "Conflict")
    _fired(monitored, "PetsStuckConflict", caused)
    assert "PetsStuckPending" not in monitored.firing()


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((REPO_ROOT / "deploy" / "monitoring" / "grafana-dashboard.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_the_dashboard_queries_only_metrics_that_are_really_exported(
    monitored: PetMonitoring, operator_factory: Any, pets: PetApi, namespace: str
) -> None:
    """Every metric the Grafana dashboard names is exported by the replicas (or the API server),
    and every query parses and evaluates on Prometheus."""
    _two_replicas(operator_factory, namespace)
    _watch(monitored, 2)
    pets.create_store("shop", {"allowedTags": ["dog"]})
    pets.create_pet("shown", {"id": 7700, "name": "shown", "store": "shop", "tags": ["dog"]})
    wait_phase(pets, "shown", "Active")
    with pytest.raises(ApiException):
        pets.create_pet("refused", {"id": 7701, "name": "refused", "store": "shop", "tags": ["cat"]})
    queries = _dashboard_queries()
    prefixes = r"pet_operator_|workqueue_|controller_runtime_|rest_client_|leader_election_|process_|apiserver_"
    named = {m for q in queries for m in re.findall(rf"\b(?:{prefixes})[a-z_]+\b", q)}
    assert len(named) >= 15, named
    server = monitored.server
    exported = set(wait_for(server.metric_names, lambda names: set(named) <= set(names), 60,
                            "every metric of the dashboard to be scraped"))
    assert named <= exported
    for query in queries:
        concrete = query.replace("$__rate_interval", "1m").replace("$__range", "5m")
        server.query(concrete)  # raises on a query Prometheus cannot parse or evaluate

"""The chaos activities of target=kubernetes (petchaos.staging, chaostoolkit-kubernetes) against
the real API server of the embedded cluster.

The embedded cluster has no nodes, so the operator's pods are Pod objects that this test
keeps Ready through pods/status, as a kubelet would, and the replicas are local processes
whose leader identities are those pods' names (``<pod>_<suffix>``, as POD_NAME gives them in
deploy/operator). Where the kubelet would act on an API change (a deleted pod's process
dies) the test does it. What this proves: the activities find the leader's pod from the
Lease, delete exactly it, label it and write the deny-egress NetworkPolicy, move the Lease,
refuse control-plane restarts, and the staging load and steady state work on a live
operator. Exec into containers and NetworkPolicy enforcement need a kubelet and a CNI:
unit-tested with recording fakes, and documented in docs/chaos.md.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config import kube_config

from pet_harness.kube import PetApi
from pet_harness.waiting import wait_for
from petchaos import actions, load, probes, staging

pytestmark = pytest.mark.skipif(importlib.util.find_spec("chaosk8s") is None,
                                reason="chaostoolkit-kubernetes is not installed")

FAST = ("--leader-elect", "--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5")
SELECTOR = {"app.kubernetes.io/name": "pet-operator"}


def make_ready_pod(core: client.CoreV1Api, namespace: str, name: str) -> None:
    core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": dict(SELECTOR)},
        "spec": {"automountServiceAccountToken": False,
                 "containers": [{"name": "operator", "image": "ghcr.io/example/pet-operator:0.1.0"}]},
    })
    core.patch_namespaced_pod_status(name, namespace, {"status": {
        "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})


def operator_on_pods(pets: PetApi, operator_factory: Any, kube_api: Any, claims_namespace: str,
                     pet_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], dict[str, Any]]:
    """Two replicas "running in" two ready Pod objects of the operator's namespace."""
    # chaosk8s's credentials: $KUBECONFIG, which the kubernetes client reads when imported (as a
    # fresh `chaos run` process does); this process imported it long ago, so set both
    monkeypatch.setenv("KUBECONFIG", str(pet_cluster.kubeconfig_path))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(pet_cluster.kubeconfig_path))
    core = client.CoreV1Api(kube_api)
    try:  # pods need their ServiceAccount; no controller-manager makes "default" here
        core.create_namespaced_service_account(claims_namespace, {"metadata": {"name": "default"}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    pods = [f"pet-operator-{uuid.uuid4().hex[:5]}-{i}" for i in range(2)]
    for name in pods:
        make_ready_pod(core, claims_namespace, name)
    replicas = {
        name: operator_factory([pets.namespace], webhook=False, service_account=f"pet-operator-{i}",
                               extra_args=(*FAST, "--leader-identity", f"{name}_{uuid.uuid4().hex[:8]}"))
        for i, name in enumerate(pods)
    }
    return pods, replicas


def test_the_kubernetes_target_acts_on_the_leader_pod_and_checks_the_steady_state(
    pets: PetApi, operator_factory: Any, kube_api: Any, claims_namespace: str, pet_cluster: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pods, replicas = operator_on_pods(pets, operator_factory, kube_api, claims_namespace, pet_cluster, monkeypatch)
    core = client.CoreV1Api(kube_api)
    configuration = {"target": "kubernetes", "operator_namespace": claims_namespace,
                     "pets_namespaces": pets.namespace, "load_namespace": pets.namespace, "load_max_pets": 8,
                     "load_interval": 0.1}

    # the staging load (a Chaos Toolkit control) creates pets, every 7th reusing an id
    load.before_experiment_control(context={}, configuration=configuration)
    running = load.current()
    assert running is not None
    wait_for(lambda: running.attempted, lambda n: n >= 8, 60, "the load to create 8 pets")
    details = probes.steady_state_details(timeout=60, configuration=configuration)
    assert details["ok"], details
    assert details["details"]["pets"] >= 6  # 8 created, a delete now and then
    leader = details["details"]["leaders"][0]
    assert leader in pods

    # kill: exactly the leader's pod is deleted at once; the kubelet would kill its process
    killed = actions.kill_leader(configuration=configuration)
    assert killed["killed"] == leader
    remaining = {p.metadata.name for p in core.list_namespaced_pod(claims_namespace).items}
    assert remaining == set(pods) - {leader}
    replicas[leader].kill()
    details = probes.steady_state_details(timeout=60, configuration=configuration)
    assert details["ok"], details
    successor = details["details"]["leaders"][0]
    assert successor != leader

    # cut: the leader pod labelled and a NetworkPolicy denying its egress; heal undoes both
    cut = actions.cut_leader(configuration=configuration)
    assert cut["cut"] == successor
    policy = client.NetworkingV1Api(kube_api).read_namespaced_network_policy(staging.CUT_POLICY, claims_namespace)
    assert policy.spec.pod_selector.match_labels == {staging.CUT_LABEL: "true"}
    assert policy.spec.policy_types == ["Egress"]
    assert not policy.spec.egress
    assert core.read_namespaced_pod(successor, claims_namespace).metadata.labels[staging.CUT_LABEL] == "true"
    healed = actions.heal(configuration=configuration)
    assert healed == {"network_policy_removed": True, "unlabelled": [successor]}
    assert staging.CUT_LABEL not in (core.read_namespaced_pod(successor, claims_namespace).metadata.labels or {})

    # the load's pets are deleted after the experiment (the operator releases their claims)
    load.after_experiment_control(context={}, state=None, configuration=configuration)
    assert load.current() is None
    assert [p for p in pets.list_pets() if p["metadata"]["name"].startswith("chaos-load-")] == []
    claims = client.CoordinationV1Api(kube_api).list_namespaced_lease(claims_namespace).items
    assert [c.metadata.name for c in claims if c.metadata.name.startswith("pet-id-")] == []

    # a stolen Lease: its holder is no operator pod, which the steady state names
    actions.steal_lease(holder="chaos-thief", duration=4, configuration=configuration)
    details = probes.steady_state_details(timeout=0, configuration=configuration)
    assert not details["ok"]
    assert any("'chaos-thief' is not a pod of the operator" in p for p in details["details"]["problems"])

    for func in (actions.restart_apiserver, actions.restart_etcd):
        with pytest.raises(staging.NotAvailableOnTarget, match="needs access to its nodes"):
            func(configuration=configuration)


def test_pet_harness_chaos_runs_an_experiment_file_on_the_kubernetes_target(
    pets: PetApi, operator_factory: Any, kube_api: Any, claims_namespace: str, pet_cluster: Any,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    """The whole staging path: `pet-harness chaos --target kubernetes` runs the real `chaos run` of
    delete-lease (delete the Lease, steal it, wait, wait for the Deployment) with the pet-load
    control, then reads the steady state, the load's report and the audit log."""
    from pet_harness import cli

    _, replicas = operator_on_pods(pets, operator_factory, kube_api, claims_namespace, pet_cluster, monkeypatch)
    apps = client.AppsV1Api(kube_api)
    apps.create_namespaced_deployment(claims_namespace, {
        "metadata": {"name": "pet-operator", "labels": dict(SELECTOR)},
        "spec": {"replicas": 2, "selector": {"matchLabels": dict(SELECTOR)},
                 "template": {"metadata": {"labels": dict(SELECTOR)},
                              "spec": {"containers": [{"name": "operator", "image": "example/pet-operator"}]}}},
    })
    # what the Deployment controller would report for the two pods above
    apps.patch_namespaced_deployment_status("pet-operator", claims_namespace, {"status": {
        "observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "availableReplicas": 2}})
    code = cli.main([
        "chaos", "--target", "kubernetes", "-e", "delete-lease", "--rounds", "1", "--max-pets", "10",
        "--set", f"operator_namespace={claims_namespace}", "--set", f"pets_namespaces={pets.namespace}",
        "--set", f"load_namespace={pets.namespace}", "--set", "load_interval=0.2",
        "--audit-log", str(pet_cluster.audit_log_path), "--results", str(tmp_path),
    ])
    summary = json.loads((tmp_path / "delete-lease-summary.json").read_text())
    shown = json.dumps({k: v for k, v in summary.items() if k != "final_steady_state"}, indent=2)
    journal = json.loads((tmp_path / "delete-lease-journal.json").read_text())
    assert code == 0, shown + capsys.readouterr().err
    assert summary["passed"], shown
    assert summary["audited"] is True
    assert summary["writes_by_non_leaders"] == 0, shown
    # the thief's term ended and a replica leads again (the old leader itself, now that it campaigns
    # again instead of exiting, so the audit may count no transition between replicas)
    lease = client.CoordinationV1Api(kube_api).read_namespaced_lease("pet-operator-leader", claims_namespace)
    assert any(str(lease.spec.holder_identity).startswith(f"{pod}_") for pod in replicas), lease.spec
    assert summary["pets_lost"] == 0
    assert [r["status"] for r in journal["run"]] == ["succeeded"] * len(journal["run"])
    load_report = json.loads((tmp_path / "delete-lease-load.json").read_text())
    assert load_report["created"] >= 5, load_report
    assert load_report["left_after_cleanup"] == []
    # the leader saw the thief's holder and stopped leading; it ran on time, so it stays up and
    # campaigns again as a standby (no restart), and the audit above shows it wrote nothing meanwhile
    stepped_down = [name for name, op in replicas.items() if "taken by chaos-thief" in op.log_text()]
    assert len(stepped_down) == 1
    assert all(op.running for op in replicas.values())
    assert "campaigning again as a standby" in replicas[stepped_down[0]].log_text()

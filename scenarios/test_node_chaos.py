"""The chaos experiments on real pods: ``chaos run`` of chaos/experiments with ``target=kubernetes``
against a node cluster where the operator runs as the Deployment of ``deploy/`` (two replicas with
leader election, its image built here from the Dockerfile).

What runs, each experiment once, one after another on one node cluster and one deployment:
``kill-leader`` (the leader's pod deleted through chaostoolkit-kubernetes; the Deployment makes a
new one), ``freeze-leader`` (SIGSTOP and SIGCONT through an exec into the leader's container),
``cut-leader`` (reject rules in the leader pod's network namespace, ``cut_mode=pod-netns``; and the
staging cut, a NetworkPolicy, shown to cut nothing here since the CNI bridge plugin enforces no
policy) and ``delete-lease`` (the Lease deleted, then stolen). ``restart-apiserver`` and
``restart-etcd`` are refused on ``target=kubernetes`` and not run.

Every experiment must complete with the steady state before and after, no failed activity, no pet
lost, and, from the API server's audit log (writes attributed to each pod through its bound
token), no write by a non-leader; the leader must change, each failover gap within a bound made of
the lease settings the operator runs with here (:func:`gap_bound`).

Marker ``node`` (tox env ``node``): root, the node's Debian packages, ``pet-harness binaries build
--node`` and chaostoolkit-kubernetes. Journals and summaries in ``<--pet-report-dir>/node-chaos/``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess  # nosec B404 # argv lists, never a shell
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_chaos_passed
from kubernetes import client
from kubernetes.config import kube_config

from pet_harness import chaos_runner
from pet_harness.chaos_cluster import ClusterTarget
from pet_harness.clusters.node import NodeCluster
from pet_harness.pet_deploy import OPERATOR_NAMESPACE, SELECTOR, DeployedOperator, deploy_operator
from pet_harness.pet_image import operator_image
from petchaos import netns_cut
from petchaos.staging import pod_of_holder

pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(importlib.util.find_spec("chaosk8s") is None,
                       reason="chaostoolkit-kubernetes is not installed"),
]

SERVED = "node-chaos-pets"
#: the lease settings of the embedded chaos environment, so the figures compare
LEASE_SECONDS, RENEW_DEADLINE, RETRY_PERIOD = 4.0, 3.0, 0.5
FAST = (f"--lease-duration={LEASE_SECONDS:g}", f"--renew-deadline={RENEW_DEADLINE:g}",
        f"--retry-period={RETRY_PERIOD:g}")
#: a busy 2-core machine: the standby's renewal loop, the API server and the load share it
SLACK_SECONDS = 2.5
#: the webhook's timeoutSeconds (deploy/webhook): writes sent to a frozen replica wait this long
WEBHOOK_TIMEOUT = 5.0
MAX_PETS = 20


def gap_bound(frozen_webhook: bool = False) -> float:
    """The longest failover gap accepted: the standby takes the Lease once it has not been renewed
    for a lease duration (it looks every retry period), then writes what the load gave it. With a
    frozen leader, half the load's writes wait out the webhook's timeout on the frozen replica
    (it stays in the Service until its readiness probe fails), so there is less to write at once."""
    return LEASE_SECONDS + RETRY_PERIOD + SLACK_SECONDS + (WEBHOOK_TIMEOUT if frozen_webhook else 0.0)


@pytest.fixture(scope="module")
def deployed(node_cluster: NodeCluster, node_api: client.ApiClient, results: Path) -> DeployedOperator:
    operator = deploy_operator(node_cluster, node_api, operator_image(), [SERVED], extra_args=FAST)
    results.mkdir(parents=True, exist_ok=True)  # what the module's set-up cost (the lock wait is in "prepared")
    (results / "setup.json").write_text(json.dumps({"cluster": node_cluster.timings,
                                                    "deployment": operator.timings}, indent=2))
    return operator


@pytest.fixture(scope="module")
def chaos_credentials(node_cluster: NodeCluster) -> Iterator[None]:
    """chaosk8s's credentials: ``$KUBECONFIG`` for the ``chaos run`` process, and the kubernetes
    client's default location in this one (read at its import, long ago)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(node_cluster.kubeconfig_path))
        patch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(node_cluster.kubeconfig_path))
        yield


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest) -> Path:
    folder = Path(str(request.config.getoption("--pet-report-dir")))
    if not folder.is_absolute():
        folder = Path(str(request.config.rootpath)) / folder
    return folder / "node-chaos"


_SUMMARIES: dict[str, dict[str, Any]] = {}


def run(name: str, node_cluster: NodeCluster, results: Path, cut_mode: str = "pod-netns",
        label: str | None = None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One experiment by the real ``chaos run`` on target=kubernetes, judged from the node's audit
    log: its summary, its journal and the audit analysis."""
    settings = {"operator_namespace": OPERATOR_NAMESPACE, "pets_namespaces": SERVED, "load_namespace": SERVED,
                "load_max_pets": str(MAX_PETS), "cut_mode": cut_mode}
    folder = results / (label or name)
    summary = chaos_runner.run_experiment(
        name, folder, env_factory=lambda: ClusterTarget(settings, node_cluster.audit_log_path), audited=True)
    _SUMMARIES[label or name] = {**summary, "experiment": label or name}  # the table tells the two cuts apart
    results.mkdir(parents=True, exist_ok=True)
    (results / "summary.md").write_text(chaos_runner.summary_markdown(list(_SUMMARIES.values())))
    journal = json.loads((folder / f"{name}-journal.json").read_text())
    analysis = json.loads((folder / f"{name}-audit.json").read_text())
    return summary, journal, analysis


def check_passed(summary: dict[str, Any], journal: dict[str, Any]) -> None:
    assert_chaos_passed(summary)
    for moment in ("before", "after"):  # the hypothesis held on both sides of the method
        assert journal["steady_states"][moment]["steady_state_met"] is True, journal["steady_states"][moment]


def outputs(journal: dict[str, Any]) -> dict[str, Any]:
    """Each method activity's output by name."""
    return {entry["activity"]["name"]: entry.get("output") for entry in journal["run"]}


def check_failover(analysis: dict[str, Any], old_pod: str, bound: float) -> list[dict[str, Any]]:
    """The Lease left ``old_pod`` for another pod, and every change of holder between the operator's
    pods was within ``bound`` seconds from the old holder's last renewal to the new one's first write."""
    gaps = [g for g in analysis["gaps"] if g["new_user"].startswith(f"system:serviceaccount:{OPERATOR_NAMESPACE}:")]
    assert gaps, f"no change of leader in the audit log: {json.dumps(analysis['terms'], indent=2)}"
    assert any(pod_of_holder(g["old"]) == old_pod for g in analysis["gaps"]), (old_pod, analysis["gaps"])
    for gap in gaps:
        assert gap["seconds"] is not None, f"the new leader never wrote: {gap}"
        assert gap["seconds"] <= bound, f"failover gap {gap['seconds']:.2f}s > {bound:.1f}s: {gap}"
    assert analysis["summary"]["writes"] > 0, "the operator wrote nothing in the experiment: nothing was judged"
    return gaps


def leader_pod_now(api: client.ApiClient) -> str:
    lease = client.CoordinationV1Api(api).read_namespaced_lease("pet-operator-leader", OPERATOR_NAMESPACE)
    return pod_of_holder(str(lease.spec.holder_identity or ""))


def operator_pods(api: client.ApiClient) -> list[Any]:
    return list(client.CoreV1Api(api).list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=SELECTOR).items)


def test_kill_leader_deletes_the_leader_pod_and_the_deployment_replaces_it(
    deployed: DeployedOperator, node_cluster: NodeCluster, node_api: client.ApiClient, chaos_credentials: None,
    results: Path,
) -> None:
    summary, journal, analysis = run("kill-leader", node_cluster, results)
    check_passed(summary, journal)
    killed = outputs(journal)["kill-leader"]["killed"]
    check_failover(analysis, killed, gap_bound())
    names = {p.metadata.name for p in operator_pods(node_api)}
    assert killed not in names and len(names) == 2, (killed, names)
    assert leader_pod_now(node_api) in names


def test_freeze_leader_stops_it_past_its_lease_through_exec_and_the_standby_takes_over(
    deployed: DeployedOperator, node_cluster: NodeCluster, node_api: client.ApiClient, chaos_credentials: None,
    results: Path,
) -> None:
    summary, journal, analysis = run("freeze-leader", node_cluster, results)
    check_passed(summary, journal)
    frozen = outputs(journal)["freeze-leader"]
    assert frozen["pids"] and 1 not in frozen["pids"], frozen  # the operator, not tini (PID 1)
    # frozen 7 s, past its 4 s lease: the Lease must have moved to the other pod
    check_failover(analysis, frozen["frozen"], gap_bound(frozen_webhook=True))
    assert leader_pod_now(node_api) != frozen["frozen"]


def _cut_chains_left(api: client.ApiClient) -> dict[str, str]:
    """The cut chain, if any, in each operator pod's network namespace."""
    left = {}
    for pod in operator_pods(api):
        pid = netns_cut.pod_pid(str(pod.metadata.uid))
        listed = subprocess.run(netns_cut.in_netns(pid, ["-S"]), capture_output=True, text=True,  # nosec B603
                                timeout=30, check=True)
        if netns_cut.CHAIN in listed.stdout:
            left[pod.metadata.name] = listed.stdout
    return left


def test_cut_leader_rejects_its_api_server_traffic_in_its_network_namespace(
    deployed: DeployedOperator, node_cluster: NodeCluster, node_api: client.ApiClient, chaos_credentials: None,
    results: Path,
) -> None:
    assert os.geteuid() == 0
    summary, journal, analysis = run("cut-leader", node_cluster, results)
    check_passed(summary, journal)
    done = outputs(journal)
    cut, healed = done["cut-leader"], done["heal"]
    assert cut["cut_method"] == "pod-netns", cut
    assert "no NetworkPolicy written" in cut["network_policy"], cut
    assert f"{node_cluster.service_cidr.rsplit('.', 1)[0]}.1:443" in cut["rejected"], cut  # the kubernetes Service
    # the rules bit: they rejected the cut leader's packets, and heal took them away
    assert healed["healed"][cut["cut"]]["present"] is True, healed
    assert healed["healed"][cut["cut"]]["rejected_packets"] > 0, healed
    check_failover(analysis, cut["cut"], gap_bound())
    assert _cut_chains_left(node_api) == {}


def test_the_staging_cut_a_network_policy_cuts_nothing_on_this_node(
    deployed: DeployedOperator, node_cluster: NodeCluster, node_api: client.ApiClient, chaos_credentials: None,
    results: Path,
) -> None:
    """The NetworkPolicy of ``cut_mode=network-policy`` is written and removed, and the leader never
    notices: the CNI bridge plugin enforces no policy. Should the node gain a CNI that does, this
    fails, and the node cut can go."""
    summary, journal, analysis = run("cut-leader", node_cluster, results, cut_mode="network-policy",
                                     label="cut-leader-network-policy")
    check_passed(summary, journal)
    done = outputs(journal)
    assert done["cut-leader"]["cut_method"] == "network-policy", done
    assert done["heal"]["network_policy_removed"] is True, done
    assert analysis["summary"]["transitions"] == 0, analysis["gaps"]
    assert leader_pod_now(node_api) == done["cut-leader"]["cut"]


def test_delete_lease_and_a_stolen_lease_move_the_leadership_with_no_write_by_a_non_leader(
    deployed: DeployedOperator, node_cluster: NodeCluster, node_api: client.ApiClient, chaos_credentials: None,
    results: Path,
) -> None:
    before = leader_pod_now(node_api)
    summary, journal, analysis = run("delete-lease", node_cluster, results)
    check_passed(summary, journal)
    holders = [t["identity"] for t in analysis["terms"]]
    assert "chaos-thief" in holders, holders  # the steal is in the audit log
    # the thief held it 4 s (no write of its own), then a replica took it back within the bound
    check_failover(analysis, "chaos-thief", gap_bound())
    assert before, "a leader before the experiment"

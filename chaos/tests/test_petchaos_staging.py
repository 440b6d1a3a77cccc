"""target=kubernetes: the pure parts for real, the cluster calls against recording fakes.

The same activities run against the embedded API server in
scenarios/test_chaos_kubernetes_target.py.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from petchaos import actions, probes, staging
from petchaos.staging import Settings, check_frozen, leader_problems, pod_of_holder

NOW = datetime.datetime(2026, 11, 28, 3, 0, 0, tzinfo=datetime.UTC)


def pod(name: str, ready: bool = True, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-28T02:59:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def lease(holder: str = "pet-operator-abc-1_0a1b2c3d", renewed_seconds_ago: float = 1, duration: int = 15
          ) -> dict[str, Any]:
    renew = (NOW - datetime.timedelta(seconds=renewed_seconds_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"metadata": {"name": "pet-operator-leader"},
            "spec": {"holderIdentity": holder, "renewTime": renew, "leaseDurationSeconds": duration}}


@pytest.mark.parametrize(("holder", "expected"), [
    ("pet-operator-abc-1_0a1b2c3d", "pet-operator-abc-1"),
    ("host_with_underscores_deadbeef", "host_with_underscores"),
    ("plain-name", "plain-name"),
    ("_x", "_x"),
    ("name_", "name_"),
])
def test_the_leader_pod_is_the_holder_identity_without_its_suffix(holder: str, expected: str) -> None:
    assert pod_of_holder(holder) == expected


def test_one_fresh_holder_on_a_ready_pod_is_the_steady_state() -> None:
    leader, problems = leader_problems(lease(), [pod("pet-operator-abc-1"), pod("pet-operator-abc-2")], NOW)
    assert (leader, problems) == ("pet-operator-abc-1", [])


@pytest.mark.parametrize(("the_lease", "pods", "problem"), [
    (None, [pod("pet-operator-abc-1")], "no leader Lease"),
    (lease(holder=""), [pod("pet-operator-abc-1")], "has no holder"),
    (lease(renewed_seconds_ago=20), [pod("pet-operator-abc-1")], "last renewed 20.0s ago (lease 15s): nobody leads"),
    (lease(holder="chaos-thief"), [pod("pet-operator-abc-1")], "'chaos-thief' is not a pod of the operator"),
    (lease(), [pod("pet-operator-abc-1", ready=False)], "the leader pod pet-operator-abc-1 is not ready"),
    (lease(), [pod("pet-operator-abc-1"), pod("pet-operator-abc-2", deleting=True)],
     "operator pods not ready: ['pet-operator-abc-2']"),
    (lease(), [], "no operator pods"),
])
def test_leader_problems(the_lease: dict[str, Any] | None, pods: list[dict[str, Any]], problem: str) -> None:
    _, problems = leader_problems(the_lease, pods, NOW)
    assert any(problem in p for p in problems), problems


def test_clock_skew_is_tolerated_up_to_the_setting() -> None:
    assert leader_problems(lease(renewed_seconds_ago=16.5), [pod("pet-operator-abc-1")], NOW, skew=2)[1] == []
    assert leader_problems(lease(renewed_seconds_ago=16.5), [pod("pet-operator-abc-1")], NOW, skew=1)[1]


def test_settings_fill_defaults_and_refuse_a_bad_skew() -> None:
    s = Settings({"target": "kubernetes", "operator_namespace": "ops", "pets_namespaces": "a, b,", "lease_name": ""})
    assert (s.operator_namespace, s.pets_namespaces, s.lease_name) == ("ops", ["a", "b"], "pet-operator-leader")
    assert s.operator_selector == "app.kubernetes.io/name=pet-operator"
    with pytest.raises(ValueError, match=r"clock_skew_seconds 'soon' must be a number"):
        Settings({"clock_skew_seconds": "soon"})


def test_frozen_processes_are_reported_and_pid_1_is_explained() -> None:
    assert check_frozen("p", '{"7": "T", "9": "S"}\n') == [7]
    with pytest.raises(RuntimeError, match=r"PID 1 of its container.*tini.*shareProcessNamespace"):
        check_frozen("p", '{"1": "S"}')
    with pytest.raises(RuntimeError, match="no pet-operator process found"):
        check_frozen("p", "{}")
    with pytest.raises(RuntimeError, match="unexpected output"):
        check_frozen("p", "sh: python3: not found")


def test_only_stop_and_cont_are_sent() -> None:
    with pytest.raises(ValueError, match="'SIGKILL': only SIGSTOP and SIGCONT"):
        staging.freeze_script("SIGKILL")


def test_the_freeze_script_stops_and_thaws_the_processes_it_names() -> None:
    """The script the exec runs, run here for real on a process of our own."""
    word = f"petchaos-test-{os.getpid()}-{time.monotonic_ns()}"
    target = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(60)", word])
    try:
        stopped = check_frozen("here", _run_script("SIGSTOP", word))
        assert stopped == [target.pid]
        with open(f"/proc/{target.pid}/status") as f:
            assert "State:\tT" in f.read()
        states = json.loads(_run_script("SIGCONT", word))
        assert states == {str(target.pid): "S"}
    finally:
        target.send_signal(signal.SIGCONT)
        target.kill()
        target.wait()


def _run_script(signal_name: str, word: str) -> str:
    cmd = staging.freeze_script(signal_name, [word])
    assert cmd[:2] == ["python3", "-c"]
    return subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True, check=True, timeout=30).stdout


def test_the_cut_denies_all_egress_of_the_labelled_pod() -> None:
    policy = staging.cut_policy("ops")
    assert policy["metadata"]["namespace"] == "ops"
    assert policy["spec"] == {"podSelector": {"matchLabels": {staging.CUT_LABEL: "true"}},
                              "policyTypes": ["Egress"], "egress": []}


@pytest.mark.parametrize(("status", "generation", "ok"), [
    ({"readyReplicas": 2, "updatedReplicas": 2, "replicas": 2, "observedGeneration": 3}, 3, True),
    ({"readyReplicas": 1, "updatedReplicas": 2, "replicas": 2, "observedGeneration": 3}, 3, False),
    ({"readyReplicas": 2, "updatedReplicas": 2, "replicas": 3, "observedGeneration": 3}, 3, False),
    ({"readyReplicas": 2, "updatedReplicas": 2, "replicas": 2, "observedGeneration": 2}, 3, False),
])
def test_deployment_ready(status: dict[str, Any], generation: int, ok: bool) -> None:
    deployment = {"metadata": {"generation": generation}, "spec": {"replicas": 2}, "status": status}
    assert staging.deployment_ready(deployment)[0] is ok


# --- activities, the cluster replaced by recording fakes --------------------------------------------


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state: dict[str, Any] = {"lease": lease(), "pods": [pod("pet-operator-abc-1"), pod("pet-operator-abc-2")],
                             "calls": []}
    monkeypatch.setattr(staging, "_api", lambda: "api")
    monkeypatch.setattr(staging, "_read_lease", lambda api, s: state["lease"])
    monkeypatch.setattr(staging, "_operator_pods", lambda api, s: state["pods"])
    monkeypatch.setattr(staging, "_now", lambda: NOW)
    return state


K8S = {"target": "kubernetes", "operator_namespace": "ops"}


def test_kill_deletes_exactly_the_leader_pod_at_once(cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import chaosk8s.pod.actions as pod_actions

    def terminate_pods(**kwargs: Any) -> list[str]:
        cluster["calls"].append(kwargs)
        return ["pet-operator-abc-1"]

    monkeypatch.setattr(pod_actions, "terminate_pods", terminate_pods)
    assert actions.kill_leader(configuration=K8S)["killed"] == "pet-operator-abc-1"
    assert cluster["calls"] == [{"label_selector": "app.kubernetes.io/name=pet-operator",
                                 "name_pattern": "^pet\\-operator\\-abc\\-1$", "ns": "ops", "grace_period": 0}]


def test_no_leader_no_kill(cluster: dict[str, Any]) -> None:
    cluster["lease"] = lease(holder="chaos-thief")
    with pytest.raises(RuntimeError, match=r"no leader pod in ops .*'chaos-thief' is not a pod"):
        actions.kill_leader(configuration=K8S)


def test_freeze_execs_sigstop_in_the_leader_and_thaw_sigcont_in_all(
    cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import chaosk8s.pod.actions as pod_actions

    def exec_in_pods(**kwargs: Any) -> list[dict[str, Any]]:
        cluster["calls"].append(kwargs)
        return [{"pod_name": "pet-operator-abc-1", "stdout": '{"7": "T"}\n', "exit_code": 0}]

    monkeypatch.setattr(pod_actions, "exec_in_pods", exec_in_pods)
    frozen = actions.freeze_leader(seconds=30, configuration=K8S)
    assert (frozen["frozen"], frozen["pids"]) == ("pet-operator-abc-1", [7])
    stop = cluster["calls"][0]
    assert stop["cmd"][3] == "SIGSTOP"
    assert (stop["name_pattern"], stop["container_name"], stop["ns"]) == (
        "^pet\\-operator\\-abc\\-1$", "operator", "ops")
    assert staging._timers  # the safety-net thaw is armed
    assert actions.thaw(configuration=K8S) == {"thawed": ["pet-operator-abc-1"]}
    cont = cluster["calls"][1]
    assert (cont["cmd"][3], cont["all"]) == ("SIGCONT", True)
    assert staging._timers == []  # and disarmed


def test_a_container_name_that_matches_nothing_is_named(
    cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import chaosk8s.pod.actions as pod_actions

    monkeypatch.setattr(pod_actions, "exec_in_pods", lambda **kwargs: [])
    with pytest.raises(RuntimeError, match=r"container named 'op' .*operator_container"):
        actions.freeze_leader(seconds=30, configuration={**K8S, "operator_container": "op"})


@pytest.mark.parametrize("func", ["restart_apiserver", "restart_etcd"])
def test_control_plane_restarts_are_refused_on_a_real_cluster(func: str) -> None:
    with pytest.raises(staging.NotAvailableOnTarget, match=r"needs access to its nodes.*target=local"):
        getattr(actions, func)(configuration=K8S)


def test_the_probe_on_kubernetes_waits_for_the_steady_state(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([{"ok": False, "problems": ["ns/a: phase Pending"]}, {"ok": True, "problems": []}])
    monkeypatch.setattr(staging, "_api", lambda: "api")
    monkeypatch.setattr(staging, "snapshot", lambda s, api: next(answers))
    monkeypatch.setattr(staging.time, "sleep", lambda seconds: None)
    assert probes.steady_state(timeout=30, configuration=K8S) is True


def test_the_probe_on_kubernetes_reports_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staging, "_api", lambda: "api")
    monkeypatch.setattr(staging, "snapshot", lambda s, api: {"ok": False, "problems": ["no leader Lease"]})
    details = probes.steady_state_details(timeout=0, configuration=K8S)
    assert details == {"ok": False, "details": {"ok": False, "problems": ["no leader Lease"], "waited_seconds": 0.0}}
    with pytest.raises(RuntimeError, match="no leader Lease"):
        probes.require_steady_state(timeout=0, configuration=K8S)

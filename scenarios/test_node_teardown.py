"""A node cluster leaves nothing behind: after a normal stop, after an exception, after Ctrl-C of its
owner (its watcher killed first), after SIGKILL of its owner (the watcher tears it down), after
SIGKILL of owner and watcher both (the next start sweeps it), and a link of the bridge's name that
is not the node's is refused and left alone. Each test runs a pod first, so there are containers,
shims, mounts, veths, conntrack entries and cgroups to clean; ``node_teardown.leftovers`` checks
processes, mounts, links, iptables chains, nft tables, cgroups, conntrack entries, host paths,
sysctls, the work folder and the state file.

Marker ``node`` (tox env ``node``); each test starts its own node cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from node_support import require_root, restricted_pod, wait_ready

from pet_harness.clusters import node_teardown
from pet_harness.clusters.base import ClusterError
from pet_harness.clusters.node import NodeCluster
from pet_harness.kubeclient import api_client
from pet_harness.processes import pid_alive
from pet_harness.waiting import wait_for

pytestmark = pytest.mark.node

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def before() -> dict[str, Any]:
    require_root()
    assert not node_teardown.STATE_FILE.exists(), "a node cluster is running on this machine already"
    return node_teardown.machine_snapshot()


def _run_a_pod(cluster: NodeCluster) -> None:
    api = api_client(cluster.kubeconfig_path)
    try:
        core = client.CoreV1Api(api)
        core.create_namespaced_pod("default", restricted_pod("worker", cluster.toolbox_image, ["listen", "7002"]))
        wait_ready(core, "default", "worker")
        client_pod = restricted_pod("caller", cluster.toolbox_image, ["connect", "10.244.0.1:1", "1"], restart="Never")
        core.create_namespaced_pod("default", client_pod)  # leaves a conntrack entry of the pod range
        wait_for(lambda: core.read_namespaced_pod("caller", "default"),
                 lambda pod: pod.status.phase in ("Succeeded", "Failed"), 60, "the caller pod to finish")
    finally:
        api.close()


def _facts(cluster: NodeCluster) -> tuple[str, str, str, str]:
    assert cluster.layout is not None
    return str(cluster.workdir), cluster.layout.bridge, cluster.pod_cidr, cluster.service_cidr


def test_a_normal_stop_leaves_nothing(before: dict[str, Any]) -> None:
    cluster = NodeCluster()
    cluster.start()
    try:
        _run_a_pod(cluster)
        facts = _facts(cluster)
        assert node_teardown.leftovers(before, *facts), "the check must see a running node"
    finally:
        cluster.stop()
    assert node_teardown.leftovers(before, *facts) == []


def _fail_inside_a_node_cluster(seen: list[tuple[str, str, str, str]]) -> None:
    with NodeCluster() as cluster:
        assert isinstance(cluster, NodeCluster)
        _run_a_pod(cluster)
        seen.append(_facts(cluster))
        raise RuntimeError("boom")


def test_an_exception_inside_the_cluster_leaves_nothing(before: dict[str, Any]) -> None:
    seen: list[tuple[str, str, str, str]] = []
    with pytest.raises(RuntimeError, match="boom"):
        _fail_inside_a_node_cluster(seen)
    assert len(seen) == 1, "the pod ran before the exception"
    assert node_teardown.leftovers(before, *seen[0]) == []


_OWNER = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    from pet_harness.clusters.node import NodeCluster
    from test_node_teardown import _run_a_pod, _facts
    with NodeCluster() as cluster:
        _run_a_pod(cluster)
        print(json.dumps(_facts(cluster)), flush=True)
        time.sleep(600)
""")


def _owner_with_a_pod() -> tuple[subprocess.Popen[str], tuple[str, str, str, str]]:
    proc = subprocess.Popen([sys.executable, "-c", _OWNER, str(REPO / "scenarios")], stdout=subprocess.PIPE,
                            text=True, cwd=REPO / "scenarios")
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the owner prints once its node runs a pod (or dies: empty line)
    if not line:
        proc.wait(30)
        pytest.fail(f"the owner process failed to start its node (exit {proc.returncode})")
    workdir, bridge, pod_cidr, service_cidr = json.loads(line)
    return proc, (workdir, bridge, pod_cidr, service_cidr)


def _watcher_of(owner: int) -> int:
    watchers = [pid for pid in node_teardown.processes_mentioning(f"--watch {owner}") if pid_alive(pid)]
    assert len(watchers) == 1, watchers
    return watchers[0]


def test_ctrl_c_of_the_owner_tears_the_node_down_itself(before: dict[str, Any]) -> None:
    proc, facts = _owner_with_a_pod()
    os.kill(_watcher_of(proc.pid), signal.SIGKILL)  # so that only the owner's own teardown can clean up
    os.kill(proc.pid, signal.SIGINT)
    proc.wait(120)
    assert proc.returncode != 0, "KeyboardInterrupt ends the owner"
    assert node_teardown.leftovers(before, *facts) == []


def test_sigkill_of_the_owner_leaves_nothing_once_the_watcher_ran(before: dict[str, Any]) -> None:
    proc, facts = _owner_with_a_pod()
    assert node_teardown.read_state().get("owner_pid") == proc.pid
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wait_for(lambda: node_teardown.STATE_FILE.exists(), lambda exists: not exists, 120,
             "the watcher to tear the node down")
    print(f"node swept by the watcher {time.monotonic() - started:.1f}s after SIGKILL of its owner")
    assert node_teardown.leftovers(before, *facts) == []


def test_a_node_whose_owner_and_watcher_were_killed_is_swept_at_the_next_start(before: dict[str, Any]) -> None:
    proc, facts = _owner_with_a_pod()
    os.kill(_watcher_of(proc.pid), signal.SIGKILL)  # the watcher first, or it would clean up at once
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert node_teardown.STATE_FILE.exists(), "nobody cleaned up yet"
    assert node_teardown.leftovers(before, *facts), "the stale node's remains are seen"
    with NodeCluster() as cluster:  # sweeps the stale node under the lock before anything else
        assert isinstance(cluster, NodeCluster)
        assert not os.path.exists(facts[0]), "the stale work folder is gone"
        new_facts = _facts(cluster)
    assert node_teardown.leftovers(before, *facts) == []
    assert node_teardown.leftovers(before, *new_facts) == []


def test_a_link_with_the_bridge_name_that_is_not_ours_is_refused_and_left_alone(before: dict[str, Any]) -> None:
    bridge = "petharness0"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)  # someone else's
    try:
        cluster = NodeCluster()
        with pytest.raises(ClusterError, match=rf"interface {bridge} exists already and is not this node's"):
            cluster.start()
        assert Path(f"/sys/class/net/{bridge}").exists(), "the teardown must not delete what it did not make"
    finally:
        subprocess.run(["ip", "link", "delete", bridge], check=False)
    assert node_teardown.leftovers(before, "", bridge, "10.244.0.0/24", "10.97.0.0/24") == []

"""``pet-harness cluster up --node`` by hand, as a user runs it: the node Ready, the operator's two
pods Running from the image built here, a pet Active through them, a bad tag refused by their
webhook, and ``cluster down`` leaving nothing on the machine (``node_teardown.leftovers``).

Marker ``node`` (tox env ``node``): root, the node's Debian packages and ``pet-harness binaries
build --node``. The cluster is a supervisor process of its own, like a user's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import pytest
from helpers import wait_phase
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from node_support import require_root

from pet_harness.clusters import node_teardown
from pet_harness.kube import PetApi
from pet_harness.kubeclient import api_client
from pet_harness.pet_deploy import OPERATOR_NAMESPACE, SELECTOR
from pet_harness.processes import pid_alive
from pet_harness.waiting import wait_for

pytestmark = pytest.mark.node

CLI = [sys.executable, "-m", "pet_harness.cli", "cluster"]
SERVED = "cli-pets"


def _running_from(pod: Any, image: str) -> bool:
    statuses = pod.status.container_statuses or []
    return (pod.status.phase == "Running" and bool(statuses)
            and all(s.ready and s.image.endswith(image.split("/")[-1]) for s in statuses))


def test_cluster_up_with_a_node_runs_the_operator_as_pods_and_down_leaves_nothing() -> None:
    require_root()
    with node_teardown.node_lock(node_teardown.lock_timeout_from_env()):  # a machine without a node
        assert not node_teardown.STATE_FILE.exists(), "a node was left behind on this machine"
        before = node_teardown.machine_snapshot()
    name = f"node-{uuid.uuid4().hex[:6]}"
    up = subprocess.run([*CLI, "up", "--name", name, "--node", "--serve", SERVED],
                        capture_output=True, text=True, timeout=1800)
    state: dict[str, Any] = {}
    try:
        assert up.returncode == 0, up.stderr[-4000:]
        assert "deploying the operator" in up.stderr, "the supervisor's progress is relayed"
        status = subprocess.run([*CLI, "status", "--name", name], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        state = json.loads(status.stdout)
        operator = state["operator"]
        assert operator["namespace"] == OPERATOR_NAMESPACE and operator["serves"] == [SERVED]
        assert f"the operator runs as pods in {OPERATOR_NAMESPACE} ({operator['image']})" in up.stderr
        assert all(c["running"] for c in state["components"].values()), state["components"]

        with api_client(up.stdout.strip()) as api:
            core = client.CoreV1Api(api)
            node = core.read_node(state["node"])
            assert [c.status for c in node.status.conditions if c.type == "Ready"] == ["True"]
            pods = [p for p in core.list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=SELECTOR).items
                    if p.metadata.deletion_timestamp is None]
            assert len(pods) == 2 and all(_running_from(p, operator["image"]) for p in pods), [
                (p.metadata.name, p.status.phase, [s.image for s in p.status.container_statuses or []]) for p in pods]
            assert all(p.spec.containers[0].image == operator["image"] for p in pods)

            pets = PetApi(api, SERVED)
            pets.create_store("shop", {"allowedTags": ["cute"]})
            pets.create_pet("rex", {"id": 8101, "name": "Rex", "store": "shop", "tags": ["cute"]})
            wait_phase(pets, "rex", "Active", timeout=90)
            with pytest.raises(ApiException) as refused:
                pets.create_pet("bad", {"id": 8102, "name": "Bad", "store": "shop", "tags": ["huge"]})
            assert refused.value.status == 422 and "huge" in str(refused.value.body)
    finally:
        down = subprocess.run([*CLI, "down", "--name", name], capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stdout
    pids = [state.get("supervisor_pid"), *(c["pid"] for c in state.get("components", {}).values())]
    for pid in filter(None, pids):
        wait_for(lambda pid=pid: pid_alive(int(pid)), lambda alive: not alive, 30, f"pid {pid} to be gone")
    facts = (str(state["workdir"]), str(state["bridge"]), str(state["pod_cidr"]), str(state["service_cidr"]))
    # under the machine's node lock, so that a node cluster started by someone else since is not
    # taken for ours (it holds the lock while it runs)
    with node_teardown.node_lock(node_teardown.lock_timeout_from_env()):
        assert node_teardown.leftovers(before, *facts) == []

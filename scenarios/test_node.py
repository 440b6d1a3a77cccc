"""The node backend, for real: a Ready node, restricted pods running from images made here, the pod
network (pod to pod, pod to Service through kube-proxy) and nothing reaching outside the machine.

Marker ``node`` (tox env ``node``): root, the node's Debian packages and ``pet-harness binaries
build --node``. One node cluster for the module.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from kubernetes import client
from node_support import (
    POD_UID,
    pids_with_cmdline,
    restricted_namespace,
    restricted_pod,
    uids_of,
    wait_phase,
    wait_ready,
)

from pet_harness import versions
from pet_harness.clusters.base import ClusterError
from pet_harness.clusters.node import NodeCluster
from pet_harness.clusters.node_network import GUARD_CHAIN, INPUT_SUFFIX
from pet_harness.waiting import wait_for

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def core(node_api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(node_api)


def test_the_node_is_ready_with_the_pinned_kubelet_on_its_bridge_address(
    node_cluster: NodeCluster, core: client.CoreV1Api
) -> None:
    node = core.read_node(node_cluster.node_name)
    ready = [c for c in node.status.conditions if c.type == "Ready"]
    assert ready and ready[0].status == "True", node.status.conditions
    assert node.status.node_info.kubelet_version == f"v{versions.KUBERNETES_VERSION}"
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    addresses = {a.type: a.address for a in node.status.addresses}
    assert node_cluster.layout is not None
    assert addresses["InternalIP"] == node_cluster.layout.node_ip
    running = {name: proc is not None and proc.running for name, proc in node_cluster.components().items()}
    assert all(running.values()), running


def test_a_restricted_pod_runs_as_65532_from_an_image_made_here(
    node_cluster: NodeCluster, core: client.CoreV1Api
) -> None:
    ns = restricted_namespace(core, "restricted-pod")
    core.create_namespaced_pod(ns, restricted_pod("sleeper", node_cluster.toolbox_image, ["listen", "7001"]))
    pod = wait_ready(core, ns, "sleeper")
    assert pod.status.phase == "Running"
    assert pod.status.pod_ip.startswith(node_cluster.pod_cidr.rsplit(".", 1)[0] + ".")
    # the container's process on this machine runs as the pod's uid, not root
    pids = pids_with_cmdline("/toolbox listen 7001")
    assert pids, "the container's process is not on the machine"
    assert all(uids_of(pid) == [POD_UID] * 4 for pid in pids), [uids_of(p) for p in pids]


def test_pod_security_restricted_refuses_a_root_pod(node_cluster: NodeCluster, core: client.CoreV1Api) -> None:
    ns = restricted_namespace(core, "refuses-root")
    pod = restricted_pod("root", node_cluster.toolbox_image, ["sleep"])
    pod["spec"]["securityContext"] = {"runAsUser": 0}
    with pytest.raises(client.ApiException) as info:
        core.create_namespaced_pod(ns, pod)
    assert info.value.status == 403
    assert "violates PodSecurity" in str(info.value.body)


def _connect(core: client.CoreV1Api, ns: str, image: str, name: str, target: str) -> tuple[str, str]:
    """Run a pod that connects to ``target``; its final phase and its log."""
    core.create_namespaced_pod(ns, restricted_pod(name, image, ["connect", target, "3"], restart="Never"))
    pod = wait_phase(core, ns, name, {"Succeeded", "Failed"})
    return pod.status.phase, core.read_namespaced_pod_log(name, ns)


def test_pods_reach_pods_and_services_on_the_node_but_nothing_outside_the_machine(
    node_cluster: NodeCluster, core: client.CoreV1Api
) -> None:
    ns = restricted_namespace(core, "network")
    image = node_cluster.toolbox_image
    core.create_namespaced_pod(ns, restricted_pod("server", image, ["listen", "8080"], labels={"app": "server"}))
    server = wait_ready(core, ns, "server")
    service = core.create_namespaced_service(ns, {
        "metadata": {"name": "server"},
        "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080}]},
    })
    assert service.spec.cluster_ip.startswith(node_cluster.service_cidr.rsplit(".", 1)[0] + ".")

    phase, log = _connect(core, ns, image, "to-pod", f"{server.status.pod_ip}:8080")
    assert (phase, log.strip()) == ("Succeeded", f"connected to {server.status.pod_ip}:8080"), log
    phase, log = _connect(core, ns, image, "to-service", f"{service.spec.cluster_ip}:80")
    assert phase == "Succeeded", f"through kube-proxy's rules: {log}"

    phase, log = _connect(core, ns, image, "to-outside", "1.1.1.1:53")
    assert phase == "Failed", log
    assert "cannot connect to 1.1.1.1:53" in log and "network is unreachable" in log, log


def _api_call(core: client.CoreV1Api, ns: str, image: str, name: str, *request: str) -> tuple[str, str]:
    """Run a pod that sends one request to the API server as an in-cluster client does
    (``$KUBERNETES_SERVICE_HOST``, its service-account token, the mounted CA); its phase and log."""
    wait_for(lambda: core.list_namespaced_service_account(ns).items, bool, 60,
             f"the default ServiceAccount of {ns}")
    pod = restricted_pod(name, image, ["api", *request], restart="Never")
    pod["spec"]["automountServiceAccountToken"] = True
    core.create_namespaced_pod(ns, pod)
    done = wait_phase(core, ns, name, {"Succeeded", "Failed"})
    return done.status.phase, core.read_namespaced_pod_log(name, ns)


def test_pods_reach_the_api_server_through_the_kubernetes_service_with_their_token(
    node_cluster: NodeCluster, core: client.CoreV1Api
) -> None:
    """The API server listens on the node's address, which is the ``kubernetes`` Service's endpoint;
    kube-proxy sends the ClusterIP there and the serving certificate is valid for the ClusterIP."""
    endpoints = core.read_namespaced_endpoints("kubernetes", "default")
    addresses = [(a.ip, p.port) for subset in endpoints.subsets for a in subset.addresses for p in subset.ports]
    assert addresses == [(node_cluster.node_ip, node_cluster.apiserver_port)], addresses
    ns = restricted_namespace(core, "in-cluster")
    image = node_cluster.toolbox_image
    review = '{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}'
    phase, log = _api_call(core, ns, image, "whoami", "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                           review)
    assert phase == "Succeeded", log
    status, _, body = log.strip().partition(" ")
    assert status == "201", log
    assert json.loads(body)["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:default", body
    # the token is the pod's, held to RBAC: the default account may not list pods
    phase, log = _api_call(core, ns, image, "list-pods", "GET", f"/api/v1/namespaces/{ns}/pods")
    assert phase == "Failed", log
    assert log.startswith("403 ") and f"system:serviceaccount:{ns}:default" in log, log


@pytest.mark.parametrize("binary", ["iptables", "ip6tables"])
def test_the_guard_chain_is_the_first_forward_rule(node_cluster: NodeCluster, binary: str) -> None:
    forward = subprocess.run([binary, "-w", "5", "-t", "mangle", "-S", "FORWARD"], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    rules = [line for line in forward if line.startswith("-A ")]
    assert rules[0] == f"-A FORWARD -j {GUARD_CHAIN}", rules
    guard = subprocess.run([binary, "-w", "5", "-t", "mangle", "-S", GUARD_CHAIN], capture_output=True, text=True,
                           check=True).stdout
    bridge = node_cluster.layout.bridge if node_cluster.layout else "?"
    assert f"-A {GUARD_CHAIN} -i {bridge} -o {bridge} -j RETURN" in guard
    assert f"-A {GUARD_CHAIN} -i {bridge} -j DROP" in guard
    assert f"-A {GUARD_CHAIN} -o {bridge} -j DROP" in guard


def test_the_node_address_is_guarded_first_in_input(node_cluster: NodeCluster) -> None:
    """The API server and the kubelet listen on the node's address: only loopback and the bridge
    may reach it."""
    chain = GUARD_CHAIN + INPUT_SUFFIX
    listing = subprocess.run(["iptables", "-w", "5", "-t", "mangle", "-S", "INPUT"], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert next(line for line in listing if line.startswith("-A ")) == f"-A INPUT -j {chain}", listing
    rules = subprocess.run(["iptables", "-w", "5", "-t", "mangle", "-S", chain], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    bridge = node_cluster.layout.bridge if node_cluster.layout else "?"
    assert rules[1:] == [f"-A {chain} -i lo -j RETURN", f"-A {chain} -i {bridge} -j RETURN",
                         f"-A {chain} -d {node_cluster.node_ip}/32 -j DROP"], rules


def test_pods_have_no_default_route(node_cluster: NodeCluster) -> None:
    """The only route the CNI network gives besides the pod range is the service range."""
    assert node_cluster.layout is not None
    text = next(node_cluster.layout.cni_conf_dir.glob("*.conflist")).read_text()
    assert '"isDefaultGateway": false' in text and '"ipMasq": false' in text
    assert f'"dst": "{node_cluster.service_cidr}"' in text and "0.0.0.0/0" not in text


def test_a_second_node_cluster_on_the_machine_fails_naming_the_first(node_cluster: NodeCluster) -> None:
    second = NodeCluster(lock_timeout=1)
    with pytest.raises(ClusterError, match=r"another node cluster holds .*only one runs on a machine at a time"):
        second.start()
    assert node_cluster.kubelet is not None and node_cluster.kubelet.running, "the first one is untouched"

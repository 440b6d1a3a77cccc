"""The operator deployed for real on the node backend: its image built here from the project's
Dockerfile by BuildKit, the manifests of deploy/ applied (namespaced RBAC, webhook configurations
through the Service, Deployment of two replicas with leader election, Service, PDB) in a namespace
enforcing Pod Security ``restricted``.

Marker ``node`` (tox env ``node``): root, the node's Debian packages and ``pet-harness binaries
build --node``. One node cluster and one deployment for the module.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

import pytest
from helpers import wait_phase
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from node_support import POD_UID, Writer, operator_exec

from pet_harness.clusters.node import NodeCluster
from pet_harness.kube import PetApi
from pet_harness.pet_deploy import (
    DEPLOYMENT,
    OPERATOR_NAMESPACE,
    SELECTOR,
    SERVICE,
    DeployedOperator,
    deploy_operator,
    deployment_available,
)
from pet_harness.pet_image import image_labels, operator_image
from pet_harness.waiting import wait_for
from petchaos import netns_cut
from petchaos.staging import check_frozen, freeze_script

pytestmark = pytest.mark.node

SERVED = ("node-pets", "node-doomed")
CLAIM_LABEL = "petstore.example.com/id-claim=true"


@pytest.fixture(scope="module")
def api(node_api: client.ApiClient) -> client.ApiClient:
    return node_api


@pytest.fixture(scope="module")
def deployed(node_cluster: NodeCluster, api: client.ApiClient) -> DeployedOperator:
    image = operator_image()
    return deploy_operator(node_cluster, api, image, SERVED)


def _operator_pods(api: client.ApiClient) -> list[Any]:
    pods = client.CoreV1Api(api).list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=SELECTOR).items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def _leader(api: client.ApiClient) -> str:
    lease = client.CoordinationV1Api(api).read_namespaced_lease("pet-operator-leader", OPERATOR_NAMESPACE)
    return str(lease.spec.holder_identity or "")


def test_two_replicas_run_as_restricted_pods_from_the_image_built_here(
    deployed: DeployedOperator, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    labels = core.read_namespace(OPERATOR_NAMESPACE).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = _operator_pods(api)
    assert len(pods) == 2, [p.metadata.name for p in pods]
    for pod in pods:
        assert pod.status.phase == "Running"
        # Ready comes from the readiness probe the kubelet sends to /readyz
        assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions), pod.status.conditions
        (container,) = pod.spec.containers
        assert (container.image, container.image_pull_policy) == (deployed.image, "Never")
        assert container.readiness_probe.http_get.path == "/readyz"
        assert pod.spec.security_context.run_as_user == POD_UID
        assert container.security_context.read_only_root_filesystem is True
        (status,) = pod.status.container_statuses
        assert status.restart_count == 0, f"{pod.metadata.name} restarted: {status.last_state}"
    # one of the two holds the leader Lease, named after its pod
    holder = wait_for(lambda: _leader(api), bool, 60, "a leader")
    assert holder.rsplit("_", 1)[0] in {p.metadata.name for p in pods}, holder


def test_the_image_carries_the_packages_version_in_its_labels_and_its_cli(
    deployed: DeployedOperator, api: client.ApiClient
) -> None:
    """One version: the image's OCI labels and ``pet-operator --version`` inside the running pod say
    what the package says here (the build context has no .git: the harness passes it in)."""
    from pet_operator.version import version

    labels = image_labels(operator_image().tar)
    assert labels["org.opencontainers.image.version"] == version()
    assert len(labels["org.opencontainers.image.revision"]) == 40  # the git commit
    pod = _operator_pods(api)[0].metadata.name
    said = _exec(api, pod, ["/opt/venv/bin/pet-operator", "--version"]).strip()
    assert said == f"pet-operator {version()}", said


def test_pets_go_active_through_the_deployed_operator(deployed: DeployedOperator, api: client.ApiClient) -> None:
    pets = PetApi(api, SERVED[0])
    pets.create_store("shop", {"allowedTags": ["cute", "small"]})
    pets.create_pet("rex", {"id": 7101, "name": "Rex", "store": "shop", "tags": ["cute"]})
    pet = wait_phase(pets, "rex", "Active", timeout=60)
    assert pet["status"]["reason"] == "Reconciled"
    # the mutating webhook (through the Service) put the id-claim finalizer on at create
    assert "petstore.example.com/id-claim" in pet["metadata"]["finalizers"]


def test_a_bad_tag_is_refused_by_the_webhook_through_the_service(
    deployed: DeployedOperator, api: client.ApiClient
) -> None:
    config = client.AdmissionregistrationV1Api(api).read_validating_webhook_configuration("pet-operator")
    assert all(h.client_config.url is None and h.client_config.service.name == SERVICE for h in config.webhooks)
    pets = PetApi(api, SERVED[0])
    pets.create_store("strict", {"allowedTags": ["calm"]})
    with pytest.raises(ApiException) as info:
        pets.create_pet("wild", {"id": 7102, "name": "Wild", "store": "strict", "tags": ["loud"]})
    assert info.value.status == 422, info.value.body
    assert "loud" in str(info.value.body) and "admission webhook" in str(info.value.body), info.value.body


def test_a_rollout_restart_while_pets_are_written_loses_no_write_and_gives_no_webhook_error(
    deployed: DeployedOperator, api: client.ApiClient
) -> None:
    apps = client.AppsV1Api(api)
    pets = PetApi(api, SERVED[0])
    pets.create_store("busy", {"allowedTags": []})
    before = {p.metadata.name for p in _operator_pods(api)}
    writer = Writer(pets, "busy", 7200)
    writer.start()
    try:
        wait_for(lambda: len(writer.created), lambda n: n >= 5, 30, "the first writes")
        # what `kubectl rollout restart` does: a new annotation on the pod template
        stamp = datetime.datetime.now(datetime.UTC).isoformat()
        apps.patch_namespaced_deployment(DEPLOYMENT, OPERATOR_NAMESPACE, {"spec": {"template": {"metadata": {
            "annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}})
        wait_for(lambda: {p.metadata.name for p in _operator_pods(api)}, lambda names: not names & before, 240,
                 "the old operator pods to be replaced")
        wait_for(lambda: deployment_available(api, 2), bool, 120, "the restarted Deployment to be available",
                 interval=0.5)
        count = len(writer.created)
        wait_for(lambda: len(writer.created), lambda n: n >= count + 5, 30, "writes after the rollout")
    finally:
        writer.stop.set()
        writer.join(30)
    assert not writer.failures, writer.failures[:5]
    assert not writer.unmutated, writer.unmutated[:5]
    assert len(writer.created) >= 10
    print(f"{len(writer.created)} pets written during the rollout restart, none refused")
    for name in writer.created:  # every write is there and is reconciled by the new leader
        wait_phase(pets, name, "Active", timeout=90)
    assert _leader(api).rsplit("_", 1)[0] in {p.metadata.name for p in _operator_pods(api)}


def _exec(api: client.ApiClient, pod: str, command: list[str]) -> str:
    return operator_exec(api, OPERATOR_NAMESPACE, pod, command)


def test_the_leader_frozen_through_exec_loses_the_lease_and_thaws_as_a_standby(
    deployed: DeployedOperator, api: client.ApiClient
) -> None:
    """What the chaos experiments' Kubernetes target does to freeze the leader: SIGSTOP through an exec
    into its container. tini is PID 1, so the operator is an ordinary process there and stops."""
    holder = wait_for(lambda: _leader(api), bool, 60, "a leader")
    frozen_pod = holder.rsplit("_", 1)[0]
    stopped = check_frozen(frozen_pod, _exec(api, frozen_pod, freeze_script("SIGSTOP")))
    frozen_at = time.monotonic()
    try:
        successor = wait_for(lambda: _leader(api), lambda h: bool(h) and not h.startswith(frozen_pod + "_"), 60,
                             "the standby to take the Lease")
        gap = time.monotonic() - frozen_at
    finally:
        thawed = _exec(api, frozen_pod, freeze_script("SIGCONT"))
    assert successor.rsplit("_", 1)[0] in {p.metadata.name for p in _operator_pods(api)}
    assert 1 not in stopped, "PID 1 is tini, not the operator"
    assert "T" not in json.loads(thawed.strip().splitlines()[-1]).values(), thawed
    print(f"leader frozen: the standby took the Lease after {gap:.1f}s (lease 15 s)")
    # the thawed replica stays a standby and writes still go through: a new pet goes Active
    pets = PetApi(api, SERVED[0])
    pets.create_store("after-freeze", {"allowedTags": []})
    pets.create_pet("thawed", {"id": 9401, "name": "thawed", "store": "after-freeze", "tags": []})
    wait_phase(pets, "thawed", "Active", timeout=60)
    assert _leader(api) == successor


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def _ready_webhook_addresses(api: client.ApiClient) -> set[str]:
    slices = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        OPERATOR_NAMESPACE, label_selector=f"kubernetes.io/service-name={SERVICE}").items
    return {address for item in slices for endpoint in item.endpoints or []
            if endpoint.conditions is None or endpoint.conditions.ready is not False
            for address in endpoint.addresses or []}


def test_a_replica_cut_off_from_the_api_server_leaves_the_webhook_service_until_healed(
    deployed: DeployedOperator, api: client.ApiClient
) -> None:
    """A standby cut off from the API server (reject rules in its pod's network namespace, as the
    chaos target's pod-netns cut makes them) cannot decide admission reviews (each CREATE reads the
    id's claim): its /readyz says why, the kubelet marks it unready, the Service stops sending it
    webhook calls, and every write goes through the other replica; healed, it is Ready again."""
    holder = wait_for(lambda: _leader(api), bool, 60, "a leader")
    core = client.CoreV1Api(api)
    # both replicas Ready behind the Service first (the frozen leader of an earlier test exits once
    # thawed and comes back through the kubelet's restart back-off)
    wait_for(lambda: _operator_pods(api), lambda pods: len(pods) == 2 and all(_ready(p) for p in pods), 120,
             "both replicas Ready")
    standby = next(p for p in _operator_pods(api) if not holder.startswith(p.metadata.name + "_"))
    name, address = standby.metadata.name, standby.status.pod_ip
    wait_for(lambda: _ready_webhook_addresses(api), lambda ready: address in ready, 60,
             f"the webhook Service to send to the standby {name}")
    restarts = standby.status.container_statuses[0].restart_count
    pets = PetApi(api, SERVED[0])
    pets.create_store("cut-shop", {"allowedTags": []})
    pid = netns_cut.pod_pid(standby.metadata.uid)
    netns_cut.cut(pid, netns_cut.apiserver_endpoints(api))
    try:
        readyz = _exec(api, name, ["/opt/venv/bin/python", "-c", READYZ])
        wait_for(lambda: core.read_namespaced_pod(name, OPERATOR_NAMESPACE), lambda pod: not _ready(pod), 60,
                 f"the cut replica {name} to turn unready")
        wait_for(lambda: _ready_webhook_addresses(api), lambda ready: address not in ready, 30,
                 "the webhook Service to drop the cut replica")
        writer = Writer(pets, "cut-shop", first_id=9501, limit=20, seconds=60, pause=0.05)
        writer.start()
        writer.join(90)
        assert not writer.failures, writer.failures[:5]
        assert len(writer.created) == 20
    finally:
        healed = netns_cut.uncut(pid)
    assert healed["present"] and healed["rejected_packets"] > 0, healed
    assert "503 no answer from the API server" in readyz, readyz
    wait_for(lambda: core.read_namespaced_pod(name, OPERATOR_NAMESPACE), _ready, 60,
             f"the healed replica {name} to be Ready again")
    wait_for(lambda: _ready_webhook_addresses(api), lambda ready: address in ready, 30,
             "the webhook Service to send to the healed replica again")
    assert core.read_namespaced_pod(name, OPERATOR_NAMESPACE).status.container_statuses[0].restart_count == restarts, \
        "the cut replica was restarted"


#: run in the cut replica: its own /readyz a few seconds into the cut (after the grace), code and body
READYZ = """
import time, urllib.error, urllib.request
deadline = time.monotonic() + 20
while True:
    try:
        with urllib.request.urlopen("http://127.0.0.1:8080/readyz", timeout=2) as answer:
            code, body = answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        code, body = error.code, error.read().decode()
    if code == 503 or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(code, body.strip())
"""


def test_deleting_a_served_namespace_finishes_and_releases_its_claims(
    deployed: DeployedOperator, api: client.ApiClient
) -> None:
    doomed = SERVED[1]
    pets = PetApi(api, doomed)
    pets.create_store("shop", {"allowedTags": []})
    ids = [9301, 9302, 9303]  # apart from the writer's range (7200 on)
    for pet_id in ids:
        pets.create_pet(f"p{pet_id}", {"id": pet_id, "name": f"p{pet_id}", "store": "shop", "tags": []})
    for pet_id in ids:
        wait_phase(pets, f"p{pet_id}", "Active", timeout=60)
    coordination = client.CoordinationV1Api(api)

    def claims() -> set[str]:
        leases = coordination.list_namespaced_lease(OPERATOR_NAMESPACE, label_selector=CLAIM_LABEL).items
        return {lease.metadata.name for lease in leases if str(lease.spec.holder_identity).startswith(f"{doomed}/")}

    assert claims() == {f"pet-id-{i}" for i in ids}
    core = client.CoreV1Api(api)
    started = time.monotonic()
    core.delete_namespace(doomed)

    def gone() -> bool:
        try:
            core.read_namespace(doomed)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    wait_for(gone, bool, 120, f"namespace {doomed} to be deleted by the namespace controller", interval=0.5)
    seconds = time.monotonic() - started
    assert claims() == set(), "the deleted pets' id claims are released"
    print(f"namespace deletion with 3 pets took {seconds:.1f}s")

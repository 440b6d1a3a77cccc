"""The Helm chart installed, upgraded and rolled back for real on the node backend, with ``helm``
itself (docs/operations/upgrade-and-rollback.md).

Two releases of the operator: the image built here from the Dockerfile with the package's version,
and a second build of the same code with another version (``pet_release.upgrade_version``), each
with the chart stamped for it (``helm package --version V --app-version V``). Revision 1 installs
the first (two replicas, webhook certificate from a Secret and a CA made here: the chart's
``webhookTLS`` source), revision 2 upgrades to the second while pets are written, revision 3 rolls
back to revision 1 while pets are written. After each step: every pod of the release runs the
expected image, and the release's appVersion, the image's version label and ``pet-operator
--version`` in a pod agree.

Marker ``node`` (tox env ``node``): root, the node's Debian packages and ``pet-harness binaries
build --node``. One node cluster for the module; step timings go to reports/helm-lifecycle.json.

    ci/tox -e node -- -k test_helm_lifecycle
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_phase
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from node_support import ID_CLAIM_FINALIZER, POD_UID, Writer, operator_exec

from pet_harness import helm, pet_chart, pet_release, webhooks
from pet_harness.clusters.node import NodeCluster
from pet_harness.clusters.node_buildkit import BuiltImage
from pet_harness.kube import REPO_ROOT, PetApi
from pet_harness.pet_image import image_labels, operator_image
from pet_harness.pet_release import NAMESPACE, RELEASE
from pet_harness.waiting import wait_for

pytestmark = pytest.mark.node

SERVED = ("helm-pets",)
REPLICAS = 2
REPORT = REPO_ROOT / "reports" / "helm-lifecycle.json"


@dataclasses.dataclass(frozen=True)
class Release:
    """One release of the operator: its image (imported into the node) and its stamped chart."""

    version: str  #: the image's version (PEP 440), in its label and its package
    image: BuiltImage
    label: str  #: the image's org.opencontainers.image.version label, read when it was built
    chart: Path


@dataclasses.dataclass
class Lifecycle:
    cluster: NodeCluster
    api: client.ApiClient
    helm: helm.Releases
    ca_pem: bytes
    first: Release
    second: Release
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def values(self, release: Release) -> dict[str, Any]:
        return pet_release.release_values(release.image.reference, SERVED, self.ca_pem, REPLICAS)


@dataclasses.dataclass(frozen=True)
class Step:
    release: Release
    revision: int
    writer: Writer | None


def _release(cluster: NodeCluster, version: str | None, charts: Path, seconds: dict[str, float]) -> Release:
    from pet_operator.version import version as package_version

    started = time.monotonic()
    image = operator_image(version=version)
    seconds[f"image {image.reference.rsplit(':', 1)[1][:12]} (built or cached)"] = round(time.monotonic() - started, 1)
    cluster.import_image(image.tar, image.reference)  # before the next build, which may prune this tar
    label = image_labels(image.tar)["org.opencontainers.image.version"]
    wanted = version or package_version()
    chart = pet_release.stamped_chart(wanted, charts / wanted)
    return Release(wanted, image, label, chart)


@pytest.fixture(scope="module")
def lifecycle(node_cluster: NodeCluster, node_api: client.ApiClient,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lifecycle]:
    from pet_operator.version import version

    seconds: dict[str, float] = {}
    charts = tmp_path_factory.mktemp("charts")
    first = _release(node_cluster, None, charts, seconds)
    second = _release(node_cluster, pet_release.upgrade_version(version()), charts, seconds)
    assert first.image.reference != second.image.reference
    ca = pet_release.prepare(node_api, SERVED)
    state = Lifecycle(node_cluster, node_api, helm.Releases(node_cluster.kubeconfig_path, NAMESPACE),
                      ca.cert_pem, first, second, seconds)
    yield state
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    # the cluster's start marks: "prepared" includes the wait for another node cluster of the machine
    REPORT.write_text(json.dumps({"seconds": state.seconds, "cluster start": node_cluster.timings,
                                  "first": first.version, "second": second.version}, indent=2) + "\n")
    print(f"helm lifecycle timings (s): {state.seconds}")


def _written_during(state: Lifecycle, first_id: int, step: str, action: Any, image: str) -> Writer:
    """Run ``action`` (a helm command) while a writer creates pets; returns once every pod runs
    ``image`` and writes went on after that."""
    pets = PetApi(state.api, SERVED[0])
    writer = Writer(pets, "busy", first_id, limit=1000, seconds=300, pause=0.2)
    writer.start()
    try:
        wait_for(lambda: len(writer.created), lambda n: n >= 5, 60, "the first writes")
        started = time.monotonic()
        action()
        state.seconds[f"{step}: helm command"] = round(time.monotonic() - started, 1)
        pet_release.wait_rolled_out(state.api, image, REPLICAS, timeout=300)
        state.seconds[f"{step}: until every pod runs the new image"] = round(time.monotonic() - started, 1)
        count = len(writer.created)
        wait_for(lambda: len(writer.created), lambda n: n >= count + 5, 60, f"writes after the {step}")
    finally:
        writer.stop.set()
        writer.join(30)
    return writer


@pytest.fixture(scope="module")
def busy_store(lifecycle: Lifecycle) -> str:
    PetApi(lifecycle.api, SERVED[0]).create_store("busy", {"allowedTags": []})
    return "busy"


@pytest.fixture(scope="module")
def installed(lifecycle: Lifecycle) -> Step:
    state = lifecycle
    started = time.monotonic()
    state.helm.install(RELEASE, state.first.chart, [state.values(state.first)])
    state.seconds["install: helm command"] = round(time.monotonic() - started, 1)
    pet_release.wait_rolled_out(state.api, state.first.image.reference, REPLICAS, timeout=300)
    state.seconds["install: pods Ready"] = round(time.monotonic() - started, 1)
    webhooks.wait_effective(state.api, SERVED[0], timeout=60)
    webhooks.wait_mutating(state.api, SERVED[0], timeout=60)
    state.seconds["install: webhooks answered through the Service"] = round(time.monotonic() - started, 1)
    return Step(state.first, 1, None)


@pytest.fixture(scope="module")
def crds_applied(installed: Step, lifecycle: Lifecycle) -> list[str]:
    """The procedure's CRD step before the upgrade (Helm never upgrades crds/): server-side apply."""
    started = time.monotonic()
    names = pet_release.apply_crds(lifecycle.api)
    lifecycle.seconds["upgrade: CRDs applied server-side"] = round(time.monotonic() - started, 1)
    return names


@pytest.fixture(scope="module")
def upgraded(installed: Step, lifecycle: Lifecycle, busy_store: str, crds_applied: list[str]) -> Step:
    state = lifecycle
    writer = _written_during(state, 20000, "upgrade",
                             lambda: state.helm.upgrade(RELEASE, state.second.chart, [state.values(state.second)]),
                             state.second.image.reference)
    return Step(state.second, 2, writer)


@pytest.fixture(scope="module")
def rolled_back(upgraded: Step, lifecycle: Lifecycle, busy_store: str) -> Step:
    state = lifecycle
    writer = _written_during(state, 30000, "rollback", lambda: state.helm.rollback(RELEASE, 1),
                             state.first.image.reference)
    return Step(state.first, 3, writer)


def _running_pods(api: client.ApiClient) -> list[Any]:
    return [p for p in pet_release.release_pods(api) if p.metadata.deletion_timestamp is None]


def _check_step(state: Lifecycle, step: Step) -> None:
    """The pods run the step's image; its revision is the deployed one; the release's appVersion,
    the image's label and ``pet-operator --version`` in a pod agree."""
    pods = _running_pods(state.api)
    assert len(pods) == REPLICAS
    for pod in pods:
        (container,) = pod.spec.containers
        assert (container.image, container.image_pull_policy) == (step.release.image.reference, "Never")
        assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions), pod.status.conditions
    history = state.helm.history(RELEASE)
    assert (history[-1]["revision"], history[-1]["status"]) == (step.revision, "deployed"), history
    app_version = history[-1]["app_version"]
    said = operator_exec(state.api, NAMESPACE, pods[0].metadata.name, ["/opt/venv/bin/pet-operator", "--version"])
    assert pet_chart.release_version_problems(app_version, step.release.label, said) == []
    # the check can fail: the other release's image does not agree with this revision's chart
    other = state.second if step.release is state.first else state.first
    assert pet_chart.release_version_problems(app_version, other.label, f"pet-operator {other.label}")


def _check_writes(state: Lifecycle, step: Step) -> None:
    writer = step.writer
    assert writer is not None
    assert not writer.failures, writer.failures[:5]  # a webhook error would refuse a write (failurePolicy Fail)
    assert not writer.unmutated, writer.unmutated[:5]  # ... or leave a pet unpatched (failurePolicy Ignore)
    assert len(writer.created) >= 10
    pets = PetApi(state.api, SERVED[0])
    for name in writer.created:  # every write is there and is reconciled
        wait_phase(pets, name, "Active", timeout=120)
    print(f"revision {step.revision}: {len(writer.created)} pets written, none refused")


def test_install_runs_ready_restricted_pods_of_the_image_built_here(installed: Step, lifecycle: Lifecycle) -> None:
    state = lifecycle
    core = client.CoreV1Api(state.api)
    assert core.read_namespace(NAMESPACE).metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # the API server enforces it: a pod that runs as root with privilege escalation is refused
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "not-restricted"},
            "spec": {"containers": [{"name": "c", "image": installed.release.image.reference}]}}
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(NAMESPACE, bare, dry_run="All")
    assert refused.value.status == 403 and "restricted" in str(refused.value.body), refused.value.body
    _check_step(state, installed)
    for pod in _running_pods(state.api):
        assert pod.spec.security_context.run_as_user == POD_UID
        assert pod.spec.containers[0].security_context.read_only_root_filesystem is True
        assert pod.status.container_statuses[0].restart_count == 0
    # the webhook configurations trust the CA given in values (the chart's webhookTLS source)
    admission = client.AdmissionregistrationV1Api(state.api)
    for config in (admission.read_validating_webhook_configuration(RELEASE),
                   admission.read_mutating_webhook_configuration(RELEASE)):
        assert all(h.client_config.ca_bundle == state.values(state.first)["webhookTLS"]["caBundle"]
                   for h in config.webhooks)
        assert all(h.client_config.url is None and h.client_config.service.name == f"{RELEASE}-webhook"
                   for h in config.webhooks)


def test_a_pet_goes_active_through_the_installed_operator(installed: Step, lifecycle: Lifecycle) -> None:
    pets = PetApi(lifecycle.api, SERVED[0])
    pets.create_store("shop", {"allowedTags": ["cute"]})
    pets.create_pet("rex", {"id": 10001, "name": "Rex", "store": "shop", "tags": ["cute"]})
    pet = wait_phase(pets, "rex", "Active", timeout=90)
    assert pet["status"]["reason"] == "Reconciled"
    assert ID_CLAIM_FINALIZER in pet["metadata"]["finalizers"]


def test_a_bad_tag_is_refused_through_the_webhook_service(installed: Step, lifecycle: Lifecycle) -> None:
    pets = PetApi(lifecycle.api, SERVED[0])
    pets.create_store("strict", {"allowedTags": ["calm"]})
    with pytest.raises(ApiException) as info:
        pets.create_pet("wild", {"id": 10002, "name": "Wild", "store": "strict", "tags": ["loud"]})
    assert info.value.status == 422, info.value.body
    assert "loud" in str(info.value.body) and "admission webhook" in str(info.value.body), info.value.body


def test_an_upgrade_to_a_new_image_while_pets_are_written_loses_no_write(upgraded: Step, lifecycle: Lifecycle) -> None:
    _check_step(lifecycle, upgraded)
    _check_writes(lifecycle, upgraded)


def test_the_crd_step_takes_the_crds_over_from_helm(crds_applied: list[str], lifecycle: Lifecycle) -> None:
    """The CRDs Helm created on install now belong to the procedure's field manager too (the same
    files: this proves the step, not a schema change), and Helm left them in place."""
    assert sorted(crds_applied) == ["pets.petstore.example.com", "petstores.petstore.example.com"]
    extensions = client.ApiextensionsV1Api(lifecycle.api)
    for name in crds_applied:
        crd = extensions.read_custom_resource_definition(name)
        managers = {f.manager for f in crd.metadata.managed_fields or []}
        assert pet_release.CRD_FIELD_MANAGER in managers, managers
        assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)


def test_a_rollback_to_revision_1_while_pets_are_written_loses_no_write(
    rolled_back: Step, lifecycle: Lifecycle
) -> None:
    _check_step(lifecycle, rolled_back)
    _check_writes(lifecycle, rolled_back)
    # the pets of the first revision are still served by the rolled-back operator
    assert PetApi(lifecycle.api, SERVED[0]).get_pet("rex")["status"]["phase"] == "Active"


def test_helm_history_shows_install_upgrade_and_rollback(rolled_back: Step, lifecycle: Lifecycle) -> None:
    state = lifecycle
    first, second = (pet_chart.semver(r.version) for r in (state.first, state.second))
    history = [(e["revision"], e["status"], e["chart"], e["app_version"], e["description"])
               for e in state.helm.history(RELEASE)]
    assert history == [
        (1, "superseded", f"pet-operator-{first}", first, "Install complete"),
        (2, "superseded", f"pet-operator-{second}", second, "Upgrade complete"),
        (3, "deployed", f"pet-operator-{first}", first, "Rollback to 1"),
    ]

"""The pet-operator chart as a Helm release on a node cluster: installed, upgraded and rolled back
with ``helm`` itself (docs/operations/upgrade-and-rollback.md).

What the harness supplies around ``helm``, and nothing more:

* the chart stamped for an image (:func:`stamped_chart`: ``helm package`` with the SemVer form of
  the image's version as ``version`` and ``appVersion``), as a release would ship it;
* the values (:func:`release_values`): the image built here (``imagePullPolicy: Never``: there is
  no registry), the served namespaces, and the webhook certificate from a Secret it makes with its
  own CA (the chart's ``webhookTLS`` source: no cert-manager runs here, and the operator's own
  certificate would allow one replica only);
* the namespaces (:func:`prepare`), the operator's enforcing Pod Security ``restricted``;
* the waits that say a step is done (:func:`wait_rolled_out`): the Deployment available and every
  pod of the release, terminating ones included, running the expected image;
* the CRD step of an upgrade, which Helm never does (:func:`apply_crds`): what ``kubectl apply
  --server-side --force-conflicts -f deploy/crds/`` sends.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernetes import client
from packaging.version import Version

from pet_harness import helm, pet_chart
from pet_harness.kube import REPO_ROOT, load_yaml_documents
from pet_harness.pet_deploy import (
    OPERATOR_NAMESPACE,
    RESTRICTED,
    SELECTOR,
    TLS_SECRET,
    apply_object,
    deployment_available,
    ensure_namespace,
    webhook_tls,
)
from pet_harness.pki import CertificateAuthority
from pet_harness.waiting import wait_for

RELEASE = pet_chart.RELEASE
NAMESPACE = pet_chart.NAMESPACE
if NAMESPACE != OPERATOR_NAMESPACE:  # the Secret and the waits of pet_deploy name that namespace
    raise RuntimeError(f"the chart's namespace {NAMESPACE!r} is not pet_deploy's {OPERATOR_NAMESPACE!r}")


def upgrade_version(version: str) -> str:
    """Another PEP 440 version of the same code, for the image of an upgrade: ``version`` with
    ``upgrade`` added to its local part (``0.1.0.dev7+gabc`` gives ``0.1.0.dev7+gabc.upgrade``)."""
    v = Version(version)
    return f"{v.public}+{v.local}.upgrade" if v.local else f"{v.public}+upgrade"


def stamped_chart(image_version: str, destination: Path, chart: Path = pet_chart.CHART) -> Path:
    """The chart packaged for an image of ``image_version``: its ``version`` and ``appVersion`` the
    SemVer form of it (what ``pet-harness chart version --write`` commits for a release)."""
    stamp = pet_chart.semver(image_version)
    return helm.package(chart, destination, stamp, stamp)


def release_values(image_reference: str, served: Sequence[str], ca_pem: bytes, replicas: int = 2) -> dict[str, Any]:
    """The values of a release running ``image_reference`` (``repository:tag``, imported into the
    node), serving ``served``, with the webhook certificate of :func:`prepare`'s Secret."""
    repository, _, tag = image_reference.rpartition(":")
    if not repository or not tag or "/" in tag:
        raise ValueError(f"image reference {image_reference!r} is not repository:tag")
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "replicaCount": replicas,
        "watch": {"mode": "namespaced", "namespaces": list(served)},
        "certManager": {"enabled": False},
        "webhookTLS": {"existingSecret": TLS_SECRET, "caBundle": base64.b64encode(ca_pem).decode()},
    }


def prepare(api: client.ApiClient, served: Sequence[str]) -> CertificateAuthority:
    """The namespaces (the release's enforcing Pod Security ``restricted``) and the webhook's TLS
    Secret, signed by a CA made now; returns that CA (its PEM is the release's caBundle)."""
    ensure_namespace(api, NAMESPACE, RESTRICTED)
    for ns in served:
        ensure_namespace(api, ns)
    ca = CertificateAuthority("pet-harness-release-ca")
    apply_object(api, webhook_tls(ca))
    return ca


def release_pods(api: client.ApiClient) -> list[Any]:
    """Every pod of the release, terminating ones included."""
    return list(client.CoreV1Api(api).list_namespaced_pod(NAMESPACE, label_selector=SELECTOR).items)


def pod_images(api: client.ApiClient) -> dict[str, str]:
    """The image of each pod of the release, by pod name."""
    return {p.metadata.name: p.spec.containers[0].image for p in release_pods(api)}


def wait_rolled_out(api: client.ApiClient, image_reference: str, replicas: int = 2, timeout: float = 300) -> None:
    """Wait until the Deployment has ``replicas`` available pods of ``image_reference`` and no pod of
    another image is left, not even a terminating one."""
    wait_for(lambda: pod_images(api),
             lambda images: len(images) == replicas and set(images.values()) == {image_reference},
             timeout, f"{replicas} pods of {image_reference} and no other in {NAMESPACE}", interval=0.5)
    wait_for(lambda: deployment_available(api, replicas), bool, timeout,
             f"the Deployment of release {RELEASE} to be available with {replicas} replicas", interval=0.5)


#: the field manager of the CRD step (docs/operations/upgrade-and-rollback.md uses the same)
CRD_FIELD_MANAGER = "pet-operator-crds"


def apply_crds(api: client.ApiClient, folder: Path = REPO_ROOT / "deploy" / "crds",
               field_manager: str = CRD_FIELD_MANAGER) -> list[str]:
    """Server-side apply of every CRD in ``folder``, taking over the fields Helm created them with
    (force): the request of ``kubectl apply --server-side --force-conflicts --field-manager
    FIELD_MANAGER -f FOLDER``. Returns the CRDs' names."""
    extensions = client.ApiextensionsV1Api(api)
    names = []
    for path in sorted(folder.glob("*.yaml")):
        for doc in load_yaml_documents(path):
            extensions.patch_custom_resource_definition(
                doc["metadata"]["name"], doc, field_manager=field_manager, force=True,
                _content_type="application/apply-patch+yaml")
            names.append(doc["metadata"]["name"])
    return names

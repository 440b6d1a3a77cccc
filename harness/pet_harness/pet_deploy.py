"""The operator deployed for real on a node cluster: the manifests of ``deploy/`` applied as shipped.

What the harness changes, at apply time and in memory only (the files stay as they are):

* the Deployment's image becomes the one built here (:mod:`~pet_harness.pet_image`) with
  ``imagePullPolicy: Never`` (nothing is pulled: there is no registry), its ``--namespace``
  arguments the served namespaces, plus any ``extra_args``;
* namespace mode's RoleBinding (``deploy/rbac/namespaced-mode.yaml``, first document) is made in
  each served namespace;
* the Secret ``pet-operator-webhook-tls``, which the Deployment mounts (cert-manager's job
  elsewhere), holds a serving certificate for the Service's names from a CA made here, and that
  CA goes into both webhook configurations' ``caBundle`` (the cert-manager annotation is dropped);
* the webhook configurations' ``namespaceSelector`` lists the served namespaces.

The operator's namespace enforces Pod Security ``restricted``. The webhook is reached by the API
server through the Service (``clientConfig.service``), as in any cluster.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pet_harness import kube, rbac, webhooks
from pet_harness.clusters.node import NodeCluster
from pet_harness.kube import install_crds, load_yaml_documents
from pet_harness.pki import CertificateAuthority
from pet_harness.waiting import wait_for

OPERATOR_NAMESPACE = "pet-system"
DEPLOYMENT = "pet-operator"
SERVICE = "pet-operator-webhook"
# the name of the Secret with the webhook's serving certificate (not a secret itself)
TLS_SECRET = "pet-operator-webhook-tls"  # noqa: S105 # nosec B105 # a name # pragma: allowlist secret
SELECTOR = "app.kubernetes.io/name=pet-operator"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


@dataclasses.dataclass
class DeployedOperator:
    namespace: str
    served: list[str]
    image: str
    timings: dict[str, float]


def _deploy_dir() -> Path:
    root: Path = kube.REPO_ROOT
    return root / "deploy"


def apply_object(api: client.ApiClient, body: dict[str, Any]) -> None:
    """Create ``body``, or replace what is there (server-side apply would need a field manager per
    caller; a plain create-or-replace is enough for objects only the harness writes)."""
    dynamic = copy.deepcopy(body)
    kind, meta = dynamic["kind"], dynamic["metadata"]
    core, apps, policy = client.CoreV1Api(api), client.AppsV1Api(api), client.PolicyV1Api(api)
    rbac_api = client.RbacAuthorizationV1Api(api)
    ns = meta.get("namespace")
    calls: dict[str, tuple[Any, Any, Any]] = {
        "ServiceAccount": (core.create_namespaced_service_account, core.replace_namespaced_service_account,
                           core.read_namespaced_service_account),
        "Service": (core.create_namespaced_service, core.replace_namespaced_service, core.read_namespaced_service),
        "Secret": (core.create_namespaced_secret, core.replace_namespaced_secret, core.read_namespaced_secret),
        "Deployment": (apps.create_namespaced_deployment, apps.replace_namespaced_deployment,
                       apps.read_namespaced_deployment),
        "PodDisruptionBudget": (policy.create_namespaced_pod_disruption_budget,
                                policy.replace_namespaced_pod_disruption_budget,
                                policy.read_namespaced_pod_disruption_budget),
        "RoleBinding": (rbac_api.create_namespaced_role_binding, rbac_api.replace_namespaced_role_binding,
                        rbac_api.read_namespaced_role_binding),
        "ClusterRoleBinding": (rbac_api.create_cluster_role_binding, rbac_api.replace_cluster_role_binding,
                               rbac_api.read_cluster_role_binding),
    }
    if kind not in calls:
        raise ValueError(f"kind {kind!r} of {meta.get('name')!r} is not one the harness applies: "
                         f"one of {', '.join(sorted(calls))}")
    create, replace, read = calls[kind]
    scope = (ns,) if ns else ()
    try:
        create(*scope, dynamic)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = read(meta["name"], *scope)
        dynamic["metadata"]["resourceVersion"] = current.metadata.resource_version
        replace(meta["name"], *scope, dynamic)


def ensure_namespace(api: client.ApiClient, name: str, labels: dict[str, str] | None = None) -> None:
    core = client.CoreV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})
    except ApiException as exc:
        if exc.status != 409:
            raise
        if labels:
            core.patch_namespace(name, {"metadata": {"labels": labels}})


def operator_deployment(image: str, served: Sequence[str], replicas: int = 2,
                        extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """``deploy/operator/deployment.yaml`` with the image built here and the served namespaces."""
    body = copy.deepcopy(load_yaml_documents(_deploy_dir() / "operator" / "deployment.yaml")[0])
    body["spec"]["replicas"] = replicas
    container = next(c for c in body["spec"]["template"]["spec"]["containers"] if c["name"] == "operator")
    container["image"] = image
    container["imagePullPolicy"] = "Never"
    args = [a for a in container["args"] if not a.startswith("--namespace")]
    container["args"] = [*(f"--namespace={ns}" for ns in served), *args, *extra_args]
    return dict(body)


def webhook_tls(ca: CertificateAuthority) -> dict[str, Any]:
    """The Secret the Deployment mounts: a serving certificate for the webhook Service's names."""
    names = [f"{SERVICE}.{OPERATOR_NAMESPACE}.svc", f"{SERVICE}.{OPERATOR_NAMESPACE}.svc.cluster.local"]
    pair = ca.serving(SERVICE, names, [])
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": TLS_SECRET, "namespace": OPERATOR_NAMESPACE},
        "data": {name: base64.b64encode(pem).decode()
                 for name, pem in (("tls.crt", pair.cert_pem), ("tls.key", pair.key_pem), ("ca.crt", ca.cert_pem))},
    }


def webhook_configurations(served: Sequence[str], ca_pem: bytes) -> list[dict[str, Any]]:
    """Both shipped configurations, through the Service, with the CA and the served namespaces."""
    out = []
    for template in (webhooks.TEMPLATE, webhooks.MUTATING_TEMPLATE):
        body = copy.deepcopy(load_yaml_documents(template)[0])
        body["metadata"].pop("annotations", None)  # cert-manager's CA injection: the harness sets the CA
        for hook in body["webhooks"]:
            if "service" not in hook["clientConfig"]:
                raise ValueError(f"{template}: webhook {hook['name']} is not reached through a Service")
            hook["clientConfig"]["caBundle"] = base64.b64encode(ca_pem).decode()
            hook["namespaceSelector"] = {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(served)}]}
        out.append(body)
    return out


def deployment_available(api: client.ApiClient, replicas: int) -> bool:
    dep = client.AppsV1Api(api).read_namespaced_deployment(DEPLOYMENT, OPERATOR_NAMESPACE)
    status = dep.status
    return bool(status.observed_generation == dep.metadata.generation and status.updated_replicas == replicas
                and status.ready_replicas == replicas and status.available_replicas == replicas
                and (status.replicas or 0) == replicas)


def deploy_operator(cluster: NodeCluster, api: client.ApiClient, image: Any, served: Sequence[str], replicas: int = 2,
                    extra_args: Sequence[str] = (), timeout: float = 240) -> DeployedOperator:
    """Apply ``deploy/`` to ``cluster`` (its image ``image``, a :class:`BuiltImage`, imported first),
    serving ``served``; returns once ``replicas`` pods are Ready and the API server calls the webhook."""
    started = time.monotonic()
    timings: dict[str, float] = {}
    timings["image import"] = round(cluster.import_image(image.tar, image.reference), 2)
    ensure_namespace(api, OPERATOR_NAMESPACE, RESTRICTED)
    for ns in served:
        ensure_namespace(api, ns)
    install_crds(api)
    deploy = _deploy_dir()
    for doc in load_yaml_documents(deploy / "rbac" / "serviceaccount.yaml"):
        apply_object(api, doc)
    rbac.install_cluster_roles(api)  # the ClusterRoles and the RoleBinding policy
    namespaced = load_yaml_documents(deploy / "rbac" / "namespaced-mode.yaml")
    for ns in served:
        binding = copy.deepcopy(namespaced[0])
        binding["metadata"]["namespace"] = ns
        apply_object(api, binding)
    for doc in namespaced[1:]:
        apply_object(api, doc)
    ca = CertificateAuthority("pet-harness-webhook-ca")
    apply_object(api, webhook_tls(ca))
    for body in webhook_configurations(served, ca.cert_pem):
        webhooks.install(api, body)
    for name in ("service.yaml", "poddisruptionbudget.yaml"):
        for doc in load_yaml_documents(deploy / "operator" / name):
            apply_object(api, doc)
    apply_object(api, operator_deployment(image.reference, served, replicas, extra_args))
    timings["applied"] = round(time.monotonic() - started, 2)
    wait_for(lambda: deployment_available(api, replicas), bool, timeout,
             f"{replicas} Ready replicas of Deployment {OPERATOR_NAMESPACE}/{DEPLOYMENT}", interval=0.5)
    timings["pods ready"] = round(time.monotonic() - started, 2)
    webhooks.wait_effective(api, served[0], timeout=60)
    webhooks.wait_mutating(api, served[0], timeout=60)
    timings["webhook through the Service"] = round(time.monotonic() - started, 2)
    return DeployedOperator(OPERATOR_NAMESPACE, list(served), image.reference, timings)

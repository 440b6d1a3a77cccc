"""What a load run stands on: a cluster tuned for load, the load's namespaces and stores, and the
identities of the load's tenants and of the operator under test.

The embedded cluster for load runs the API server without request caps and without API priority
and fairness (kwok's settings for load: ``--max-requests-inflight=0``,
``--max-mutating-requests-inflight=0``, ``--enable-priority-and-fairness=false``), so that neither
an admin certificate's exemption nor a ServiceAccount's priority level decides what is measured,
and without an audit log (which costs a write per request). etcd keeps its 8 GiB quota and skips
fsync, as in every embedded cluster.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pet_harness.kube import CRD_DIR, REPO_ROOT, PetApi, create_namespace, load_yaml_documents
from pet_harness.rbac import _create_or_replace, service_account_kubeconfig

LOAD_APISERVER_ARGS = (
    "--max-requests-inflight=0",
    "--max-mutating-requests-inflight=0",
    "--enable-priority-and-fairness=false",
)
PEERS_DIR = REPO_ROOT / "loadtests" / "peers"
TAGS = ("dog", "cat", "bird", "fish", "small", "large", "indoor", "outdoor")  # loadtests/pet_locust/tenant.py
TENANT = "pet-load-tenant"
NAIVE = "pet-naive-kopf"
TOKEN_SECONDS = 6 * 3600  # load runs can be long; a token of the default hour would expire mid-run


def naive_crds() -> list[dict[str, Any]]:
    """The project's CRDs, with the Pet status opened up for Kopf's ``status.<handler id>`` results.

    Everything else (the spec schema, its CEL rules) stays as shipped, so both operators are loaded
    by objects the API server validates alike."""
    docs = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in load_yaml_documents(path):
            doc = copy.deepcopy(doc)
            for version in doc["spec"]["versions"]:
                props = version["schema"]["openAPIV3Schema"]["properties"]
                props["status"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                for column in version.get("additionalPrinterColumns", []):
                    if column["jsonPath"] == ".status.phase":
                        column["jsonPath"] = ".status.reconcile.phase"
            docs.append(doc)
    return docs


def namespace_names(count: int) -> list[str]:
    return [f"load-{i}" for i in range(count)]


def create_namespaces_and_stores(api: Any, namespaces: Sequence[str], stores: int) -> None:
    """Namespaces (if absent) and ``stores`` stores in each, allowing every tag the load uses."""
    for ns in namespaces:
        try:
            create_namespace(api, ns)
        except ApiException as exc:
            if exc.status != 409:
                raise
        pets = PetApi(api, ns)
        for i in range(stores):
            try:
                pets.create_store(f"store-{i}", {"allowedTags": list(TAGS), "displayName": f"Load store {i}"})
            except ApiException as exc:
                if exc.status != 409:
                    raise


def _bind(api: Any, role: str, account: str, account_namespace: str, namespaces: Sequence[str] | None) -> None:
    """Bind ClusterRole ``role`` to the account: in each of ``namespaces``, or cluster-wide (None)."""
    rbac = client.RbacAuthorizationV1Api(api)
    subject = [{"kind": "ServiceAccount", "name": account, "namespace": account_namespace}]
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}
    if namespaces is None:
        name = f"{role}-{account}"
        body = {"metadata": {"name": name}, "roleRef": ref, "subjects": subject}
        _create_or_replace(rbac.create_cluster_role_binding, rbac.replace_cluster_role_binding,
                           rbac.read_cluster_role_binding, name, body)
        return
    for ns in namespaces:
        body = {"metadata": {"name": role, "namespace": ns}, "roleRef": ref, "subjects": subject}
        _create_or_replace(rbac.create_namespaced_role_binding, rbac.replace_namespaced_role_binding,
                           rbac.read_namespaced_role_binding, role, body, ns)


def _service_account(api: Any, namespace: str, name: str) -> None:
    try:
        client.CoreV1Api(api).create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    except ApiException as exc:
        if exc.status != 409:
            raise


def install_peer_roles(api: Any) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    for doc in load_yaml_documents(PEERS_DIR / "naive-kopf-rbac.yaml"):
        _create_or_replace(rbac.create_cluster_role, rbac.replace_cluster_role, rbac.read_cluster_role,
                           doc["metadata"]["name"], copy.deepcopy(doc))


def tenant_kubeconfig(api: Any, admin_kubeconfig: Path, home: str, namespaces: Sequence[str], path: Path) -> Path:
    """The load's tenants: a ServiceAccount in ``home`` bound in every load namespace (and in ``home``,
    for the raw writer's claim Leases)."""
    install_peer_roles(api)
    _service_account(api, home, TENANT)
    _bind(api, TENANT, TENANT, home, [*namespaces, home])
    return service_account_kubeconfig(api, admin_kubeconfig, home, TENANT, path, TOKEN_SECONDS)


def naive_kubeconfig(api: Any, admin_kubeconfig: Path, home: str, path: Path) -> Path:
    install_peer_roles(api)
    _service_account(api, home, NAIVE)
    _bind(api, NAIVE, NAIVE, home, None)
    return service_account_kubeconfig(api, admin_kubeconfig, home, NAIVE, path, TOKEN_SECONDS)


def private_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))

"""Give the operator exactly the identity ``deploy/rbac/`` ships, on any cluster.

The ServiceAccount, ClusterRoles and bindings are read from ``deploy/rbac/``; only the
namespaces (and the names of cluster-scoped bindings, so parallel tests do not collide)
are changed. The operator then authenticates with a token from the TokenRequest API,
so every e2e test runs it under the shipped RBAC, never as admin.
"""

from __future__ import annotations

import base64
import copy
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pet_harness.clusters.base import write_kubeconfig, write_private
from pet_harness.kube import REPO_ROOT, load_yaml_documents

RBAC_DIR = REPO_ROOT / "deploy" / "rbac"

log = logging.getLogger(__name__)


def _docs(name: str) -> list[dict[str, Any]]:
    return load_yaml_documents(RBAC_DIR / name)


def _create_or_replace(create: Any, replace: Any, read: Any, name: str, body: dict[str, Any], *ns: str) -> None:
    try:
        create(*ns, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = read(name, *ns)
        body.setdefault("metadata", {})["resourceVersion"] = current.metadata.resource_version
        replace(name, *ns, body)


def install_cluster_roles(api: Any) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    for doc in _docs("clusterroles.yaml"):
        _create_or_replace(rbac.create_cluster_role, rbac.replace_cluster_role, rbac.read_cluster_role,
                           doc["metadata"]["name"], copy.deepcopy(doc))
    install_role_binding_policy(api)


def install_role_binding_policy(api: Any) -> None:
    """The ValidatingAdmissionPolicy (and its binding) of ``role-binding-policy.yaml``: a service account
    bound by a RoleBinding may change only that binding's finalizers."""
    admission = client.AdmissionregistrationV1Api(api)
    calls = {
        "ValidatingAdmissionPolicy": (admission.create_validating_admission_policy,
                                      admission.replace_validating_admission_policy,
                                      admission.read_validating_admission_policy),
        "ValidatingAdmissionPolicyBinding": (admission.create_validating_admission_policy_binding,
                                             admission.replace_validating_admission_policy_binding,
                                             admission.read_validating_admission_policy_binding),
    }
    for doc in _docs("role-binding-policy.yaml"):
        create, replace, read = calls[doc["kind"]]
        _create_or_replace(create, replace, read, doc["metadata"]["name"], copy.deepcopy(doc))


SHIPPED_NAME = "pet-operator"


def request_token(api: Any, namespace: str, account: str, seconds: int) -> str:
    """A token of the ServiceAccount from the TokenRequest API, valid ``seconds`` (the API server may
    shorten that; 600 at least)."""
    token: str = client.CoreV1Api(api).create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": seconds}}
    ).status.token
    return token


def write_token(path: Path, token: str) -> None:
    """Replace the token file at once (a new file renamed over it): a reader sees the old token or
    the new one, never half of one; its new inode tells it that the token changed."""
    fresh = path.with_name(path.name + ".new")
    write_private(fresh, token)  # as it is: the kubernetes client sends the file's bytes unstripped
    os.replace(fresh, path)


class TokenRefresher:
    """Keeps the TokenRequest token in a file valid: a new one every ``every`` seconds (by default
    half its lifetime), so a process that reads the file again when it changes (the operator does,
    see ``pet_operator.rest.TokenFile``; Kopf logs in again on a 401) is never left with an
    expired token, however long it runs. A failed request is retried after a tenth of the period."""

    def __init__(
        self, api: Any, namespace: str, account: str, path: Path, seconds: int, every: float | None = None,
    ) -> None:
        self.api, self.namespace, self.account, self.path = api, namespace, account, path
        self.seconds = seconds
        self.every = every if every is not None else seconds / 2
        self.refreshes = 0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        write_token(self.path, request_token(self.api, self.namespace, self.account, self.seconds))

    def start(self) -> TokenRefresher:
        self._thread = threading.Thread(target=self._run, name=f"token-refresher-{self.account}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        wait = self.every
        while not self._stopped.wait(wait):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - the old token is still valid for a while: try again soon
                log.warning("cannot refresh the token of %s/%s: %s", self.namespace, self.account, exc)
                wait = self.every / 10
                continue
            self.refreshes += 1
            wait = self.every

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)


def service_account_kubeconfig(
    api: Any, admin_kubeconfig: Path, namespace: str, account: str, path: Path, seconds: int = 3600,
    rotated: bool = False,
) -> Path:
    """A kubeconfig for the cluster of ``admin_kubeconfig`` that authenticates as the ServiceAccount
    ``namespace/account`` with a token from the TokenRequest API, valid ``seconds``. With ``rotated``
    the token is kept in the file ``<path>.token`` that the kubeconfig names (``tokenFile``), which a
    :class:`TokenRefresher` rewrites; otherwise it is in the kubeconfig (for clients that read
    ``token`` only, as Kopf's own kubeconfig login, which the load's naive peer uses)."""
    token = request_token(api, namespace, account, seconds)
    token_path = path.with_name(path.name + ".token") if rotated else None
    if token_path is not None:
        write_token(token_path, token)
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])["cluster"]
    ca = cluster.get("certificate-authority-data")
    ca_pem = base64.b64decode(ca) if ca else Path(cluster["certificate-authority"]).read_bytes()
    return write_kubeconfig(path, cluster["server"], ca_pem, f"system:serviceaccount:{namespace}:{account}",
                            token=None if rotated else token, token_file=token_path)


class OperatorIdentity:
    """Operator ServiceAccounts in their own namespace, bound as ``deploy/rbac/`` says.

    ``deploy/rbac/`` ships one ServiceAccount, ``pet-operator``. Replicas that must be told
    apart (in the audit log, say) each get their own, ``pet-operator-0`` and so on, bound by
    copies of the same bindings to the same ClusterRoles: the rights are identical.
    """

    def __init__(self, api: Any, namespace: str, suffix: str) -> None:
        self.api = api
        self.namespace = namespace
        self.suffix = suffix  # makes cluster-scoped binding names unique per test
        self.cluster_bindings: list[str] = []
        self.bound_namespaces: set[str] = set()
        self.refreshers: list[TokenRefresher] = []

    def _subject(self, doc: dict[str, Any], account: str) -> dict[str, Any]:
        doc = copy.deepcopy(doc)
        for subject in doc.get("subjects", []):
            subject["namespace"] = self.namespace
            subject["name"] = account
        if account != SHIPPED_NAME:
            doc["metadata"]["name"] = f"{doc['metadata']['name']}-{account}"
        return doc

    def username(self, account: str = SHIPPED_NAME) -> str:
        return f"system:serviceaccount:{self.namespace}:{account}"

    def create(self, served: Sequence[str] | None, account: str = SHIPPED_NAME, publish_ca: bool = False) -> None:
        """ServiceAccount ``account``, claims binding, cluster binding, and the pet bindings for
        ``served`` (None: all namespaces, through a ClusterRoleBinding); with ``publish_ca`` also
        the optional binding that lets it write a self-signed CA into its webhook configuration."""
        core = client.CoreV1Api(self.api)
        rbac = client.RbacAuthorizationV1Api(self.api)
        install_cluster_roles(self.api)
        sa = copy.deepcopy(_docs("serviceaccount.yaml")[0])
        sa["metadata"]["namespace"] = self.namespace
        sa["metadata"]["name"] = account
        try:
            core.create_namespaced_service_account(self.namespace, sa)
        except ApiException as exc:
            if exc.status != 409:
                raise
        mode = "all-namespaces-mode.yaml" if served is None else "namespaced-mode.yaml"
        docs = _docs(mode) + (_docs("webhook-ca-publisher.yaml") if publish_ca else [])
        for doc in docs:
            doc = self._subject(doc, account)
            kind, role = doc["kind"], doc["roleRef"]["name"]
            if kind == "ClusterRoleBinding":
                name = f"{doc['metadata']['name']}-{self.suffix}"[:253]
                if name in self.cluster_bindings:
                    continue
                doc["metadata"]["name"] = name
                _create_or_replace(rbac.create_cluster_role_binding, rbac.replace_cluster_role_binding,
                                   rbac.read_cluster_role_binding, name, doc)
                self.cluster_bindings.append(name)
            elif role == "pet-operator-claims":
                self._bind(rbac, doc, self.namespace)
            else:
                for ns in served or ():
                    self._bind_served(rbac, doc, ns, account)

    def _bind(self, rbac: Any, doc: dict[str, Any], namespace: str) -> None:
        key = f"{doc['metadata']['name']}@{namespace}"
        if key in self.bound_namespaces:
            return
        body = copy.deepcopy(doc)
        body["metadata"]["namespace"] = namespace
        _create_or_replace(rbac.create_namespaced_role_binding, rbac.replace_namespaced_role_binding,
                           rbac.read_namespaced_role_binding, body["metadata"]["name"], body, namespace)
        self.bound_namespaces.add(key)

    def _bind_served(self, rbac: Any, doc: dict[str, Any], namespace: str, account: str) -> None:
        """The RoleBinding of a served namespace keeps its shipped name (the operator keeps that binding,
        by name, while the namespace is deleted): each further account is one more subject of it."""
        key = f"{SHIPPED_NAME}:{account}@{namespace}"
        if key in self.bound_namespaces:
            return
        body = copy.deepcopy(doc)
        body["metadata"]["name"] = SHIPPED_NAME
        body["metadata"]["namespace"] = namespace
        try:
            rbac.create_namespaced_role_binding(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = rbac.read_namespaced_role_binding(SHIPPED_NAME, namespace)
            subjects = [s.to_dict() for s in current.subjects or []]
            for subject in body["subjects"]:
                if not any(s["name"] == subject["name"] and s.get("namespace") == subject["namespace"]
                           for s in subjects):
                    subjects.append(subject)
            rbac.patch_namespaced_role_binding(
                SHIPPED_NAME, namespace,
                {"metadata": {"resourceVersion": current.metadata.resource_version}, "subjects": subjects})
        self.bound_namespaces.add(key)

    def kubeconfig(
        self, admin_kubeconfig: Path, path: Path, seconds: int = 3600, account: str = SHIPPED_NAME,
        refresh_every: float | None = None,
    ) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount (TokenRequest API), its token kept
        fresh (a new one every ``refresh_every`` seconds, by default half the lifetime) until
        :meth:`delete`: a test, a load run or a chaos session may outlast one token."""
        made = service_account_kubeconfig(self.api, admin_kubeconfig, self.namespace, account, path, seconds,
                                          rotated=True)
        token_path = path.with_name(path.name + ".token")
        self.refreshers.append(
            TokenRefresher(self.api, self.namespace, account, token_path, seconds, refresh_every).start())
        return made

    def delete(self) -> None:
        for refresher in self.refreshers:
            refresher.stop()
        self.refreshers.clear()
        rbac = client.RbacAuthorizationV1Api(self.api)
        for name in self.cluster_bindings:
            try:
                rbac.delete_cluster_role_binding(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        self.cluster_bindings.clear()

"""Register the operator's admission webhook with a cluster the harness drives.

The embedded cluster has no Services or pods, so the harness points the
ValidatingWebhookConfiguration of ``deploy/webhook/`` at a URL on loopback instead of
the Service, keeps every other setting of that file, and gives the operator a
certificate from its own CA (as cert-manager would mount it).
"""

from __future__ import annotations

import base64
import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pet_harness.kube import REPO_ROOT, PetApi, load_yaml_documents
from pet_harness.pki import CertificateAuthority
from pet_harness.waiting import wait_for

TEMPLATE = REPO_ROOT / "deploy" / "webhook" / "validatingwebhookconfiguration.yaml"
PROBE_STORE = "webhook-probe"


def write_serving_certificate(directory: Path, ca: CertificateAuthority | None = None) -> bytes:
    """``tls.crt``/``tls.key`` for 127.0.0.1 in ``directory``; returns the CA's PEM."""
    ca = ca or CertificateAuthority("pet-harness-webhook-ca")
    pair = ca.serving("pet-operator-webhook", ["localhost"], ["127.0.0.1"])
    directory.mkdir(parents=True, exist_ok=True)
    pair.write(directory, "tls")
    return ca.cert_pem


def webhook_configuration(
    name: str, namespaces: Sequence[str], url: str, ca_pem: bytes | None
) -> dict[str, Any]:
    """The shipped configuration, pointed at ``url`` and limited to ``namespaces``."""
    body = copy.deepcopy(load_yaml_documents(TEMPLATE)[0])
    body["metadata"] = {"name": name}
    for hook in body["webhooks"]:
        hook["clientConfig"] = {"url": url}
        if ca_pem is not None:
            hook["clientConfig"]["caBundle"] = base64.b64encode(ca_pem).decode()
        hook["namespaceSelector"] = {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(namespaces)}
        ]}
    return dict(body)


def install(api: Any, body: dict[str, Any]) -> None:
    admission = client.AdmissionregistrationV1Api(api)
    try:
        admission.create_validating_webhook_configuration(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = admission.read_validating_webhook_configuration(body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        admission.replace_validating_webhook_configuration(body["metadata"]["name"], body)


def uninstall(api: Any, name: str) -> None:
    try:
        client.AdmissionregistrationV1Api(api).delete_validating_webhook_configuration(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def wait_effective(api: Any, namespace: str, timeout: float = 30) -> float:
    """Wait until the API server calls the webhook for ``namespace``; returns the seconds it took.

    The probe is a dry-run create of a pet with a tag that a probe store forbids: only the
    webhook rejects it, with a 422 that names the tag.
    """
    started = time.monotonic()
    pets = PetApi(api, namespace)
    try:
        pets.create_store(PROBE_STORE, {"allowedTags": []})
    except ApiException as exc:
        if exc.status != 409:
            raise
    body = {"apiVersion": "petstore.example.com/v1", "kind": "Pet",
            "metadata": {"name": "webhook-probe"},
            "spec": {"id": 9007199254740991, "name": "probe", "store": PROBE_STORE, "tags": ["probe"]}}

    def probe() -> int:
        try:
            pets.custom.create_namespaced_custom_object(
                "petstore.example.com", "v1", namespace, "pets", body, dry_run="All"
            )
        except ApiException as exc:
            if exc.status == 422 and "'probe'" in (exc.body or ""):
                return 422
            return int(exc.status or 0)
        return 201

    try:
        wait_for(probe, lambda code: code == 422, timeout, f"the admission webhook to serve {namespace}")
    finally:
        try:
            pets.delete_store(PROBE_STORE)
        except ApiException as exc:
            if exc.status != 404:
                raise
        wait_for(pets.list_stores, lambda items: all(s["metadata"]["name"] != PROBE_STORE for s in items),
                 timeout, "the probe store to go")
    return time.monotonic() - started

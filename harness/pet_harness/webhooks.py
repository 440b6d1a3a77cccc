"""Register the operator's admission webhooks with a cluster the harness drives.

The embedded cluster has no Services or pods, so the harness points the
ValidatingWebhookConfiguration and the MutatingWebhookConfiguration of ``deploy/webhook/``
at URLs on loopback instead of the Service, keeps every other setting of those files, and
gives the operator a certificate from its own CA (as cert-manager would mount it).
:func:`register` installs both and waits until the API server calls each.
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

from pet_harness.kube import GROUP, GROUP_VERSION, PETS, REPO_ROOT, VERSION, PetApi, load_yaml_documents
from pet_harness.pki import CertificateAuthority
from pet_harness.waiting import wait_for
from pet_operator.claims import FINALIZER

TEMPLATE = REPO_ROOT / "deploy" / "webhook" / "validatingwebhookconfiguration.yaml"
MUTATING_TEMPLATE = REPO_ROOT / "deploy" / "webhook" / "mutatingwebhookconfiguration.yaml"
VALIDATE_PATH = "/validate-pets"
MUTATE_PATH = "/mutate-pets"
PROBE_STORE = "webhook-probe"


def write_serving_certificate(directory: Path, ca: CertificateAuthority | None = None) -> bytes:
    """``tls.crt``/``tls.key`` for 127.0.0.1 in ``directory``; returns the CA's PEM."""
    ca = ca or CertificateAuthority("pet-harness-webhook-ca")
    pair = ca.serving("pet-operator-webhook", ["localhost"], ["127.0.0.1"])
    directory.mkdir(parents=True, exist_ok=True)
    pair.write(directory, "tls")
    return ca.cert_pem


def webhook_configuration(
    name: str, namespaces: Sequence[str], url: str, ca_pem: bytes | None, template: Path = TEMPLATE
) -> dict[str, Any]:
    """The shipped configuration (the validating one unless ``template`` says otherwise), pointed
    at ``url`` and limited to ``namespaces``."""
    body = copy.deepcopy(load_yaml_documents(template)[0])
    body["metadata"] = {"name": name}
    for hook in body["webhooks"]:
        hook["clientConfig"] = {"url": url}
        if ca_pem is not None:
            hook["clientConfig"]["caBundle"] = base64.b64encode(ca_pem).decode()
        hook["namespaceSelector"] = {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(namespaces)}
        ]}
    return dict(body)


def mutating_configuration(
    name: str, namespaces: Sequence[str], url: str, ca_pem: bytes | None
) -> dict[str, Any]:
    """The shipped MutatingWebhookConfiguration, pointed at ``url`` and limited to ``namespaces``."""
    return webhook_configuration(name, namespaces, url, ca_pem, template=MUTATING_TEMPLATE)


def configurations(
    name: str, namespaces: Sequence[str], base_url: str, ca_pem: bytes | None
) -> list[dict[str, Any]]:
    """Both shipped configurations, named ``name``, at ``base_url`` + their paths."""
    base_url = base_url.rstrip("/")
    return [webhook_configuration(name, namespaces, base_url + VALIDATE_PATH, ca_pem),
            mutating_configuration(name, namespaces, base_url + MUTATE_PATH, ca_pem)]


_KINDS = {"ValidatingWebhookConfiguration": "validating", "MutatingWebhookConfiguration": "mutating"}


def _calls(admission: Any, kind: str) -> tuple[Any, Any, Any, Any]:
    """create, read, replace and delete of ``kind`` (the two configuration kinds only)."""
    word = _KINDS.get(kind)
    if word is None:
        raise ValueError(f"not a webhook configuration kind: {kind!r} (expected one of {', '.join(_KINDS)})")
    create, read, replace, delete = (getattr(admission, f"{verb}_{word}_webhook_configuration")
                                     for verb in ("create", "read", "replace", "delete"))
    return create, read, replace, delete


def install(api: Any, body: dict[str, Any]) -> None:
    """Create the configuration ``body`` (either kind), or replace the one of that kind and name."""
    create, read, replace, _ = _calls(client.AdmissionregistrationV1Api(api), body["kind"])
    try:
        create(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = read(body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        replace(body["metadata"]["name"], body)


def uninstall(api: Any, name: str) -> None:
    """Delete the validating and the mutating configuration named ``name``; either may be absent."""
    admission = client.AdmissionregistrationV1Api(api)
    for kind in _KINDS:
        *_, delete = _calls(admission, kind)
        try:
            delete(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def register(api: Any, name: str, namespaces: Sequence[str], base_url: str, ca_pem: bytes | None,
             timeout: float = 30) -> None:
    """Install both configurations for the webhook at ``base_url`` and wait until the API server
    calls each for ``namespaces[0]``."""
    for body in configurations(name, namespaces, base_url, ca_pem):
        install(api, body)
    wait_effective(api, namespaces[0], timeout)
    wait_mutating(api, namespaces[0], timeout)


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
    body = {"apiVersion": GROUP_VERSION, "kind": "Pet",
            "metadata": {"name": "webhook-probe"},
            "spec": {"id": 9007199254740991, "name": "probe", "store": PROBE_STORE, "tags": ["probe"]}}

    def probe() -> int:
        try:
            pets.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PETS, body, dry_run="All"
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


def wait_mutating(api: Any, namespace: str, timeout: float = 30) -> float:
    """Wait until the API server calls the mutating webhook for ``namespace``; returns the seconds
    it took.

    The probe is a dry-run create of a pet without our finalizer: only the mutating webhook puts
    it on, so it is effective once the object the API server answers with carries it. Nothing is
    stored (and so no id is claimed)."""
    started = time.monotonic()
    pets = PetApi(api, namespace)
    body = {"apiVersion": GROUP_VERSION, "kind": "Pet",
            "metadata": {"name": "webhook-probe-mutating"},
            "spec": {"id": 9007199254740990, "name": "probe"}}

    def probe() -> list[str]:
        try:
            created = pets.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PETS, copy.deepcopy(body), dry_run="All"
            )
        except ApiException:
            return []
        return list((created.get("metadata") or {}).get("finalizers") or [])

    wait_for(probe, lambda finalizers: FINALIZER in finalizers, timeout,
             f"the mutating admission webhook to add {FINALIZER} in {namespace}")
    return time.monotonic() - started

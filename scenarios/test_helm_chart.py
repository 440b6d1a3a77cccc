"""The Helm chart against the real API server: every combination of its documented switches
(watch mode x certificate source x monitors x network policies, 24) rendered by ``helm template`` and
created with server-side dry run (``dryRun=All``: admission and validation run in full, nothing is
stored), with the Prometheus Operator's and cert-manager's own CRDs installed (both from their Go
modules at the versions the harness pins), and each rendered pod template admitted under the
restricted Pod Security profile."""

from __future__ import annotations

import base64
import copy
import itertools
from typing import Any

import pytest
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

from pet_harness import crds, pet_chart, upstream_crds
from pet_harness.pki import CertificateAuthority

#: where the webhook's certificate comes from (the chart's three sources), and each one's short name
CERT_SOURCES = {"cert-manager": "certmanager", "operator": "selfsigned",
                "secret": "secret"}  # pragma: allowlist secret - names
COMBINATIONS = [
    pytest.param(i, mode, cert, mon, np, id=f"{mode}-{CERT_SOURCES[cert]}-"
                 f"{'monitors' if mon else 'nomonitors'}-{'netpol' if np else 'nonetpol'}")
    for i, (mode, cert, mon, np) in enumerate(itertools.product(
        ("namespaced", "all-namespaces"), CERT_SOURCES, (True, False), (True, False)))
]
#: the CA of the "secret" source (the installer's, given as webhookTLS.caBundle)
CA_BUNDLE = base64.b64encode(CertificateAuthority("chart-dry-run-ca").cert_pem).decode()


@pytest.fixture
def chart_crds(kube_api: Any) -> None:
    """ServiceMonitor, PrometheusRule, Certificate, Issuer and ClusterIssuer served (create or replace)."""
    docs = upstream_crds.documents() + upstream_crds.documents(upstream_crds.CERT_MANAGER)
    assert {"servicemonitors.monitoring.coreos.com", "certificates.cert-manager.io",
            "issuers.cert-manager.io"} <= set(upstream_crds.kinds(docs))
    crds.install(kube_api, docs)


def _dry_run_create(dyn: dynamic.DynamicClient, body: dict[str, Any]) -> dict[str, Any]:
    resource = dyn.resources.get(api_version=body["apiVersion"], kind=body["kind"])
    namespace = body["metadata"].get("namespace") if resource.namespaced else None
    created = resource.create(body=body, namespace=namespace, query_params=[("dryRun", "All")])
    return dict(created.to_dict())


@pytest.mark.parametrize(("index", "mode", "cert", "monitors", "network_policy"), COMBINATIONS)
def test_every_combination_is_admitted_by_the_api_server(
    kube_api: Any, make_namespace: Any, chart_crds: None,
    index: int, mode: str, cert: str, monitors: bool, network_policy: bool,
) -> None:
    cert_manager = cert == "cert-manager"
    ns = make_namespace("chart", labels={"pod-security.kubernetes.io/enforce": "restricted"})
    served = make_namespace("served")
    release = f"chart-{index}"  # cluster-scoped names of their own: dry runs never meet a stored object
    values = {
        "watch": {"mode": mode, "namespaces": [served]},
        "certManager": {"enabled": cert_manager},
        "replicaCount": 1 if cert == "operator" else 2,  # the operator's own certificate: one replica
        **({"webhookTLS": {"existingSecret": "webhook-tls",  # pragma: allowlist secret - a name
                           "caBundle": CA_BUNDLE}} if cert == "secret" else {}),
        "metrics": {"serviceMonitor": {"enabled": monitors}, "prometheusRule": {"enabled": monitors}},
        "networkPolicy": {"enabled": network_policy},
    }
    objects = [m.body for m in pet_chart.render([values], release=release, namespace=ns) if m.body]
    dyn = dynamic.DynamicClient(kube_api)
    created = [_dry_run_create(dyn, copy.deepcopy(obj)) for obj in objects]
    assert [(c["kind"], c["metadata"]["name"]) for c in created] == [
        (o["kind"], o["metadata"]["name"]) for o in objects]
    kinds = {c["kind"] for c in created}
    assert ({"ServiceMonitor", "PrometheusRule"} <= kinds) is monitors
    assert ({"Certificate", "Issuer"} <= kinds) is cert_manager
    assert ("NetworkPolicy" in kinds) is network_policy
    assert ("ValidatingAdmissionPolicy" in kinds) is (mode == "namespaced")
    deployment = next(c for c in created if c["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == (1 if cert == "operator" else 2)
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        hooks = next(c for c in created if c["kind"] == kind)["webhooks"]
        assert [h["clientConfig"].get("caBundle") for h in hooks] == [CA_BUNDLE if cert == "secret" else None]
    with pytest.raises(ApiException) as stored:  # a dry run: nothing was kept
        client.AppsV1Api(kube_api).read_namespaced_deployment(deployment["metadata"]["name"], ns)
    assert stored.value.status == 404

    # Pod Security enforces on pods only: the Deployment's pod template, admitted as a pod in a
    # namespace that enforces the restricted profile
    template = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{release}-probe", "namespace": ns, **template["metadata"]},
           "spec": template["spec"]}
    admitted = client.CoreV1Api(kube_api).create_namespaced_pod(ns, pod, dry_run="All")
    assert admitted.spec.security_context.run_as_non_root is True


def test_the_api_server_refuses_what_the_chart_must_not_render(kube_api: Any, make_namespace: Any) -> None:
    """The dry runs above can fail: a rendered object spoiled by hand is refused (a port name of 16
    characters, beyond the IANA_SVC_NAME limit of 15)."""
    ns = make_namespace("chart-bad")
    objects = [m.body for m in pet_chart.render([{"watch": {"namespaces": [ns]}}], release="chart-bad", namespace=ns)]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"] = "health-port-named"
    with pytest.raises(ApiException) as refused:
        _dry_run_create(dynamic.DynamicClient(kube_api), deployment)
    assert refused.value.status == 422
    assert "health-port-named" in refused.value.body

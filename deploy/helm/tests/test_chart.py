"""The chart's rendered objects, for every combination of the documented switches."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import COMBINATIONS, SECRET_TLS, cert_values, combination_values, render

from pet_harness import helm, monitoring, pet_chart
from pet_operator.config import parse_config


def _kinds(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in _kinds(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} rendered"
    return found[0]


def test_helm_lint_strict() -> None:
    assert "0 chart(s) failed" in helm.lint(pet_chart.CHART)
    all_namespaces = combination_values("all-namespaces", "operator", True, False)
    assert "0 chart(s) failed" in helm.lint(pet_chart.CHART, [all_namespaces])


def test_deploy_is_the_charts_rendering(tmp_path: Path) -> None:
    assert pet_chart.check_deploy() == []
    # the check can fail: a hand edit of a generated file is found
    copy = tmp_path / "deploy"
    shutil.copytree(pet_chart.DEPLOY, copy, ignore=shutil.ignore_patterns("helm", "tests"))
    target = copy / "operator" / "deployment.yaml"
    target.write_text(target.read_text().replace("replicas: 2", "replicas: 3"))
    problems = pet_chart.check_deploy(copy)
    assert problems == ["deploy/operator/deployment.yaml is not the chart's rendering of templates/deployment.yaml: "
                        "run `pet-harness chart render`"]


def test_every_template_lands_in_a_deploy_file() -> None:
    covered = {t for g in pet_chart.GENERATED for t in g.templates}
    assert set(pet_chart.templates()) == covered


@pytest.mark.parametrize(("mode", "cert", "monitors", "network_policy"), COMBINATIONS)
def test_rendered_objects(mode: str, cert: str, monitors: bool, network_policy: bool) -> None:
    objects = render(combination_values(mode, cert, monitors, network_policy))
    cert_manager, own_secret = cert == "cert-manager", cert == "secret"
    deployment = _one(objects, "Deployment", "pet-operator")
    pod = deployment["spec"]["template"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["replicas"] == (1 if cert == "operator" else 2)
    container = pod["spec"]["containers"][0]
    named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(named_ports) == {"health", "webhook", "metrics"}

    # PSS restricted, pod and container
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}

    # the operator accepts its arguments: leader election, scope, certificate
    config = parse_config(container["args"], {"POD_NAME": "pet-operator-abc-1", "POD_NAMESPACE": "pet-system",
                                              "POD_IP": "10.1.2.3"})
    assert config.leader_elect is True and config.lease_name == "pet-operator-leader"
    assert config.all_namespaces is (mode == "all-namespaces")
    assert list(config.namespaces) == ([] if mode == "all-namespaces" else ["default"])
    if cert_manager or own_secret:  # cert-manager's Secret, or the one named in webhookTLS.existingSecret
        assert config.webhook_cert_dir == "/etc/pet-operator/webhook"
        assert config.webhook_configuration is None and config.mutating_webhook_configuration is None
        # the name of the Secret holding the serving certificate, not a secret itself
        tls = {"name": "webhook-tls", "secret": {"secretName": "pet-operator-webhook-tls"}}  # pragma: allowlist secret
        assert tls in pod["spec"]["volumes"]
    else:
        assert config.webhook_cert_dir is None
        assert config.webhook_configuration == config.mutating_webhook_configuration == "pet-operator"
        assert "pet-operator-webhook.pet-system.svc" in config.webhook_host_names

    spread = {c["topologyKey"]: c for c in pod["spec"]["topologySpreadConstraints"]}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert all(c["labelSelector"]["matchLabels"] == selector for c in spread.values())

    # PodDisruptionBudget: only with more than one replica
    pdbs = _kinds(objects, "PodDisruptionBudget")
    assert len(pdbs) == (0 if cert == "operator" else 1)
    for pdb in pdbs:
        assert pdb["spec"]["selector"]["matchLabels"] == selector and pdb["spec"]["minAvailable"] == 1

    # Services select the pods and name container ports
    services = {s["metadata"]["name"]: s for s in _kinds(objects, "Service")}
    assert set(services) == {"pet-operator-webhook", "pet-operator-metrics"}
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        for port in service["spec"]["ports"]:
            assert port["name"] and port["targetPort"] in named_ports

    # both webhook configurations reach the webhook Service's port 443, CA from the right source
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        config_obj = _one(objects, kind, "pet-operator")
        annotations = config_obj["metadata"].get("annotations") or {}
        assert (annotations.get("cert-manager.io/inject-ca-from") == "pet-system/pet-operator-webhook") is cert_manager
        for hook in config_obj["webhooks"]:
            # the CA: in the configuration only with a Secret of yours (cert-manager or the operator write it)
            assert hook["clientConfig"].get("caBundle") == (SECRET_TLS["caBundle"] if own_secret else None)
            ref = hook["clientConfig"]["service"]
            assert (ref["name"], ref["namespace"], ref["port"]) == ("pet-operator-webhook", "pet-system", 443)
            assert services["pet-operator-webhook"]["spec"]["ports"][0]["port"] == 443
            assert ("namespaceSelector" in hook) is (mode == "namespaced")
    certificates = _kinds(objects, "Certificate")
    assert len(certificates) == (1 if cert_manager else 0)
    for cert in certificates:
        assert cert["spec"]["secretName"] == "pet-operator-webhook-tls"  # pragma: allowlist secret - a name
        assert "pet-operator-webhook.pet-system.svc" in cert["spec"]["dnsNames"]
        issuer = _one(objects, "Issuer", cert["spec"]["issuerRef"]["name"])
        assert issuer["spec"] == {"selfSigned": {}}

    # RBAC: every binding names the operator's account and a rendered ClusterRole
    roles = {r["metadata"]["name"] for r in _kinds(objects, "ClusterRole")}
    bindings = _kinds(objects, "RoleBinding") + _kinds(objects, "ClusterRoleBinding")
    for binding in bindings:
        assert binding["roleRef"]["name"] in roles
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pet-operator", "namespace": "pet-system"}]
    bound = {b["roleRef"]["name"] for b in bindings}
    assert ("pet-operator-served-namespace" in bound) is (mode == "namespaced")
    assert ("pet-operator-pets" in bound) is (mode == "all-namespaces")
    assert ("pet-operator-webhook-ca" in bound) is (cert == "operator")
    assert bool(_kinds(objects, "ValidatingAdmissionPolicy")) is (mode == "namespaced")

    # monitors and network policies behind their values
    assert len(_kinds(objects, "ServiceMonitor")) == len(_kinds(objects, "PrometheusRule")) == (1 if monitors else 0)
    for service_monitor in _kinds(objects, "ServiceMonitor"):
        assert monitoring.selects(service_monitor, services["pet-operator-metrics"]) == []
        assert monitoring.selects(service_monitor, services["pet-operator-webhook"])  # not the webhook's
    policies = _kinds(objects, "NetworkPolicy")
    assert len(policies) == (2 if network_policy else 0)
    for policy in policies:
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert all(p["port"] in named_ports for rule in policy["spec"]["ingress"] for p in rule["ports"])


def test_names_follow_the_release() -> None:
    objects = render({"watch": {"namespaces": ["shop-a", "shop-b"]}}, release="pets-prod", namespace="ops")
    container = _one(objects, "Deployment", "pets-prod-pet-operator")["spec"]["template"]["spec"]["containers"][0]
    config = parse_config(container["args"], {"POD_NAME": "p-1", "POD_NAMESPACE": "ops"})
    assert config.lease_name == "pets-prod-pet-operator-leader"
    assert config.role_binding == "pets-prod-pet-operator"
    assert list(config.namespaces) == ["shop-a", "shop-b"]
    served = [b for b in _kinds(objects, "RoleBinding") if b["roleRef"]["name"].endswith("-served-namespace")]
    assert sorted(b["metadata"]["namespace"] for b in served) == ["shop-a", "shop-b"]
    assert {b["metadata"]["name"] for b in served} == {config.role_binding}
    policy = _one(objects, "ValidatingAdmissionPolicy")
    assert "'pets-prod-pet-operator-served-namespace'" in policy["spec"]["matchConditions"][0]["expression"]
    hook = _one(objects, "ValidatingWebhookConfiguration")["webhooks"][0]
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["shop-a", "shop-b"]
    assert hook["clientConfig"]["service"] == {"name": "pets-prod-pet-operator-webhook", "namespace": "ops",
                                               "path": "/validate-pets", "port": 443}


@pytest.mark.parametrize(("values", "words"), [
    ({"watch": {"mode": "everywhere"}}, ["'/watch/mode'", "'namespaced', 'all-namespaces'"]),
    ({"replicaCount": "two"}, ["'/replicaCount'", "integer"]),
    ({"replicas": 2}, ["replicas", "additional"]),
    ({"webhook": {"port": 70000}}, ["'/webhook/port'", "got 70,000, want 65,535"]),
    ({"networkPolicy": {"webhookFrom": ["10.0.0.0"]}}, ["'/networkPolicy/webhookFrom/0'", "10.0.0.0"]),
    ({"metrics": {"serviceMonitor": {"enabled": True, "interval": "30 seconds"}}},
     ["'/metrics/serviceMonitor/interval'", "30 seconds"]),
    ({"image": {"pullPolicy": "Sometimes"}}, ["'/image/pullPolicy'", "'Always', 'IfNotPresent', 'Never'"]),
    ({"certManager": {"enabled": False}}, ["replicaCount is 2", "certManager.enabled is false",
                                           "set replicaCount=1", "webhookTLS.existingSecret"]),
    ({**cert_values("secret"), "certManager": {"enabled": True}},
     ["webhookTLS.existingSecret is \"pet-operator-webhook-tls\"", "certManager.enabled is true"]),
    ({**cert_values("secret"), "webhookTLS": {"existingSecret": "mine"}},  # pragma: allowlist secret - a Secret's name
     ["webhookTLS.existingSecret is \"mine\"", "webhookTLS.caBundle is empty"]),
    ({"certManager": {"enabled": False}, "replicaCount": 1, "webhookTLS": {"caBundle": SECRET_TLS["caBundle"]}},
     ["webhookTLS.caBundle is set", "webhookTLS.existingSecret is empty"]),
    ({**cert_values("secret"), "webhookTLS": {**SECRET_TLS, "caBundle": "not base64!"}},
     ["'/webhookTLS/caBundle'", "not base64!"]),
    ({"watch": {"namespaces": []}}, ["watch.namespaces is empty", "all-namespaces"]),
])
def test_bad_values_are_refused_clearly(values: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    message = str(refused.value)
    for word in words:
        assert word in message, message


def test_chart_crds_are_deploy_crds() -> None:
    """One copy of the CRDs: the chart's crds/ is a link to deploy/crds, and helm renders them."""
    assert (pet_chart.CHART / "crds").resolve() == (pet_chart.DEPLOY / "crds").resolve()
    rendered = pet_chart.render(include_crds=True)
    names = {m.body["metadata"]["name"] for m in rendered if m.body.get("kind") == "CustomResourceDefinition"}
    assert names == {p.stem for p in (pet_chart.DEPLOY / "crds").glob("*.yaml")}

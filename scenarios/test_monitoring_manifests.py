"""deploy/monitoring against the real API server, with the Prometheus Operator's own CRDs
(github.com/prometheus-operator/prometheus-operator, the version pinned in the harness)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pet_harness import crds, monitoring, upstream_crds
from pet_harness.kube import REPO_ROOT, load_yaml_documents
from pet_harness.waiting import wait_for

MONITORING = REPO_ROOT / "deploy" / "monitoring"


def _doc(name: str) -> dict[str, Any]:
    return load_yaml_documents(MONITORING / name)[0]


def _in(ns: str, doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = ns
    return doc


def _remove_crds(kube_api: Any, docs: list[dict[str, Any]]) -> None:
    ext = client.ApiextensionsV1Api(kube_api)
    for doc in docs:
        try:
            ext.delete_custom_resource_definition(doc["metadata"]["name"])
        except ApiException as exc:
            if exc.status != 404:
                raise

    def left() -> list[str]:
        return [n for n in (d["metadata"]["name"] for d in docs)
                if any(c.metadata.name == n for c in ext.list_custom_resource_definition().items)]
    wait_for(left, lambda names: not names, 60, "the monitoring CRDs to be gone")


def test_the_service_monitor_and_rules_are_refused_clearly_without_the_crds_and_admitted_with_them(
    kube_api: Any, make_namespace: Any
) -> None:
    ns = make_namespace("monitoring-manifests")
    service_monitor, rule = _in(ns, _doc("servicemonitor.yaml")), _in(ns, _doc("prometheusrule.yaml"))
    service_monitor["spec"]["namespaceSelector"]["matchNames"] = [ns]
    docs = upstream_crds.documents()
    assert upstream_crds.kinds(docs) == ["servicemonitors.monitoring.coreos.com",
                                         "prometheusrules.monitoring.coreos.com"]
    _remove_crds(kube_api, docs)  # this worker's cluster may have them from an earlier test
    with pytest.raises(monitoring.MonitoringError) as refused:
        monitoring.create(kube_api, service_monitor)
    assert "does not serve kind ServiceMonitor of monitoring.coreos.com/v1" in str(refused.value)
    assert "install its CRD first" in str(refused.value)

    crds.install(kube_api, docs)
    try:
        created = monitoring.create(kube_api, service_monitor)
        assert created["spec"]["endpoints"][0]["port"] == "metrics"
        assert created["spec"]["endpoints"][0]["interval"] == "30s"
        created_rule = monitoring.create(kube_api, rule)
        stored = {r["alert"] for g in created_rule["spec"]["groups"] for r in g["rules"]}
        assert stored == {r["alert"] for r in monitoring.alerts(rule)}

        # the upstream schemas really validate: a malformed interval and a rule with no expr are refused
        bad_monitor = copy.deepcopy(service_monitor)
        bad_monitor["metadata"]["name"] = "bad-interval"
        bad_monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
        with pytest.raises(ApiException) as caught:
            monitoring.create(kube_api, bad_monitor, dry_run=True)
        assert caught.value.status == 422 and "interval" in caught.value.body
        bad_rule = copy.deepcopy(rule)
        bad_rule["metadata"]["name"] = "no-expr"
        del bad_rule["spec"]["groups"][0]["rules"][0]["expr"]
        with pytest.raises(ApiException) as caught:
            monitoring.create(kube_api, bad_rule, dry_run=True)
        assert caught.value.status == 422 and "expr" in caught.value.body
    finally:
        _remove_crds(kube_api, docs)


def test_the_metrics_service_and_network_policy_fit_the_deployment(kube_api: Any, make_namespace: Any) -> None:
    ns = make_namespace("monitoring-service")
    service, policy = _in(ns, _doc("service.yaml")), _in(ns, _doc("networkpolicy.yaml"))
    service_monitor = _in(ns, _doc("servicemonitor.yaml"))
    service_monitor["spec"]["namespaceSelector"]["matchNames"] = [ns]
    deployment = load_yaml_documents(REPO_ROOT / "deploy" / "operator" / "deployment.yaml")[0]
    template = deployment["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    assert ports["metrics"] == 9090  # the contract's metrics port, named for the Service and the policy
    assert "--metrics-port=9090" in template["spec"]["containers"][0]["args"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [("metrics", "metrics")]
    assert monitoring.selects(service_monitor, service) == []
    other = copy.deepcopy(service)
    other["metadata"]["labels"]["app.kubernetes.io/component"] = "webhook"
    assert monitoring.selects(service_monitor, other)  # the check can fail: the webhook Service is not selected
    core, net = client.CoreV1Api(kube_api), client.NetworkingV1Api(kube_api)
    assert core.create_namespaced_service(ns, service, dry_run="All").spec.ports[0].port == 9090
    created = net.create_namespaced_network_policy(ns, policy, dry_run="All")
    assert [p.port for rule in created.spec.ingress for p in rule.ports] == ["metrics"]
    assert created.spec.ingress[0]._from[0].namespace_selector.match_labels == {
        "kubernetes.io/metadata.name": "monitoring"}

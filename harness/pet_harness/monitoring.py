"""Prometheus Operator objects turned into what a plain Prometheus reads.

With no Prometheus Operator running, the harness still scrapes and alerts exactly as it would:

* :func:`scrape_job` turns a ServiceMonitor, the Service it selects and the pods behind that
  Service into a scrape job whose targets carry the ``__meta_kubernetes_*`` labels that service
  discovery would give them, and whose ``relabel_configs`` are the ones the Prometheus Operator
  generates for a ServiceMonitor endpoint (``pkg/prometheus/promcfg.go`` of
  github.com/prometheus-operator/prometheus-operator v0.85.0: ``namespace``, ``service``,
  ``pod``, ``container``, ``job`` from the Service's name or its ``jobLabel``, ``endpoint`` from
  the port's name), followed by the endpoint's own ``relabelings``;
* :func:`rule_file` turns a PrometheusRule into a rule file (its ``spec.groups``), optionally
  with shorter ``for`` windows for tests, the expressions unchanged.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pet_harness.prometheus import ScrapeJob


class MonitoringError(ValueError):
    """A ServiceMonitor or PrometheusRule that does not fit what it is applied to."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One pod behind a Service: its name, the address its metrics port listens on, its container."""

    pod: str
    address: str  # host:port
    container: str = ""
    pod_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _snake(key: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def _relabeling(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A ServiceMonitor relabeling (camelCase) as a Prometheus relabel config (snake_case)."""
    return {_snake(k): v for k, v in rule.items()}


def selects(service_monitor: Mapping[str, Any], service: Mapping[str, Any]) -> list[str]:
    """Why ``service_monitor`` would not select ``service`` (empty when it does)."""
    problems = []
    spec = service_monitor.get("spec", {})
    labels = service.get("metadata", {}).get("labels", {}) or {}
    wanted = spec.get("selector", {}).get("matchLabels", {}) or {}
    missing = {k: v for k, v in wanted.items() if labels.get(k) != v}
    if missing:
        problems.append(f"the Service's labels {labels} lack the selector's {missing}")
    if spec.get("selector", {}).get("matchExpressions"):
        problems.append("selector.matchExpressions is not supported here; use matchLabels")
    namespaces = spec.get("namespaceSelector", {})
    service_ns = service.get("metadata", {}).get("namespace")
    own_ns = service_monitor.get("metadata", {}).get("namespace")
    allowed = namespaces.get("matchNames") or ([own_ns] if not namespaces.get("any") else None)
    if allowed is not None and service_ns not in allowed:
        problems.append(f"the Service's namespace {service_ns!r} is not among {allowed}")
    port_names = {p.get("name") for p in service.get("spec", {}).get("ports", [])}
    for endpoint in spec.get("endpoints", []):
        if endpoint.get("port") and endpoint["port"] not in port_names:
            problems.append(f"endpoint port {endpoint['port']!r} is not a port name of the Service "
                            f"{sorted(port_names)}")
    return problems


def scrape_job(
    service_monitor: Mapping[str, Any], service: Mapping[str, Any], endpoints: Sequence[Endpoint],
    interval: str | None = None,
) -> ScrapeJob:
    """The scrape job the Prometheus Operator would make of the ServiceMonitor's first endpoint."""
    problems = selects(service_monitor, service)
    if problems:
        name = service_monitor.get("metadata", {}).get("name")
        raise MonitoringError(f"ServiceMonitor {name} does not select Service "
                              f"{service['metadata'].get('name')}: " + "; ".join(problems))
    spec = service_monitor["spec"]
    endpoint = spec["endpoints"][0]
    meta = service["metadata"]
    targets = []
    for ep in endpoints:
        labels = {
            "__meta_kubernetes_namespace": meta.get("namespace", "default"),
            "__meta_kubernetes_service_name": meta["name"],
            "__meta_kubernetes_pod_name": ep.pod,
            "__meta_kubernetes_pod_container_name": ep.container,
            **{f"__meta_kubernetes_service_label_{_sanitize(k)}": v for k, v in (meta.get("labels") or {}).items()},
            **{f"__meta_kubernetes_pod_label_{_sanitize(k)}": v for k, v in ep.pod_labels.items()},
        }
        targets.append((ep.address, labels))
    relabel: list[dict[str, Any]] = [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"},
    ]
    if spec.get("jobLabel"):
        relabel.append({"source_labels": [f"__meta_kubernetes_service_label_{_sanitize(spec['jobLabel'])}"],
                        "target_label": "job", "regex": "(.+)", "replacement": "${1}"})
    if endpoint.get("port"):
        relabel.append({"target_label": "endpoint", "replacement": endpoint["port"]})
    relabel += [_relabeling(r) for r in endpoint.get("relabelings", [])]
    name = f"serviceMonitor/{service_monitor['metadata'].get('namespace', 'default')}/" \
           f"{service_monitor['metadata']['name']}/0"
    return ScrapeJob(name=name, targets=targets, relabel_configs=relabel,
                     metrics_path=endpoint.get("path", "/metrics"), scheme=endpoint.get("scheme", "http"),
                     interval=interval or endpoint.get("interval"), honor_labels=bool(endpoint.get("honorLabels")))


def rule_file(
    prometheus_rule: Mapping[str, Any], path: Path, for_window: Callable[[str, str], str] | None = None,
) -> Path:
    """Write the PrometheusRule's groups to ``path`` as a Prometheus rule file.

    ``for_window(alert, window)`` may give a shorter ``for`` per alert (tests); the expressions,
    labels and annotations stay exactly as shipped.
    """
    if prometheus_rule.get("kind") != "PrometheusRule":
        raise MonitoringError(f"expected a PrometheusRule, got kind {prometheus_rule.get('kind')!r}")
    groups = []
    for group in prometheus_rule["spec"]["groups"]:
        rules = []
        for rule in group["rules"]:
            rule = dict(rule)
            if for_window is not None and "alert" in rule and "for" in rule:
                rule["for"] = for_window(rule["alert"], rule["for"])
            rules.append(rule)
        groups.append({**group, "rules": rules})
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def alerts(prometheus_rule: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every alerting rule of a PrometheusRule."""
    return [r for g in prometheus_rule["spec"]["groups"] for r in g["rules"] if "alert" in r]


def served_plural(api: Any, api_version: str, kind: str) -> str | None:
    """The plural under which the API server serves ``kind`` of ``group/version``, or None."""
    from kubernetes import client  # the client is only needed here
    from kubernetes.client.exceptions import ApiException

    group, _, version = api_version.rpartition("/")
    try:
        resources = client.CustomObjectsApi(api).get_api_resources(group, version)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    for resource in resources.resources or []:
        if resource.kind == kind and "/" not in resource.name:
            return str(resource.name)
    return None


def create(api: Any, document: Mapping[str, Any], dry_run: bool = False) -> dict[str, Any]:
    """Create a namespaced custom object (a ServiceMonitor, a PrometheusRule, ...), with a clear
    error when the cluster does not serve its kind (its CRD is not installed)."""
    from kubernetes import client

    api_version, kind = document["apiVersion"], document["kind"]
    plural = served_plural(api, api_version, kind)
    if plural is None:
        name = document.get("metadata", {}).get("name")
        raise MonitoringError(
            f"{kind} {name!r}: this cluster does not serve kind {kind} of {api_version}; install its CRD first "
            "(the Prometheus Operator's: pet_harness.upstream_crds.documents() in the harness, or on a real "
            "cluster `kubectl apply --server-side -f` the CRD files of the Prometheus Operator release; see "
            "docs/observability.md)")
    group, version = api_version.split("/")
    namespace = document["metadata"].get("namespace", "default")
    kwargs = {"dry_run": "All"} if dry_run else {}
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        group, version, namespace, plural, dict(document), **kwargs)
    return created


def apiserver_job(kubeconfig: Path, workdir: Path, name: str = "apiserver") -> ScrapeJob:
    """A scrape job for the API server's own ``/metrics`` (admission webhook calls, requests),
    authenticated with the kubeconfig's client certificate (written under ``workdir``), labelled
    ``job="apiserver"`` as kube-prometheus does."""
    import base64
    from urllib.parse import urlsplit

    config = yaml.safe_load(kubeconfig.read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])["context"]
    cluster = next(c for c in config["clusters"] if c["name"] == context["cluster"])["cluster"]
    user = next(u for u in config["users"] if u["name"] == context["user"])["user"]
    if "client-certificate-data" not in user:
        raise MonitoringError(f"{kubeconfig}: its user has no client certificate to scrape the API server with")
    workdir.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, field in (("ca_file", "certificate-authority-data"), ("cert_file", "client-certificate-data"),
                       ("key_file", "client-key-data")):
        path = workdir / f"apiserver-{key}.pem"
        path.write_bytes(base64.b64decode(cluster[field] if key == "ca_file" else user[field]))
        path.chmod(0o600)
        files[key] = str(path)
    server = urlsplit(cluster["server"])
    return ScrapeJob(name=name, targets=[(server.netloc, {})], scheme=server.scheme, tls=files)

"""The harness's Prometheus pieces: ServiceMonitor translation, rule files, and a real Prometheus
scraping a small local exporter (no cluster needed)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pet_harness import monitoring
from pet_harness.prometheus import PrometheusError, PrometheusServer, find_tool, wait_evaluated

SERVICE = {"metadata": {"name": "web-metrics", "namespace": "apps", "labels": {"app": "web", "tier": "metrics"}},
           "spec": {"ports": [{"name": "metrics", "port": 9090}]}}
MONITOR = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
           "metadata": {"name": "web", "namespace": "apps"},
           "spec": {"jobLabel": "app", "selector": {"matchLabels": {"app": "web", "tier": "metrics"}},
                    "endpoints": [{"port": "metrics", "interval": "30s", "honorLabels": True,
                                   "relabelings": [{"targetLabel": "team", "replacement": "blue"}]}]}}


def test_a_service_monitor_that_does_not_select_the_service_is_refused_with_the_reasons() -> None:
    other = {**SERVICE, "metadata": {**SERVICE["metadata"], "labels": {"app": "web"}, "namespace": "elsewhere"}}
    problems = monitoring.selects(MONITOR, other)
    assert any("lack the selector's {'tier': 'metrics'}" in p for p in problems)
    assert any("'elsewhere' is not among ['apps']" in p for p in problems)
    wrong_port = {**SERVICE, "spec": {"ports": [{"name": "http", "port": 80}]}}
    with pytest.raises(monitoring.MonitoringError, match="endpoint port 'metrics' is not a port name"):
        monitoring.scrape_job(MONITOR, wrong_port, [])


def test_the_scrape_job_carries_the_operator_relabelling_then_the_endpoints_own() -> None:
    job = monitoring.scrape_job(MONITOR, SERVICE, [monitoring.Endpoint("web-0", "127.0.0.1:1234", "web")])
    config = job.config()
    assert config["job_name"] == "serviceMonitor/apps/web/0"
    assert config["scrape_interval"] == "30s" and config["honor_labels"] is True
    targets = config["static_configs"]
    assert targets[0]["targets"] == ["127.0.0.1:1234"]
    assert targets[0]["labels"]["__meta_kubernetes_pod_name"] == "web-0"
    assert targets[0]["labels"]["__meta_kubernetes_service_label_app"] == "web"
    relabel = config["relabel_configs"]
    assert {"source_labels": ["__meta_kubernetes_service_label_app"], "target_label": "job",
            "regex": "(.+)", "replacement": "${1}"} in relabel
    assert relabel[-1] == {"target_label": "team", "replacement": "blue"}  # camelCase became snake_case


def test_the_rule_file_keeps_expressions_and_shortens_only_the_windows_asked_for(tmp_path: Path) -> None:
    rule = {"kind": "PrometheusRule", "spec": {"groups": [{"name": "g", "rules": [
        {"alert": "A", "expr": "up == 0", "for": "5m"}, {"alert": "B", "expr": "up == 2", "for": "1m"},
        {"record": "r", "expr": "sum(up)"}]}]}}
    path = monitoring.rule_file(rule, tmp_path / "rules.yaml", for_window=lambda a, w: "5s" if a == "A" else w)
    rules = yaml.safe_load(path.read_text())["groups"][0]["rules"]
    assert rules == [{"alert": "A", "expr": "up == 0", "for": "5s"}, {"alert": "B", "expr": "up == 2", "for": "1m"},
                     {"record": "r", "expr": "sum(up)"}]
    with pytest.raises(monitoring.MonitoringError, match="expected a PrometheusRule, got kind 'ConfigMap'"):
        monitoring.rule_file({"kind": "ConfigMap"}, tmp_path / "x.yaml")


def test_a_missing_binary_is_named_with_the_package_that_ships_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(PrometheusError, match="install Debian's 'prometheus' package"):
        find_tool("promtool")
    monkeypatch.setenv("PET_PROMTOOL", "/nonexistent/promtool")
    with pytest.raises(PrometheusError, match="PET_PROMTOOL=/nonexistent/promtool is not an executable file"):
        find_tool("promtool")


class _Exporter(http.server.BaseHTTPRequestHandler):
    body = b"# TYPE demo_up gauge\ndemo_up 1\n# TYPE demo_errors_total counter\ndemo_errors_total 0\n"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def exporter() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_real_prometheus_scrapes_with_the_service_monitor_labels_and_fires_a_rule(
    exporter: int, tmp_path: Path
) -> None:
    job = monitoring.scrape_job(MONITOR, SERVICE, [monitoring.Endpoint("web-0", f"127.0.0.1:{exporter}", "web")],
                                interval="1s")
    rules = monitoring.rule_file({"kind": "PrometheusRule", "spec": {"groups": [{"name": "demo", "rules": [
        {"alert": "DemoUp", "expr": 'demo_up{job="web"} == 1', "for": "2s", "labels": {"severity": "info"}},
        {"alert": "DemoNever", "expr": "demo_errors_total > 0"}]}]}}, tmp_path / "rules.yaml")
    server = PrometheusServer([job], [rules])
    workdir = server.workdir
    with server:
        server.wait_targets_up("web", 1, timeout=60)
        sample = server.query("demo_up")[0]["metric"]
        assert {k: sample[k] for k in ("job", "namespace", "service", "pod", "container", "endpoint", "team")} == {
            "job": "web", "namespace": "apps", "service": "web-metrics", "pod": "web-0", "container": "web",
            "endpoint": "metrics", "team": "blue"}
        assert not any(k.startswith("__meta") for k in sample)
        alert = server.wait_alert("DemoUp", "firing", timeout=60)
        assert alert["labels"]["severity"] == "info"
        wait_evaluated(server, rounds=2)
        assert [a["labels"]["alertname"] for a in server.alerts()] == ["DemoUp"]  # DemoNever stays quiet
        assert "demo_errors_total" in server.metric_names()
    assert not workdir.exists()  # its data and configuration are removed
    with pytest.raises(PrometheusError, match="not running"):
        server.alerts()

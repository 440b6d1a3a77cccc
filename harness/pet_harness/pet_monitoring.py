"""A real Prometheus watching pet-operator replicas, with the shipped monitoring manifests.

:class:`PetMonitoring` scrapes the replicas that a test started as the shipped ServiceMonitor
would have the Prometheus Operator scrape their pods (``deploy/monitoring/servicemonitor.yaml``
and ``service.yaml``, through :func:`pet_harness.monitoring.scrape_job`: same labels, same
relabelling), scrapes the API server as ``job="apiserver"``, and evaluates the shipped
PrometheusRule with shorter ``for`` windows (:data:`TEST_WINDOWS`); the expressions, labels and
annotations are the shipped ones.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pet_harness import monitoring
from pet_harness.kube import REPO_ROOT, load_yaml_documents
from pet_harness.operator_process import OperatorProcess
from pet_harness.prometheus import PrometheusServer

MONITORING_DIR = REPO_ROOT / "deploy" / "monitoring"

#: the ``for`` window of each alert in the test copy of the rules (the shipped ones are minutes)
TEST_WINDOWS = {
    "PetOperatorDown": "5s",
    "PetOperatorNoLeader": "5s",
    "PetOperatorReconcileErrors": "10s",
    "PetOperatorHighReconcileErrorRate": "10s",
    "PetOperatorWebhookFailing": "5s",
    "PetOperatorWebhookSlow": "5s",
    "PetsStuckPending": "10s",
    "PetsStuckConflict": "10s",
}


def _shipped(name: str) -> dict[str, Any]:
    return load_yaml_documents(MONITORING_DIR / name)[0]


class PetMonitoring:
    """Prometheus for the replicas in ``operators`` (re-read by :meth:`refresh`), all in
    ``namespace`` (their "pods'" namespace: the operator's own)."""

    def __init__(self, kubeconfig: Path, namespace: str, operators: Sequence[OperatorProcess]) -> None:
        self.namespace = namespace
        self.operators = operators
        self.kubeconfig = kubeconfig
        self.service_monitor = _shipped("servicemonitor.yaml")
        self.service = _shipped("service.yaml")
        for doc in (self.service_monitor, self.service):
            doc["metadata"]["namespace"] = namespace
        self.service_monitor["spec"]["namespaceSelector"]["matchNames"] = [namespace]
        self.rule = _shipped("prometheusrule.yaml")
        self.server = PrometheusServer(scrape_interval=1.0, evaluation_interval=1.0)
        self.job = str(self.service["metadata"]["labels"]["app.kubernetes.io/name"])  # the ServiceMonitor's jobLabel
        self.started_at = 0.0

    def _jobs(self) -> list[Any]:
        endpoints = [monitoring.Endpoint(pod=op.name, address=f"127.0.0.1:{op.metrics_port}", container="operator",
                                         pod_labels=dict(self.service["spec"]["selector"]))
                     for op in self.operators if op.metrics_port]
        operators = monitoring.scrape_job(self.service_monitor, self.service, endpoints, interval="1s")
        return [operators, monitoring.apiserver_job(self.kubeconfig, self.server.workdir / "tls")]

    def start(self) -> PetMonitoring:
        rules = monitoring.rule_file(copy.deepcopy(self.rule), self.server.workdir / "rules.yaml",
                                     for_window=lambda alert, window: TEST_WINDOWS.get(alert, window))
        self.server.jobs = self._jobs()
        self.server.rule_files = [rules]
        self.server.start()
        self.started_at = time.monotonic()
        return self

    def refresh(self) -> None:
        """Scrape the replicas as they are now (started since, or restarted on a new port)."""
        self.server.reload(jobs=self._jobs())

    def stop(self) -> None:
        self.server.stop()

    def firing(self) -> list[str]:
        return sorted({a["labels"]["alertname"] for a in self.server.alerts() if a["state"] == "firing"})

    def active(self) -> list[dict[str, Any]]:
        """Every pending or firing alert (name, state, labels)."""
        return [{"alertname": a["labels"]["alertname"], "state": a["state"], "labels": a["labels"]}
                for a in self.server.alerts()]

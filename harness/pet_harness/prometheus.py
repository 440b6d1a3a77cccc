"""A real Prometheus server and promtool, run by the harness on loopback.

The binaries come from ``PET_PROMETHEUS`` / ``PET_PROMTOOL`` (paths) or from ``PATH``; Debian's
``prometheus`` package ships both (``.ci/run`` installs it). :class:`PrometheusServer` writes a
configuration (scrape jobs, rule files, short intervals for tests), starts the server as a
:class:`~pet_harness.processes.ManagedProcess` on a free loopback port with its data in a
temporary folder, waits until it is ready, and answers queries, targets, rules and alerts
through Prometheus's HTTP API. Everything is stopped and removed on every exit path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess  # nosec B404 # argv lists, never a shell
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pet_harness.clusters.local import free_port
from pet_harness.processes import ManagedProcess
from pet_harness.reaper import reap_when_gone
from pet_harness.waiting import wait_for


class PrometheusError(RuntimeError):
    """Prometheus or promtool is missing, failed to start, or answered with an error."""


def find_tool(name: str) -> Path:
    """``prometheus`` or ``promtool``: from ``PET_PROMETHEUS``/``PET_PROMTOOL``, else ``PATH``."""
    variable = f"PET_{name.upper()}"
    configured = os.environ.get(variable)
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise PrometheusError(f"{variable}={configured} is not an executable file")
        return path
    found = shutil.which(name)
    if found is None:
        raise PrometheusError(
            f"{name} is not on PATH: install Debian's 'prometheus' package (apt-get install prometheus; "
            f"it ships prometheus and promtool), or set {variable} to the binary")
    return Path(found)


def unavailable() -> str | None:
    """Why Prometheus or promtool cannot be used here (the message names the fix), or None."""
    for name in ("prometheus", "promtool"):
        try:
            find_tool(name)
        except PrometheusError as exc:
            return str(exc)
    return None


def promtool(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``promtool`` with ``args``; the result (check ``returncode``, ``stdout``, ``stderr``)."""
    return subprocess.run(  # nosec B603 # argv of our own, no shell
        [str(find_tool("promtool")), *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, check=False)


@dataclasses.dataclass(frozen=True)
class ScrapeJob:
    """One ``scrape_configs`` entry: static targets, each with its own labels (``__meta_*``
    labels are seen by the relabelling and dropped after it, as with service discovery)."""

    name: str
    targets: Sequence[tuple[str, Mapping[str, str]]]  # (host:port, labels)
    relabel_configs: Sequence[Mapping[str, Any]] = ()
    metrics_path: str = "/metrics"
    scheme: str = "http"
    interval: str | None = None
    tls: Mapping[str, str] | None = None  # ca_file, cert_file, key_file, server_name, ...
    honor_labels: bool = False

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "job_name": self.name,
            "metrics_path": self.metrics_path,
            "scheme": self.scheme,
            "static_configs": [{"targets": [address], "labels": dict(labels)} for address, labels in self.targets],
        }
        if self.interval:
            out["scrape_interval"] = self.interval
        if self.relabel_configs:
            out["relabel_configs"] = [dict(r) for r in self.relabel_configs]
        if self.tls:
            out["tls_config"] = dict(self.tls)
        if self.honor_labels:
            out["honor_labels"] = True
        return out


class PrometheusServer:
    """A Prometheus server on ``127.0.0.1``, scraping ``jobs`` and evaluating ``rule_files``."""

    def __init__(
        self, jobs: Sequence[ScrapeJob] = (), rule_files: Sequence[Path] = (),
        scrape_interval: float = 1.0, evaluation_interval: float = 1.0, workdir: Path | None = None,
    ) -> None:
        self.jobs = list(jobs)
        self.rule_files = list(rule_files)
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="pet-harness-prometheus-"))
        self.port = 0
        self._process: ManagedProcess | None = None
        self._reaper = reap_when_gone(self.workdir) if self._own_workdir else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    def config(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": f"{self.scrape_interval:g}s", "scrape_timeout": f"{self.scrape_interval:g}s",
                       "evaluation_interval": f"{self.evaluation_interval:g}s"},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [job.config() for job in self.jobs],
        }

    def _write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        check = promtool("check", "config", str(self.config_path))
        if check.returncode != 0:
            raise PrometheusError(f"promtool rejects the generated configuration {self.config_path}:\n"
                                  f"{check.stdout}{check.stderr}")

    def start(self, timeout: float = 60) -> PrometheusServer:
        binary = find_tool("prometheus")
        try:
            self._write_config()
            self.port = free_port()
            self._process = ManagedProcess("prometheus", [
                str(binary), f"--config.file={self.config_path}", f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=2h", "--log.level=warn",
            ], self.workdir / "prometheus.log").start()
            wait_for(lambda: self._get("/-/ready", raw=True), lambda _: True, timeout,
                     f"Prometheus on {self.url} to be ready (log: {self.workdir / 'prometheus.log'})",
                     ignore=(OSError, PrometheusError))
        except BaseException:
            self.stop()
            raise
        return self

    def reload(self, jobs: Sequence[ScrapeJob] | None = None, rule_files: Sequence[Path] | None = None) -> None:
        """Rewrite the configuration (new targets or rules) and make the server read it again."""
        if jobs is not None:
            self.jobs = list(jobs)
        if rule_files is not None:
            self.rule_files = list(rule_files)
        self._write_config()
        self._request("POST", "/-/reload", raw=True)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop(grace=10)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            if self._reaper is not None:
                self._reaper.stop()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        return self._process.log_text() if self._process is not None else ""

    # --- the HTTP API -----------------------------------------------------------------------

    def _request(self, method: str, path: str, params: Mapping[str, str] | None = None, raw: bool = False) -> Any:
        if self._process is None or not self._process.running:
            raise PrometheusError(f"Prometheus is not running (log: {self.workdir / 'prometheus.log'}):\n"
                                  f"{self.log_text()[-2000:]}")
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        req = urllib.request.Request(url, method=method)  # noqa: S310 - an http://127.0.0.1 URL we built
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310  # nosec B310 # loopback URL built here
                body = resp.read().decode()
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"{method} {path} -> {exc.code}: {exc.read().decode()[:500]}") from exc
        if raw:
            return body
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise PrometheusError(f"{method} {path} -> {answer}")
        return answer["data"]

    def _get(self, path: str, params: Mapping[str, str] | None = None, raw: bool = False) -> Any:
        return self._request("GET", path, params, raw)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        data = self._get("/api/v1/query", {"query": expr})
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} gives a {data['resultType']}, not a vector")
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        """The single value of ``expr`` (None for an empty result; an error for several series)."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr!r} gives {len(result)} series, expected one: {result}")
        return float(result[0]["value"][1])

    def metric_names(self) -> list[str]:
        """Every metric name Prometheus has stored."""
        return list(self._get("/api/v1/label/__name__/values"))

    def targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets", {"state": "active"})["activeTargets"])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/rules")["groups"])

    def alerts(self) -> list[dict[str, Any]]:
        """Every pending or firing alert: ``labels`` (``alertname`` among them), ``state``, ``activeAt``."""
        return list(self._get("/api/v1/alerts")["alerts"])

    def wait_targets_up(self, job: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until ``count`` targets of ``job`` have been scraped successfully."""
        def up() -> list[dict[str, Any]]:
            return [t for t in self.targets() if t["labels"].get("job") == job and t["health"] == "up"]
        return wait_for(up, lambda ts: len(ts) >= count, timeout, f"{count} target(s) of job {job} up")

    def wait_alert(self, name: str, state: str = "firing", timeout: float = 120) -> dict[str, Any]:
        """Wait until alert ``name`` is in ``state`` (``pending`` or ``firing``); the alert."""
        if state not in ("pending", "firing"):
            raise ValueError(f"alert state {state!r} is not 'pending' or 'firing'")
        wanted = ("pending", "firing") if state == "pending" else ("firing",)
        found = wait_for(lambda: [a for a in self.alerts() if a["labels"].get("alertname") == name],
                         lambda alerts: any(a["state"] in wanted for a in alerts), timeout,
                         f"alert {name} to be {state}", ignore=(OSError, PrometheusError))
        return next(a for a in found if a["state"] in wanted)


def wait_evaluated(server: PrometheusServer, rounds: int = 3, timeout: float = 60) -> None:
    """Wait until every rule group has been evaluated ``rounds`` more times (not a sleep: it
    watches each group's ``lastEvaluation``)."""
    def evaluations() -> dict[str, str]:
        return {g["name"]: g.get("lastEvaluation", "") for g in server.rule_groups()}

    seen: list[dict[str, str]] = [evaluations()]

    def advanced(now: dict[str, str]) -> bool:
        if now != seen[-1]:
            seen.append(now)
        return len(seen) > rounds

    wait_for(evaluations, advanced, timeout, f"{rounds} rule evaluation rounds", ignore=(OSError, PrometheusError))

"""An operator under test as a real subprocess: start, wait until ready, kill, restart, read its log."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from pet_harness.clusters.local import free_port
from pet_harness.fault_proxy import FaultProxy
from pet_harness.processes import ManagedProcess
from pet_harness.profile import OperatorProfile
from pet_harness.waiting import WaitTimeout, wait_for


class OperatorProcess:
    """One replica of an operator (``profile``) with its own kubeconfig, health port and log file."""

    def __init__(
        self,
        profile: OperatorProfile,
        kubeconfig: Path,
        log_path: Path,
        namespaces: Sequence[str] = (),
        all_namespaces: bool = False,
        extra_args: Sequence[str] = (),
        name: str = "",
        extra_env: dict[str, str] | None = None,
        webhook_port: int = 0,
        username: str = "",
        proxy: FaultProxy | None = None,
        webhook_front: FaultProxy | None = None,
    ) -> None:
        """``webhook_port``: the port its webhook keeps across restarts (0: none); ``username``: the
        Kubernetes user it authenticates as, when the harness knows it; ``proxy``: the fault proxy
        it reaches the API server through, when it has one; ``webhook_front``: the proxy in front of all
        webhook replicas (a "Service"), when there is one."""
        self.profile = profile
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.namespaces = tuple(namespaces)
        self.all_namespaces = all_namespaces
        self.extra_args = tuple(extra_args)
        self.name = name or profile.name
        self.extra_env = dict(extra_env or {})
        self.health_port = 0
        #: the port of its Prometheus metrics, a free one at each start; 0 when its profile serves none
        self.metrics_port = 0
        self.webhook_port = webhook_port
        self._kept_log: str | None = None
        self.username = username
        self.proxy = proxy
        self.webhook_front = webhook_front
        self.process: ManagedProcess | None = None
        self.starts = 0

    def argv(self) -> list[str]:
        return self.profile.argv(health_port=self.health_port, kubeconfig=self.kubeconfig,
                                 namespaces=self.namespaces, all_namespaces=self.all_namespaces,
                                 extra_args=self.extra_args, metrics_port=self.metrics_port)

    def start(self, wait_ready: bool = True, timeout: float = 60) -> OperatorProcess:
        self.health_port = free_port(avoid={self.webhook_port})  # the webhook keeps its port across restarts
        self.metrics_port = (free_port(avoid={self.webhook_port, self.health_port}) if self.profile.serves_metrics
                             else 0)
        env = dict(os.environ)
        env.pop("KOPF_NAMESPACE", None)
        env["PYTHONUNBUFFERED"] = "1"
        if self.profile.kubeconfig_env:
            env["KUBECONFIG"] = str(self.kubeconfig)
        env.update(self.profile.env)
        env.update(self.extra_env)
        self.process = ManagedProcess(self.name, self.argv(), self.log_path, env=env).start()
        self.starts += 1
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def _probe(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.health_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # nosec B310 # loopback URL built here
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    @property
    def metrics_url(self) -> str | None:
        """Where its Prometheus metrics are served now; None if its profile serves none (or not started)."""
        if not self.metrics_port:
            return None
        return f"http://127.0.0.1:{self.metrics_port}{self.profile.metrics_path}"

    def metrics_text(self, timeout: float = 5) -> str:
        """One scrape of its metrics, in the Prometheus text format."""
        if not self.metrics_port:
            raise RuntimeError(f"{self.name} serves no metrics (its profile's command has no {{metrics_port}})")
        url = f"http://127.0.0.1:{self.metrics_port}{self.profile.metrics_path}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # nosec B310 # loopback URL built here
            return str(resp.read().decode())

    def healthz(self) -> tuple[int, str]:
        return self._probe("/healthz")

    def readyz(self) -> tuple[int, str]:
        return self._probe(self.profile.ready_path)

    def wait_ready(self, timeout: float = 60) -> None:
        def probe() -> tuple[int, str]:
            if self.process is None or not self.process.running:
                code = self.process.returncode if self.process else None
                raise RuntimeError(f"{self.name} exited with code {code}; log:\n{self.log_tail()}")
            return self.readyz()

        try:
            wait_for(probe, lambda r: r[0] == 200, timeout, f"{self.name} /readyz", ignore=(OSError,))
        except WaitTimeout as exc:
            raise WaitTimeout(exc.what, exc.timeout, {"readyz": exc.last, "log": self.log_tail()}, exc.error) from None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def kill(self) -> None:
        """SIGKILL: the operator gets no chance to clean up, as in a node crash."""
        if self.process is not None:
            self.process.kill()

    def stop(self, grace: float = 15) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.process is None:
            return None
        return self.process.stop(grace)

    def restart(self, wait_ready: bool = True) -> OperatorProcess:
        self.stop()
        return self.start(wait_ready=wait_ready)

    def log_text(self) -> str:
        if self._kept_log is not None:
            return self._kept_log
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def keep_log_in_memory(self) -> None:
        """Read the log once more and keep it, so its file (and folder) can be removed."""
        self._kept_log = None
        self._kept_log = self.log_text()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def inconsistency_lines(self) -> list[str]:
        """Log lines with one of the profile's bad markers."""
        markers = [m.lower() for m in self.profile.bad_log_markers]
        return [line for line in self.log_text().splitlines() if any(m in line.lower() for m in markers)]

    def wait_log(self, needle: str, timeout: float = 30) -> None:
        wait_for(self.log_text, lambda text: needle in text, timeout, f"{needle!r} in the {self.name} log")


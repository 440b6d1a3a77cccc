"""Run ``loadtests/locustfile.py`` as a subprocess and read what it wrote.

Headless runs write Locust's CSVs (``locust_stats.csv``, ``locust_stats_history.csv``,
``locust_failures.csv``) and its HTML report into the run's folder; ``--web`` runs serve the UI on
127.0.0.1 and quit once the swarm the user started has stopped (``--autoquit``).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pet_harness.kube import REPO_ROOT
from pet_harness.processes import ManagedProcess

LOADTESTS = REPO_ROOT / "loadtests"
LOCUSTFILE = LOADTESTS / "locustfile.py"
SHAPES = LOADTESTS / "shapes.py"


class LocustError(RuntimeError):
    """Locust did not run to its end; the message carries its log's tail."""


@dataclasses.dataclass
class LocustPlan:
    kubeconfig: Path
    namespaces: Sequence[str]
    stores: int
    pets: int
    user_class: str = "PetCreator"  # or PetTenant
    shape: str = "constant"  # constant | step | ramp; "" = no shape (web UI decides)
    rate: float = 20.0
    seconds: float = 60.0
    start_rate: float = 10.0
    rate_step: float = 10.0
    max_rate: float = 400.0
    step_seconds: float = 20.0
    p99_limit: float = 2.0
    user_rate: float = 1.0
    duplicate_share: float = 0.02
    reconcile_timeout: float = 60.0
    drain_seconds: float = 90.0
    processes: int = 1
    web_port: int = 0
    extra: Sequence[str] = ()

    def argv(self, out: Path) -> list[str]:
        files = str(LOCUSTFILE) + ("," + str(SHAPES) if self.shape else "")
        argv = [
            _locust(), "-f", files, "--kube-config", str(self.kubeconfig),
            "--pet-namespaces", ",".join(self.namespaces), "--pet-stores", str(self.stores),
            "--pet-max", str(self.pets), "--pet-user-rate", str(self.user_rate),
            "--pet-duplicate-share", str(self.duplicate_share),
            "--pet-reconcile-timeout", str(self.reconcile_timeout),
            "--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "locust.html"),
            "--loglevel", "WARNING", "--logfile", str(out / "locust.log"), "--exit-code-on-error", "0",
            # a user told to stop finishes the task it is in: a create cut off in flight would leave a pet
            # the raw writers never give a status (and an API request the server counts and the client not)
            "--stop-timeout", str(STOP_TIMEOUT),
        ]
        server = _server(self.kubeconfig)
        if server:
            argv += ["--host", server]  # shown by the web UI (the users take it from the kubeconfig)
        if self.shape:
            argv += ["--pet-shape", self.shape, "--pet-rate", str(self.rate), "--pet-seconds", str(self.seconds),
                     "--pet-start-rate", str(self.start_rate), "--pet-rate-step", str(self.rate_step),
                     "--pet-max-rate", str(self.max_rate), "--pet-step-seconds", str(self.step_seconds),
                     "--pet-p99-limit", str(self.p99_limit), "--pet-drain-seconds", str(self.drain_seconds),
                     "--pet-steps-file", str(out / "steps.json")]
        if self.web_port:
            # the UI on loopback only; with a shape it starts by itself and quits 5 s after the end,
            # without one the user starts the swarm from the form and the harness ends Locust once
            # that swarm has stopped (see run())
            argv += ["--web-host", "127.0.0.1", "--web-port", str(self.web_port)]
            if self.shape:
                argv += ["--autostart", "--autoquit", "5"]
        else:
            argv += ["--headless", "--only-summary"]
        if self.processes > 1:
            argv += ["--processes", str(self.processes)]
        return [*argv, *self.extra, self.user_class]

    def longest_seconds(self) -> float:
        """An upper bound of the run's length, for the harness's own time-out."""
        if self.shape == "constant":
            body = self.seconds
        elif self.shape in ("ramp", "step"):
            steps = max(1, int((self.max_rate - self.start_rate) / max(self.rate_step, 1e-9)) + 1)
            body = steps * self.step_seconds
        else:
            body = 24 * 3600  # the web UI: the user decides
        return body + self.drain_seconds + 120


STOP_TIMEOUT = 30  # seconds a stopping user may take to finish its task


def _server(kubeconfig: Path) -> str | None:
    import yaml

    try:
        doc = yaml.safe_load(kubeconfig.read_text())
        context = next(c["context"] for c in doc["contexts"] if c["name"] == doc["current-context"])
        return str(next(c["cluster"]["server"] for c in doc["clusters"] if c["name"] == context["cluster"]))
    except (OSError, KeyError, StopIteration, TypeError, yaml.YAMLError):
        return None


def _locust() -> str:
    exe = shutil.which("locust") or str(Path(sys.executable).with_name("locust"))
    return exe


def run(plan: LocustPlan, out: Path, env: dict[str, str] | None = None,
        on_start: Any = None) -> ManagedProcess:
    """Run Locust to its end; raises LocustError if it fails or overruns."""
    out.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = ManagedProcess("locust", plan.argv(out), out / "locust.out", env=full_env, cwd=LOADTESTS).start()
    if on_start is not None:
        on_start(proc)
    deadline = time.monotonic() + plan.longest_seconds()
    ran = False  # web UI without a shape: a swarm was seen running
    try:
        while proc.running:
            if time.monotonic() > deadline:
                raise LocustError(f"Locust still running after {plan.longest_seconds():.0f}s; stopped it:\n"
                                  + _tail(proc))
            if plan.web_port and not plan.shape:
                state, pending = web_state(plan.web_port)
                ran = ran or state in ("spawning", "running")
                if ran and state == "stopped" and pending == 0:
                    break  # the user stopped the swarm and its writes settled: end Locust (it writes its reports)
            time.sleep(0.5)
    finally:
        proc.stop(grace=30)  # SIGTERM: Locust writes its CSV and HTML reports on the way out
    if proc.returncode not in (0, None):
        raise LocustError(f"Locust exited with {proc.returncode}:\n{_tail(proc)}")
    return proc


def web_state(port: int) -> tuple[str | None, int | None]:
    """The runner's state (ready, spawning, running, stopped...) and the writes still pending, as the
    locustfile's ``/pet-load`` route reports them."""
    import json
    import urllib.request

    try:
        url = f"http://127.0.0.1:{port}/pet-load"
        with urllib.request.urlopen(url, timeout=5) as resp:  # nosec B310 # loopback URL built here
            data = json.loads(resp.read())
    except (OSError, ValueError):
        return None, None
    return data.get("state"), data.get("pending")


def _tail(proc: ManagedProcess, lines: int = 30) -> str:
    return "\n".join(proc.log_text().splitlines()[-lines:])


def read_stats(out: Path) -> list[dict[str, Any]]:
    """Rows of ``locust_stats.csv`` with numbers as numbers."""
    path = out / "locust_stats.csv"
    if not path.exists():
        return []
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: _number(v) for k, v in row.items()})
    return rows


def read_history(out: Path) -> list[dict[str, Any]]:
    path = out / "locust_stats_history.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value

"""The operators a load run can measure, started the way the harness starts ours everywhere.

* ``ours``: ``pet-operator`` under the shipped RBAC (a ServiceAccount token), leader election on,
  the admission webhook served and registered with the API server (pointed straight at the
  replica's port, as the API server reaches a Service: no proxy in between);
* ``naive-kopf``: ``loadtests/peers/naive_kopf.py`` under ``kopf run`` with Kopf's defaults, under
  a ServiceAccount of its own, on the CRD copy whose status keeps unknown fields;
* ``raw``: no operator; the load client writes the status itself (``--pet-writer client``);
  ``raw-chain`` makes our operator's whole chain of writes from the client.
"""

from __future__ import annotations

import dataclasses
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pet_harness import webhooks
from pet_harness.clusters.local import free_port
from pet_harness.kube import CRD_DIR, install_crds
from pet_harness.load import runtimes, world
from pet_harness.operator_process import OperatorProcess
from pet_harness.pet_profile import pet_operator_profile
from pet_harness.processes import ManagedProcess
from pet_harness.rbac import OperatorIdentity
from pet_harness.waiting import wait_for

CLAIMS_NAMESPACE = "pet-system"
WEBHOOK_NAME = "pet-operator-load"
KINDS = ("ours", "naive-kopf", "raw", "raw-chain")


@dataclasses.dataclass
class Subject:
    """An operator under test (or none): how to start it, and what the load must know of it."""

    kind: str
    status_path: str = "status"
    duplicates: str = "conflict"  # "reject" when a webhook refuses held ids at admission
    writer: str = "operator"
    process: Any = None  # OperatorProcess or ManagedProcess (ours: the first replica)
    replicas: list[Any] = dataclasses.field(default_factory=list)  # ours: every replica, the first included
    webhook_ca: bytes | None = None
    kubeconfig: Path | None = None
    log_path: Path | None = None
    started_seconds: float | None = None  # start until ready
    runtime: str = ""  # which interpreter it ran on (runtimes.py)

    @property
    def pid(self) -> int | None:
        if self.process is None:
            return None
        inner = getattr(self.process, "process", self.process)
        return getattr(inner, "pid", None)

    def locust_args(self) -> list[str]:
        args = ["--pet-status-path", self.status_path, "--pet-duplicates", self.duplicates,
                "--pet-writer", self.writer, "--pet-claims-namespace", CLAIMS_NAMESPACE]
        if self.writer != "operator" and self.kubeconfig is not None:
            args += ["--status-kube-config", str(self.kubeconfig)]
        return args

    def stop(self, grace: float = 30) -> float | None:
        """Stop it, every replica (SIGTERM, then SIGKILL after ``grace``); returns the seconds the first took."""
        if self.process is None:
            return None
        started = time.monotonic()
        self.process.stop(grace)
        took = round(time.monotonic() - started, 2)
        for replica in self.replicas[1:]:
            replica.stop(grace)
        return took


def _naive_ready(port: int) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        with urllib.request.urlopen(url, timeout=2) as resp:  # nosec B310 # loopback URL built here
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def start_subject(
    kind: str, api: Any, admin_kubeconfig: Path, namespaces: Sequence[str], workdir: Path,
    webhook: bool = True, ready_timeout: float = 120, replicas: int = 1, extra_args: Sequence[str] = (),
) -> Subject:
    """Install what ``kind`` needs (RBAC, webhook) and start it, ready (its CRDs: :func:`install_crds_for`).

    ``replicas`` (ours): more leader-electing replicas, each its own ServiceAccount; the first is started
    first (and so leads), the API server calls the webhook of the last (so it keeps answering when the
    leader is killed)."""
    if kind not in KINDS:
        raise ValueError(f"operator {kind!r} is not one of {', '.join(KINDS)}")
    started = time.monotonic()
    if kind in ("raw", "raw-chain"):
        kubeconfig = world.tenant_kubeconfig(api, admin_kubeconfig, CLAIMS_NAMESPACE, namespaces,
                                             workdir / "raw-writer.kubeconfig")
        return Subject(kind, writer="client" if kind == "raw" else "client-chain", kubeconfig=kubeconfig)
    if kind == "naive-kopf":
        kubeconfig = world.naive_kubeconfig(api, admin_kubeconfig, CLAIMS_NAMESPACE, workdir / "naive.kubeconfig")
        port = free_port()
        naive = runtimes.naive_runtime()
        argv = [naive.python, "-m", "kopf", "run", "--standalone", f"--liveness=http://127.0.0.1:{port}/healthz"]
        for ns in namespaces:
            argv += ["--namespace", ns]
        argv.append(str(world.PEERS_DIR / "naive_kopf.py"))
        env = {"KUBECONFIG": str(kubeconfig), "PET_CLAIMS_NAMESPACE": CLAIMS_NAMESPACE, "PYTHONUNBUFFERED": "1",
               **naive.env}
        process = ManagedProcess("naive-kopf", argv, workdir / "naive-kopf.log", env={**os.environ, **env}).start()
        subject = Subject(kind, status_path="status.reconcile", process=process, kubeconfig=kubeconfig,
                          log_path=workdir / "naive-kopf.log", runtime=naive.description)
        try:
            wait_for(lambda: process.running and _naive_ready(port), bool, ready_timeout, "the naive Kopf operator")
        except BaseException:
            subject.stop()
            raise
        subject.started_seconds = round(time.monotonic() - started, 2)
        return subject
    # ours
    identity = OperatorIdentity(api, CLAIMS_NAMESPACE, "load")
    args = ["--claims-namespace", CLAIMS_NAMESPACE, "--leader-elect", "--lease-namespace", CLAIMS_NAMESPACE,
            *extra_args]
    ca = b""
    cert_dir = workdir / "webhook-certs"
    if webhook:
        ca = webhooks.write_serving_certificate(cert_dir)
    ours = runtimes.operator_runtime()
    subject = Subject(kind, duplicates="reject" if webhook else "conflict", log_path=workdir / "operator.log",
                      runtime=ours.description)
    try:
        for index in range(replicas):
            account = "pet-operator" if index == 0 else f"pet-operator-{index}"
            identity.create(list(namespaces), account)
            kubeconfig = identity.kubeconfig(admin_kubeconfig, workdir / f"operator-{index}.kubeconfig",
                                             seconds=world.TOKEN_SECONDS, account=account)
            port = free_port() if webhook else 0
            hook = ["--webhook-port", str(port), "--webhook-cert-dir", str(cert_dir)] if webhook else \
                ["--webhook-port", "0"]
            log = workdir / ("operator.log" if index == 0 else f"operator-{index}.log")
            op = OperatorProcess(pet_operator_profile([ours.python, "-m", "pet_operator"]), kubeconfig, log,
                                 namespaces=namespaces, extra_args=[*args, *hook], name=f"pet-operator-{index}",
                                 extra_env={"POD_NAME": f"pet-operator-{index}", **ours.env}, webhook_port=port)
            subject.replicas.append(op)
            if index == 0:
                subject.process, subject.kubeconfig = op, kubeconfig
            op.start(wait_ready=True, timeout=ready_timeout)
        if webhook:
            subject.webhook_ca = ca
            point_webhook(api, subject, len(subject.replicas) - 1, namespaces)
    except BaseException:
        subject.stop()
        raise
    subject.started_seconds = round(time.monotonic() - started, 2)
    return subject


def point_webhook(api: Any, subject: Subject, replica: int, namespaces: Sequence[str]) -> None:
    """Make the API server call the webhooks (validating and mutating) of ``replica`` (one address, as a
    Service would have one), and wait until it does."""
    port = subject.replicas[replica].webhook_port
    webhooks.register(api, WEBHOOK_NAME, namespaces, f"https://127.0.0.1:{port}", subject.webhook_ca)


def install_crds_for(kind: str, api: Any, workdir: Path) -> None:
    """The project's CRDs, or for the naive peer their copy whose Pet status keeps unknown fields."""
    install_crds(api, CRD_DIR if kind != "naive-kopf" else _naive_crd_dir(workdir))


def _naive_crd_dir(workdir: Path) -> Path:
    """A folder holding the naive CRD copies (``install_crds`` installs a folder and waits for it)."""
    folder = workdir / "naive-crds"
    folder.mkdir(parents=True, exist_ok=True)
    for doc in world.naive_crds():
        (folder / f"{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder

"""A disposable world for Chaos Toolkit experiments.

:class:`ChaosEnvironment` starts an embedded cluster (:class:`LocalCluster`), two
``pet-operator`` replicas with ``--leader-elect`` (each under its own ServiceAccount and
behind its own :class:`FaultProxy`), a load thread that keeps creating, updating and
deleting pets, and the control server (:mod:`pet_harness.chaos_control`). The experiments in
``chaos/experiments`` reach that server through the ``petchaos`` provider package: POST
``/actions/<fault>`` injects a fault of :data:`petchaos.faults.FAULTS` (this class implements
each one: :class:`petchaos.faults.EmbeddedTarget`), GET ``/probes/steady-state`` checks the
steady state. :mod:`pet_harness.chaos_runner` runs the experiments.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import shutil
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pet_harness import audit
from pet_harness.chaos_control import ControlServer
from pet_harness.clusters.local import LocalCluster
from pet_harness.fault_proxy import FaultProxy, proxied_kubeconfig
from pet_harness.kube import PetApi, api_client, create_namespace, install_crds
from pet_harness.operator_process import OperatorProcess
from pet_harness.pet_load import PetLoad
from pet_harness.pet_profile import pet_operator_profile
from pet_harness.rbac import OperatorIdentity
from pet_harness.waiting import wait_for
from petchaos import faults
from petchaos.load import lost_pets
from petchaos.steady import check_pets

FAST = ("--leader-elect", "--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5")
LEASE_NAME = audit.DEFAULT_LEASE_NAME
PETS_NAMESPACE = "chaos-pets"
OPERATOR_NAMESPACE = "chaos-pet-system"


# --- the environment -------------------------------------------------------------------------


class ChaosEnvironment:
    """Cluster, two leader-electing replicas behind fault proxies, a load, and the control server."""

    def __init__(self, replicas: int = 2, max_pets: int = 30, load_interval: float = 0.3,
                 workdir: Path | None = None) -> None:
        self.replica_count = replicas
        self.max_pets = max_pets
        self.load_interval = load_interval
        self.cluster = LocalCluster()
        self.replicas: list[OperatorProcess] = []
        self.proxies: list[FaultProxy] = []
        self.frozen: set[str] = set()
        self.load: PetLoad | None = None
        self.api: Any = None
        self.identity: OperatorIdentity | None = None
        self.control: ControlServer | None = None
        self._timers: list[threading.Timer] = []
        # Actions run on one long-lived thread: processes are started with PR_SET_PDEATHSIG, which
        # kills them when the *thread* that started them ends (a request thread would end at once).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chaos-action")
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="pet-chaos-"))
        self.actions: list[dict[str, Any]] = []

    # lifecycle

    def __enter__(self) -> ChaosEnvironment:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def control_url(self) -> str:
        if self.control is None:
            raise RuntimeError("the chaos environment is not started")
        return self.control.url

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cluster.start()
        self.api = api_client(self.cluster.kubeconfig_path)
        install_crds(self.api)
        create_namespace(self.api, PETS_NAMESPACE)
        create_namespace(self.api, OPERATOR_NAMESPACE)
        self.identity = OperatorIdentity(self.api, OPERATOR_NAMESPACE, "chaos")
        for i in range(self.replica_count):
            self._start_replica(i)
        self.leader(timeout=30)
        self.load = PetLoad(PetApi(self.api, PETS_NAMESPACE), self.max_pets, self.load_interval).start()
        self.control = ControlServer(self)

    def _start_replica(self, i: int) -> OperatorProcess:
        if self.identity is None:
            raise RuntimeError("chaos environment: a replica needs the identity made at start")
        account = f"pet-operator-{i}"
        self.identity.create([PETS_NAMESPACE], account)
        kubeconfig = self.identity.kubeconfig(self.cluster.kubeconfig_path, self.workdir / f"{account}.kubeconfig",
                                              account=account)
        with api_client(kubeconfig) as api:
            wait_for(PetApi(api, PETS_NAMESPACE).list_pets, lambda _: True, 30, f"{account} allowed to list pets")
        proxy, kubeconfig = proxied_kubeconfig(kubeconfig)
        self.proxies.append(proxy)
        op = OperatorProcess(
            pet_operator_profile(), kubeconfig, self.workdir / f"{account}.log", namespaces=[PETS_NAMESPACE],
            extra_args=("--claims-namespace", OPERATOR_NAMESPACE, "--webhook-port", "0", *FAST), name=account,
            username=self.identity.username(account), proxy=proxy,
        )
        self.replicas.append(op)
        op.start(wait_ready=True)
        return op

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self.control is not None:
            with contextlib.suppress(Exception):
                self.control.close()
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self.load is not None:
            self.load.stop()
        for op in self.replicas:
            with contextlib.suppress(Exception):
                if op.process is not None and op.running:
                    op.process.signal(signal.SIGCONT)
                op.stop(grace=5)
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                proxy.stop()
        if self.api is not None:
            with contextlib.suppress(Exception):
                self.api.close()
        self.cluster.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # observation

    def leader_status(self, op: OperatorProcess) -> dict[str, Any] | None:
        if not op.running or op.name in self.frozen:
            return None
        try:
            leader_url = f"http://127.0.0.1:{op.health_port}/leader"
            with urllib.request.urlopen(leader_url, timeout=2) as resp:  # nosec B310 # loopback URL built here
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except (OSError, ValueError):
            return None

    def leaders(self) -> list[OperatorProcess]:
        return [op for op in self.replicas if (self.leader_status(op) or {}).get("leader")]

    def leader(self, timeout: float = 30) -> OperatorProcess:
        found: list[OperatorProcess] = wait_for(self.leaders, lambda ops: len(ops) == 1, timeout, "exactly one leader")
        return found[0]

    def snapshot(self) -> dict[str, Any]:
        pets = PetApi(self.api, PETS_NAMESPACE).list_pets()
        leases = client.CoordinationV1Api(self.api).list_namespaced_lease(OPERATOR_NAMESPACE).items
        claims = [self.api.sanitize_for_serialization(lease) for lease in leases]
        result = check_pets(pets, claims, PETS_NAMESPACE)
        leaders = [op.name for op in self.leaders()]
        result["leaders"] = leaders
        result["replicas_running"] = [op.name for op in self.replicas if op.running]
        if len(leaders) != 1:
            result["ok"] = False
            result["problems"].append(f"{len(leaders)} leaders: {leaders}")
        return result

    def steady_state(self, timeout: float = 30, pause_load: bool = True) -> dict[str, Any]:
        """Wait up to ``timeout`` for the steady state (load paused meanwhile, unless told not to)."""
        if self.load is not None and pause_load:
            self.load.pause()
        try:
            deadline = time.monotonic() + timeout
            last: dict[str, Any] = {"ok": False, "problems": ["not checked yet"]}
            while True:
                try:
                    last = self.snapshot()
                except Exception as exc:  # noqa: BLE001 - the API server may be restarting
                    last = {"ok": False, "problems": [f"{type(exc).__name__}: {exc}"[:300]]}
                if last["ok"] or time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
            last["waited_seconds"] = round(timeout - max(0.0, deadline - time.monotonic()), 2)
            return last
        finally:
            if self.load is not None and pause_load:
                self.load.resume()

    # what run_experiment asks of an environment (ClusterTarget answers the same for target kubernetes)

    target = "local"

    def chaos_variables(self) -> dict[str, str]:
        return {"control_url": self.control_url, "target": self.target}

    def chaos_environ(self) -> dict[str, str]:
        return {}

    def stop_load(self) -> None:
        if self.load is not None:
            self.load.stop()

    def audit_analysis(self) -> dict[str, Any] | None:
        result: dict[str, Any] = audit.analyze(self.cluster.audit_log_path, OPERATOR_NAMESPACE)
        return result

    def write_artifacts(self, results: Path, name: str) -> None:
        (results / f"{name}-actions.json").write_text(json.dumps(self.actions, indent=2, default=str))
        for op in self.replicas:
            with contextlib.suppress(OSError):
                (results / f"{name}-{op.name}.log").write_text(op.log_text())

    def pets_lost(self) -> list[str]:
        return [] if self.load is None else lost_pets(self.load)

    # actions

    def act(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run the fault named by a control-server path segment (``kill-leader``) with the
        arguments of ``body``; KeyError if there is no such fault, ValueError for bad arguments."""
        fault = faults.by_path(name)
        arguments = fault.arguments(body)
        return dict(self._executor.submit(self._timed, name, fault, arguments).result())

    def _timed(self, name: str, fault: faults.Fault, arguments: dict[str, Any]) -> dict[str, Any]:
        started, at = time.monotonic(), _now()
        result: dict[str, Any] = fault.embedded(self, **arguments)
        result["seconds"] = round(time.monotonic() - started, 2)
        self.actions.append({"action": name, "at": at, **result})
        return result

    # the faults (petchaos.faults.EmbeddedTarget)

    def kill_leader(self) -> dict[str, Any]:
        op = self.leader()
        op.kill()
        return {"killed": op.name}

    def freeze_leader(self, seconds: float) -> dict[str, Any]:
        op = self.leader()
        if op.process is None:
            raise RuntimeError(f"{op.name} leads but was never started")
        op.process.signal(signal.SIGSTOP)
        self.frozen.add(op.name)
        timer = threading.Timer(float(seconds), self._thaw, (op,))  # a safety net: thawed at the latest then
        timer.daemon = True
        timer.start()
        self._timers.append(timer)
        return {"frozen": op.name, "auto_thaw_after": seconds}

    def _thaw(self, op: OperatorProcess) -> None:
        if op.name in self.frozen:
            self.frozen.discard(op.name)
            if op.process is not None and op.running:
                op.process.signal(signal.SIGCONT)

    def thaw(self) -> dict[str, Any]:
        names = sorted(self.frozen)
        for op in self.replicas:
            self._thaw(op)
        return {"thawed": names}

    def cut_leader(self) -> dict[str, Any]:
        op = self.leader()
        if op.proxy is None:
            raise RuntimeError(f"{op.name} reaches the API server without a fault proxy: it cannot be cut off")
        op.proxy.set_mode("cut")
        return {"cut": op.name}

    def heal(self) -> dict[str, Any]:
        for proxy in self.proxies:
            proxy.set_mode("pass")
        return {"healed": len(self.proxies)}

    def delete_lease(self) -> dict[str, Any]:
        try:
            client.CoordinationV1Api(self.api).delete_namespaced_lease(LEASE_NAME, OPERATOR_NAMESPACE)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return {"deleted": False}
        return {"deleted": True}

    def steal_lease(self, holder: str, duration: int) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        client.CoordinationV1Api(self.api).patch_namespaced_lease(
            LEASE_NAME, OPERATOR_NAMESPACE,
            {"spec": {"holderIdentity": holder, "acquireTime": now, "renewTime": now,
                      "leaseDurationSeconds": int(duration)}},
        )
        return {"stolen_by": holder}

    def restart_apiserver(self) -> dict[str, Any]:
        self.cluster.restart_apiserver()
        return {"restarted": "kube-apiserver"}

    def restart_etcd(self, down_seconds: float) -> dict[str, Any]:
        self.cluster.restart_etcd(down_seconds=float(down_seconds))
        return {"restarted": "etcd", "down_seconds": down_seconds}

    def restart_dead_replicas(self, timeout: float) -> dict[str, Any]:
        restarted = []
        for op in self.replicas:
            if not op.running and op.name not in self.frozen:
                code = op.process.returncode if op.process else None
                op.stop()  # forgets the exited process (and closes its log) before the new one
                op.start(wait_ready=True, timeout=timeout)
                restarted.append({"name": op.name, "exit_code": code})
        return {"restarted": restarted}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _is_an_embedded_target(env: ChaosEnvironment) -> faults.EmbeddedTarget:
    return env  # mypy proves here that the environment implements every fault of the registry

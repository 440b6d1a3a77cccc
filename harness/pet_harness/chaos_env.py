"""A disposable world for Chaos Toolkit experiments, and the code that runs them.

:class:`ChaosEnvironment` starts an embedded cluster (:class:`LocalCluster`), two
``pet-operator`` replicas with ``--leader-elect`` (each under its own ServiceAccount and
behind its own :class:`FaultProxy`), a load thread that keeps creating, updating and
deleting pets, and a small HTTP control server. The experiments in ``chaos/experiments``
reach that server through the ``petchaos`` provider package: POST ``/actions/<fault>``
injects a fault, GET ``/probes/steady-state`` checks the steady state.

:func:`run_experiment` runs one experiment file with the real ``chaos run`` in a fresh
environment and builds its summary (journal status, method activities that failed,
failover gaps and writes by non-leaders from the audit log, pets lost, duplicate ids).
With ``rounds > 1`` it runs a derived copy of the experiment (:func:`derive_experiment`):
the method repeated, with a steady-state check between rounds.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pet_harness import audit
from pet_harness.clusters.local import LocalCluster
from pet_harness.fault_proxy import FaultProxy, proxied_kubeconfig
from pet_harness.kube import REPO_ROOT, PetApi, api_client, create_namespace, install_crds
from pet_harness.operator_process import OperatorProcess
from pet_harness.pet_load import PetLoad
from pet_harness.pet_profile import pet_operator_profile
from pet_harness.rbac import OperatorIdentity
from pet_harness.waiting import wait_for
from petchaos.load import lost_pets
from petchaos.steady import check_pets

FAST = ("--leader-elect", "--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5")
LEASE_NAME = audit.DEFAULT_LEASE_NAME
PETS_NAMESPACE = "chaos-pets"
OPERATOR_NAMESPACE = "chaos-pet-system"
CHAOS_DIR = REPO_ROOT / "chaos"
EXPERIMENTS_DIR = CHAOS_DIR / "experiments"
BETWEEN_ROUNDS = "steady-state-between-rounds"
DEFAULT_STEADY_STATE_TIMEOUT = 30  # petchaos.probes.steady_state's default
CHAOS_TIMEOUT_PER_ROUND = 300.0


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
        self.server: ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
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
        if self.server is None:
            raise RuntimeError("the chaos environment is not started")
        return f"http://127.0.0.1:{self.server.server_address[1]}"

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
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self._server_thread = threading.Thread(target=self.server.serve_forever, name="chaos-control", daemon=True)
        self._server_thread.start()

    def _start_replica(self, i: int) -> OperatorProcess:
        assert self.identity is not None
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
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.shutdown()
                self.server.server_close()
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
            with urllib.request.urlopen(f"http://127.0.0.1:{op.health_port}/leader", timeout=2) as resp:
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
        handler = getattr(self, "action_" + name.replace("-", "_"), None)
        if handler is None:
            raise KeyError(name)
        return dict(self._executor.submit(self._timed, name, handler, body).result())

    def _timed(self, name: str, handler: Any, body: dict[str, Any]) -> dict[str, Any]:
        started, at = time.monotonic(), _now()
        result: dict[str, Any] = handler(**body)
        result["seconds"] = round(time.monotonic() - started, 2)
        self.actions.append({"action": name, "at": at, **result})
        return result

    def action_kill_leader(self) -> dict[str, Any]:
        op = self.leader()
        op.kill()
        return {"killed": op.name}

    def action_freeze_leader(self, seconds: float = 30) -> dict[str, Any]:
        op = self.leader()
        assert op.process is not None
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

    def action_thaw(self) -> dict[str, Any]:
        names = sorted(self.frozen)
        for op in self.replicas:
            self._thaw(op)
        return {"thawed": names}

    def action_cut_leader(self) -> dict[str, Any]:
        op = self.leader()
        if op.proxy is None:
            raise RuntimeError(f"{op.name} reaches the API server without a fault proxy: it cannot be cut off")
        op.proxy.set_mode("cut")
        return {"cut": op.name}

    def action_heal(self) -> dict[str, Any]:
        for proxy in self.proxies:
            proxy.set_mode("pass")
        return {"healed": len(self.proxies)}

    def action_delete_lease(self) -> dict[str, Any]:
        try:
            client.CoordinationV1Api(self.api).delete_namespaced_lease(LEASE_NAME, OPERATOR_NAMESPACE)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return {"deleted": False}
        return {"deleted": True}

    def action_steal_lease(self, holder: str = "chaos-thief", duration: int = 4) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        client.CoordinationV1Api(self.api).patch_namespaced_lease(
            LEASE_NAME, OPERATOR_NAMESPACE,
            {"spec": {"holderIdentity": holder, "acquireTime": now, "renewTime": now,
                      "leaseDurationSeconds": int(duration)}},
        )
        return {"stolen_by": holder}

    def action_restart_apiserver(self) -> dict[str, Any]:
        self.cluster.restart_apiserver()
        return {"restarted": "kube-apiserver"}

    def action_restart_etcd(self, down_seconds: float = 0) -> dict[str, Any]:
        self.cluster.restart_etcd(down_seconds=float(down_seconds))
        return {"restarted": "etcd", "down_seconds": down_seconds}

    def action_restart_dead_replicas(self, timeout: float = 60) -> dict[str, Any]:
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


def _handler(env: ChaosEnvironment) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body, default=str).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path == "/probes/steady-state":
                timeout = float(query.get("timeout", ["30"])[0])
                pause = query.get("pause_load", ["true"])[0] != "false"
                result = env.steady_state(timeout, pause)
                self._send(200, {"ok": bool(result["ok"]), "details": result})
            elif url.path == "/healthz":
                self._send(200, {"ok": True})
            else:
                self._send(404, {"error": f"no such probe {url.path}"})

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            if not url.path.startswith("/actions/"):
                self._send(404, {"error": f"no such path {url.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                result = env.act(url.path[len("/actions/"):], body)
            except KeyError:
                self._send(404, {"error": f"no such action {url.path}"})
            except Exception as exc:  # noqa: BLE001 - reported to the experiment, which fails the activity
                self._send(500, {"error": f"{type(exc).__name__}: {exc}"[:2000]})
            else:
                self._send(200, {"ok": True, "result": result})

    return Handler


# --- running an experiment -------------------------------------------------------------------


def experiment_names() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.json"))


def experiment_path(name: str) -> Path:
    path = Path(name)
    if path.suffix == ".json" and path.exists():
        return path
    return EXPERIMENTS_DIR / f"{name}.json"


def chaos_command(experiment: Path, journal: Path, log_file: Path, variables: Mapping[str, str]) -> list[str]:
    """``chaos run`` of ``experiment`` with every configuration variable given as ``--var``."""
    exe = shutil.which("chaos")
    base = [exe] if exe else [sys.executable, "-m", "chaostoolkit"]
    flags = [arg for key, value in variables.items() for arg in ("--var", f"{key}={value}")]
    return [*base, "--no-version-check", "--log-file", str(log_file), "run", "--journal-path", str(journal),
            "--rollback-strategy", "always", *flags, str(experiment)]


def _hypothesis_timeout(experiment: dict[str, Any]) -> Any:
    """The ``timeout`` of the hypothesis' ``petchaos.probes.steady_state`` probe (its default if none)."""
    for probe in (experiment.get("steady-state-hypothesis") or {}).get("probes") or []:
        provider = (probe.get("provider") or {}) if isinstance(probe, dict) else {}
        if provider.get("module") == "petchaos.probes" and provider.get("func") == "steady_state":
            return (provider.get("arguments") or {}).get("timeout", DEFAULT_STEADY_STATE_TIMEOUT)
    return DEFAULT_STEADY_STATE_TIMEOUT


def derive_experiment(experiment: dict[str, Any], rounds: int) -> dict[str, Any]:
    """The experiment with its method run ``rounds`` times (pure; the input is not modified).

    Each round's activities are named ``<name>#<round>`` (references to method activities
    follow); after every round but the last comes the action ``steady-state-between-rounds``
    (``petchaos.probes.require_steady_state``, with the hypothesis probe's timeout), which
    fails the activity when the steady state is not back. ``rounds == 1`` gives an equal copy.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    derived = copy.deepcopy(experiment)
    if rounds == 1:
        return derived
    method = experiment.get("method") or []
    names = {a.get("name") for a in method if isinstance(a, dict) and a.get("name")}
    check = {
        "type": "action",
        "name": BETWEEN_ROUNDS,
        "provider": {"type": "python", "module": "petchaos.probes", "func": "require_steady_state",
                     "arguments": {"timeout": _hypothesis_timeout(experiment)}},
    }
    activities: list[Any] = []
    for n in range(1, rounds + 1):
        for activity in method:
            activity = copy.deepcopy(activity)
            if isinstance(activity, dict):
                if activity.get("name"):
                    activity["name"] = f"{activity['name']}#{n}"
                if activity.get("ref") in names:
                    activity["ref"] = f"{activity['ref']}#{n}"
            activities.append(activity)
        if n < rounds:
            activities.append(copy.deepcopy(check))
    derived["method"] = activities
    derived["title"] = f"{experiment.get('title', '')} ({rounds} rounds)".lstrip()
    return derived


def failed_activities(journal: dict[str, Any] | None) -> list[str]:
    """Names of the method activities of a journal's ``run`` that did not succeed (pure).

    ``chaos run`` keeps the status ``completed`` when a method activity fails, so the
    journal status alone does not tell.
    """
    names = []
    for entry in (journal or {}).get("run") or []:
        if not isinstance(entry, dict) or entry.get("status") != "succeeded":
            activity = entry.get("activity") if isinstance(entry, dict) else None
            names.append(str((activity or {}).get("name") or "?"))
    return names


def build_summary(name: str, journal: dict[str, Any] | None, analysis: dict[str, Any] | None,
                  pets_lost: Sequence[str], final: dict[str, Any] | None, seconds: float,
                  returncode: int | None = None, error: str | None = None, rounds: int = 1,
                  audited: bool = True) -> dict[str, Any]:
    """One experiment's summary (pure; unit-tested). Not ``audited`` (a cluster without its audit
    log at hand): writes by non-leaders are unknown (None) and do not fail it."""
    audit_summary = (analysis or {}).get("summary", {})
    gaps = [g for g in audit_summary.get("gap_seconds", []) if g is not None]
    status = (journal or {}).get("status")
    deviated = bool((journal or {}).get("deviated", journal is None))
    non_leader = audit_summary.get("writes_by_non_leaders")
    duplicates = (final or {}).get("duplicate_ids")
    failed = failed_activities(journal)
    summary: dict[str, Any] = {
        "experiment": name,
        "rounds": rounds,
        "status": status,
        "deviated": deviated,
        "failed_activities": len(failed),
        "failed_activity_names": failed[:20],
        "chaos_exit_code": returncode,
        "seconds": round(seconds, 1),
        "failover_gap_median": round(statistics.median(gaps), 2) if gaps else None,
        "failover_gap_max": round(max(gaps), 2) if gaps else None,
        "transitions": audit_summary.get("transitions"),
        "writes_by_leaders": audit_summary.get("writes_by_leaders"),
        "writes_by_non_leaders": non_leader,
        "violations": (analysis or {}).get("violations", [])[:10],
        "pets_lost": len(pets_lost),
        "pets_lost_names": list(pets_lost)[:20],
        "duplicate_ids": duplicates,
        "final_steady_state": final,
        "error": error,
    }
    summary["audited"] = audited
    audit_ok = non_leader == 0 if audited else non_leader in (0, None)
    summary["passed"] = bool(
        status == "completed" and not deviated and not failed and audit_ok and not pets_lost
        and duplicates == 0 and error is None
    )
    return summary


def _require_positive(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")


def run_experiment(name: str, results: Path,
                   env_factory: Callable[[], Any] | None = None, chaos_timeout: float | None = None,
                   rounds: int = 1, max_pets: int = 30, audited: bool = True) -> dict[str, Any]:
    """Run one experiment with ``chaos run`` in a fresh environment; write its journal and summary.

    ``rounds > 1`` runs :func:`derive_experiment`'s copy, written to ``<name>-experiment.json``
    in ``results`` (the source file is not touched). The default environment is a
    :class:`ChaosEnvironment` whose load creates at most ``max_pets`` pets; an ``env_factory``
    given is called without arguments (it sizes its own load), e.g. a
    :class:`pet_harness.chaos_cluster.ClusterTarget` for a real cluster, with ``audited`` False
    when no audit log is at hand. ``chaos_timeout`` defaults to 300 s per round.
    """
    _require_positive("rounds", rounds)
    _require_positive("max_pets", max_pets)
    factory = env_factory if env_factory is not None else functools.partial(ChaosEnvironment, max_pets=max_pets)
    timeout = chaos_timeout if chaos_timeout is not None else CHAOS_TIMEOUT_PER_ROUND * rounds
    results.mkdir(parents=True, exist_ok=True)
    experiment = experiment_path(name)
    name = experiment.stem
    journal_path = results / f"{name}-journal.json"
    journal_path.unlink(missing_ok=True)  # never read the journal of an earlier run
    derived_path = results / f"{name}-experiment.json"
    derived_path.unlink(missing_ok=True)  # nor take an earlier run's derived experiment for this one's
    started = time.monotonic()
    outcome = Outcome()
    try:
        if rounds > 1:
            derived = derive_experiment(json.loads(experiment.read_text()), rounds)
            derived_path.write_text(json.dumps(derived, indent=2) + "\n")
            experiment = derived_path
        outcome = _run_in_environment(factory, experiment, name, results, journal_path, timeout)
    except Exception as exc:  # noqa: BLE001 - the environment did not start: recorded, the next one runs
        outcome.error = f"{type(exc).__name__}: {exc}"[:2000]
    summary = build_summary(name, outcome.journal, outcome.analysis, outcome.lost, outcome.final,
                            time.monotonic() - started, outcome.code, outcome.error, rounds, audited)
    (results / f"{name}-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


@dataclasses.dataclass
class Outcome:
    """What one experiment's run left: the journal, the audit analysis, pets lost, the final
    steady state, ``chaos run``'s exit code, and an error (the run did not finish)."""

    journal: dict[str, Any] | None = None
    analysis: dict[str, Any] | None = None
    lost: list[str] = dataclasses.field(default_factory=list)
    final: dict[str, Any] | None = None
    code: int | None = None
    error: str | None = None


def _run_in_environment(env_factory: Callable[[], Any], experiment: Path, name: str, results: Path,
                        journal_path: Path, chaos_timeout: float) -> Outcome:
    out = Outcome()
    with env_factory() as env:
        cmd = chaos_command(experiment, journal_path, results / f"{name}-chaostoolkit.log", env.chaos_variables())
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHAOS_DIR), environ.get("PYTHONPATH", "")) if p)
        environ.update(env.chaos_environ())
        try:
            proc = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=chaos_timeout,
                                  check=False)
            out.code = proc.returncode
            (results / f"{name}-chaos-output.txt").write_text(proc.stdout + proc.stderr)
        except subprocess.TimeoutExpired:
            out.error = f"chaos run timed out after {chaos_timeout:.0f}s"
        with contextlib.suppress(OSError, ValueError):
            out.journal = json.loads(journal_path.read_text())
        env.stop_load()
        out.final = env.steady_state(timeout=30, pause_load=False)
        try:
            out.lost = env.pets_lost()
        except Exception as exc:  # noqa: BLE001 - reported in the summary
            out.error = out.error or f"could not list pets: {exc}"
        out.analysis = env.audit_analysis()
        if out.analysis is not None:
            (results / f"{name}-audit.json").write_text(json.dumps(out.analysis, indent=2, default=str))
        env.write_artifacts(results, name)
    return out


def summary_markdown(summaries: Sequence[dict[str, Any]]) -> str:
    lines = [
        "# Chaos experiments",
        "",
        "| experiment | rounds | status | deviated | failed activities | failover gap median (s) | max (s) "
        "| transitions | writes by non-leaders | pets lost | duplicate ids | seconds | passed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summaries:
        failed = str(s["failed_activities"])
        if s["failed_activities"]:
            failed += f" ({', '.join(s['failed_activity_names'])})"
        lines.append(
            f"| {s['experiment']} | {s['rounds']} | {s['status']} | {s['deviated']} | {failed} "
            f"| {s['failover_gap_median']} | {s['failover_gap_max']} | {s['transitions']} "
            f"| {s['writes_by_non_leaders']} | {s['pets_lost']} | {s['duplicate_ids']} | {s['seconds']} "
            f"| {s['passed']} |"
        )
    return "\n".join(lines) + "\n"


def run_all(names: Sequence[str], results: Path, rounds: int = 1,
            max_pets: int = 30, env_factory: Callable[[], Any] | None = None,
            audited: bool = True) -> list[dict[str, Any]]:
    summaries = []
    for name in names:
        print(f"pet-harness chaos: running {name} ({rounds} round{'s' if rounds != 1 else ''}, "
              f"at most {max_pets} pets) ...", file=sys.stderr, flush=True)
        summary = run_experiment(name, results, env_factory=env_factory, rounds=rounds, max_pets=max_pets,
                                 audited=audited)
        print(f"pet-harness chaos: {name}: status {summary['status']}, deviated {summary['deviated']}, "
              f"failed activities {summary['failed_activities']}, passed {summary['passed']} "
              f"({summary['seconds']} s)", file=sys.stderr, flush=True)
        summaries.append(summary)
    (results / "summary.json").write_text(json.dumps(summaries, indent=2, default=str))
    (results / "summary.md").write_text(summary_markdown(summaries))
    return summaries


def control_request(url: str, method: str = "GET", body: dict[str, Any] | None = None,
                    timeout: float = 120) -> dict[str, Any]:
    """A JSON request to the control server (used by tests; the provider has its own copy)."""
    data = json.dumps(body or {}).encode() if method == "POST" else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            result: dict[str, Any] = json.loads(resp.read())
            return result
    except urllib.error.HTTPError as exc:
        return {"error": exc.read().decode(errors="replace"), "status": exc.code}

"""pytest plugin of the pet operator's suite, on top of the generic :mod:`pet_harness.pytest_core`
(which gives ``kube_cluster``, ``kube_api``, ``make_namespace``, ``namespace`` and ``operators``).

Fixtures:

* ``operator_profile`` (session): the pet operator's, so that the core's cluster has the pet CRDs
  and its namespaces are cleared of pets and stores.
* ``pet_cluster`` (session): the core's ``kube_cluster`` (backend from ``--pet-cluster`` or
  ``PET_CLUSTER``; ``local`` by default: etcd + kube-apiserver processes); each xdist worker has
  its own; an embedded control plane starts in about 4 s here.
* ``controller_manager``: makes sure controllers delete namespaces and collect garbage. On the
  ``local`` backend it starts ``kube-controller-manager`` on the session's cluster the first
  time a test asks (it then runs until the session ends); other backends have their own.
  ``@pytest.mark.controller_manager`` asks for it too.
* ``pets``: a :class:`~pet_harness.kube.PetApi` bound to ``namespace``.
* ``operator_factory``: starts ``pet-operator`` subprocesses under the ServiceAccount and
  RBAC of ``deploy/rbac/`` (a TokenRequest token, never admin), each serving the admission
  webhook unless told not to; each is stopped at the end of the test and its log checked
  for Kopf's "inconsistencies" warning.
* ``pet_operator``: one operator serving ``namespace``, started and ready.

On a failure, the report gets each operator's log, the namespace's events and the
YAML of its pets and stores. At the end, ``--pet-report-dir`` (default ``reports``)
gets ``e2e-summary.md`` and ``e2e-summary.json`` (``--pet-summary-name`` renames them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from pet_harness import binaries, webhooks
from pet_harness.clusters import Cluster
from pet_harness.clusters.local import LocalCluster, free_port
from pet_harness.fault_proxy import FaultProxy, proxied_kubeconfig
from pet_harness.kube import PetApi, api_client
from pet_harness.operator_process import OperatorProcess
from pet_harness.pet_profile import pet_operator_profile
from pet_harness.processes import install_signal_handlers
from pet_harness.profile import OperatorProfile
from pet_harness.pytest_core import CLUSTER_TIMINGS
from pet_harness.rbac import OperatorIdentity
from pet_harness.reaper import reap_when_gone
from pet_harness.waiting import wait_for

_OPERATORS = pytest.StashKey[list[OperatorProcess]]()
_NAMESPACES = pytest.StashKey[list[str]]()
_KUBE = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pet-harness")
    group.addoption("--pet-report-dir", default="reports", help="where the e2e summary goes (default: reports)")
    group.addoption("--pet-summary-name", default="e2e-summary",
                    help="file name (without .md/.json) of the run's summary (default: e2e-summary)")
    group.addoption("--pet-seed", default=None,
                    help="seed of randomised scenarios (default: random, shown on failure)")


def pytest_configure(config: pytest.Config) -> None:
    install_signal_handlers()
    config.addinivalue_line(
        "markers", "controller_manager: the test needs namespace deletion and garbage collection "
        "(on the local backend: kube-controller-manager runs on the session's cluster)")
    config.stash[_TIMINGS] = {}
    if not hasattr(config, "workerinput"):
        plugin = _SummaryPlugin()
        config.stash[_SUMMARY] = plugin
        config.pluginmanager.register(plugin, "pet-harness-summary")


_TIMINGS = pytest.StashKey[dict[str, Any]]()


def _worker_id(config: pytest.Config) -> str:
    return str(getattr(config, "workerinput", {}).get("workerid", "main"))


def _report_dir(config: pytest.Config) -> Path:
    path = Path(str(config.getoption("--pet-report-dir")))
    if not path.is_absolute():
        path = Path(str(config.rootpath)) / path
    return path


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def operator_profile() -> OperatorProfile:
    """The pet operator, for the core plugin's cluster, namespace and operator fixtures."""
    return pet_operator_profile()


@pytest.fixture
def controller_manager(pet_cluster: Cluster) -> Cluster:
    """The session's cluster, with a controller manager (started on first use on the local backend)."""
    if isinstance(pet_cluster, LocalCluster):
        manager = binaries.ensure_controller_manager(build=True)  # built once, with progress
        pet_cluster.start_controller_manager(manager)
    return pet_cluster


@pytest.fixture(autouse=True)
def _controller_manager_marker(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("controller_manager") is not None:
        request.getfixturevalue("controller_manager")


@pytest.fixture(scope="session")
def pet_cluster(request: pytest.FixtureRequest, kube_cluster: Cluster) -> Iterator[Cluster]:
    """The core plugin's ``kube_cluster`` with the pet CRDs, its start times kept for the summary."""
    config = request.config
    started: dict[str, float] = config.stash[CLUSTER_TIMINGS]
    config.stash[_TIMINGS].update({"worker": _worker_id(config), "backend": kube_cluster.backend, **started})
    try:
        yield kube_cluster
    finally:
        _write_worker_timings(config)


@pytest.fixture(autouse=True)
def _keep_for_diagnostics(request: pytest.FixtureRequest) -> None:
    """Failure reports show the test's namespaces: remember where to find them."""
    if "make_namespace" in request.fixturenames:
        factory = request.getfixturevalue("make_namespace")
        request.node.stash[_NAMESPACES] = factory.created
        request.node.stash[_KUBE] = factory.api


@pytest.fixture
def pets(kube_api: Any, namespace: str) -> PetApi:
    return PetApi(kube_api, namespace)


@pytest.fixture
def claims_namespace(make_namespace: Any) -> str:
    """The operator's own namespace, where it keeps id claims; one per test, shared by its replicas."""
    return str(make_namespace("pet-system"))


class PetOperatorFactory:
    """Starts ``pet-operator`` replicas; by default each serves the admission webhook.

    The first replica that serves the webhook is registered in a ValidatingWebhookConfiguration
    and a MutatingWebhookConfiguration (the ones in ``deploy/webhook/``, pointed at its loopback
    port, with a certificate from the harness's CA), and the factory waits until the API server
    calls both. ``webhook=False`` registers neither: the operator adds its finalizer itself.
    """

    def __init__(self, cluster: Cluster, kube_api: Any, claims_namespace: str, log_dir: Path) -> None:
        self.cluster = cluster
        self.kube_api = kube_api
        self.claims_namespace = claims_namespace
        self.log_dir = log_dir
        self.started: list[OperatorProcess] = []
        self.identity = OperatorIdentity(kube_api, claims_namespace, claims_namespace)
        self.proxies: list[FaultProxy] = []
        self.cert_dir: Path | None = None  # the webhook's serving certificate, made on first use
        self.ca_pem: bytes = b""
        self.front: FaultProxy | None = None  # the proxy in front of every webhook replica ("Service")
        self.configuration: str | None = None  # the webhook configurations' name, once registered

    def __call__(
        self, namespaces: Sequence[str] = (), all_namespaces: bool = False,
        extra_args: Sequence[str] = (), wait_ready: bool = True, env: dict[str, str] | None = None,
        webhook: bool = True, service_account: str = "pet-operator", via_proxy: bool = False,
        direct_webhook: bool = False,
    ) -> OperatorProcess:
        served = list(namespaces) or [ns for ns in (env or {}).get("KOPF_NAMESPACE", "").split(",") if ns]
        # no webhook drain on SIGTERM: nothing routes by readiness here, and every test stops its
        # operators (tests of the drain give --shutdown-drain-delay in extra_args, which wins)
        args = ["--claims-namespace", self.claims_namespace, "--shutdown-drain-delay", "0"]
        if webhook and served:
            if self.cert_dir is None:
                self.cert_dir = self.log_dir / "webhook-certs"
                self.ca_pem = webhooks.write_serving_certificate(self.cert_dir)
            port = free_port()
            args += ["--webhook-port", str(port), "--webhook-cert-dir", str(self.cert_dir)]
        else:
            port = 0
            args += ["--webhook-port", "0"]
        index = len(self.started)
        # the optional CA-publishing right, only for replicas that publish a self-signed CA
        self.identity.create(None if all_namespaces else served, service_account,
                             publish_ca="--webhook-configuration" in extra_args)
        kubeconfig = self.identity.kubeconfig(self.cluster.kubeconfig_path,
                                              self.log_dir / f"operator-{index}.kubeconfig", account=service_account)
        _wait_authorized(kubeconfig, served or [self.claims_namespace])
        proxy = None
        if via_proxy:  # the replica reaches the API server through a fault proxy of its own
            proxy, kubeconfig = proxied_kubeconfig(kubeconfig)
            self.proxies.append(proxy)
        first_hook = bool(port) and self.configuration is None
        joins_front = bool(port) and self.front is not None
        if first_hook and not direct_webhook:  # every webhook replica sits behind one proxy, as pods behind a Service
            self.front = FaultProxy("127.0.0.1", port).start()
            self.proxies.append(self.front)
        op = OperatorProcess(
            pet_operator_profile(), kubeconfig, self.log_dir / f"operator-{index}.log", namespaces=namespaces,
            all_namespaces=all_namespaces, extra_args=(*args, *extra_args), name=f"pet-operator-{index}",
            extra_env=env, webhook_port=port, username=self.identity.username(service_account), proxy=proxy,
            webhook_front=self.front if port else None,
        )
        self.started.append(op)
        op.start(wait_ready=wait_ready)
        if joins_front and self.front is not None:
            self.front.add_target("127.0.0.1", port)  # one more replica behind the "Service"
        elif first_hook:
            # direct: the API server calls this replica itself, as with `cluster up` by hand
            url = f"https://127.0.0.1:{self.front.port}" if self.front is not None else f"https://127.0.0.1:{port}"
            self.configuration = f"pet-operator-{served[0]}"[:253]
            webhooks.register(self.kube_api, self.configuration, served, url, self.ca_pem)  # validating and mutating
        return op

    def close(self) -> list[str]:
        """Stop everything it started; the problems found on the way (and in the logs)."""
        problems = []
        if self.configuration is not None:
            try:
                webhooks.uninstall(self.kube_api, self.configuration)
            except Exception as exc:  # noqa: BLE001 - report it with the rest
                problems.append(f"could not remove the webhook configurations: {exc}")
        for op in self.started:
            op.stop()
        for proxy in self.proxies:
            proxy.stop()
        try:
            self.identity.delete()
        except Exception as exc:  # noqa: BLE001 - report it with the rest
            problems.append(f"could not remove the operator's cluster role bindings: {exc}")
        for op in self.started:
            bad = op.inconsistency_lines()
            if bad:
                problems.append(f"{op.name} logged Kopf inconsistencies:\n" + "\n".join(bad[:5]))
        for op in self.started:
            op.keep_log_in_memory()  # reports attach it after the folder is gone
        return problems


@pytest.fixture
def operator_factory(
    request: pytest.FixtureRequest, pet_cluster: Cluster, claims_namespace: str, kube_api: Any
) -> Iterator[PetOperatorFactory]:
    """A :class:`PetOperatorFactory` for this test; everything it started is stopped after it."""
    log_dir = Path(tempfile.mkdtemp(prefix="pet-operator-logs-"))
    reaper = reap_when_gone(log_dir)  # removed even if this worker is killed before its teardown
    factory = PetOperatorFactory(pet_cluster, kube_api, claims_namespace, log_dir)
    request.node.stash[_OPERATORS] = factory.started
    try:
        yield factory
    finally:
        problems = factory.close()
        shutil.rmtree(log_dir, ignore_errors=True)
        reaper.stop()
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


def _wait_authorized(kubeconfig: Path, namespaces: list[str]) -> None:
    """RBAC is read through a cache in the API server: wait until the new bindings apply."""
    with api_client(kubeconfig) as api:
        for ns in namespaces:
            wait_for(PetApi(api, ns).list_pets, lambda _: True, 30,
                     f"the operator's ServiceAccount to be allowed to list pets in {ns}")


@pytest.fixture
def pet_operator(operator_factory: PetOperatorFactory, namespace: str) -> OperatorProcess:
    op: OperatorProcess = operator_factory([namespace])
    return op


# --- failure reports -----------------------------------------------------------------------

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed:
        for title, text in _diagnostics(item):
            report.sections.append((title, text))
    return report


def _diagnostics(item: pytest.Item) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for op in item.stash.get(_OPERATORS, []):
        out.append((f"{op.name} log ({op.log_path})", op.log_text()[-20000:] or "(empty)"))
    api = item.stash.get(_KUBE, None)
    for ns in item.stash.get(_NAMESPACES, []):
        if api is None:
            break
        try:
            out.append((f"namespace {ns}: events", _events_text(api, ns)))
            out.append((f"namespace {ns}: pets and stores", _objects_text(api, ns)))
        except Exception as exc:  # noqa: BLE001 - diagnostics must never hide the failure
            out.append((f"namespace {ns}", f"could not collect diagnostics: {exc!r}"))
    return out


def _events_text(api: Any, ns: str) -> str:
    from kubernetes import client

    events = client.CoreV1Api(api).list_namespaced_event(ns).items
    lines = [
        f"{e.last_timestamp or e.event_time} {e.type} {e.reason} "
        f"{e.involved_object.kind}/{e.involved_object.name} x{e.count or 1}: {e.message}"
        for e in events
    ]
    return "\n".join(lines) or "(no events)"


def _objects_text(api: Any, ns: str) -> str:
    pets = PetApi(api, ns)
    items = pets.list_stores() + pets.list_pets()
    for item in items:
        item.get("metadata", {}).pop("managedFields", None)
    return yaml.safe_dump(items, sort_keys=False) if items else "(none)"


# --- summary ---------------------------------------------------------------------------------


def _write_worker_timings(config: pytest.Config) -> None:
    timings = config.stash.get(_TIMINGS, {})
    if not timings:
        return
    directory = _report_dir(config) / ".timings"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{_worker_id(config)}.json").write_text(json.dumps(timings))


class _Summary:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.outcomes: dict[str, int] = {}
        self.durations: dict[str, float] = {}
        self.failures: list[str] = []

    def add(self, report: pytest.TestReport) -> None:
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration
        if report.when == "call" or report.outcome != "passed":
            if report.when != "call" and report.outcome == "skipped":
                key = "skipped"
            elif report.when != "call" and report.failed:
                key = "error"
            else:
                key = report.outcome
            self.outcomes[key] = self.outcomes.get(key, 0) + 1
            if report.failed:
                self.failures.append(f"{report.nodeid} ({report.when})")


class _SummaryPlugin:
    """Collects every test report (the controller sees all workers' under xdist)."""

    def __init__(self) -> None:
        self.summary = _Summary()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.summary.add(report)


_SUMMARY = pytest.StashKey[_SummaryPlugin]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput"):
        return  # workers only write their timings; the controller writes the summary
    plugin = config.stash.get(_SUMMARY, None)
    if plugin is None or not plugin.summary.durations:
        return
    summary = plugin.summary
    directory = _report_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    timings = []
    timing_dir = directory / ".timings"
    if timing_dir.is_dir():
        for path in sorted(timing_dir.glob("*.json")):
            with contextlib.suppress(ValueError, OSError):
                timings.append(json.loads(path.read_text()))
        shutil.rmtree(timing_dir, ignore_errors=True)
    if not timings and config.stash.get(_TIMINGS, {}):
        timings.append(config.stash[_TIMINGS])
    wall = time.monotonic() - summary.started
    slowest = sorted(summary.durations.items(), key=lambda kv: kv[1], reverse=True)[:10]
    data = {
        "exit_status": int(exitstatus),
        "wall_seconds": round(wall, 1),
        "outcomes": summary.outcomes,
        "failures": summary.failures,
        "clusters": timings,
        "slowest": [{"test": k, "seconds": round(v, 2)} for k, v in slowest],
        "workers": os.environ.get("PYTEST_XDIST_WORKER_COUNT") or len(timings) or 1,
    }
    stem = str(config.getoption("--pet-summary-name"))
    (directory / f"{stem}.json").write_text(json.dumps(data, indent=2))
    lines = [
        "# e2e summary",
        "",
        f"- result: {'PASSED' if exitstatus == 0 else f'FAILED (exit {int(exitstatus)})'}",
        "- tests: " + ", ".join(f"{v} {k}" for k, v in sorted(summary.outcomes.items())),
        f"- wall time: {wall:.1f} s",
    ]
    for t in timings:
        lines.append(
            f"- cluster ({t.get('backend')}, worker {t.get('worker')}): control plane up in "
            f"{t.get('cluster_start_seconds')} s, CRDs served after {t.get('ready_with_crds_seconds')} s"
        )
    if summary.failures:
        lines += ["", "## failures", ""] + [f"- {f}" for f in summary.failures]
    lines += ["", "## slowest tests", ""] + [f"- {k}: {v:.2f} s" for k, v in slowest]
    (directory / f"{stem}.md").write_text("\n".join(lines) + "\n")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    path = _report_dir(config) / f"{config.getoption('--pet-summary-name')}.md"
    if path.exists():
        terminalreporter.write_line(f"summary written to {path}")

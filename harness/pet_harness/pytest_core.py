"""pet-harness's pytest plugin for any operator, registered through the ``pytest11`` entry point.

Installing the harness is enough to get these fixtures; a test suite tells the harness about its
operator by overriding ``operator_profile`` in its ``conftest.py``
(``examples/greeter/tests/conftest.py`` is a whole example):

* ``operator_profile`` (session): the :class:`~pet_harness.profile.OperatorProfile` under test;
  ``None`` by default (a bare cluster).
* ``kube_cluster`` (session): the backend chosen by ``--pet-cluster`` or ``PET_CLUSTER``
  (``local`` by default: etcd + kube-apiserver processes of their own, no Docker), with the
  profile's CRDs installed and served; one per xdist worker; stopped on every exit path.
* ``kube_api`` (session): an admin ``kubernetes.client.ApiClient`` for it.
* ``node_cluster`` / ``node_api`` (module): a :class:`~pet_harness.clusters.node.NodeCluster`
  (control plane and a real node) for the module's tests, and an admin client for it; skipped
  unless root. Module-scoped because one node cluster runs on a machine at a time: a module that
  starts its own (teardown tests) must not find one held by the session.
* ``make_namespace`` / ``namespace``: fresh namespaces, deleted with everything in them after
  the test (the profile's custom resources first, finalizers stripped).
* ``operators``: an :class:`OperatorFactory`; ``operators.start(namespaces)`` runs the profile's
  operator as a subprocess with the admin kubeconfig and waits for its readiness endpoint; every
  one is stopped at the end of the test, and a log line with one of the profile's bad markers
  fails the test.

This repository's own suite (``scenarios/``) adds its fixtures on top of these
(``pytest_plugin.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from kubernetes import client

from pet_harness import binaries, crds, namespaces, subprocess_coverage
from pet_harness.clusters import Cluster, make_cluster
from pet_harness.clusters.local import LocalCluster
from pet_harness.clusters.node import NodeCluster
from pet_harness.kubeclient import api_client
from pet_harness.operator_process import OperatorProcess
from pet_harness.processes import install_signal_handlers
from pet_harness.profile import OperatorProfile
from pet_harness.reaper import reap_when_gone

#: seconds the session's cluster took: ``cluster_start_seconds`` and ``ready_with_crds_seconds``
CLUSTER_TIMINGS = pytest.StashKey[dict[str, float]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pet-harness")
    group.addoption("--pet-cluster", default=None, help="cluster backend: local (default), k3s or kubeconfig")


def pytest_configure(config: pytest.Config) -> None:
    install_signal_handlers()  # SIGTERM and SIGHUP run the teardowns too
    config.stash[CLUSTER_TIMINGS] = {}


@pytest.fixture(scope="session", autouse=True)
def coverage_of_started_processes() -> Iterator[dict[str, str]]:
    """When this test process is measured by coverage (``pytest --cov``), the Python processes the
    tests start (operators, the harness's own command) measure themselves too: the variables of
    :func:`pet_harness.subprocess_coverage.child_environment` are in ``os.environ`` for the session
    (restored after it). Yields those variables (empty when not measured)."""
    wanted = subprocess_coverage.child_environment(subprocess_coverage.running_coverage())
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield wanted
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def operator_profile() -> OperatorProfile | None:
    """Override in your conftest.py to return your operator's profile."""
    return None


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest, operator_profile: OperatorProfile | None) -> Iterator[Cluster]:
    cluster = make_cluster(request.config.getoption("--pet-cluster"))
    if isinstance(cluster, LocalCluster):
        binaries.ensure_binaries(build=True)  # builds once, with progress, if nothing is cached
    started = time.monotonic()
    api: client.ApiClient | None = None
    try:
        cluster.start()
        api = api_client(cluster.kubeconfig_path)
        if operator_profile is not None and operator_profile.crds:
            crds.install(api, operator_profile.crd_documents())
    except BaseException:
        if api is not None:
            api.close()
        cluster.stop()
        raise
    request.config.stash[CLUSTER_TIMINGS].update({
        "cluster_start_seconds": round(getattr(cluster, "start_seconds", None) or time.monotonic() - started, 2),
        "ready_with_crds_seconds": round(time.monotonic() - started, 2),
    })
    try:
        yield cluster
    finally:
        api.close()
        cluster.stop()


@pytest.fixture(scope="session")
def kube_api(kube_cluster: Cluster) -> Iterator[client.ApiClient]:
    api = api_client(kube_cluster.kubeconfig_path)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="module")
def node_cluster() -> Iterator[NodeCluster]:
    if os.geteuid() != 0:
        pytest.skip("the node backend needs root (containerd, runc, the bridge and iptables)")
    cluster = NodeCluster()
    with cluster:
        yield cluster


@pytest.fixture(scope="module")
def node_api(node_cluster: NodeCluster) -> Iterator[client.ApiClient]:
    api = api_client(node_cluster.kubeconfig_path)
    try:
        yield api
    finally:
        api.close()


class NamespaceFactory:
    """``make_namespace(prefix=None, labels=None) -> name``; all deleted after the test."""

    def __init__(self, api: client.ApiClient, default_prefix: str,
                 resources: Sequence[namespaces.Resource]) -> None:
        self.api = api
        self.default_prefix = default_prefix
        self.resources = tuple(resources)
        self.created: list[str] = []

    def __call__(self, prefix: str | None = None, labels: Mapping[str, str] | None = None) -> str:
        name = namespaces.unique_name(prefix or self.default_prefix)
        namespaces.create(self.api, name, labels)
        self.created.append(name)
        return name

    def delete_all(self) -> None:
        errors = []
        for name in self.created:
            try:
                namespaces.delete(self.api, name, self.resources)
            except Exception as exc:  # noqa: BLE001 - report all, then fail
                errors.append(f"{name}: {exc}")
        if errors:
            raise RuntimeError("namespace cleanup failed: " + "; ".join(errors))


@pytest.fixture
def make_namespace(request: pytest.FixtureRequest, kube_api: client.ApiClient,
                   operator_profile: OperatorProfile | None) -> Iterator[NamespaceFactory]:
    factory = NamespaceFactory(kube_api, request.node.name,
                               operator_profile.resources() if operator_profile is not None else ())
    try:
        yield factory
    finally:
        factory.delete_all()


@pytest.fixture
def namespace(make_namespace: NamespaceFactory) -> str:
    return make_namespace()


class OperatorFactory:
    """Starts replicas of the profile's operator; :meth:`stop_all` stops them and reports problems."""

    def __init__(self, profile: OperatorProfile, kubeconfig: Path, log_dir: Path) -> None:
        self.profile = profile
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.started: list[OperatorProcess] = []

    def start(self, namespaces: Sequence[str] = (), all_namespaces: bool = False, extra_args: Sequence[str] = (),
              env: Mapping[str, str] | None = None, wait_ready: bool = True) -> OperatorProcess:
        index = len(self.started)
        op = OperatorProcess(self.profile, self.kubeconfig, self.log_dir / f"{self.profile.name}-{index}.log",
                             namespaces=namespaces, all_namespaces=all_namespaces, extra_args=extra_args,
                             name=f"{self.profile.name}-{index}", extra_env=dict(env or {}))
        self.started.append(op)
        op.start(wait_ready=wait_ready)
        return op

    def stop_all(self) -> list[str]:
        problems = []
        for op in self.started:
            op.stop()
        for op in self.started:
            bad = op.inconsistency_lines()
            if bad:
                problems.append(f"{op.name} logged {', '.join(self.profile.bad_log_markers)}:\n" + "\n".join(bad[:5]))
            op.keep_log_in_memory()
        return problems


@pytest.fixture
def operators(kube_cluster: Cluster, operator_profile: OperatorProfile | None) -> Iterator[OperatorFactory]:
    if operator_profile is None:
        raise pytest.UsageError("the operators fixture needs an operator_profile fixture returning your "
                                "operator's OperatorProfile (see pet_harness.pytest_core)")
    log_dir = Path(tempfile.mkdtemp(prefix=f"{operator_profile.name}-logs-"))
    reaper = reap_when_gone(log_dir)  # removed even if this process is killed before its teardown
    factory = OperatorFactory(operator_profile, kube_cluster.kubeconfig_path, log_dir)
    try:
        yield factory
    finally:
        problems = factory.stop_all()
        with contextlib.suppress(OSError):
            shutil.rmtree(log_dir)
        reaper.stop()
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)

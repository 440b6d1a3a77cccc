"""The embedded cluster: real ``etcd`` and ``kube-apiserver`` processes on loopback.

This is what controller-runtime's envtest does, made stricter: random free ports
(retried on a collision), TLS everywhere on the API server, client-certificate
authentication from a CA made at start, RBAC, service-account token signing (so the
TokenRequest API works), an audit log, and teardown of every process and the work
folder on every exit path, including a start-up that failed half-way.

With ``controller_manager=True`` it also runs ``kube-controller-manager`` (built from the
same ``k8s.io/kubernetes`` version) with only the controllers that namespace deletion and
garbage collection need, so that deleting a namespace happens as in a real cluster. It is
off by default: most tests do not need it and it costs start-up time and CPU.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pet_harness import binaries as binaries_mod
from pet_harness.clusters.base import Cluster, ClusterError, write_kubeconfig
from pet_harness.pki import CertificateAuthority, signing_key_pair
from pet_harness.processes import ManagedProcess, pid_alive
from pet_harness.reaper import Reaper, reap_when_gone

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

#: Writes are recorded with their request body (Leases and custom resources) so that who-wrote-what
#: can be proven; reads are left out to keep the log small.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    verbs: [get, list, watch]
  - level: None
    resources: [{group: "", resources: [events]}, {group: "events.k8s.io", resources: [events]}]
  - level: Request
    resources: [{group: coordination.k8s.io, resources: [leases]}]
  - level: Metadata
"""


WORKDIR_PREFIX = "pet-cluster-"


def sweep_stale_workdirs() -> list[Path]:
    """Remove work folders of embedded clusters whose owning process is gone (SIGKILLed)."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
        try:
            owner = int((path / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if not pid_alive(owner):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


#: where :func:`free_port` draws its ports: below Linux's usual ephemeral range (32768-60999), from
#: which the kernel gives every outgoing connection its local port, and below the NodePort range
#: (30000-32767). A port drawn from the ephemeral range could be taken by any process's outgoing
#: connection between the draw and the server's bind (seen: a replica's webhook port); here only
#: another listener can take it.
PORT_RANGE = (20000, 30000)
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux's default if unreadable)."""
    try:
        low, high = (int(word) for word in path.read_text().split())
    except (OSError, ValueError):
        return (32768, 60999)
    return (low, high)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(avoid: Collection[int] = ()) -> int:
    """A loopback port free now, other than those in ``avoid`` (ports already promised elsewhere,
    e.g. a webhook port while its process is down): drawn at random from :data:`PORT_RANGE` when
    that lies outside the machine's ephemeral range, else given by the kernel (``bind`` to 0)."""
    low, high = PORT_RANGE
    eph_low, eph_high = ephemeral_range()
    outside = high <= eph_low or low > eph_high
    for _ in range(100):
        if outside:
            port = low + secrets.randbelow(high - low)
            if port not in avoid and _bindable(port):
                return port
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise OSError(f"no free loopback port outside {sorted(avoid)} after 100 tries")


def distinct_ports(count: int) -> list[int]:
    """``count`` free loopback ports, all different: the kernel may hand out one port twice in a row
    (seen in CI: etcd and kube-apiserver were given the same one)."""
    ports: list[int] = []
    for _ in range(count):
        ports.append(free_port(ports))
    return ports


#: The controllers a ``controller_manager=True`` cluster runs: deleting a namespace's content and the
#: namespace (namespace-controller) and ownerReference cascades (garbage-collector-controller).
#: serviceaccount-token-controller is not needed: each controller authenticates with a token from
#: the TokenRequest API (``--use-service-account-credentials``), never with a legacy token Secret.
CONTROLLERS = ("namespace-controller", "garbage-collector-controller")

#: The controller manager's own identity, bound by the API server's bootstrap RBAC
#: (``system:kube-controller-manager``): enough to create each controller's ServiceAccount in
#: kube-system and a token for it; the controllers then act with their own bootstrap roles.
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"


class LocalCluster(Cluster):
    backend = "local"
    owns_control_plane = True
    #: the work folder's name prefix in $TMPDIR (stale folders of this prefix are swept at start)
    workdir_prefix = WORKDIR_PREFIX
    #: whether a watcher removes the work folder if this process dies without its teardown
    reap_workdir = True
    #: the API server's service range (its first address is the ``kubernetes`` Service's)
    service_cidr = "10.0.0.0/24"
    #: ``none``: the ``kubernetes`` Service gets no endpoints (nothing runs in a pod to use them)
    endpoint_reconciler = "none"

    def __init__(
        self,
        binaries: binaries_mod.ControlPlaneBinaries | None = None,
        workdir: Path | None = None,
        extra_apiserver_args: tuple[str, ...] = (),
        start_timeout: float = 120.0,
        keep_workdir: bool | None = None,
        outlive_parent: bool = False,
        audit_policy: str | None = AUDIT_POLICY,
        controller_manager: bool = False,
        controller_manager_binary: Path | None = None,
    ) -> None:
        """``audit_policy``: the audit policy's YAML, or None for no audit log (load runs).
        ``controller_manager``: also run kube-controller-manager (namespace deletion, garbage
        collection); ``controller_manager_binary`` overrides where its binary is found."""
        self._binaries = binaries
        self.controller_manager = controller_manager
        self._controller_manager_binary = controller_manager_binary
        self.controller_manager_process: ManagedProcess | None = None
        self.controller_manager_port = 0
        self._requested_workdir = workdir
        self.extra_apiserver_args = extra_apiserver_args
        self.start_timeout = start_timeout
        self.keep_workdir = (
            keep_workdir if keep_workdir is not None else os.environ.get("PET_HARNESS_KEEP") == "1"
        )
        self.outlive_parent = outlive_parent
        self.audit_policy = audit_policy
        self.workdir: Path | None = None
        self._owns_workdir = False
        self._reaper: Reaper | None = None
        self.etcd: ManagedProcess | None = None
        self.apiserver: ManagedProcess | None = None
        self.etcd_client_port = 0
        self.etcd_peer_port = 0
        self.apiserver_port = 0
        self.start_seconds: float | None = None
        self._ca: CertificateAuthority | None = None
        self._kubeconfig: Path | None = None

    # --- layout ------------------------------------------------------------------------

    @property
    def kubeconfig_path(self) -> Path:
        if self._kubeconfig is None:
            raise ClusterError("the local cluster is not started")
        return self._kubeconfig

    #: the one address kube-apiserver listens on and advertises (the ``kubernetes`` Service's endpoint)
    apiserver_address = "127.0.0.1"

    @property
    def server_url(self) -> str:
        return f"https://{self.apiserver_address}:{self.apiserver_port}"

    @property
    def audit_log_path(self) -> Path:
        return self._dir / "logs" / "audit.log"

    @property
    def ca_pem(self) -> bytes:
        if self._ca is None:
            raise ClusterError("the local cluster is not started")
        return self._ca.cert_pem

    @property
    def _dir(self) -> Path:
        if self.workdir is None:
            raise ClusterError("the local cluster is not started")
        return self.workdir

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            server=self.server_url,
            workdir=str(self.workdir),
            etcd_pid=self.etcd.pid if self.etcd else None,
            apiserver_pid=self.apiserver.pid if self.apiserver else None,
            controller_manager_pid=(
                self.controller_manager_process.pid if self.controller_manager_process else None
            ),
            audit_log=str(self.audit_log_path),
            start_seconds=self.start_seconds,
        )
        return info

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self.apiserver is not None and self.apiserver.running:
            return
        started = time.monotonic()
        bins = self._binaries or binaries_mod.ensure_binaries(build=False)
        manager = self._manager_binary() if self.controller_manager else None
        try:
            self._prepare_workdir()
            for attempt in range(3):
                try:
                    self._start_processes(bins)
                    if manager is not None:
                        self._start_controller_manager(manager)
                    break
                except _PortCollision:
                    self._stop_processes()
                    if attempt == 2:
                        raise ClusterError("could not find free loopback ports after 3 tries") from None
            self._kubeconfig = self._write_admin_kubeconfig()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started

    def stop(self) -> None:
        self._stop_processes()
        if self.workdir is not None and self._owns_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._reaper is not None:
            self._reaper.stop()
            self._reaper = None
        self.workdir = None
        self._kubeconfig = None

    def _stop_processes(self) -> None:
        # the controller manager first, then the API server, so none runs against a missing peer
        for attr in ("controller_manager_process", "apiserver", "etcd"):
            proc: ManagedProcess | None = getattr(self, attr)
            if proc is not None:
                proc.stop(grace=10)
                setattr(self, attr, None)

    def _prepare_workdir(self) -> None:
        if self._requested_workdir is not None:
            self.workdir = self._requested_workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            sweep_stale_workdirs()
            self.workdir = Path(tempfile.mkdtemp(prefix=self.workdir_prefix))
            self._owns_workdir = True
            if self.reap_workdir and not self.keep_workdir and not self.outlive_parent:
                self._reaper = reap_when_gone(self.workdir)  # removed even if this process is killed
        (self.workdir / "owner.pid").write_text(str(os.getpid()))
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self._ca = CertificateAuthority("pet-harness-cluster-ca")
        (pki / "ca.crt").write_bytes(self._ca.cert_pem)
        self._ca.serving(
            "kube-apiserver",
            ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local"],
            self._apiserver_ips(),
        ).write(pki, "apiserver")
        self._ca.client("pet-harness-admin", ["system:masters"]).write(pki, "admin")
        # etcd speaks TLS only and asks every client and peer for a certificate of this CA: plain
        # HTTP on loopback would let any local user of the machine read and write the whole cluster
        # past the API server's authentication (the `cluster up` daemon lives for days)
        self._ca.serving("etcd", ["localhost"], ["127.0.0.1"], client_too=True).write(pki, "etcd")
        self._ca.client("kube-apiserver-etcd-client").write(pki, "etcd-client")
        signing_key_pair().write(pki, "service-account")
        if self.audit_policy is not None:
            (self.workdir / "audit-policy.yaml").write_text(self.audit_policy)

    def _start_processes(self, bins: binaries_mod.ControlPlaneBinaries) -> None:
        self.etcd_client_port, self.etcd_peer_port, self.apiserver_port = distinct_ports(3)
        self.etcd = self._etcd_process(bins)
        self.etcd.start()
        deadline = time.monotonic() + self.start_timeout
        self._wait(self.etcd, self._etcd_healthy, deadline, "etcd /health")
        self.apiserver = self._apiserver_process(bins)
        self.apiserver.start()
        self._wait(self.apiserver, self._apiserver_ready, deadline, "kube-apiserver /readyz and the default namespace")

    def _etcd_process(self, bins: binaries_mod.ControlPlaneBinaries) -> ManagedProcess:
        d = self._dir
        pki = d / "pki"
        client = f"https://127.0.0.1:{self.etcd_client_port}"
        peer = f"https://127.0.0.1:{self.etcd_peer_port}"
        return ManagedProcess(
            "etcd",
            [
                str(bins.etcd),
                "--name=pet-harness",
                f"--data-dir={d / 'etcd-data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=pet-harness={peer}",
                "--initial-cluster-state=new",
                f"--cert-file={pki / 'etcd.crt'}",
                f"--key-file={pki / 'etcd.key'}",
                f"--trusted-ca-file={pki / 'ca.crt'}",
                "--client-cert-auth=true",
                f"--peer-cert-file={pki / 'etcd.crt'}",
                f"--peer-key-file={pki / 'etcd.key'}",
                f"--peer-trusted-ca-file={pki / 'ca.crt'}",
                "--peer-client-cert-auth=true",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
                "--quota-backend-bytes=8589934592",
            ],
            d / "logs" / "etcd.log",
            cwd=d,
            outlive_parent=self.outlive_parent,
        )

    def _apiserver_process(self, bins: binaries_mod.ControlPlaneBinaries) -> ManagedProcess:
        d = self._dir
        pki = d / "pki"
        return ManagedProcess(
            "kube-apiserver",
            [
                str(bins.kube_apiserver),
                f"--etcd-servers=https://127.0.0.1:{self.etcd_client_port}",
                f"--etcd-cafile={pki / 'ca.crt'}",
                f"--etcd-certfile={pki / 'etcd-client.crt'}",
                f"--etcd-keyfile={pki / 'etcd-client.key'}",
                f"--bind-address={self.apiserver_address}",
                f"--advertise-address={self.apiserver_address}",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={d / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki / 'service-account.crt'}",
                f"--service-account-signing-key-file={pki / 'service-account.key'}",
                f"--service-cluster-ip-range={self.service_cidr}",
                *self._apiserver_mode_args(),
                f"--endpoint-reconciler-type={self.endpoint_reconciler}",
                "--allow-privileged=true",
                "--profiling=false",
                *self._audit_args(),
                *self.extra_apiserver_args,
            ],
            d / "logs" / "kube-apiserver.log",
            cwd=d,
            outlive_parent=self.outlive_parent,
        )

    def _apiserver_ips(self) -> list[str]:
        """The addresses in the API server's serving certificate."""
        return ["127.0.0.1", str(next(ipaddress.ip_network(self.service_cidr).hosts()))]

    def _apiserver_mode_args(self) -> list[str]:
        """Authorization and admission: RBAC, and no ServiceAccount admission (no controller makes
        the default service accounts)."""
        return ["--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount"]

    # --- kube-controller-manager (optional) ----------------------------------------------------

    def _manager_binary(self) -> Path:
        if self._controller_manager_binary is not None:
            return self._controller_manager_binary
        return binaries_mod.ensure_controller_manager(build=False)

    def start_controller_manager(self, binary: Path | None = None) -> None:
        """Start kube-controller-manager on this running cluster, if it is not running yet; it is
        stopped with the cluster. (A session's cluster gets it when the first test needs it.)"""
        if self.controller_manager_process is not None and self.controller_manager_process.running:
            return
        if self.apiserver is None or not self.apiserver.running:
            raise ClusterError("the local cluster is not started")
        self.controller_manager = True
        try:
            self._start_controller_manager(binary or self._manager_binary())
        except BaseException:
            if self.controller_manager_process is not None:
                self.controller_manager_process.stop(grace=5)
                self.controller_manager_process = None
            raise

    def _start_controller_manager(self, binary: Path) -> None:
        d = self._dir
        if self._ca is None:
            raise ClusterError("the local cluster is not started")
        pair = self._ca.client(CONTROLLER_MANAGER_USER)  # its own client certificate, no group
        config = write_kubeconfig(d / "controller-manager.kubeconfig", self.server_url, self._ca.cert_pem,
                                  CONTROLLER_MANAGER_USER, pair.cert_pem, pair.key_pem)
        self.controller_manager_port = free_port({self.apiserver_port, self.etcd_client_port, self.etcd_peer_port})
        self.controller_manager_process = ManagedProcess(
            "kube-controller-manager",
            self.controller_manager_args(binary, config),
            d / "logs" / "kube-controller-manager.log",
            cwd=d,
            outlive_parent=self.outlive_parent,
        )
        self.controller_manager_process.start()
        self._wait(self.controller_manager_process, self._controller_manager_healthy,
                   time.monotonic() + self.start_timeout, "kube-controller-manager /healthz")

    def controller_manager_args(self, binary: Path, kubeconfig: Path) -> list[str]:
        return [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            f"--controllers={','.join(CONTROLLERS)}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.controller_manager_port}",
            f"--cert-dir={self._dir / 'controller-manager-certs'}",
            # a namespace is re-checked this often while its content is being deleted (default 5m
            # between full resyncs; deletions themselves are driven by watch events)
            "--namespace-sync-period=10s",
            "--concurrent-namespace-syncs=2",
            "--profiling=false",
        ]

    def _controller_manager_healthy(self) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # its serving certificate is self-signed, made at its start
        url = f"https://127.0.0.1:{self.controller_manager_port}/healthz"
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:  # nosec B310 # loopback URL built here
                return bool(resp.status == 200)
        except urllib.error.HTTPError:
            return False

    def _audit_args(self) -> list[str]:
        if self.audit_policy is None:
            return []
        d = self._dir
        return [
            f"--audit-policy-file={d / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log_path}",
            "--audit-log-maxsize=0",
            "--audit-log-format=json",
        ]

    def metrics_text(self) -> str:
        """The API server's ``/metrics`` (Prometheus text), read as admin."""
        url = self.server_url + "/metrics"
        ctx = self.admin_ssl_context()
        with urllib.request.urlopen(url, context=ctx, timeout=30) as resp:  # noqa: S310  # nosec B310 # loopback URL
            return str(resp.read().decode())

    def _wait(self, proc: ManagedProcess, probe: Any, deadline: float, what: str) -> None:
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if not proc.running:
                log = proc.log_text()
                if "address already in use" in log:
                    raise _PortCollision(proc.name)
                tail = "\n".join(log.strip().splitlines()[-25:])
                raise ClusterError(f"{proc.name} exited with code {proc.returncode} during start-up:\n{tail}")
            try:
                if probe():
                    return
            except (OSError, ssl.SSLError, urllib.error.URLError, ValueError) as exc:
                last_error = str(exc)
            time.sleep(0.1)
        tail = "\n".join(proc.log_text().strip().splitlines()[-25:])
        raise ClusterError(
            f"timed out after {self.start_timeout:.0f}s waiting for {what} (last error: {last_error}); "
            f"{proc.name} log tail:\n{tail}"
        )

    def _etcd_healthy(self) -> bool:
        pki = self._dir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "etcd-client.crt"), str(pki / "etcd-client.key"))
        url = f"https://127.0.0.1:{self.etcd_client_port}/health"
        with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:  # nosec B310 # loopback URL built here
            return bool(resp.status == 200 and json.loads(resp.read()).get("health") == "true")

    def admin_ssl_context(self) -> ssl.SSLContext:
        pki = self._dir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def _apiserver_ready(self) -> bool:
        ctx = self.admin_ssl_context()
        for path in ("/readyz", "/api/v1/namespaces/default"):
            try:
                url = self.server_url + path
                with urllib.request.urlopen(url, context=ctx, timeout=3) as resp:  # noqa: S310  # nosec B310 # loopback
                    if resp.status != 200:
                        return False
            except urllib.error.HTTPError:
                return False
        return True

    def _write_admin_kubeconfig(self) -> Path:
        pki = self._dir / "pki"
        return write_kubeconfig(
            self._dir / "admin.kubeconfig",
            self.server_url,
            self.ca_pem,
            "pet-harness-admin",
            (pki / "admin.crt").read_bytes(),
            (pki / "admin.key").read_bytes(),
        )

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        if self._ca is None:
            raise ClusterError("the local cluster is not started")
        pair = self._ca.client(user, groups)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
        return write_kubeconfig(
            self._dir / "users" / f"{safe}.kubeconfig", self.server_url, self.ca_pem, user,
            pair.cert_pem, pair.key_pem,
        )

    # --- faults (used by chaos experiments) ----------------------------------------------

    def restart_apiserver(self) -> None:
        bins = self._binaries or binaries_mod.ensure_binaries(build=False)
        if self.apiserver is not None:
            self.apiserver.stop()
        self.apiserver = self._apiserver_process(bins)
        self.apiserver.start()
        self._wait(self.apiserver, self._apiserver_ready, time.monotonic() + self.start_timeout, "kube-apiserver")

    def restart_etcd(self, down_seconds: float = 0) -> None:
        """Stop etcd, leave it down ``down_seconds`` (the fault's length), start it on its data."""
        if not down_seconds >= 0:
            raise ValueError(f"down_seconds {down_seconds} must be >= 0")
        bins = self._binaries or binaries_mod.ensure_binaries(build=False)
        if self.etcd is not None:
            self.etcd.stop()
        time.sleep(down_seconds)
        self.etcd = self._etcd_process(bins)
        self.etcd.start()
        self._wait(self.etcd, self._etcd_healthy, time.monotonic() + self.start_timeout, "etcd /health")
        with contextlib.suppress(ClusterError):
            self._wait(self.apiserver or self.etcd, self._apiserver_ready,
                       time.monotonic() + self.start_timeout, "kube-apiserver after etcd restart")


class _PortCollision(Exception):
    pass

"""clusters/local.py: the embedded cluster, driven by fake etcd and kube-apiserver programs.

The fakes are small Python servers that answer only the probes ``LocalCluster`` makes
(etcd ``/health`` over HTTP; kube-apiserver ``/readyz`` and the default namespace over
mutual TLS with the certificates the cluster generated), so start-up, the work folder,
the PKI, the kubeconfigs and teardown are all exercised without real binaries.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from kubernetes import client as kube_client
from kubernetes import config as kube_config

from pet_harness import processes
from pet_harness.binaries import BinaryError, ControlPlaneBinaries
from pet_harness.clusters import ClusterError, external
from pet_harness.clusters import local as local_mod
from pet_harness.clusters.local import AUDIT_POLICY, WORKDIR_PREFIX, LocalCluster, free_port, sweep_stale_workdirs

FAKE_CONTROL_PLANE = textwrap.dedent(
    '''\
    """Stand-in for etcd or kube-apiserver (chosen by the program name)."""
    import http.server, json, os, ssl, sys

    role = os.path.basename(sys.argv[0])
    if "--version" in sys.argv:
        print("fake " + role + " v0.0.0")
        sys.exit(0)
    flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)


    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if role == "etcd":
                routes = {"/health": {"health": "true"}}
            else:
                subject = dict(item[0] for item in self.connection.getpeercert()["subject"])
                print("request", self.path, "from", subject.get("commonName"), flush=True)
                namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}
                routes = {"/readyz": "ok", "/api/v1/namespaces/default": namespace}
            body = routes.get(self.path)
            data = json.dumps(body if body is not None else {"kind": "Status", "code": 404}).encode()
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass


    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if role == "etcd":  # as the real one is run: TLS, client certificates of the CA
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", int(flags["listen-client-urls"].rsplit(":", 1)[1])), Handler)
        ctx.load_cert_chain(flags["cert-file"], flags["key-file"])
        ctx.load_verify_locations(flags["trusted-ca-file"])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    else:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", int(flags["secure-port"])), Handler)
        ctx.load_cert_chain(flags["tls-cert-file"], flags["tls-private-key-file"])
        ctx.load_verify_locations(flags["client-ca-file"])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(role, "serving", flush=True)
    server.serve_forever()
    '''
)


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)
    return path


def _fake_bins(folder: Path) -> ControlPlaneBinaries:
    body = f"#!{sys.executable}\n{FAKE_CONTROL_PLANE}"
    return ControlPlaneBinaries(_script(folder / "kube-apiserver", body), _script(folder / "etcd", body), "test")


def _gone(pid: int) -> bool:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not processes.pid_alive(pid)
    return data.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _names(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]


@pytest.fixture
def fake_bins(tmp_path: Path) -> ControlPlaneBinaries:
    return _fake_bins(tmp_path / "bin")


@pytest.fixture
def cluster_factory(private_tmpdir: Path) -> Iterator[list[LocalCluster]]:
    """Clusters a test makes are stopped at teardown, whatever happened."""
    made: list[LocalCluster] = []
    yield made
    for cluster in made:
        cluster.stop()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster on the fake control plane, shared by the read-only tests below."""
    base = tmp_path_factory.mktemp("running")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(local_mod.tempfile, "tempdir", str(base))
        cluster = LocalCluster(_fake_bins(base / "bin"), extra_apiserver_args=("--v=2",), start_timeout=10,
                               keep_workdir=False)
        cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


# --- without binaries -------------------------------------------------------------------


def test_start_without_binaries_raises_and_leaves_nothing(private_tmpdir: Path, clean_env: Path) -> None:
    cluster = LocalCluster()
    with pytest.raises(BinaryError, match="pet-harness binaries build"):
        cluster.start()
    assert list(private_tmpdir.glob(WORKDIR_PREFIX + "*")) == []
    assert cluster.workdir is None
    assert cluster.etcd is None
    assert cluster.apiserver is None
    assert not clean_env.exists()
    with pytest.raises(ClusterError, match="not started"):
        _ = cluster.kubeconfig_path


def test_with_block_without_binaries_leaves_nothing(private_tmpdir: Path) -> None:
    with pytest.raises(BinaryError), LocalCluster():
        pytest.fail("the body must not run")
    assert list(private_tmpdir.iterdir()) == []


def test_unstarted_cluster() -> None:
    cluster = LocalCluster()
    for attr in ("kubeconfig_path", "ca_pem", "audit_log_path"):
        with pytest.raises(ClusterError, match="not started"):
            getattr(cluster, attr)
    with pytest.raises(ClusterError, match="not started"):
        cluster.user_kubeconfig("alice")
    cluster.stop()  # harmless


def test_keep_workdir_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not LocalCluster().keep_workdir
    monkeypatch.setenv("PET_HARNESS_KEEP", "1")
    assert LocalCluster().keep_workdir
    assert not LocalCluster(keep_workdir=False).keep_workdir


# --- a full start on the fake control plane ---------------------------------------------


def test_workdir_layout(running: LocalCluster) -> None:
    workdir = running.workdir
    assert workdir is not None
    assert workdir.name.startswith(WORKDIR_PREFIX)
    assert (workdir / "owner.pid").read_text() == str(os.getpid())
    assert (workdir / "audit-policy.yaml").read_text() == AUDIT_POLICY
    pki = workdir / "pki"
    for stem in ("ca", "apiserver", "admin", "service-account"):
        assert (pki / f"{stem}.crt").is_file()
    for stem in ("apiserver", "admin", "service-account"):
        assert _mode(pki / f"{stem}.key") == 0o600
    assert (pki / "ca.crt").read_bytes() == running.ca_pem
    assert running.audit_log_path == workdir / "logs" / "audit.log"


def test_certificates(running: LocalCluster) -> None:
    assert running.workdir is not None
    pki = running.workdir / "pki"
    ca = _cert(pki / "ca.crt")
    assert _names(ca, NameOID.COMMON_NAME) == ["pet-harness-cluster-ca"]
    admin = _cert(pki / "admin.crt")
    assert _names(admin, NameOID.COMMON_NAME) == ["pet-harness-admin"]
    assert _names(admin, NameOID.ORGANIZATION_NAME) == ["system:masters"]
    admin.verify_directly_issued_by(ca)
    serving = _cert(pki / "apiserver.crt")
    serving.verify_directly_issued_by(ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc.cluster.local" in sans.get_values_for_type(x509.DNSName)
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.0.0.1"]


def test_processes_and_flags(running: LocalCluster) -> None:
    assert running.etcd is not None
    assert running.apiserver is not None
    assert running.etcd.running
    assert running.apiserver.running
    assert running.etcd.pid is not None
    assert os.getpgid(running.etcd.pid) == running.etcd.pid
    ports = {running.etcd_client_port, running.etcd_peer_port, running.apiserver_port}
    assert len(ports) == 3
    assert 0 not in ports
    argv = running.apiserver.argv
    assert f"--etcd-servers=https://127.0.0.1:{running.etcd_client_port}" in argv
    assert f"--secure-port={running.apiserver_port}" in argv
    assert "--authorization-mode=RBAC" in argv
    assert f"--audit-log-path={running.audit_log_path}" in argv
    assert f"--service-account-issuer={local_mod.SERVICE_ACCOUNT_ISSUER}" in argv
    assert argv[-1] == "--v=2", "extra arguments come last so that they override"
    assert f"--listen-client-urls=https://127.0.0.1:{running.etcd_client_port}" in running.etcd.argv
    assert f"--initial-cluster=pet-harness=https://127.0.0.1:{running.etcd_peer_port}" in running.etcd.argv
    assert {"--client-cert-auth=true", "--peer-client-cert-auth=true"} <= set(running.etcd.argv)
    assert running.server_url == f"https://127.0.0.1:{running.apiserver_port}"


def test_etcd_refuses_plain_http_and_clients_without_a_certificate(running: LocalCluster) -> None:
    """Finding 12: etcd answered any local user over plain HTTP (``cluster up`` keeps it for days);
    now it speaks TLS only and wants a client certificate of the cluster's CA."""
    import ssl
    import urllib.error
    import urllib.request

    port = running.etcd_client_port
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/keys", timeout=5).read()
    anonymous = ssl.create_default_context(cafile=str(running.workdir / "pki" / "ca.crt"))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(f"https://127.0.0.1:{port}/version", timeout=5, context=anonymous).read()
    assert running._etcd_healthy()  # with the API server's client certificate


def test_readiness_was_probed_as_the_admin(running: LocalCluster) -> None:
    assert running.apiserver is not None
    log = running.apiserver.log_text()
    assert "request /readyz from pet-harness-admin" in log
    assert "request /api/v1/namespaces/default from pet-harness-admin" in log


def test_describe(running: LocalCluster) -> None:
    info = running.describe()
    assert info["backend"] == "local"
    assert info["kubeconfig"] == str(running.kubeconfig_path)
    assert info["server"] == running.server_url
    assert info["workdir"] == str(running.workdir)
    assert running.etcd is not None
    assert running.apiserver is not None
    assert info["etcd_pid"] == running.etcd.pid
    assert info["apiserver_pid"] == running.apiserver.pid
    assert info["audit_log"] == str(running.audit_log_path)
    assert isinstance(info["start_seconds"], float)
    assert 0 < info["start_seconds"] < 30


def test_admin_kubeconfig_works_with_the_kubernetes_client(running: LocalCluster) -> None:
    path = running.kubeconfig_path
    assert running.workdir is not None
    assert path == running.workdir / "admin.kubeconfig"
    assert _mode(path) == 0o600
    data = yaml.safe_load(path.read_text())
    assert data["clusters"][0]["cluster"]["server"] == running.server_url
    with kube_config.new_client_from_config(config_file=str(path)) as api:
        namespace = kube_client.CoreV1Api(api).read_namespace("default", _request_timeout=10)
    assert namespace.metadata.name == "default"
    external._check_reachable(path, "local")  # the same check the external backends make


def test_user_kubeconfig(running: LocalCluster) -> None:
    path = running.user_kubeconfig("alice@example.com/x", ("pets:owners", "devs"))
    assert running.workdir is not None
    assert path == running.workdir / "users" / "alice_example.com_x.kubeconfig"
    assert _mode(path) == 0o600
    data = yaml.safe_load(path.read_text())
    assert data["current-context"] == "alice@example.com/x@pet-harness"
    with kube_config.new_client_from_config(config_file=str(path)) as api:
        cert = _cert(Path(api.configuration.cert_file))
        kube_client.CoreV1Api(api).read_namespace("default", _request_timeout=10)
    assert _names(cert, NameOID.COMMON_NAME) == ["alice@example.com/x"]
    assert _names(cert, NameOID.ORGANIZATION_NAME) == ["pets:owners", "devs"]
    assert running.apiserver is not None
    assert "request /api/v1/namespaces/default from alice@example.com/x" in running.apiserver.log_text()


def test_start_twice_is_a_no_op(running: LocalCluster) -> None:
    assert running.apiserver is not None
    pid, kubeconfig = running.apiserver.pid, running.kubeconfig_path
    running.start()
    assert running.apiserver.pid == pid
    assert running.kubeconfig_path == kubeconfig


def test_stop_removes_everything(fake_bins: ControlPlaneBinaries, private_tmpdir: Path,
                                 cluster_factory: list[LocalCluster]) -> None:
    cluster = LocalCluster(fake_bins, start_timeout=10)
    cluster_factory.append(cluster)
    cluster.start()
    assert cluster.etcd is not None
    assert cluster.apiserver is not None
    pids = [cluster.etcd.pid, cluster.apiserver.pid]
    workdir = cluster.workdir
    assert workdir is not None
    assert workdir.parent == private_tmpdir

    cluster.stop()
    assert all(pid is not None and _gone(pid) for pid in pids)
    assert not workdir.exists()
    assert cluster.etcd is None
    assert cluster.apiserver is None
    with pytest.raises(ClusterError):
        _ = cluster.kubeconfig_path
    cluster.stop()


def test_restarts(fake_bins: ControlPlaneBinaries, cluster_factory: list[LocalCluster]) -> None:
    cluster = LocalCluster(fake_bins, start_timeout=10)
    cluster_factory.append(cluster)
    cluster.start()
    assert cluster.apiserver is not None
    assert cluster.etcd is not None
    old_apiserver, old_etcd = cluster.apiserver.pid, cluster.etcd.pid
    assert old_apiserver is not None
    assert old_etcd is not None

    cluster.restart_apiserver()
    assert cluster.apiserver.pid != old_apiserver
    assert cluster.apiserver.running
    assert _gone(old_apiserver)

    cluster.restart_etcd()
    assert cluster.etcd.pid != old_etcd
    assert cluster.etcd.running
    assert _gone(old_etcd)
    with kube_config.new_client_from_config(config_file=str(cluster.kubeconfig_path)) as api:
        kube_client.CoreV1Api(api).read_namespace("default", _request_timeout=10)


def test_requested_workdir_is_kept(fake_bins: ControlPlaneBinaries, tmp_path: Path,
                                   cluster_factory: list[LocalCluster]) -> None:
    workdir = tmp_path / "mine"
    cluster = LocalCluster(fake_bins, workdir=workdir, start_timeout=10)
    cluster_factory.append(cluster)
    cluster.start()
    assert cluster.workdir == workdir
    cluster.stop()
    assert (workdir / "admin.kubeconfig").is_file()


# --- failures half-way through start-up -------------------------------------------------


def test_etcd_exiting_at_start(fake_bins: ControlPlaneBinaries, tmp_path: Path, private_tmpdir: Path) -> None:
    etcd = _script(tmp_path / "broken" / "etcd", "#!/bin/sh\necho 'etcdmain: cannot open data dir'\nexit 3\n")
    cluster = LocalCluster(ControlPlaneBinaries(fake_bins.kube_apiserver, etcd, "test"), start_timeout=10)
    with pytest.raises(ClusterError) as info:
        cluster.start()
    message = str(info.value)
    assert "etcd exited with code 3 during start-up" in message
    assert "etcdmain: cannot open data dir" in message
    assert list(private_tmpdir.iterdir()) == []
    assert cluster.etcd is None
    assert cluster.apiserver is None


def test_apiserver_exiting_at_start_stops_etcd(
    fake_bins: ControlPlaneBinaries, tmp_path: Path, private_tmpdir: Path
) -> None:
    apiserver = _script(tmp_path / "broken" / "kube-apiserver", "#!/bin/sh\necho 'E0101 bad flag' >&2\nexit 1\n")
    cluster = LocalCluster(ControlPlaneBinaries(apiserver, fake_bins.etcd, "test"), start_timeout=10)
    started: list[processes.ManagedProcess] = []
    real_start = processes.ManagedProcess.start

    def recording_start(self: processes.ManagedProcess) -> processes.ManagedProcess:
        started.append(self)
        return real_start(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(processes.ManagedProcess, "start", recording_start)
        with pytest.raises(ClusterError, match=r"(?s)kube-apiserver exited with code 1 during start-up.*bad flag"):
            cluster.start()
    assert [p.name for p in started] == ["etcd", "kube-apiserver"]
    assert not any(p.running for p in started)
    assert list(private_tmpdir.iterdir()) == []


def test_port_collisions_are_retried_three_times(tmp_path: Path, private_tmpdir: Path) -> None:
    attempts = tmp_path / "attempts"
    etcd = _script(
        tmp_path / "busy" / "etcd",
        f"#!/bin/sh\necho attempt >> {attempts}\n"
        "echo 'listen tcp 127.0.0.1:2380: bind: address already in use'\nexit 1\n",
    )
    cluster = LocalCluster(ControlPlaneBinaries(etcd, etcd, "test"), start_timeout=10)
    with pytest.raises(ClusterError, match="could not find free loopback ports after 3 tries"):
        cluster.start()
    assert attempts.read_text().count("attempt") == 3
    assert list(private_tmpdir.iterdir()) == []


def test_start_timeout(tmp_path: Path, private_tmpdir: Path) -> None:
    pidfile = tmp_path / "etcd.pid"
    etcd = _script(tmp_path / "mute" / "etcd", f"#!/bin/sh\necho $$ > {pidfile}\necho silent\nexec sleep 30\n")
    cluster = LocalCluster(ControlPlaneBinaries(etcd, etcd, "test"), start_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ClusterError) as info:
        cluster.start()
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "waiting for etcd /health" in message
    assert "last error:" in message
    assert "silent" in message
    assert _gone(int(pidfile.read_text()))
    assert list(private_tmpdir.iterdir()) == []


def test_failed_start_keeps_the_workdir_when_asked(tmp_path: Path, private_tmpdir: Path) -> None:
    etcd = _script(tmp_path / "broken" / "etcd", "#!/bin/sh\nexit 3\n")
    cluster = LocalCluster(ControlPlaneBinaries(etcd, etcd, "test"), keep_workdir=True)
    with pytest.raises(ClusterError):
        cluster.start()
    [kept] = private_tmpdir.iterdir()
    assert kept.name.startswith(WORKDIR_PREFIX)
    assert (kept / "logs" / "etcd.log").is_file()


# --- helpers ----------------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_sweep_stale_workdirs(private_tmpdir: Path) -> None:
    dead = private_tmpdir / f"{WORKDIR_PREFIX}dead"
    alive = private_tmpdir / f"{WORKDIR_PREFIX}alive"
    no_owner = private_tmpdir / f"{WORKDIR_PREFIX}no-owner"
    garbage = private_tmpdir / f"{WORKDIR_PREFIX}garbage"
    other = private_tmpdir / "something-else"
    for path in (dead, alive, no_owner, garbage, other):
        (path / "pki").mkdir(parents=True)
    (dead / "owner.pid").write_text(str(_dead_pid()))
    (alive / "owner.pid").write_text(str(os.getpid()))
    (garbage / "owner.pid").write_text("not a pid")
    (other / "owner.pid").write_text(str(_dead_pid()))

    assert sweep_stale_workdirs() == [dead]
    assert not dead.exists()
    for path in (alive, no_owner, garbage, other):
        assert path.is_dir()
    assert sweep_stale_workdirs() == []


def test_start_sweeps_stale_workdirs(fake_bins: ControlPlaneBinaries, private_tmpdir: Path,
                                     cluster_factory: list[LocalCluster]) -> None:
    stale = private_tmpdir / f"{WORKDIR_PREFIX}stale"
    stale.mkdir()
    (stale / "owner.pid").write_text(str(_dead_pid()))
    cluster = LocalCluster(fake_bins, start_timeout=10)
    cluster_factory.append(cluster)
    cluster.start()
    assert not stale.exists()
    assert list(private_tmpdir.iterdir()) == [cluster.workdir]


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_audit_policy() -> None:
    policy = yaml.safe_load(AUDIT_POLICY)
    assert policy["apiVersion"] == "audit.k8s.io/v1"
    assert policy["kind"] == "Policy"
    assert policy["omitStages"] == ["RequestReceived"]
    rules = policy["rules"]
    assert rules[0] == {"level": "None", "verbs": ["get", "list", "watch"]}
    assert rules[1]["level"] == "None"
    assert {"group": "", "resources": ["events"]} in rules[1]["resources"]
    assert rules[2] == {"level": "Request", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]}
    assert rules[-1] == {"level": "Metadata"}, "everything else is recorded at Metadata level"


# --- kube-controller-manager (optional) ---------------------------------------------------

FAKE_CONTROLLER_MANAGER = textwrap.dedent(
    '''\
    """Stand-in for kube-controller-manager: /healthz over TLS, with the kubeconfig's own pair."""
    import base64, http.server, os, ssl, sys, tempfile, yaml

    flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    if os.environ.get("FAKE_KCM_FAIL"):
        print("E0101 unknown controller", flush=True)
        sys.exit(3)
    config = yaml.safe_load(open(flags["kubeconfig"]))
    user = config["users"][0]["user"]
    folder = tempfile.mkdtemp()
    for key, name in (("client-certificate-data", "c.crt"), ("client-key-data", "c.key")):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(base64.b64decode(user[key]))


    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/healthz"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass


    server = http.server.ThreadingHTTPServer((flags["bind-address"], int(flags["secure-port"])), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(folder, "c.crt"), os.path.join(folder, "c.key"))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("kube-controller-manager serving for", config["clusters"][0]["cluster"]["server"], flush=True)
    server.serve_forever()
    '''
)


@pytest.fixture
def fake_manager(tmp_path: Path) -> Path:
    return _script(tmp_path / "bin" / "kube-controller-manager", f"#!{sys.executable}\n{FAKE_CONTROLLER_MANAGER}")


def test_no_controller_manager_by_default(running: LocalCluster) -> None:
    assert running.controller_manager is False
    assert running.controller_manager_process is None
    assert running.describe()["controller_manager_pid"] is None


def test_controller_manager_runs_with_its_own_identity_and_only_the_needed_controllers(
    fake_bins: ControlPlaneBinaries, fake_manager: Path, cluster_factory: list[LocalCluster]
) -> None:
    cluster = LocalCluster(fake_bins, start_timeout=10, controller_manager=True,
                           controller_manager_binary=fake_manager)
    cluster_factory.append(cluster)
    cluster.start()
    manager = cluster.controller_manager_process
    assert manager is not None and manager.running
    assert cluster.describe()["controller_manager_pid"] == manager.pid
    argv = manager.argv
    assert argv[0] == str(fake_manager)
    assert "--controllers=namespace-controller,garbage-collector-controller" in argv
    assert "--leader-elect=false" in argv
    assert "--bind-address=127.0.0.1" in argv
    assert "--use-service-account-credentials=true" in argv
    assert f"--secure-port={cluster.controller_manager_port}" in argv
    assert cluster.controller_manager_port not in (0, cluster.apiserver_port, cluster.etcd_client_port)
    assert cluster.workdir is not None
    config_path = cluster.workdir / "controller-manager.kubeconfig"
    assert f"--kubeconfig={config_path}" in argv
    assert _mode(config_path) == 0o600
    config = yaml.safe_load(config_path.read_text())
    assert config["clusters"][0]["cluster"]["server"] == cluster.server_url
    with kube_config.new_client_from_config(config_file=str(config_path)) as api:
        cert = _cert(Path(api.configuration.cert_file))
    assert _names(cert, NameOID.COMMON_NAME) == [local_mod.CONTROLLER_MANAGER_USER]
    assert _names(cert, NameOID.ORGANIZATION_NAME) == [], "its own identity, never system:masters"
    assert "serving for " + cluster.server_url in manager.log_text()

    pids = [p.pid for p in (manager, cluster.apiserver, cluster.etcd) if p is not None]
    cluster.stop()
    assert all(pid is not None and _gone(pid) for pid in pids)
    assert cluster.controller_manager_process is None


def test_controller_manager_started_on_a_running_cluster_once(
    fake_bins: ControlPlaneBinaries, fake_manager: Path, cluster_factory: list[LocalCluster]
) -> None:
    cluster = LocalCluster(fake_bins, start_timeout=10)
    cluster_factory.append(cluster)
    with pytest.raises(ClusterError, match="not started"):
        cluster.start_controller_manager(fake_manager)
    cluster.start()
    assert cluster.controller_manager_process is None
    cluster.start_controller_manager(fake_manager)
    manager = cluster.controller_manager_process
    assert manager is not None and manager.running
    cluster.start_controller_manager(fake_manager)  # already running: nothing happens
    assert cluster.controller_manager_process is manager
    pid = manager.pid
    cluster.stop()
    assert pid is not None and _gone(pid)


def test_controller_manager_exiting_at_start_stops_everything(
    fake_bins: ControlPlaneBinaries, fake_manager: Path, private_tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KCM_FAIL", "1")
    cluster = LocalCluster(fake_bins, start_timeout=10, controller_manager=True,
                           controller_manager_binary=fake_manager)
    with pytest.raises(ClusterError, match=r"(?s)kube-controller-manager exited with code 3.*unknown controller"):
        cluster.start()
    assert cluster.etcd is None and cluster.apiserver is None and cluster.controller_manager_process is None
    assert list(private_tmpdir.iterdir()) == []


def test_controller_manager_binary_missing_fails_before_anything_starts(
    fake_bins: ControlPlaneBinaries, private_tmpdir: Path
) -> None:
    cluster = LocalCluster(fake_bins, start_timeout=10, controller_manager=True)
    with pytest.raises(BinaryError, match="kube-controller-manager is not built yet"):
        cluster.start()
    assert cluster.etcd is None
    assert list(private_tmpdir.iterdir()) == []


def test_distinct_ports_never_repeat_a_port_the_kernel_hands_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    from pet_harness.clusters import local

    monkeypatch.setattr(local, "ephemeral_range", lambda: (1024, 65535))  # the kernel picks
    handed = iter([41000, 41000, 41000, 41001, 41000, 41001, 41002])

    class Socket:
        def __init__(self, *args: object) -> None:
            self.port = 0

        def __enter__(self) -> Socket:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            self.port = next(handed)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(local.socket, "socket", Socket)
    assert local.distinct_ports(3) == [41000, 41001, 41002]

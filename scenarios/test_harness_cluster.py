"""The harness itself, against real etcd and kube-apiserver: identities, audit, teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pet_harness import versions
from pet_harness.clusters import Cluster
from pet_harness.clusters.base import ClusterError, write_kubeconfig
from pet_harness.clusters.local import LocalCluster
from pet_harness.kube import PetApi, api_client, get_raw
from pet_harness.processes import pid_alive
from pet_harness.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def local_only(pet_cluster: Cluster) -> LocalCluster:
    if not isinstance(pet_cluster, LocalCluster):
        pytest.skip("needs the embedded (local) backend")
    return pet_cluster


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def test_api_server_reports_the_pinned_version(kube_api: Any, local_only: LocalCluster) -> None:
    assert get_raw(kube_api, "/version")["gitVersion"] == f"v{versions.KUBERNETES_VERSION}"


def test_client_certificate_identities(local_only: LocalCluster) -> None:
    path = local_only.user_kubeconfig("alice", ("pet-devs",))
    with api_client(path) as api:
        review = client.AuthenticationV1Api(api).create_self_subject_review({"apiVersion": "authentication.k8s.io/v1",
                                                                             "kind": "SelfSubjectReview"})
        assert review.status.user_info.username == "alice"
        assert "pet-devs" in review.status.user_info.groups
        # RBAC is on: alice may do nothing she was not granted
        with pytest.raises(ApiException) as caught:
            client.CoreV1Api(api).list_namespace()
        assert caught.value.status == 403


def test_etcd_answers_only_tls_clients_with_a_certificate_of_the_cluster_ca(local_only: LocalCluster) -> None:
    """Finding 12: the real etcd on loopback answered any local user over plain HTTP (and so the whole
    cluster, past the API server's authentication); now plain HTTP and TLS without a client
    certificate are both refused, and the API server (its client certificate) still works."""
    import ssl
    import urllib.error
    import urllib.request

    port = local_only.etcd_client_port
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=5).read()
    assert local_only.workdir is not None
    anonymous = ssl.create_default_context(cafile=str(local_only.workdir / "pki" / "ca.crt"))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(f"https://127.0.0.1:{port}/version", timeout=5, context=anonymous).read()
    assert local_only._etcd_healthy()


def test_token_request_and_rbac(kube_api: Any, namespace: str, local_only: LocalCluster) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    token = core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    path = write_kubeconfig(local_only.workdir / "users" / f"reader-{namespace}.kubeconfig",  # type: ignore[operator]
                            local_only.server_url, local_only.ca_pem, "reader", token=token)
    with api_client(path) as api:
        as_reader = PetApi(api, namespace)
        with pytest.raises(ApiException) as caught:
            as_reader.list_pets()
        assert caught.value.status == 403
        assert f"system:serviceaccount:{namespace}:reader" in caught.value.body
        rbac = client.RbacAuthorizationV1Api(kube_api)
        rbac.create_namespaced_role(namespace, {
            "metadata": {"name": "pet-reader"},
            "rules": [{"apiGroups": ["petstore.example.com"], "resources": ["pets"], "verbs": ["list"]}],
        })
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": "pet-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pet-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        })
        assert wait_for(as_reader.list_pets, lambda pets: pets == [], 10, "the reader may list pets") == []


def test_audit_log_records_who_wrote_what(pets: PetApi, local_only: LocalCluster) -> None:
    pets.create_pet("audited", {"id": 7, "name": "audited"})

    def entries() -> list[dict[str, Any]]:
        lines = local_only.audit_log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if '"audited"' in line]

    found = wait_for(entries, lambda es: any(e["verb"] == "create" for e in es), 10, "the create in the audit log")
    create = next(e for e in found if e["verb"] == "create")
    assert create["objectRef"]["resource"] == "pets"
    assert create["objectRef"]["namespace"] == pets.namespace
    assert create["user"]["username"] == "pet-harness-admin"
    assert create["responseStatus"]["code"] == 201


def test_apiserver_that_fails_to_start_leaves_no_etcd_behind(local_only: LocalCluster) -> None:
    cluster = LocalCluster(extra_apiserver_args=("--no-such-flag=1",))
    with pytest.raises(ClusterError, match="kube-apiserver exited"):
        cluster.start()
    assert cluster.etcd is None
    assert cluster.apiserver is None
    assert cluster.workdir is None
    assert _processes_mentioning("--no-such-flag") == []


_HOLDER = textwrap.dedent("""
    import json, signal, sys, time
    from pet_harness.processes import install_signal_handlers
    from pet_harness.clusters.local import LocalCluster
    # as an interactive process: a shell starting background jobs (e.g. CI wrappers) hands
    # SIGINT down ignored, and Python keeps it so
    signal.signal(signal.SIGINT, signal.default_int_handler)
    install_signal_handlers()
    cluster = LocalCluster()
    cluster.start()
    try:
        print(json.dumps({"etcd": cluster.etcd.pid, "apiserver": cluster.apiserver.pid,
                          "workdir": str(cluster.workdir)}), flush=True)
        while True:
            time.sleep(1)
    finally:
        print(f"{time.monotonic():.1f} stopping", file=sys.stderr, flush=True)
        cluster.stop()
        print(f"{time.monotonic():.1f} stopped", file=sys.stderr, flush=True)
""")


def _process_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((line.split(None, 1)[1].strip() for line in f if line.startswith("State:")), "?")
    except OSError:
        return "gone"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_cluster_is_stopped_on_every_exit_path(local_only: LocalCluster, tmp_path: Path, sig: int) -> None:
    stderr = tmp_path / "holder.stderr"
    with open(stderr, "w") as err:
        holder = subprocess.Popen([sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE, stderr=err, text=True,
                                  env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        assert holder.stdout is not None
        info = json.loads(holder.stdout.readline())
        assert pid_alive(info["etcd"]) and pid_alive(info["apiserver"])
        holder.send_signal(sig)
        try:
            holder.wait(60)
        except subprocess.TimeoutExpired:
            states = {name: _process_state(info[name]) for name in ("etcd", "apiserver")}
            pytest.fail(f"the holder did not exit within 60 s of {signal.Signals(sig).name}; "
                        f"etcd/apiserver states {states}; its stderr:\n{stderr.read_text()[-3000:]}")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    for pid in (info["etcd"], info["apiserver"]):
        wait_for(lambda pid=pid: pid_alive(pid), lambda alive: not alive, 20, f"pid {pid} to be gone")
    if sig == signal.SIGKILL:
        # the holder could not clean up: its reaper (harness/pet_harness/reaper.py) removes the folder
        wait_for(Path(info["workdir"]).exists, lambda present: not present, 20,
                 "the reaper to remove the killed holder's work folder")
    assert not Path(info["workdir"]).exists()


def test_cluster_cli_up_status_down(local_only: LocalCluster) -> None:
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    cli = [sys.executable, "-m", "pet_harness.cli", "cluster"]
    up = subprocess.run([*cli, "up", "--name", name], capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = up.stdout.strip()
        assert f"export KUBECONFIG={kubeconfig}" in up.stderr
        with api_client(kubeconfig) as api:
            assert PetApi(api, "default").list_pets() == []
        status = subprocess.run([*cli, "status", "--name", name], capture_output=True, text=True, timeout=30)
        assert status.returncode == 0
        state = json.loads(status.stdout)
        pids = [state["supervisor_pid"], state["etcd_pid"], state["apiserver_pid"]]
        assert all(pid_alive(p) for p in pids)
    finally:
        down = subprocess.run([*cli, "down", "--name", name], capture_output=True, text=True, timeout=90)
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stdout
    for pid in pids:
        wait_for(lambda pid=pid: pid_alive(pid), lambda alive: not alive, 20, f"pid {pid} to be gone")
    assert not Path(state["workdir"]).exists()
    gone = subprocess.run([*cli, "kubeconfig", "--name", name], capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1
    assert "cluster up" in gone.stderr


@pytest.mark.slow
def test_ctrl_c_mid_run_leaves_nothing_behind(local_only: LocalCluster, tmp_path: Path) -> None:
    """Interrupt an xdist run of the suite the way Ctrl-C does: SIGINT to its process group."""
    # as from an interactive shell: SIGINT handled even if this run was started as a background job
    interactive = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                   "sys.argv = ['pytest', *sys.argv[1:]]; runpy.run_module('pytest', run_name='__main__')")
    run = subprocess.Popen(
        [sys.executable, "-c", interactive, str(REPO / "scenarios" / "test_reconcile.py"), "-n", "2", "-q",
         "-p", "no:cacheprovider", f"--pet-report-dir={tmp_path / 'reports'}"],
        cwd=REPO, env={**os.environ, "TMPDIR": str(tmp_path)}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def running_clusters() -> list[Path]:
            return [p for p in tmp_path.glob("pet-cluster-*") if (p / "admin.kubeconfig").exists()]

        wait_for(running_clusters, lambda found: len(found) == 2, 90, "both workers' clusters up")
        wait_for(lambda: _processes_mentioning(f"{tmp_path}/pet-operator-logs-"), bool, 60,
                 "an operator of the run")
        os.killpg(run.pid, signal.SIGINT)
        run.wait(90)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    leftovers = wait_for(lambda: _processes_mentioning(str(tmp_path)), lambda found: not found, 30,
                         "every process of the interrupted run to be gone")
    assert leftovers == []
    # xdist workers finish their teardown after the controller exits: give them time to remove folders
    wait_for(lambda: list(tmp_path.glob("pet-*")), lambda found: found == [], 30,
             "the run's cluster and log folders to be removed")

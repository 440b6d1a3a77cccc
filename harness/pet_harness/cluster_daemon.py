"""A named embedded cluster that outlives the command that started it.

``pet-harness cluster up`` starts a small supervisor process (``cluster serve``) that
owns etcd and kube-apiserver: their parent, so they die with it even if it is
SIGKILLed (PR_SET_PDEATHSIG). ``cluster down`` sends it SIGTERM and waits until it
and both control-plane processes are gone. The supervisor's state is a JSON file in
``<cache>/clusters/<name>/``, next to a stable copy of the admin kubeconfig.

With ``--node`` the supervisor owns a :class:`~pet_harness.clusters.node.NodeCluster` instead
(controller-manager, scheduler and a real node beside them) and, unless ``--no-operator``, deploys
the operator on it as pods from the image built here, serving the ``--serve`` namespaces; ``up``
relays the supervisor's progress lines while it waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess  # nosec B404 # argv lists, never a shell
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pet_harness.binaries import cache_root, ensure_binaries
from pet_harness.clusters.base import ClusterError, write_private
from pet_harness.clusters.local import LocalCluster
from pet_harness.processes import ManagedProcess, pid_alive


def _is_ours(pid: int, marker: str) -> bool:
    """Whether ``pid`` is still the process we recorded (its command line names ``marker``)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def state_dir(name: str) -> Path:
    return cache_root() / "clusters" / name


def read_state(name: str) -> dict[str, Any] | None:
    path = state_dir(name) / "state.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def _write_state(name: str, **state: Any) -> None:
    directory = state_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(directory / "state.json")


def serve(name: str, node: bool = False, serve_namespaces: Sequence[str] = ()) -> int:
    """Run the cluster in the foreground until SIGTERM or SIGINT (the supervisor); ``node``: the
    cluster with a real node (:class:`~pet_harness.clusters.node.NodeCluster`);
    ``serve_namespaces`` (node only): deploy the operator, its image built here, serving these."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cluster: LocalCluster
    if node:
        from pet_harness.clusters.node import NodeCluster

        cluster = NodeCluster(progress=lambda line: print(line, flush=True))
    else:
        cluster = LocalCluster()
    try:
        cluster.start()
        from pet_harness.kube import api_client, install_crds

        with api_client(cluster.kubeconfig_path) as api:
            install_crds(api)
            operator = _deploy_operator(cluster, api, serve_namespaces) if serve_namespaces else None
        kubeconfig = write_private(state_dir(name) / "kubeconfig", cluster.kubeconfig_path.read_bytes())
        info = cluster.describe()
        if operator is not None:
            info["operator"] = operator
        info.update(status="running", supervisor_pid=os.getpid(), kubeconfig=str(kubeconfig))
        _write_state(name, **info)
        while not stop.wait(1):
            for proc in _components(cluster).values():
                if proc is not None and not proc.running:
                    raise ClusterError(f"{proc.name} exited unexpectedly with code {proc.returncode}")
    except BaseException as exc:  # noqa: BLE001 - the state file tells `cluster up` what went wrong
        _write_state(name, status="failed", supervisor_pid=os.getpid(), error=str(exc))
        cluster.stop()
        return 1
    cluster.stop()
    _write_state(name, status="stopped", supervisor_pid=os.getpid())
    return 0


def _deploy_operator(cluster: LocalCluster, api: Any, served: Sequence[str]) -> dict[str, Any]:
    """The operator's image built here (or from the cache) and deployed on the node, as the node
    e2e suite deploys it; what the state file and ``status`` say of it."""
    from pet_harness.clusters.node import NodeCluster
    from pet_harness.pet_deploy import deploy_operator
    from pet_harness.pet_image import operator_image

    if not isinstance(cluster, NodeCluster):
        raise ClusterError("the operator is deployed as pods only on a cluster with a node (--node)")
    print("building (or finding) the operator's image", flush=True)
    image = operator_image(progress=lambda line: print(line, flush=True))
    print(f"deploying the operator ({image.reference}) serving {', '.join(served)}", flush=True)
    deployed = deploy_operator(cluster, api, image, served)
    print(f"operator ready: {deployed.timings}", flush=True)
    return {"namespace": deployed.namespace, "serves": deployed.served, "image": deployed.image,
            "seconds": deployed.timings}


def _components(cluster: LocalCluster) -> dict[str, ManagedProcess | None]:
    if hasattr(cluster, "components"):
        found: dict[str, ManagedProcess | None] = cluster.components()
        return found
    return {"etcd": cluster.etcd, "kube-apiserver": cluster.apiserver}


def up(name: str, timeout: float = 120, node: bool = False, serve_namespaces: Sequence[str] = (),
       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Start the named cluster in the background and return its state once it serves; ``node``:
    with a real node (root, the node's packages and ``binaries build --node``; it may first wait
    for another node cluster of this machine to end); ``serve_namespaces`` (node only): the
    operator deployed as pods serving these. ``progress`` gets the supervisor's lines as they come."""
    if serve_namespaces and not node:
        raise ClusterError(f"serving {', '.join(serve_namespaces)} deploys the operator as pods, which needs a "
                           "node: add --node")
    state = read_state(name)
    if state and state.get("status") == "running" and pid_alive(int(state["supervisor_pid"])):
        if bool(state.get("backend") == "node") != node:
            raise ClusterError(f"cluster {name!r} is running {'without' if node else 'with'} a node: "
                               f"`pet-harness cluster down --name {name}` first")
        return state
    ensure_binaries(build=True)
    if node:
        from pet_harness.binaries import ensure_node_binaries
        from pet_harness.clusters.node_packages import check_packages

        check_packages()
        ensure_node_binaries(build=True)
        timeout = max(timeout, 420)  # a node may wait up to 300 s for another node cluster to end
        if serve_namespaces:
            timeout += 900  # the image: a base by mmdebstrap, a wheelhouse and a BuildKit build when cold
    directory = state_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "state.json").unlink(missing_ok=True)
    log = open(directory / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(  # nosec B603 # argv of our own, no shell
        [sys.executable, "-m", "pet_harness.cli", "cluster", "serve", "--name", name, *(["--node"] if node else []),
         *(f"--serve={ns}" for ns in serve_namespaces)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + timeout
    told = 0
    while time.monotonic() < deadline:
        if progress is not None:
            told = _tell_new_lines(directory / "supervisor.log", told, progress)
        state = read_state(name)
        if state and state.get("supervisor_pid") == proc.pid:
            if state["status"] == "running":
                return state
            if state["status"] == "failed":
                proc.wait(30)
                raise ClusterError(f"cluster {name!r} failed to start: {state.get('error')}")
        if proc.poll() is not None:
            raise ClusterError(
                f"cluster {name!r} supervisor exited with code {proc.returncode}; see {directory / 'supervisor.log'}"
            )
        time.sleep(0.2)
    proc.terminate()
    proc.wait(30)
    raise ClusterError(f"cluster {name!r} did not become ready in {timeout:.0f}s; see {directory / 'supervisor.log'}")


def _tell_new_lines(log: Path, offset: int, progress: Callable[[str], None]) -> int:
    """Hand ``progress`` the whole lines ``log`` gained since ``offset``; returns the new offset."""
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except OSError:
        return offset
    complete = chunk.rfind(b"\n") + 1
    for line in chunk[:complete].decode(errors="replace").splitlines():
        progress(line)
    return offset + complete


def down(name: str, timeout: float = 120) -> bool:
    """Stop the named cluster; returns False if it was not running."""
    state = read_state(name)
    if not state:
        return False
    pid = int(state.get("supervisor_pid", 0))
    was_running = bool(pid) and pid_alive(pid) and _is_ours(pid, "cluster serve")
    if was_running:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)  # its children die with it (PDEATHSIG)
    workdir = str(state.get("workdir") or "\0never")
    children = [state.get("apiserver_pid"), state.get("etcd_pid"), *(state.get("components") or {}).values()]
    for child in children:
        if child and pid_alive(int(child)) and _is_ours(int(child), workdir):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(child), signal.SIGKILL)
    if state.get("backend") == "node":  # a supervisor killed before its teardown: sweep its node now
        from pet_harness.clusters import node_teardown

        if int(node_teardown.read_state().get("owner_pid") or 0) == pid:
            with node_teardown.node_lock(timeout):
                node_teardown.sweep_stale()
    shutil.rmtree(state_dir(name), ignore_errors=True)
    return was_running


def status(name: str) -> dict[str, Any]:
    state = read_state(name)
    if not state:
        return {"name": name, "status": "absent"}
    pid = int(state.get("supervisor_pid", 0))
    if state.get("status") == "running" and not pid_alive(pid):
        state["status"] = "dead (supervisor gone; run `pet-harness cluster down` to clean up)"
    state["name"] = name
    components = state.get("components")
    if isinstance(components, dict):
        state["components"] = {
            component: {"pid": pid, "running": bool(pid) and pid_alive(int(pid))}
            for component, pid in components.items()
        }
    return state

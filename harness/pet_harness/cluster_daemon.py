"""A named embedded cluster that outlives the command that started it.

``pet-harness cluster up`` starts a small supervisor process (``cluster serve``) that
owns etcd and kube-apiserver: their parent, so they die with it even if it is
SIGKILLed (PR_SET_PDEATHSIG). ``cluster down`` sends it SIGTERM and waits until it
and both control-plane processes are gone. The supervisor's state is a JSON file in
``<cache>/clusters/<name>/``, next to a stable copy of the admin kubeconfig.
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
from pathlib import Path
from typing import Any

from pet_harness.binaries import cache_root, ensure_binaries
from pet_harness.clusters.base import ClusterError, write_private
from pet_harness.clusters.local import LocalCluster
from pet_harness.processes import pid_alive


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


def serve(name: str) -> int:
    """Run the cluster in the foreground until SIGTERM or SIGINT (the supervisor)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cluster = LocalCluster()
    try:
        cluster.start()
        from pet_harness.kube import api_client, install_crds

        with api_client(cluster.kubeconfig_path) as api:
            install_crds(api)
        kubeconfig = write_private(state_dir(name) / "kubeconfig", cluster.kubeconfig_path.read_bytes())
        info = cluster.describe()
        info.update(status="running", supervisor_pid=os.getpid(), kubeconfig=str(kubeconfig))
        _write_state(name, **info)
        while not stop.wait(1):
            for proc in (cluster.etcd, cluster.apiserver):
                if proc is not None and not proc.running:
                    raise ClusterError(f"{proc.name} exited unexpectedly with code {proc.returncode}")
    except BaseException as exc:  # noqa: BLE001 - the state file tells `cluster up` what went wrong
        _write_state(name, status="failed", supervisor_pid=os.getpid(), error=str(exc))
        cluster.stop()
        return 1
    cluster.stop()
    _write_state(name, status="stopped", supervisor_pid=os.getpid())
    return 0


def up(name: str, timeout: float = 120) -> dict[str, Any]:
    """Start the named cluster in the background and return its state once it serves."""
    state = read_state(name)
    if state and state.get("status") == "running" and pid_alive(int(state["supervisor_pid"])):
        return state
    ensure_binaries(build=True)
    directory = state_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "state.json").unlink(missing_ok=True)
    log = open(directory / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(  # nosec B603 # argv of our own, no shell
        [sys.executable, "-m", "pet_harness.cli", "cluster", "serve", "--name", name],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
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


def down(name: str, timeout: float = 60) -> bool:
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
    for key in ("apiserver_pid", "etcd_pid"):
        child = state.get(key)
        if child and pid_alive(int(child)) and _is_ours(int(child), workdir):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(child), signal.SIGKILL)
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
    return state

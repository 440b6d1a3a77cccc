"""cluster_daemon.py state files and the ``pet-harness`` command line."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pet_harness import binaries, cli, cluster_daemon, processes, versions
from pet_harness.clusters.base import ClusterError
from pet_harness.waiting import wait_for


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _write_state(name: str, **state: Any) -> Path:
    cluster_daemon._write_state(name, **state)
    return cluster_daemon.state_dir(name) / "state.json"


# --- cluster_daemon state ---------------------------------------------------------------


def test_state_dir_is_under_the_cache(clean_env: Path) -> None:
    assert cluster_daemon.state_dir("dev") == clean_env / "clusters" / "dev"


def test_state_round_trip(clean_env: Path) -> None:
    path = _write_state("dev", status="running", supervisor_pid=123, server="https://127.0.0.1:1")
    assert path == clean_env / "clusters" / "dev" / "state.json"
    assert json.loads(path.read_text()) == {"status": "running", "supervisor_pid": 123, "server": "https://127.0.0.1:1"}
    assert not (path.parent / "state.json.tmp").exists(), "the state is replaced atomically"
    assert cluster_daemon.read_state("dev") == {"status": "running", "supervisor_pid": 123,
                                                "server": "https://127.0.0.1:1"}


def test_read_state_of_an_absent_cluster() -> None:
    assert cluster_daemon.read_state("nope") is None


@pytest.mark.parametrize("content", ["{not json", "", '{"status": "runn'])
def test_read_state_of_a_corrupt_file(content: str) -> None:
    directory = cluster_daemon.state_dir("broken")
    directory.mkdir(parents=True)
    (directory / "state.json").write_text(content)
    assert cluster_daemon.read_state("broken") is None


def test_status_of_an_absent_cluster() -> None:
    assert cluster_daemon.status("nope") == {"name": "nope", "status": "absent"}


def test_status_of_a_running_cluster() -> None:
    _write_state("dev", status="running", supervisor_pid=os.getpid(), kubeconfig="/k")
    assert cluster_daemon.status("dev") == {"status": "running", "supervisor_pid": os.getpid(), "kubeconfig": "/k",
                                            "name": "dev"}


def test_status_of_a_running_cluster_whose_supervisor_is_dead() -> None:
    _write_state("dev", status="running", supervisor_pid=_dead_pid())
    state = cluster_daemon.status("dev")
    assert state["status"].startswith("dead")
    assert "pet-harness cluster down" in state["status"]
    assert state["name"] == "dev"


def test_status_of_a_failed_cluster_is_reported_as_is() -> None:
    _write_state("dev", status="failed", supervisor_pid=_dead_pid(), error="etcd exited")
    state = cluster_daemon.status("dev")
    assert state["status"] == "failed"
    assert state["error"] == "etcd exited"


def test_down_of_an_absent_cluster() -> None:
    assert cluster_daemon.down("nope") is False


def test_down_of_a_dead_cluster_cleans_the_state() -> None:
    _write_state("dev", status="running", supervisor_pid=_dead_pid(), etcd_pid=_dead_pid(), apiserver_pid=None)
    assert cluster_daemon.down("dev") is False
    assert not cluster_daemon.state_dir("dev").exists()
    assert cluster_daemon.status("dev")["status"] == "absent"


def test_down_stops_a_live_supervisor() -> None:
    # argv[0] "cluster serve" makes it look like the supervisor `cluster up` starts
    supervisor = subprocess.Popen(["bash", "-c", 'exec -a "cluster serve" sleep 30'], start_new_session=True)
    try:
        wait_for(lambda: cluster_daemon._is_ours(supervisor.pid, "cluster serve"), bool, 10, "the exec")
        _write_state("dev", status="running", supervisor_pid=supervisor.pid)
        assert cluster_daemon.down("dev", timeout=10) is True
        assert not processes.pid_alive(supervisor.pid)  # down() reaps its own children too
        assert not cluster_daemon.state_dir("dev").exists()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


def test_down_never_signals_a_reused_pid() -> None:
    """A stale state file whose pid now belongs to another program must not get it killed."""
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        _write_state("dev", status="running", supervisor_pid=stranger.pid, etcd_pid=stranger.pid,
                     apiserver_pid=stranger.pid, workdir="/tmp/pet-cluster-gone")
        assert cluster_daemon.down("dev", timeout=5) is False
        assert stranger.poll() is None
        assert not cluster_daemon.state_dir("dev").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_up_returns_a_running_cluster_without_starting_another(monkeypatch: pytest.MonkeyPatch) -> None:
    _write_state("dev", status="running", supervisor_pid=os.getpid(), kubeconfig="/k", server="https://x")

    def no_build(build: bool = True) -> None:
        raise AssertionError("a running cluster must be reused")

    monkeypatch.setattr(cluster_daemon, "ensure_binaries", no_build)
    assert cluster_daemon.up("dev")["kubeconfig"] == "/k"


def test_up_without_binaries_fails_before_starting_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_binaries(build: bool = True) -> None:
        raise binaries.BinaryError("the Go toolchain is not on PATH")

    def no_popen(*args: object, **kwargs: object) -> None:
        raise AssertionError("no supervisor may start without binaries")

    monkeypatch.setattr(cluster_daemon, "ensure_binaries", no_binaries)
    monkeypatch.setattr(cluster_daemon.subprocess, "Popen", no_popen)
    assert cli.main(["cluster", "up", "--name", "dev"]) == 1


# --- the parser -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "func", "name"),
    [
        (["binaries", "where"], cli._cmd_binaries_where, None),
        (["binaries", "build"], cli._cmd_binaries_build, None),
        (["cluster", "up"], cli._cmd_cluster_up, "default"),
        (["cluster", "down", "--name", "x"], cli._cmd_cluster_down, "x"),
        (["cluster", "status"], cli._cmd_cluster_status, "default"),
        (["cluster", "kubeconfig", "--name", "y"], cli._cmd_cluster_kubeconfig, "y"),
        (["cluster", "serve", "--name", "z"], cli._cmd_cluster_serve, "z"),
    ],
)
def test_parser_dispatch(argv: list[str], func: object, name: str | None) -> None:
    args = cli.build_parser().parse_args(argv)
    assert args.func is func
    assert getattr(args, "name", None) == name


def test_build_force_flag() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["binaries", "build", "--force"]).force is True
    assert parser.parse_args(["binaries", "build"]).force is False


@pytest.mark.parametrize("argv", [[], ["binaries"], ["cluster"], ["cluster", "explode"], ["nonsense"]])
def test_parser_rejects_incomplete_commands(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "usage: pet-harness" in capsys.readouterr().err


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("binaries build", "binaries where", "cluster up", "cluster down", "cluster kubeconfig"):
        assert command in out


def test_serve_is_hidden_from_help_but_still_parses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["cluster", "--help"])
    out = capsys.readouterr().out
    assert "    kubeconfig " in out
    assert "==SUPPRESS==" not in out
    assert not [line for line in out.splitlines() if line.strip().startswith("serve")]
    assert "serve" not in out
    assert cli.build_parser().parse_args(["cluster", "serve"]).func is cli._cmd_cluster_serve


# --- commands ---------------------------------------------------------------------------


def test_binaries_where_with_nothing_cached(capsys: pytest.CaptureFixture[str], clean_env: Path) -> None:
    assert cli.main(["binaries", "where"]) == 1
    out = capsys.readouterr().out
    assert f"pinned: Kubernetes {versions.KUBERNETES_VERSION}, etcd {versions.ETCD_VERSION}" in out
    assert f"cache:  {clean_env}" in out
    assert "not built yet (run `pet-harness binaries build`)" in out


def test_binaries_where_with_binaries_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, var, text in (("kube-apiserver", "TEST_ASSET_KUBE_APISERVER", "Kubernetes v1.34.4"),
                            ("etcd", "TEST_ASSET_ETCD", "etcd Version: 3.6.16")):
        path = tmp_path / name
        path.write_text(f"#!/bin/sh\necho '{text}'\n")
        path.chmod(0o755)
        monkeypatch.setenv(var, str(path))
    assert cli.main(["binaries", "where"]) == 0
    out = capsys.readouterr().out
    assert "source: env" in out
    assert f"kube-apiserver: {tmp_path / 'kube-apiserver'} (Kubernetes v1.34.4)" in out
    assert f"etcd:           {tmp_path / 'etcd'} (etcd Version: 3.6.16)" in out
    assert "kube-controller-manager: not built yet (optional" in out


def test_binaries_build_builds_the_controller_manager_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """CI's `pet-harness binaries build` must leave every binary the e2e suite may start."""
    for name, var in (("kube-apiserver", "TEST_ASSET_KUBE_APISERVER"), ("etcd", "TEST_ASSET_ETCD")):
        path = tmp_path / name
        path.write_text("#!/bin/sh\necho 'v'\n")
        path.chmod(0o755)
        monkeypatch.setenv(var, str(path))
    built: list[bool] = []

    def fake_build(command: str, progress: object = None) -> Path:
        built.append(command == "kube-controller-manager")
        path = binaries.controller_manager_cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\necho 'Kubernetes v1.34.4'\n")
        path.chmod(0o755)
        return path

    monkeypatch.setattr(binaries, "build_kubernetes_command", fake_build)
    assert cli.main(["binaries", "build"]) == 0
    assert built == [True]
    out = capsys.readouterr().out
    assert f"kube-controller-manager: {binaries.controller_manager_cache_path()} (Kubernetes v1.34.4)" in out
    assert cli.main(["binaries", "where"]) == 0
    assert "kube-controller-manager: " in capsys.readouterr().out


def test_binary_errors_become_exit_code_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "etcd"
    path.write_text("not executable")
    monkeypatch.setenv("TEST_ASSET_ETCD", str(path))
    assert cli.main(["binaries", "where"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pet-harness: error: TEST_ASSET_ETCD points at ")
    assert "not executable" in err


def test_binaries_build_without_go(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli.main(["binaries", "build"]) == 1
    assert "Go toolchain is not on PATH" in capsys.readouterr().err


def test_cluster_kubeconfig_when_absent(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cluster", "kubeconfig"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "cluster 'default' is not running (status: absent)" in captured.err
    assert "pet-harness cluster up" in captured.err


def test_cluster_kubeconfig_when_running(capsys: pytest.CaptureFixture[str]) -> None:
    _write_state("dev", status="running", supervisor_pid=os.getpid(), kubeconfig="/path/to/kubeconfig")
    assert cli.main(["cluster", "kubeconfig", "--name", "dev"]) == 0
    assert capsys.readouterr().out == "/path/to/kubeconfig\n"


def test_cluster_kubeconfig_when_the_supervisor_died(capsys: pytest.CaptureFixture[str]) -> None:
    _write_state("dev", status="running", supervisor_pid=_dead_pid(), kubeconfig="/k")
    assert cli.main(["cluster", "kubeconfig", "--name", "dev"]) == 1
    assert "status: dead" in capsys.readouterr().err


def test_cluster_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cluster", "status", "--name", "dev"]) == 1
    assert json.loads(capsys.readouterr().out) == {"name": "dev", "status": "absent"}
    _write_state("dev", status="running", supervisor_pid=os.getpid())
    assert cli.main(["cluster", "status", "--name", "dev"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "running"


def test_cluster_down_when_absent(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cluster", "down"]) == 0
    assert capsys.readouterr().out == "cluster 'default' was not running\n"


def test_cluster_up_prints_the_kubeconfig_path(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"status": "running", "server": "https://127.0.0.1:1", "supervisor_pid": 42, "kubeconfig": "/k"}
    asked: list[tuple[str, bool, list[str]]] = []

    def up(name: str, node: bool = False, serve_namespaces: Sequence[str] = (), progress: Any = None) -> dict[str, Any]:
        asked.append((name, node, list(serve_namespaces)))
        return state

    monkeypatch.setattr(cluster_daemon, "up", up)
    assert cli.main(["cluster", "up", "--name", "dev"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "/k\n"
    assert "export KUBECONFIG=/k" in captured.err
    assert "pet-harness cluster down --name dev" in captured.err
    assert cli.main(["cluster", "up", "--name", "n", "--node"]) == 0
    assert cli.main(["cluster", "up", "--name", "n", "--node", "--serve", "a", "--serve", "b", "--serve", "a"]) == 0
    assert cli.main(["cluster", "up", "--name", "n", "--node", "--no-operator"]) == 0
    assert asked == [("dev", False, []), ("n", True, ["pets"]), ("n", True, ["a", "b"]), ("n", True, [])]


def test_cluster_up_says_where_the_operator_runs(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"status": "running", "server": "https://10.0.0.1:1", "supervisor_pid": 42, "kubeconfig": "/k",
             "operator": {"namespace": "pet-system", "image": "pet-operator:abc", "serves": ["pets"]}}
    monkeypatch.setattr(cluster_daemon, "up", lambda *a, **k: state)
    assert cli.main(["cluster", "up", "--node"]) == 0
    assert "the operator runs as pods in pet-system (pet-operator:abc), serving pets" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--serve", "pets"], "--serve and --no-operator need --node"),
    (["--no-operator"], "--serve and --no-operator need --node"),
    (["--node", "--no-operator", "--serve", "x"], "contradict each other"),
    (["--node", "--serve", "Pets_1"], "--serve 'Pets_1' is not a namespace name"),
    (["--node", "--serve=-x"], "--serve '-x' is not a namespace name"),
])
def test_cluster_up_refuses_bad_operator_options_before_starting_anything(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_daemon, "up", lambda *a, **k: pytest.fail("nothing may start"))
    with pytest.raises(SystemExit) as info:
        cli.main(["cluster", "up", *argv])
    assert message in str(info.value)


def test_up_relays_the_supervisors_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "supervisor.log"
    log.write_bytes(b"one\ntwo\npart")
    told: list[str] = []
    offset = cluster_daemon._tell_new_lines(log, 0, told.append)
    assert told == ["one", "two"] and offset == 8
    with open(log, "ab") as handle:
        handle.write(b"ial\n")
    offset = cluster_daemon._tell_new_lines(log, offset, told.append)
    assert told == ["one", "two", "partial"] and offset == log.stat().st_size
    assert cluster_daemon._tell_new_lines(tmp_path / "absent.log", 3, told.append) == 3


def test_up_refuses_an_operator_without_a_node(clean_env: Path) -> None:
    with pytest.raises(ClusterError, match=r"serving pets deploys the operator as pods, which needs a node"):
        cluster_daemon.up("dev", serve_namespaces=["pets"])


def test_keyboard_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(name: str) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(cluster_daemon, "status", interrupted)
    assert cli.main(["cluster", "status"]) == 130


def test_binaries_build_node_builds_the_node_commands_and_names_missing_packages(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, var in (("kube-apiserver", "TEST_ASSET_KUBE_APISERVER"), ("etcd", "TEST_ASSET_ETCD")):
        path = tmp_path / name
        path.write_text("#!/bin/sh\necho 'v'\n")
        path.chmod(0o755)
        monkeypatch.setenv(var, str(path))
    built: list[str] = []

    def fake_build(command: str, progress: object = None) -> Path:
        built.append(command)
        path = binaries.kubernetes_command_cache_path(command)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\necho 'Kubernetes v1.34.4'\n")
        path.chmod(0o755)
        return path

    monkeypatch.setattr(binaries, "build_kubernetes_command", fake_build)
    from pet_harness.clusters import node_packages

    monkeypatch.setattr(node_packages, "missing_packages", lambda: ["tini"])
    assert cli.main(["binaries", "build"]) == 0
    assert built == ["kube-controller-manager"], "the default build stays as cheap as before"
    capsys.readouterr()
    assert cli.main(["binaries", "build", "--node"]) == 0
    assert built == ["kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"]
    out = capsys.readouterr().out
    assert f"kubelet: {binaries.kubernetes_command_cache_path('kubelet')} (Kubernetes v1.34.4)" in out
    assert "apt-get install tini" in out


def test_status_shows_each_component_of_a_node_cluster_and_whether_it_runs(clean_env: Path) -> None:
    _write_state("node", status="running", supervisor_pid=os.getpid(), backend="node",
           components={"kubelet": os.getpid(), "containerd": 0, "kube-proxy": None})
    state = cluster_daemon.status("node")
    assert state["components"] == {
        "kubelet": {"pid": os.getpid(), "running": True},
        "containerd": {"pid": 0, "running": False},
        "kube-proxy": {"pid": None, "running": False},
    }


def test_up_refuses_to_switch_a_running_cluster_between_node_and_no_node(clean_env: Path) -> None:
    _write_state("dev", status="running", supervisor_pid=os.getpid(), backend="local")
    with pytest.raises(ClusterError, match=r"cluster 'dev' is running without a node: .*cluster down --name dev"):
        cluster_daemon.up("dev", node=True)
    assert cluster_daemon.up("dev")["backend"] == "local", "the running one is returned as it is"

"""Coverage of the processes a measured test starts (pet_harness.subprocess_coverage): the variables
handed down, and a real child under coverage's start-up hook writing its data when it exits
normally, on os._exit, on a SIGTERM it handles as the harness does, and not at all on a SIGTERM it
leaves at its default or on SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from pet_harness import subprocess_coverage

coverage = pytest.importorskip("coverage")


def _cov(config_file: str | None, data_file: str = ".coverage", parallel: bool = True) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(config_file=config_file, data_file=data_file, parallel=parallel))


def test_children_get_the_config_file_and_an_absolute_data_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = subprocess_coverage.child_environment(_cov("pyproject.toml", "reports/.coverage"))
    assert env == {"COVERAGE_PROCESS_START": str(tmp_path / "pyproject.toml"),
                   "COVERAGE_FILE": str(tmp_path / "reports" / ".coverage")}


@pytest.mark.parametrize("cov", [None, _cov(None), _cov("pyproject.toml", parallel=False)],
                         ids=["not measured", "no config file", "not parallel"])
def test_nothing_is_handed_down_when_a_child_could_not_measure_safely(cov: SimpleNamespace | None) -> None:
    assert subprocess_coverage.child_environment(cov) == {}


CHILD = textwrap.dedent("""
    import os, signal, sys, time
    import target
    from pet_harness.processes import install_signal_handlers
    target.work()
    mode = sys.argv[1]
    if mode == "sigterm_handled":
        install_signal_handlers()
    if mode == "exit":
        sys.exit(0)
    if mode == "os_exit":
        os._exit(3)
    print("ready", flush=True)
    time.sleep(60)
""")
TARGET = "def work():\n    total = 0\n    for i in range(3):\n        total += i\n    return total\n"


def _measured_child(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    (tmp_path / "target.py").write_text(TARGET)
    (tmp_path / "child.py").write_text(CHILD)
    config = tmp_path / "coverage.toml"
    config.write_text(f'[tool.coverage.run]\nsource = ["{tmp_path}"]\nparallel = true\npatch = ["_exit"]\n')
    data = tmp_path / "data" / ".coverage"
    env = {**os.environ, "PYTHONPATH": str(tmp_path),
           **subprocess_coverage.child_environment(_cov(str(config), str(data)))}
    env.pop("COVERAGE_PROCESS_CONFIG", None)
    child = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), mode], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, text=True)
    return child, data


def _measured_lines(data: Path, tmp_path: Path) -> set[int]:
    files = sorted(data.parent.glob(".coverage.*"))
    if not files:
        return set()
    combined = coverage.CoverageData(basename=str(tmp_path / "combined"))
    for file in files:
        part = coverage.CoverageData(basename=str(file))
        part.read()
        combined.update(part)
    return set(combined.lines(str(tmp_path / "target.py")) or [])


def _end(child: subprocess.Popen[str], sig: signal.Signals | None) -> None:
    try:
        if sig is not None:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            child.send_signal(sig)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize(("mode", "sig"), [("exit", None), ("os_exit", None), ("sigterm_handled", signal.SIGTERM)])
def test_a_child_writes_its_data_when_it_ends(tmp_path: Path, mode: str, sig: signal.Signals | None) -> None:
    child, data = _measured_child(tmp_path, mode)
    _end(child, sig)
    assert _measured_lines(data, tmp_path) >= {2, 3, 4, 5}, f"{mode}: the child's lines are not in its data"


@pytest.mark.parametrize(("mode", "sig"), [("sigterm_default", signal.SIGTERM), ("sigkill", signal.SIGKILL)])
def test_a_child_killed_by_a_signal_writes_nothing(tmp_path: Path, mode: str, sig: signal.Signals) -> None:
    child, data = _measured_child(tmp_path, mode)
    _end(child, sig)
    assert child.returncode == -sig
    assert _measured_lines(data, tmp_path) == set()

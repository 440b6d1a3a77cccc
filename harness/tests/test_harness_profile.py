"""OperatorProfile and OperatorProcess: the ports the harness gives an operator, metrics included."""

from __future__ import annotations

from pathlib import Path

import pytest

from pet_harness.operator_process import OperatorProcess
from pet_harness.profile import OperatorProfile

WITH_METRICS = OperatorProfile(name="op", command=("run", "--health", "{health_port}", "--metrics", "{metrics_port}"))
WITHOUT = OperatorProfile(name="plain", command=("run", "--health", "{health_port}"))


def test_a_profile_with_a_metrics_placeholder_gets_the_port_in_its_argv() -> None:
    assert WITH_METRICS.serves_metrics
    argv = WITH_METRICS.argv(health_port=8081, kubeconfig=Path("k"), namespaces=["a"], metrics_port=9191)
    assert argv == ["run", "--health", "8081", "--metrics", "9191", "--namespace", "a"]


def test_a_metrics_placeholder_without_a_port_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"'op' takes a \{metrics_port\}"):
        WITH_METRICS.argv(health_port=8081, kubeconfig=Path("k"))


def test_a_profile_without_metrics_needs_no_port() -> None:
    assert not WITHOUT.serves_metrics
    assert WITHOUT.argv(health_port=8081, kubeconfig=Path("k")) == ["run", "--health", "8081"]


def test_the_process_has_no_metrics_url_before_it_starts_or_without_metrics(tmp_path: Path) -> None:
    op = OperatorProcess(WITHOUT, tmp_path / "k", tmp_path / "log")
    assert op.metrics_port == 0
    assert op.metrics_url is None
    with pytest.raises(RuntimeError, match="serves no metrics"):
        op.metrics_text()


def test_each_start_picks_a_free_metrics_port_apart_from_the_others(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []

    class Fake:
        def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
            started.append(argv)
            self.running = True

        def start(self) -> Fake:
            return self

    monkeypatch.setattr("pet_harness.operator_process.ManagedProcess", Fake)
    op = OperatorProcess(WITH_METRICS, tmp_path / "k", tmp_path / "log", webhook_port=45000)
    op.start(wait_ready=False)
    first = op.metrics_port
    assert first not in (0, op.health_port, 45000)
    assert op.metrics_url == f"http://127.0.0.1:{first}/metrics"
    assert started[0][-1] == str(first)

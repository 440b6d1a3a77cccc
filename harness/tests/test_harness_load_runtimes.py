"""load.runtimes: what each operator's own environment holds, where it is cached, and the fallback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pet_harness.load import runtimes


def test_the_operator_runtime_holds_the_projects_dependencies_and_no_kubernetes_client() -> None:
    requirements = runtimes.operator_requirements()
    assert any(r.startswith("kopf") for r in requirements)
    assert not any(r.startswith(("kubernetes", "kubernetes-asyncio")) for r in requirements)


def test_the_naive_runtime_holds_kopf_and_the_kubernetes_client() -> None:
    names = [r.split(">")[0].split("<")[0].split("=")[0] for r in runtimes.naive_requirements()]
    assert names == ["kopf", "kubernetes"]


def test_a_runtime_is_cached_by_its_requirements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PET_HARNESS_CACHE", str(tmp_path))
    assert runtimes._folder("operator", ["a"]) != runtimes._folder("operator", ["a", "b"])
    assert runtimes._folder("operator", ["a", "b"]) == runtimes._folder("operator", ["b", "a"])
    assert runtimes._folder("operator", ["a"]).parent == tmp_path / "runtimes"


def test_a_made_runtime_is_reused_without_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PET_HARNESS_CACHE", str(tmp_path))
    folder = runtimes._folder("operator", ["x"])
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").write_text("")
    (folder / ".complete").write_text("x\n")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run again"))
    assert runtimes.ensure("operator", ["x"], progress=lambda _: None) == folder / "bin" / "python"


def test_when_no_runtime_can_be_made_the_harness_interpreter_is_used_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PET_HARNESS_CACHE", str(tmp_path))

    def refuse(*args: object, **kwargs: object) -> None:
        raise subprocess.CalledProcessError(1, "pip", stderr="no network")

    monkeypatch.setattr(runtimes.subprocess, "run", refuse)
    monkeypatch.setattr(runtimes.venv.EnvBuilder, "create", lambda self, folder: Path(folder).mkdir(parents=True))
    said: list[str] = []
    runtime = runtimes.operator_runtime(progress=said.append)
    assert runtime.python == sys.executable
    assert "harness's interpreter" in runtime.description
    assert any("no network" in line for line in said)
    assert not any(p.name.startswith("operator-") for p in (tmp_path / "runtimes").glob("*"))

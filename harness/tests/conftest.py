"""Shared fixtures for the harness unit tests.

Every test runs with a private cache folder and a private ``tempfile`` folder, without any of
the environment variables that steer the harness, and must not leave a managed process
running: the ``_no_leaked_processes`` check fails the test that leaked one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pet_harness import processes

HARNESS_ENV = (
    "TEST_ASSET_KUBE_APISERVER",
    "TEST_ASSET_ETCD",
    "TEST_ASSET_KUBE_CONTROLLER_MANAGER",
    "TEST_ASSET_KUBE_SCHEDULER",
    "TEST_ASSET_KUBELET",
    "TEST_ASSET_KUBE_PROXY",
    "KUBEBUILDER_ASSETS",
    "PET_HARNESS_CACHE",
    "XDG_CACHE_HOME",
    "PET_HARNESS_KEEP",
    "PET_CLUSTER",
    "PET_KUBECONFIG",
    "KUBECONFIG",
    "PET_KUBE_CONTEXT",
    "PET_K3S_IMAGE",
    "GOPROXY",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No harness variable leaks in from the caller; the cache is an empty private folder."""
    for var in HARNESS_ENV:
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("PET_HARNESS_CACHE", str(cache))
    return cache


@pytest.fixture(autouse=True)
def private_tmpdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point ``tempfile.gettempdir()`` at an empty folder so leftovers can be counted exactly.

    Autouse, so that nothing the code under test creates with ``tempfile`` can land in the
    real temp folder, even when a test fails half-way.
    """
    path = tmp_path / "systmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@pytest.fixture(autouse=True)
def _no_leaked_processes() -> Iterator[None]:
    before = set(processes.live_processes())
    yield
    leaked = [p for p in processes.live_processes() if p not in before]
    for proc in leaked:
        proc.kill()
    assert not leaked, f"test left managed processes running: {leaked}"

"""The greeter's tests tell pet-harness about their operator; everything else comes from the
harness's pytest plugin (installed with it, no ``pytest_plugins`` line needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pet_harness import OperatorProfile

HERE = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def operator_profile() -> OperatorProfile:
    return OperatorProfile(
        name="greeter",
        command=("{python}", "-m", "kopf", "run", str(HERE / "greeter.py"), "--standalone",
                 "--liveness", "http://127.0.0.1:{health_port}/healthz"),
        crds=(HERE / "crd.yaml",),
        namespace_flag="--namespace",
        all_namespaces_flag="--all-namespaces",
        ready_path="/healthz",
        bad_log_markers=("inconsistencies", "Traceback"),
    )

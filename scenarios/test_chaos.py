"""Chaos Toolkit experiments (chaos/experiments), each run by the real ``chaos run`` in a fresh
embedded cluster of its own: two leader-electing replicas, pets created and updated meanwhile.

The same code path as ``pet-harness chaos``, kept short for CI: one round of each method
and at most 30 pets (``pet-harness chaos`` defaults to 3 rounds, 100 pets). Journals and
summaries go to ``<--pet-report-dir>/chaos/`` (default ``reports/chaos/``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_chaos_passed

from pet_harness import chaos_runner

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.skipif(importlib.util.find_spec("chaostoolkit") is None, reason="chaostoolkit is not installed"),
]

CI_ROUNDS = 1  # short in CI; `pet-harness chaos --rounds N` runs longer
CI_MAX_PETS = 30
_RUN_SUMMARIES: dict[str, dict[str, Any]] = {}


@pytest.mark.parametrize("experiment", chaos_runner.experiment_names())
def test_experiment_keeps_the_steady_state(experiment: str, request: pytest.FixtureRequest) -> None:
    from pet_harness import binaries

    binaries.ensure_binaries(build=True)
    results = Path(str(request.config.getoption("--pet-report-dir")))
    if not results.is_absolute():
        results = Path(str(request.config.rootpath)) / results
    results = results / "chaos"
    summary = chaos_runner.run_experiment(experiment, results, rounds=CI_ROUNDS, max_pets=CI_MAX_PETS)
    # this run's table so far (summary.md, as `pet-harness chaos` writes it), rewritten after each
    # experiment; summaries of earlier runs left in the folder are not this run's
    _RUN_SUMMARIES[experiment] = summary
    (results / "summary.md").write_text(chaos_runner.summary_markdown(list(_RUN_SUMMARIES.values())))
    assert_chaos_passed(summary)

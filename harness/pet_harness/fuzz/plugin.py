"""pytest options and Hypothesis profiles of the fuzz scenarios (``pet-harness fuzz`` sets them).

Profiles: ``ci`` is derandomized (the same examples on every run, so CI never flakes) and small;
``long`` is random (or seeded with ``--fuzz-seed``), keeps Hypothesis's database under
``.hypothesis/`` so that a failure found once is tried first next time, and is large.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from pet_harness.fuzz.tally import Tally

PROFILES = {
    # examples per fuzz test; state-machine runs and steps for convergence
    "ci": {"examples": 500, "machines": 3, "steps": 15, "webhook": 200},
    "long": {"examples": 10_000, "machines": 10, "steps": 25, "webhook": 3_000},
}
_TALLIES = pytest.StashKey[dict[str, Tally]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pet-harness fuzz")
    group.addoption("--fuzz-profile", default=os.environ.get("PET_FUZZ_PROFILE", "ci"), choices=sorted(PROFILES),
                    help="ci: small and derandomized (default); long: the full run")
    group.addoption("--fuzz-examples", type=int, default=None, help="examples per admission/webhook test")
    group.addoption("--fuzz-steps", type=int, default=None, help="steps per state-machine run")
    group.addoption("--fuzz-machines", type=int, default=None, help="state-machine runs")
    group.addoption("--fuzz-seed", type=int, default=None, help="seed (long profile; ci is derandomized)")
    group.addoption("--fuzz-results", default=None,
                    help="folder for each part's tally (default: <report dir>/fuzz)")
    group.addoption("--fuzz-namespace", default=None,
                    help="admission part only: fuzz this namespace, served by the cluster's own operator "
                         "(with --pet-cluster kubeconfig); the webhook and convergence parts are skipped")


@pytest.fixture
def needs_own_operator(request: pytest.FixtureRequest) -> None:
    if request.config.getoption("--fuzz-namespace"):
        pytest.skip("starts, kills and reaches its own operator: not with --fuzz-namespace (a cluster's operator)")


class FuzzConfig:
    def __init__(self, config: pytest.Config) -> None:
        self.profile = str(config.getoption("--fuzz-profile"))
        sizes = PROFILES[self.profile]
        self.examples = int(config.getoption("--fuzz-examples") or sizes["examples"])
        self.webhook_examples = int(config.getoption("--fuzz-examples") or sizes["webhook"])
        self.steps = int(config.getoption("--fuzz-steps") or sizes["steps"])
        self.machines = int(config.getoption("--fuzz-machines") or sizes["machines"])
        self.seed = config.getoption("--fuzz-seed")
        folder = config.getoption("--fuzz-results")
        self.results = Path(folder) if folder else Path(str(config.rootpath)) / "reports" / "fuzz"

    def settings(self, examples: int, **extra: Any) -> settings:
        common: dict[str, Any] = {
            "max_examples": examples, "deadline": None, "print_blob": True,
            "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                      HealthCheck.large_base_example],
            "phases": [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        }
        if self.profile == "ci":
            common.update(derandomize=True, database=None)
        else:
            common.update(database=DirectoryBasedExampleDatabase(".hypothesis/examples"))
        common.update(extra)
        return settings(**common)


@pytest.fixture(scope="session")
def fuzz_config(request: pytest.FixtureRequest) -> FuzzConfig:
    return FuzzConfig(request.config)


@pytest.fixture
def fuzz_tally(request: pytest.FixtureRequest, fuzz_config: FuzzConfig) -> Any:
    """A tally for this test, written to ``<results>/<test name>.json`` however the test ends."""
    tally = Tally()
    yield tally
    fuzz_config.results.mkdir(parents=True, exist_ok=True)
    name = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
    (fuzz_config.results / f"{name}.json").write_text(json.dumps(tally.as_dict(), indent=2) + "\n")

"""The shipped alerts, checked and unit-tested by promtool (Debian's ``prometheus`` package).

The rule file promtool reads is made from ``deploy/monitoring/prometheusrule.yaml`` (the one
source), next to copies of the ``<Alert>.test.yaml`` files: each alert fires on its failure
series after exactly its ``for`` window and stays silent on a healthy series.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from pet_harness import monitoring
from pet_harness.prometheus import promtool

HERE = Path(__file__).resolve().parent
MONITORING = HERE.parent
REPO = MONITORING.parents[1]
RULE = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
ALERTS = {rule["alert"]: rule for rule in monitoring.alerts(RULE)}
REQUIRED = {"PetOperatorDown", "PetOperatorNoLeader", "PetOperatorReconcileErrors",
            "PetOperatorHighReconcileErrorRate", "PetOperatorWebhookFailing", "PetOperatorWebhookSlow",
            "PetsStuckPending", "PetsStuckConflict"}


def _workdir(tmp_path: Path, rule: dict[str, Any]) -> Path:
    monitoring.rule_file(rule, tmp_path / "rules.yaml")
    for test in HERE.glob("*.test.yaml"):
        shutil.copy(test, tmp_path / test.name)
    return tmp_path


def test_the_required_alerts_exist_with_severity_annotations_and_a_runbook() -> None:
    assert set(ALERTS) >= REQUIRED
    for name, rule in ALERTS.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        assert rule["annotations"]["runbook_url"].endswith(f"/docs/runbooks/{name}.md"), name
        runbook = REPO / "docs" / "runbooks" / f"{name}.md"
        assert runbook.is_file(), f"{name} has no runbook at {runbook}"
        text = runbook.read_text()
        for section in ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation"):
            assert section in text, f"{runbook} lacks {section}"


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    path = monitoring.rule_file(RULE, tmp_path / "rules.yaml")
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in RULE['spec']['groups'])} rules found" in result.stdout


@pytest.mark.parametrize("alert", sorted(REQUIRED))
def test_each_alert_has_its_promtool_test_and_passes_it(tmp_path: Path, alert: str) -> None:
    test_file = HERE / f"{alert}.test.yaml"
    assert test_file.is_file(), f"no promtool test for {alert}"
    work = _workdir(tmp_path, RULE)
    result = promtool("test", "rules", test_file.name, cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr


def _minutes(window: str) -> int:
    match = re.fullmatch(r"(\d+)m", window)
    assert match, f"for window {window!r} is not in whole minutes"
    return int(match.group(1))


@pytest.mark.parametrize("alert", sorted(REQUIRED))
def test_the_promtool_test_fails_when_the_window_is_one_minute_shorter(tmp_path: Path, alert: str) -> None:
    """The tests pin each ``for`` window: one minute less and the alert fires too early."""
    shorter = monitoring.rule_file(
        RULE, tmp_path / "rules.yaml",
        for_window=lambda name, window: f"{_minutes(window) - 1}m" if name == alert else window)
    assert shorter.exists()
    for test in HERE.glob("*.test.yaml"):
        shutil.copy(test, tmp_path / test.name)
    result = promtool("test", "rules", f"{alert}.test.yaml", cwd=tmp_path)
    assert result.returncode != 0, f"the test of {alert} passes with a shorter window:\n{result.stdout}"

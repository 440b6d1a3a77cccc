"""One version: the package's (setuptools-scm), both CLIs' --version and the chart's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from pet_harness import pet_chart
from pet_operator.version import version


def _cli(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    command = [str(path)] if path.exists() else [shutil.which(name) or name]
    out = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_both_clis_print_the_package_version() -> None:
    installed = metadata.version("pet-operator")
    assert version() == installed
    assert _cli("pet-operator") == f"pet-operator {installed}"
    assert _cli("pet-harness") == f"pet-harness {installed}"


def test_the_chart_agrees_with_the_package_version() -> None:
    assert pet_chart.version_problems(version()) == []
    chart_version, app_version = pet_chart.chart_versions()
    assert chart_version == app_version


@pytest.mark.parametrize(("pep440", "semver"), [
    ("0.2.0", "0.2.0"),
    ("0.1.0.dev177+g2ed579abc", "0.1.0-dev.177+g2ed579abc"),
    ("0.1.0.post1.dev3+gabc.d20261206", "0.1.0-post.1.dev.3+gabc.d20261206"),
    ("1.0rc2", "1.0.0-rc.2"),
    ("2.1", "2.1.0"),
])
def test_semver_form(pep440: str, semver: str) -> None:
    assert pet_chart.semver(pep440) == semver


def _chart_at(tmp_path: Path, version: str, app_version: str | None = None) -> Path:
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "Chart.yaml").write_text(
        f"apiVersion: v2\nname: x\n# comment kept\nversion: {version}\nappVersion: \"{app_version or version}\"\n")
    return chart


@pytest.mark.parametrize(("package", "chart", "agree"), [
    ("0.2.0", "0.2.0", True),                        # a tagged release: exactly equal
    ("0.2.0", "0.3.0", False),                       # ... nothing else
    ("0.2.0.post1.dev4+gabc", "0.2.0", True),        # past the tag: the last release
    ("0.2.0.post1.dev4+gabc", "0.3.0", True),        # ... or the one being prepared
    ("0.2.0.post1.dev4+gabc", "0.1.9", False),       # never an older one
    ("0.1.0.dev12+gabc", "0.1.0", True),             # a clone without tags counts from the fallback
    ("0.2.0.post1.dev4+gabc", "0.2.0-post.1.dev.4+gabc", True),   # stamped for this very build
    ("0.2.0.post1.dev4+gabc", "0.2.0-post.1.dev.9+gdef", False),  # stamped for another one
])
def test_version_agreement_rule(tmp_path: Path, package: str, chart: str, agree: bool) -> None:
    problems = pet_chart.version_problems(package, _chart_at(tmp_path, chart))
    assert (problems == []) is agree, problems
    if not agree:
        assert chart in problems[0] and "pet-harness chart version --write" in problems[0]


def test_version_and_app_version_must_be_equal(tmp_path: Path) -> None:
    problems = pet_chart.version_problems("0.2.0", _chart_at(tmp_path, "0.2.0", "0.1.0"))
    assert problems and "'0.2.0' and appVersion '0.1.0' differ" in problems[0]


def test_write_version_stamps_both_and_keeps_comments(tmp_path: Path) -> None:
    chart = _chart_at(tmp_path, "0.1.0")
    pet_chart.write_version("0.4.1", chart)
    assert pet_chart.chart_versions(chart) == ("0.4.1", "0.4.1")
    assert "# comment kept" in (chart / "Chart.yaml").read_text()
    with pytest.raises(pet_chart.ChartError, match=r"'0\.4' is not SemVer 2"):
        pet_chart.write_version("0.4", chart)


@pytest.mark.parametrize(("app_version", "label", "said", "wrong"), [
    ("0.2.0", "0.2.0", "pet-operator 0.2.0", []),
    ("0.1.0-dev.7+gabc", "0.1.0.dev7+gabc", "pet-operator 0.1.0.dev7+gabc", []),
    ("0.1.0", "0.1.0.dev7+gabc", "pet-operator 0.1.0.dev7+gabc", ["appVersion '0.1.0'"]),    # not stamped for it
    ("0.2.0", "0.2.0", "pet-operator 0.1.0.dev0", ["says 'pet-operator 0.1.0.dev0'"]),      # built without VERSION
    ("0.3.0", "0.2.0", "pet-operator 0.1.0", ["appVersion '0.3.0'", "says 'pet-operator 0.1.0'"]),
    ("0.2.0", "two", "pet-operator two", ["'two' is not a PEP 440 version"]),
])
def test_a_release_agrees_with_its_image_and_cli(app_version: str, label: str, said: str, wrong: list[str]) -> None:
    """The check the node suite runs on each installed revision (scenarios/test_helm_lifecycle.py)."""
    problems = pet_chart.release_version_problems(app_version, label, said)
    assert len(problems) == len(wrong), problems
    for problem, words in zip(problems, wrong, strict=True):
        assert words in problem, problem

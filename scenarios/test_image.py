"""The operator's image itself, as BuildKit built it here (no cluster): what takes its space, its
SBOM checked against what the image's own tools say, and the arm64 image built through qemu-user
running ``pet-operator --version``.

Marker ``node`` (tox env ``node``: root for BuildKit and chroot): the size report and the SBOM,
written to reports/image/. Marker ``multiarch`` (tox env ``multiarch``, not in the default list;
docs/image.md): the arm64 image, several minutes the first time on this machine kind.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pet_harness import image_report, image_sbom
from pet_harness.clusters.node_base_image import foreign_arch_problem
from pet_harness.image_run import run_in_image
from pet_harness.kube import REPO_ROOT
from pet_harness.pet_image import operator_image, version_in_image
from pet_operator.version import version

REPORTS = REPO_ROOT / "reports" / "image"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BuildKit and chroot need root")

#: what the image's own interpreter says is installed in the virtualenv
LIST_DISTRIBUTIONS = ("import importlib.metadata as m, json; "
                      "print(json.dumps(sorted([d.metadata['Name'], d.version] for d in m.distributions())))")


@pytest.fixture(scope="module")
def image_tar() -> Path:
    return operator_image().tar


@pytest.mark.node
def test_the_size_report_names_the_layers_and_the_trimmed_parts_are_gone(image_tar: Path) -> None:
    report = image_report.write_report(image_tar, REPORTS)
    steps = [layer["step"] for layer in report["layers"]]
    assert steps[0] == "pet-harness: mmdebstrap", steps
    assert any(step.startswith("COPY /opt/venv /opt/venv") for step in steps), steps
    assert report["size"]["gzip"] < report["size"]["uncompressed"]
    (site,) = (data for path, data in report["site_packages"].items() if path.startswith("/opt/venv/"))
    dists = dict(site["distributions"])
    assert "kopf" in dists and "pet_operator" in dists
    # the trims of docs/image.md: no installer in the virtualenv, no perl (usrmerge) in the base
    assert not {"pip", "setuptools"} & set(dists), sorted(dists)
    debs = dict(report["debian_packages"]["packages"])
    assert not {"perl", "libperl5.36", "perl-modules-5.36", "usrmerge"} & set(debs)
    assert (REPORTS / "image-report.md").is_file()


@pytest.mark.node
def test_the_sbom_agrees_with_dpkg_and_python_inside_the_image(image_tar: Path) -> None:
    document = image_sbom.write_sbom(image_tar, REPORTS / "sbom.cdx.json", tool_version=version())
    components = document["components"]
    debs = {(c["name"], c["version"]) for c in components if c["purl"].startswith("pkg:deb/debian/")}
    pypi = {(c["name"], c["version"]) for c in components if c["purl"].startswith("pkg:pypi/")
            and c["evidence"]["occurrences"][0]["location"].startswith("/opt/venv/")}
    # dpkg's own answer, inside the image
    dpkg = run_in_image(image_tar, ["dpkg-query", "-W", "-f", "${db:Status-Status} ${Package} ${Version}\\n"],
                        entrypoint=False)
    assert dpkg.returncode == 0, dpkg.stderr
    installed = {tuple(line.split()[1:3]) for line in dpkg.stdout.splitlines() if line.startswith("installed ")}
    assert debs == installed
    assert any(name == "python3" for name, _ in debs)
    # the interpreter's own answer, in the virtualenv
    python = run_in_image(image_tar, ["/opt/venv/bin/python", "-c", LIST_DISTRIBUTIONS], entrypoint=False)
    assert python.returncode == 0, python.stderr
    assert pypi == {tuple(pair) for pair in json.loads(python.stdout)}
    assert ("pet-operator", version()) in pypi
    kopf = next(c for c in components if c["name"] == "kopf")
    assert kopf["purl"] == f"pkg:pypi/kopf@{kopf['version']}"
    # the kopf that pip installed: the wheel of the wheelhouse the build installed from
    from pet_harness.pet_image import wheelhouse

    (wheel,) = wheelhouse(REPO_ROOT).glob("kopf-*.whl")
    assert kopf["version"] == wheel.name.split("-")[1]


@pytest.mark.multiarch
def test_the_arm64_image_builds_here_and_says_the_packages_version() -> None:
    problem = foreign_arch_problem("arm64")
    if problem:
        pytest.skip(problem)
    started = time.monotonic()
    image = operator_image(arch="arm64")
    built = time.monotonic() - started
    said = version_in_image(image, "arm64")
    assert said == f"pet-operator {version()}"
    report = image_report.write_report(image.tar, REPORTS / "arm64")
    assert report["platform"] == "linux/arm64"
    assert any(p.endswith("aarch64-linux-gnu.so") for p, _ in report["largest_files"]), report["largest_files"]
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "arm64-build.json").write_text(json.dumps({
        "reference": image.reference, "seconds_here": round(built, 1), "build_seconds": round(image.seconds, 1),
        "from_cache": image.seconds == 0, "version": said}, indent=1) + "\n")


@pytest.mark.node
def test_the_sbom_is_valid_cyclonedx_1_5(image_tar: Path) -> None:
    """Against the specification's JSON schema (cyclonedx-python-lib's copy; the node env installs it)."""
    validation = pytest.importorskip("cyclonedx.validation.json",
                                     reason="pip install 'cyclonedx-python-lib[json-validation]'")
    from cyclonedx.schema import SchemaVersion

    document = image_sbom.write_sbom(image_tar, REPORTS / "sbom.cdx.json", tool_version=version())
    errors = validation.JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(document))
    assert errors is None, errors
    assert image_sbom.counts(document)["deb"] > 50

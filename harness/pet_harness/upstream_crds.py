"""CustomResourceDefinitions published inside Go modules, fetched from the Go module proxy.

Many projects ship their CRDs as YAML files in their Go module (the Prometheus Operator keeps
them under ``example/prometheus-operator-crd/``), so the module proxy that the harness already
uses for its binaries is also a pinned, checksummed source of CRDs: ``go mod download`` verifies
the module against the checksum database, and nothing else needs to be reachable.

The files are copied into the harness cache (``<cache>/crds/<module>@<version>/``) on first use;
later calls read the copy.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess  # nosec B404 # argv lists, never a shell
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pet_harness import versions
from pet_harness.binaries import BinaryError, _explain_go_failure, _go_env, cache_root, go_executable


@dataclasses.dataclass(frozen=True)
class ModuleCrds:
    """CRD files at ``paths`` inside Go module ``module`` at ``version``."""

    module: str
    version: str
    paths: tuple[str, ...]

    @property
    def cache_dir(self) -> Path:
        return cache_root() / "crds" / f"{self.module.replace('/', '+')}@v{self.version.lstrip('v')}"


#: ServiceMonitor and PrometheusRule (monitoring.coreos.com/v1) of the pinned Prometheus Operator
PROMETHEUS_OPERATOR = ModuleCrds(
    "github.com/prometheus-operator/prometheus-operator",
    versions.PROMETHEUS_OPERATOR_VERSION,
    (
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
    ),
)

#: Certificate, Issuer and ClusterIssuer (cert-manager.io/v1) of the pinned cert-manager; its module keeps
#: controller-gen's output under ``deploy/crds/`` (its Helm chart is built from them)
CERT_MANAGER = ModuleCrds(
    "github.com/cert-manager/cert-manager",
    versions.CERT_MANAGER_VERSION,
    (
        "deploy/crds/cert-manager.io_certificates.yaml",
        "deploy/crds/cert-manager.io_issuers.yaml",
        "deploy/crds/cert-manager.io_clusterissuers.yaml",
    ),
)


def _download(module: str, version: str) -> Path:
    """The module's extracted folder in the Go module cache (downloaded and verified if needed)."""
    ref = f"{module}@v{version.lstrip('v')}"
    with tempfile.TemporaryDirectory(prefix="pet-harness-gomod-") as scratch:  # outside any go.mod
        proc = subprocess.run(  # nosec B603 # argv of our own, no shell
            [go_executable(), "mod", "download", "-json", ref], cwd=scratch,
            env=_go_env(), capture_output=True, text=True, timeout=600)
    try:
        info = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or info.get("Error") or not info.get("Dir"):
        raise BinaryError(_explain_go_failure(f"go mod download {ref}", info.get("Error") or proc.stderr))
    return Path(info["Dir"])


def fetch(crds: ModuleCrds) -> list[Path]:
    """The cached copies of the CRD files, downloading the module the first time."""
    target = crds.cache_dir
    wanted = [target / Path(p).name for p in crds.paths]
    if all(path.is_file() for path in wanted):
        return wanted
    source = _download(crds.module, crds.version)
    target.mkdir(parents=True, exist_ok=True)
    for rel, dest in zip(crds.paths, wanted, strict=True):
        origin = source / rel
        if not origin.is_file():
            raise BinaryError(f"{crds.module}@v{crds.version} has no file {rel}: the pinned version does not "
                              "ship it (check the version in pet_harness/versions.py)")
        partial = dest.with_name(dest.name + ".partial")
        shutil.copyfile(origin, partial)  # the module cache is read-only; the copy is ours
        partial.replace(dest)
    return wanted


def documents(crds: ModuleCrds = PROMETHEUS_OPERATOR) -> list[dict[str, Any]]:
    """The CRD objects, ready for :func:`pet_harness.crds.install`."""
    out: list[dict[str, Any]] = []
    for path in fetch(crds):
        out += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def kinds(docs: Sequence[dict[str, Any]]) -> list[str]:
    """``plural.group`` of each CRD, for messages."""
    return [f"{d['spec']['names']['plural']}.{d['spec']['group']}" for d in docs]

"""Run ``helm`` (built from its Go module into the harness cache, :func:`binaries.ensure_helm`) on
a local chart: ``helm template`` split into its manifests (comments kept, each with the template it
came from), and ``helm lint``.

Every call gets its own empty Helm home (config, cache and data folders in a temporary directory),
so nothing of the user's Helm setup (repositories, plugins) changes a rendering, and nothing is
written outside that folder. Each call is bounded in time.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess  # nosec B404 # argv lists, never a shell
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pet_harness import binaries


class HelmError(RuntimeError):
    """helm refused (a schema violation, a template's ``fail``, a lint finding): its own words."""


@dataclasses.dataclass(frozen=True)
class Manifest:
    """One rendered document: ``source`` is its template inside the chart (``templates/x.yaml``)."""

    source: str
    text: str

    @property
    def body(self) -> dict[str, Any]:
        loaded = yaml.safe_load(self.text)
        return loaded if isinstance(loaded, dict) else {}


def run(args: Sequence[str], timeout: float = 120, build: bool = True) -> str:
    """``helm args...`` with a private Helm home; its stdout, or :class:`HelmError` with its stderr."""
    helm = binaries.ensure_helm(build=build)
    with tempfile.TemporaryDirectory(prefix="pet-harness-helm-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
        env.update(HELM_CONFIG_HOME=f"{home}/config", HELM_CACHE_HOME=f"{home}/cache",
                   HELM_DATA_HOME=f"{home}/data", KUBECONFIG=f"{home}/no-kubeconfig")
        proc = subprocess.run(  # nosec B603 # the cached helm, argv of our own, no shell
            [str(helm), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=home)
    if proc.returncode != 0:
        # helm's notes on following a symbolic link (walk.go) are not the error
        said = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("walk.go:")).strip()
        raise HelmError(f"helm {' '.join(args[:2])} failed: {said or proc.stdout.strip()}")
    return proc.stdout


def split(stream: str) -> list[Manifest]:
    """The documents of a ``helm template`` output, each with the template it came from."""
    out: list[Manifest] = []
    chunks: list[list[str]] = [[]]
    for line in stream.splitlines():
        if line.rstrip() == "---":
            chunks.append([])
        else:
            chunks[-1].append(line)
    for lines in chunks:
        if not lines or not any(line.strip() for line in lines):
            continue
        first = lines[0]
        if not first.startswith("# Source: "):
            raise HelmError(f"unexpected helm output, a document without '# Source:': {first!r}")
        source = first.removeprefix("# Source: ").split("/", 1)[1]
        text = "\n".join(lines[1:]).strip("\n") + "\n"
        out.append(Manifest(source, text))
    return out


def _values_args(values: Sequence[Mapping[str, Any]], folder: Path) -> list[str]:
    args: list[str] = []
    for i, overrides in enumerate(values):
        path = folder / f"values-{i}.yaml"
        path.write_text(yaml.safe_dump(dict(overrides)))
        args += ["--values", str(path)]
    return args


def template(
    chart: Path, release: str, namespace: str, values: Sequence[Mapping[str, Any]] = (),
    include_crds: bool = False, kube_version: str | None = None, build: bool = True,
) -> list[Manifest]:
    """``helm template`` of the local ``chart`` with ``values`` (each a values file, later ones win)."""
    with tempfile.TemporaryDirectory(prefix="pet-harness-values-") as folder:
        args = ["template", release, str(chart), "--namespace", namespace, *_values_args(values, Path(folder))]
        if include_crds:
            args.append("--include-crds")
        if kube_version:
            args += ["--kube-version", kube_version]
        return split(run(args, build=build))


def lint(chart: Path, values: Sequence[Mapping[str, Any]] = (), strict: bool = True, build: bool = True) -> str:
    """``helm lint`` (``--strict``: warnings fail too); its report."""
    with tempfile.TemporaryDirectory(prefix="pet-harness-values-") as folder:
        args = ["lint", str(chart), *_values_args(values, Path(folder))]
        if strict:
            args.append("--strict")
        return run(args, build=build)

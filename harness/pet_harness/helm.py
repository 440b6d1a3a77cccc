"""Run ``helm`` (built from its Go module into the harness cache, :func:`binaries.ensure_helm`) on
a local chart: ``helm template`` split into its manifests (comments kept, each with the template it
came from), ``helm lint`` and ``helm package``; and the release commands (install, upgrade,
rollback, history, uninstall) against one cluster through :class:`Releases`.

Every call gets its own empty Helm home (config, cache and data folders in a temporary directory),
so nothing of the user's Helm setup (repositories, plugins) changes a rendering, and nothing is
written outside that folder. Each call is bounded in time.
"""

from __future__ import annotations

import dataclasses
import json
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


def package(chart: Path, destination: Path, version: str, app_version: str, build: bool = True) -> Path:
    """``helm package`` of ``chart`` into ``destination`` with its ``version`` and ``appVersion`` set
    (SemVer 2, as Helm demands); the path of the archive."""
    said = run(["package", str(chart), "--destination", str(destination), "--version", version,
                "--app-version", app_version], build=build)
    # "Successfully packaged chart and saved it to: <path>"
    archive = Path(said.strip().splitlines()[-1].rsplit(": ", 1)[-1])
    if not archive.is_file():
        raise HelmError(f"helm package said {said.strip()!r}, but no archive is there")
    return archive


@dataclasses.dataclass(frozen=True)
class Releases:
    """helm's release commands against the cluster of ``kubeconfig``, in ``namespace``.

    Nothing waits inside helm (no ``--wait``): the caller waits for what it means by done, with
    its own conditions. ``timeout`` bounds each helm call (CRDs and hooks included)."""

    kubeconfig: Path
    namespace: str
    timeout: float = 300

    def _run(self, args: Sequence[str]) -> str:
        return run([*args, "--kubeconfig", str(self.kubeconfig), "--namespace", self.namespace],
                   timeout=self.timeout)

    def _with_values(self, verb: str, release: str, chart: Path, values: Sequence[Mapping[str, Any]]) -> str:
        with tempfile.TemporaryDirectory(prefix="pet-harness-values-") as folder:
            return self._run([verb, release, str(chart), *_values_args(values, Path(folder))])

    def install(self, release: str, chart: Path, values: Sequence[Mapping[str, Any]] = ()) -> str:
        """``helm install`` (the chart's crds/ are created first, as on every first install)."""
        return self._with_values("install", release, chart, values)

    def upgrade(self, release: str, chart: Path, values: Sequence[Mapping[str, Any]] = ()) -> str:
        """``helm upgrade`` with exactly ``values`` over the chart's defaults (no ``--reuse-values``)."""
        return self._with_values("upgrade", release, chart, values)

    def rollback(self, release: str, revision: int) -> str:
        """``helm rollback`` to ``revision``: a new revision with that one's chart and values."""
        return self._run(["rollback", release, str(revision)])

    def history(self, release: str) -> list[dict[str, Any]]:
        """``helm history -o json``: each revision's ``revision``, ``status``, ``chart``, ``app_version``
        and ``description``, oldest first."""
        entries = json.loads(self._run(["history", release, "--output", "json"]))
        return sorted(entries, key=lambda e: int(e["revision"]))

    def uninstall(self, release: str) -> str:
        return self._run(["uninstall", release])

"""Interpreters that hold only what an operator under load needs, as its container would.

Kopf imports ``kubernetes`` and ``kubernetes_asyncio`` whenever they are installed (to recognise
their objects), and the harness's own environment has both: started from it, our operator would
carry some 60 MB it never uses in production, and its RSS would say so. A load run therefore
starts each operator from a virtual environment of its own, cached under
``~/.cache/pet-harness/runtimes/`` by a hash of its requirements and the Python version:

* ``operator``: the ``dependencies`` of ``pyproject.toml`` (what the image installs), with the
  operator's code from this checkout on ``PYTHONPATH``;
* ``naive-kopf``: Kopf and the ``kubernetes`` client (the peer is written as Kopf's docs show).

If one cannot be made (no network, say), the run goes on with the harness's own interpreter and
the summary says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess  # nosec B404 # argv lists, never a shell
import sys
import tomllib
import venv
from collections.abc import Callable
from pathlib import Path

from pet_harness.binaries import cache_root
from pet_harness.kube import REPO_ROOT

PYPROJECT = REPO_ROOT / "pyproject.toml"
OPERATOR_SOURCE = REPO_ROOT / "operator"
INSTALL_TIMEOUT = 900.0


@dataclasses.dataclass(frozen=True)
class Runtime:
    python: str
    env: dict[str, str]
    description: str  # for the summary


def operator_requirements() -> list[str]:
    return list(tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"])


def naive_requirements() -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    kopf = next(r for r in project["dependencies"] if r.replace(" ", "").startswith("kopf"))
    kubernetes = next(r for r in project["optional-dependencies"]["harness"] if r.startswith("kubernetes"))
    return [kopf, kubernetes]


def _folder(name: str, requirements: list[str]) -> Path:
    key = hashlib.sha256("\n".join([sys.version, *sorted(requirements)]).encode()).hexdigest()[:12]
    return cache_root() / "runtimes" / f"{name}-{key}"


def ensure(name: str, requirements: list[str], progress: Callable[[str], None] = print) -> Path:
    """The interpreter of the runtime ``name`` with ``requirements``, made once (RuntimeError if it cannot be)."""
    folder = _folder(name, requirements)
    python = folder / "bin" / "python"
    if (folder / ".complete").exists() and python.exists():
        return python
    shutil.rmtree(folder, ignore_errors=True)
    progress(f"making the {name} runtime in {folder} ({', '.join(requirements)}); once per version")
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(folder)
        subprocess.run(  # nosec B603 # argv of our own, no shell
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
            check=True, timeout=INSTALL_TIMEOUT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"could not make the {name} runtime: {exc} {detail[-500:]}".strip()) from exc
    (folder / ".complete").write_text("\n".join(requirements) + "\n")
    return python


def operator_runtime(progress: Callable[[str], None] = print) -> Runtime:
    """Our operator from this checkout, on only its declared dependencies (or the harness's interpreter)."""
    try:
        python = ensure("operator", operator_requirements(), progress)
    except RuntimeError as exc:
        progress(f"{exc}; the operator runs from the harness's interpreter instead")
        return Runtime(sys.executable, {}, "the harness's interpreter (no runtime of its own could be made)")
    env = {"PYTHONPATH": os.pathsep.join([str(OPERATOR_SOURCE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PYTHONNOUSERSITE": "1"}
    return Runtime(str(python), env, "its own runtime: only pyproject's dependencies")


def naive_runtime(progress: Callable[[str], None] = print) -> Runtime:
    try:
        python = ensure("naive-kopf", naive_requirements(), progress)
    except RuntimeError as exc:
        progress(f"{exc}; the naive peer runs from the harness's interpreter instead")
        return Runtime(sys.executable, {}, "the harness's interpreter (no runtime of its own could be made)")
    return Runtime(str(python), {"PYTHONNOUSERSITE": "1"}, "its own runtime: Kopf and the kubernetes client")

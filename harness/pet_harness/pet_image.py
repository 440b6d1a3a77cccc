"""The operator's image for the node backend: the project's ``Dockerfile`` built by BuildKit on the
Debian base made here (:mod:`~pet_harness.clusters.node_base_image`), then imported into the node.

The Dockerfile's ``BASE_IMAGE`` argument names the base; users with a registry build the same file
with its default (the public python image). The image's tag is a hash of what it is built from
(:func:`~pet_harness.clusters.node_buildkit.content_hash`): the Dockerfile and the files it copies.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess  # nosec B404 # argv lists, never a shell
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import Any

from pet_harness import binaries, kube
from pet_harness.clusters.base import ClusterError
from pet_harness.clusters.node_base_image import python_base_image
from pet_harness.clusters.node_buildkit import BuiltImage, build_image
from pet_harness.clusters.node_images import images_dir

#: the operator image's repository on the node (never pulled: ``imagePullPolicy: Never``)
OPERATOR_REPOSITORY = "pet-harness.local/pet-operator"


def operator_inputs(root: Path) -> list[str]:
    """The files the Dockerfile copies (keep in step with its COPY lines and .dockerignore)."""
    package = root / "operator" / "pet_operator"
    files = [str(p.relative_to(root)) for p in sorted(package.rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts]
    return ["pyproject.toml", "README.md", ".dockerignore", *files]


def requirements(pyproject: Path) -> list[str]:
    """The operator's runtime dependencies and its build system's requirements."""
    data = tomllib.loads(pyproject.read_text())
    return [*data["build-system"]["requires"], *data["project"]["dependencies"]]


def wheelhouse(root: Path, progress: binaries.Progress | None = None) -> Path:
    """Wheels of every requirement, made with this machine's pip (its index and its trust settings),
    for the image's build to install offline. Cached per requirement list and Python version (the
    base image's Python must be of the same minor version: Debian 12's is 3.11)."""
    wanted = requirements(root / "pyproject.toml")
    key = hashlib.sha256("\n".join([*wanted, sys.version.split()[0].rsplit(".", 1)[0]]).encode()).hexdigest()[:16]
    folder = images_dir() / f"wheels-{key}"
    if (folder / ".complete").is_file():
        return folder / "wheels"
    say = progress or (lambda line: None)
    say(f"making wheels for the operator's image: {', '.join(wanted)}")
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "wheels").mkdir(parents=True)
    proc = subprocess.run(  # nosec B603 # argv of our own, no shell
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(folder / "wheels"), *wanted],
        capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise ClusterError(f"pip wheel of the operator's requirements failed:\n{proc.stderr.strip()[-2000:]}")
    (folder / ".complete").write_text("\n".join(wanted))
    return folder / "wheels"


def revision(root: Path) -> str:
    """The checkout's git commit, or ``unknown`` outside a git checkout."""
    try:
        proc = subprocess.run(  # nosec B603, B607 # a fixed argv, git from PATH
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
    except OSError:
        return "unknown"
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def operator_image(progress: binaries.Progress | None = None, version: str | None = None) -> BuiltImage:
    """The operator's image, built now or taken from the cache; stamped with the package's version
    (as ``pet-operator --version`` says it), or with ``version`` (a PEP 440 version: another
    release of the same code, for upgrade tests), and the git commit, in its OCI labels and its
    package."""
    from pet_operator.version import version as package_version

    root: Path = kube.REPO_ROOT
    base = python_base_image(progress)
    args = {"BASE_IMAGE": base.reference, "VERSION": version or package_version(), "REVISION": revision(root)}
    return build_image(root, OPERATOR_REPOSITORY, operator_inputs(root), build_args=args,
                       named={base.reference: base}, folders={"wheels": wheelhouse(root, progress)},
                       progress=progress)


def image_labels(tar: Path) -> dict[str, str]:
    """The OCI labels in an image-layout tar's config (index, then manifest, then config)."""
    with tarfile.open(tar) as layout:
        def blob(digest: str) -> dict[str, Any]:
            member = layout.extractfile(f"blobs/{digest.replace(':', '/')}")
            if member is None:
                raise ClusterError(f"{tar} has no blob {digest}")
            return dict(json.load(member))

        index_file = layout.extractfile("index.json")
        if index_file is None:
            raise ClusterError(f"{tar} is not an OCI image layout: no index.json")
        manifest = blob(json.load(index_file)["manifests"][0]["digest"])
        return dict(blob(manifest["config"]["digest"])["config"].get("Labels") or {})

"""The operator's image for the node backend: the project's ``Dockerfile`` built by BuildKit on the
Debian base made here (:mod:`~pet_harness.clusters.node_base_image`), then imported into the node.

The Dockerfile's ``BASE_IMAGE`` argument names the base; users with a registry build the same file
with its default (the public python image). The image's tag is a hash of what it is built from
(:func:`~pet_harness.clusters.node_buildkit.content_hash`): the Dockerfile and the files it copies.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess  # nosec B404 # argv lists, never a shell
import sys
import tomllib
from pathlib import Path

from pet_harness import binaries, kube
from pet_harness.clusters.base import ClusterError
from pet_harness.clusters.node_base_image import foreign_arch_problem, python_base_image
from pet_harness.clusters.node_buildkit import BuiltImage, build_image
from pet_harness.clusters.node_images import go_arch, images_dir
from pet_harness.image_run import run_in_image
from pet_harness.oci_image import OciImage

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


#: the wheels pip may take for an arm64 image (Debian 12's glibc is 2.36): manylinux tags, newest first
ARM64_PLATFORMS = ("manylinux_2_36_aarch64", "manylinux_2_34_aarch64", "manylinux_2_28_aarch64",
                   "manylinux_2_24_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64")


def wheel_command(wanted: list[str], out: Path, arch: str | None = None) -> list[str]:
    """The host's pip making the wheelhouse: ``pip wheel`` for the host's architecture; for another,
    ``pip download`` of binary wheels only, for that platform and this Python's minor version (the
    operator's own wheel is pure Python and built in the image from the source)."""
    if arch is None or arch == go_arch():
        return [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(out), *wanted]
    if arch != "arm64":
        raise ClusterError(f"no wheel platform known for the architecture {arch!r} (known: arm64 and the host's)")
    major_minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    return [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(out), "--only-binary=:all:",
            *(f"--platform={tag}" for tag in ARM64_PLATFORMS), f"--python-version={major_minor}",
            "--implementation=cp", *wanted]


def wheelhouse(root: Path, progress: binaries.Progress | None = None, arch: str | None = None) -> Path:
    """Wheels of every requirement, made with this machine's pip (its index and its trust settings),
    for the image's build to install offline. Cached per requirement list, Python version (the
    base image's Python must be of the same minor version: Debian 12's is 3.11) and architecture."""
    wanted = requirements(root / "pyproject.toml")
    arch = arch or go_arch()
    parts = [*wanted, sys.version.split()[0].rsplit(".", 1)[0], *([arch] if arch != go_arch() else [])]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    folder = images_dir() / f"wheels-{key}"
    if (folder / ".complete").is_file():
        return folder / "wheels"
    say = progress or (lambda line: None)
    say(f"making {arch} wheels for the operator's image: {', '.join(wanted)}")
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "wheels").mkdir(parents=True)
    proc = subprocess.run(  # nosec B603 # argv of our own, no shell
        wheel_command(wanted, folder / "wheels", arch), capture_output=True, text=True, timeout=900)
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


def operator_image(progress: binaries.Progress | None = None, arch: str | None = None,
                   version: str | None = None) -> BuiltImage:
    """The operator's image, built now or taken from the cache; stamped with the package's version
    (as ``pet-operator --version`` says it), or with ``version`` (a PEP 440 version: another
    release of the same code, for upgrade tests), and the git commit, in its OCI labels and its
    package. ``arch``: ``arm64`` on an amd64 machine builds that image through qemu-user (its base,
    its wheels and BuildKit's ``RUN`` steps; :func:`foreign_arch_problem` says whether it can)."""
    from pet_operator.version import version as package_version

    root: Path = kube.REPO_ROOT
    arch = arch or go_arch()
    foreign = arch != go_arch()
    if foreign and (problem := foreign_arch_problem(arch)):
        raise ClusterError(problem)
    base = python_base_image(progress, arch=arch)
    args = {"BASE_IMAGE": base.reference, "VERSION": version or package_version(), "REVISION": revision(root)}
    return build_image(root, OPERATOR_REPOSITORY, operator_inputs(root), build_args=args,
                       named={base.reference: base}, folders={"wheels": wheelhouse(root, progress, arch)},
                       progress=progress, platform=f"linux/{arch}" if foreign else None)


def version_in_image(image: BuiltImage, arch: str | None = None) -> str:
    """What ``pet-operator --version`` prints in ``image`` (run through its entrypoint, tini, as its
    user, in its unpacked root filesystem; qemu-user for another architecture). Raises when it fails."""
    result = run_in_image(image.tar, ["--version"], platform=f"linux/{arch}" if arch else None)
    if result.returncode != 0:
        raise ClusterError(f"pet-operator --version in {image.reference} ({result.platform}) exited "
                           f"{result.returncode}:\n{result.stderr.strip()[-2000:]}")
    return result.stdout.strip()


def image_labels(tar: Path) -> dict[str, str]:
    """The OCI labels of an image-layout tar (its config's ``Labels``)."""
    with OciImage(tar) as image:
        return dict(image.labels)

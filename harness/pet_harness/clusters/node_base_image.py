"""A base image with Python, made here from Debian packages: no registry is needed.

``mmdebstrap --variant=minbase --include=python3,... bookworm`` writes a root filesystem as a tar
from the Debian mirror apt already uses (the host's sources when the suite is the host's); that
tar becomes the one uncompressed layer of an OCI image layout (a folder: ``oci-layout``,
``index.json``, blobs), which BuildKit takes as a named build context
(:mod:`~pet_harness.clusters.node_buildkit`) in place of a ``FROM`` image. Made once per package
list, suite and architecture into the cache (``node-images/base-<hash>``); delete the folder to
take newer Debian packages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess  # nosec B404 # argv lists, never a shell
import time
from pathlib import Path

from pet_harness import binaries, versions
from pet_harness.clusters.base import ClusterError
from pet_harness.clusters.node_images import go_arch, images_dir
from pet_harness.clusters.node_packages import find_tool
from pet_harness.oci_image import sha256_file

#: what a Python program's image needs: the interpreter and its venv module (pip comes with it),
#: an init for PID 1 and the CA certificates (pip's downloads at build time)
PYTHON_PACKAGES = ("python3", "python3-venv", "tini", "ca-certificates")

#: the name the base image goes by in builds (``FROM``) and in the layout's index
BASE_REPOSITORY = "pet-harness.local/debian-python"

#: merged /usr (``/bin`` -> ``usr/bin`` and so on) made by symlinks before the packages go in, as
#: debootstrap does: without it Debian 12's init-system-helpers pulls in the usrmerge package, and
#: with it perl (about 50 MB of the image; mmdebstrap(1), section MERGED-/USR)
MERGED_USR_HOOKS = Path("/usr/share/mmdebstrap/hooks/merged-usr")

#: left out of the root filesystem: documentation, manuals and translations (tens of MB)
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")


@dataclasses.dataclass(frozen=True)
class OciLayout:
    """An image in an OCI image-layout folder."""

    path: Path
    reference: str  #: e.g. pet-harness.local/debian-python:bookworm-0123abcd
    manifest_digest: str  #: sha256:...
    seconds: float = 0.0  #: how long making it took (0 when it came from the cache)


def host_sources(suite: str) -> list[str]:
    """The host's apt sources files, when the host runs ``suite`` (else mmdebstrap's default mirror)."""
    try:
        release = Path("/etc/os-release").read_text()
    except OSError:
        return []
    if f"VERSION_CODENAME={suite}" not in release.split():
        return []
    files = sorted(str(p) for p in Path("/etc/apt/sources.list.d").glob("*.sources"))
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file() and any(line.strip() and not line.lstrip().startswith("#")
                                for line in legacy.read_text().splitlines()):
        files.append(str(legacy))
    return files


#: the binfmt_misc entry (Debian's qemu-user-static / binfmt-support name) per foreign architecture
QEMU_BINFMT = {"arm64": "qemu-aarch64", "amd64": "qemu-x86_64"}
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


def foreign_arch_problem(arch: str, binfmt_dir: Path = BINFMT_DIR) -> str | None:
    """Why programs of ``arch`` cannot run here, or None when they can: the kernel hands them to
    qemu-user through an enabled binfmt_misc entry with the ``F`` flag (the interpreter opened when
    registered, so it works inside a chroot or container too)."""
    entry_name = QEMU_BINFMT.get(arch)
    if entry_name is None:
        return f"no qemu-user mapping for the architecture {arch!r} (known: {', '.join(sorted(QEMU_BINFMT))})"
    fix = ("apt-get install qemu-user-static binfmt-support; mount -t binfmt_misc binfmt_misc "
           f"{binfmt_dir} (if not mounted); update-binfmts --enable {entry_name}")
    entry = binfmt_dir / entry_name
    try:
        text = entry.read_text()
    except OSError:
        return f"{arch} programs cannot run here: no binfmt_misc entry {entry} ({fix})"
    lines = text.splitlines()
    if not lines or lines[0].strip() != "enabled":
        return f"{arch} programs cannot run here: {entry} is disabled ({fix})"
    flags = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("flags:")), "")
    if "F" not in flags:
        return (f"{arch} programs cannot run in a chroot or container here: {entry} lacks the F (fix binary) "
                "flag; Debian's qemu-user-static registers it with F")
    return None


def base_digest(packages: tuple[str, ...], suite: str, sources: list[str], arch: str | None = None) -> str:
    text = "\n".join([*sorted(packages), suite, arch or go_arch(), *(Path(s).read_text() for s in sources),
                      *DPKG_EXCLUDES, f"hook-dir {MERGED_USR_HOOKS}"])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mmdebstrap_command(out_tar: Path, packages: tuple[str, ...], suite: str, sources: list[str],
                       arch: str | None = None) -> list[str]:
    """``arch``: a Debian architecture other than the host's (``arm64``): mmdebstrap runs its
    maintainer scripts through qemu-user and binfmt_misc (:func:`foreign_arch_problem`)."""
    mmdebstrap = find_tool("mmdebstrap")
    if mmdebstrap is None:
        raise ClusterError("mmdebstrap is missing: apt-get install mmdebstrap (it makes the node's base images)")
    if not MERGED_USR_HOOKS.is_dir():
        raise ClusterError(f"mmdebstrap's merged-usr hooks are missing ({MERGED_USR_HOOKS}): mmdebstrap 1.x ships them")
    return [
        mmdebstrap, "--variant=minbase", "--quiet",
        *([f"--arch={arch}"] if arch and arch != go_arch() else []),
        f"--hook-dir={MERGED_USR_HOOKS}",
        f"--include={','.join(packages)}",
        "--aptopt=Acquire::Languages \"none\"",
        *(f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES),
        suite, str(out_tar), *sources,
    ]


def _put_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
    return digest, len(data)


def write_layout(layout: Path, rootfs_tar: Path, reference: str, config: dict[str, object],
                 arch: str | None = None) -> str:
    """An OCI image layout at ``layout`` whose one uncompressed layer is ``rootfs_tar`` (moved in);
    returns the manifest's digest. ``arch``: the image's architecture (Go's name; the host's by default)."""
    arch = arch or go_arch()
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layer_digest = sha256_file(rootfs_tar)
    layer_size = rootfs_tar.stat().st_size
    rootfs_tar.replace(blobs / layer_digest.split(":", 1)[1])
    config_digest, config_size = _put_blob(layout, json.dumps({
        "architecture": arch, "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "pet-harness: mmdebstrap"}],
    }, sort_keys=True).encode())
    manifest_digest, manifest_size = _put_blob(layout, json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                    "size": layer_size}],
    }, sort_keys=True).encode())
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"io.containerd.image.name": reference,
                            "org.opencontainers.image.ref.name": reference.rsplit(":", 1)[1]},
            "platform": {"architecture": arch, "os": "linux"},
        }],
    }, sort_keys=True))
    return manifest_digest


def python_base_image(progress: binaries.Progress | None = None, packages: tuple[str, ...] = PYTHON_PACKAGES,
                      suite: str = versions.DEBIAN_SUITE, arch: str | None = None) -> OciLayout:
    """The Debian base with Python, made when missing (about a minute; needs root for mmdebstrap's
    root mode and the Debian mirror). ``arch``: Go's (and Debian's) name of another architecture
    than the host's, ``arm64``: made through qemu-user (several minutes)."""
    say = progress or (lambda line: None)
    arch = arch or go_arch()
    if arch != go_arch() and (problem := foreign_arch_problem(arch)):
        raise ClusterError(problem)
    sources = host_sources(suite)
    digest = base_digest(packages, suite, sources, arch)
    reference = f"{BASE_REPOSITORY}:{suite}-{digest}" if arch == go_arch() else \
        f"{BASE_REPOSITORY}:{suite}-{arch}-{digest}"
    folder = images_dir() / f"base-{digest}"
    layout = folder / "layout"
    done = folder / "manifest-digest"
    if done.is_file():
        return OciLayout(layout, reference, done.read_text().strip())
    started = time.monotonic()
    say(f"making the base image {reference} ({arch}) with mmdebstrap ({', '.join(packages)})")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rootfs = folder / "rootfs.tar"
    try:
        proc = subprocess.run(mmdebstrap_command(rootfs, packages, suite, sources, arch), capture_output=True,
                              text=True, timeout=2400)  # nosec B603 # argv of our own, no shell
        if proc.returncode != 0:
            raise ClusterError(f"mmdebstrap failed with code {proc.returncode}:\n{proc.stderr.strip()[-2000:]}")
        manifest = write_layout(layout, rootfs, reference, {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["python3"],
        }, arch)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    done.write_text(manifest)
    seconds = time.monotonic() - started
    say(f"  base image made in {seconds:.0f}s")
    return OciLayout(layout, reference, manifest, seconds)

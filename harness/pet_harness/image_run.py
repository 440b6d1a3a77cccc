"""Running a program of a container image without a container runtime: its root filesystem is
unpacked into a temporary folder (:func:`pet_harness.oci_image.unpack`) and the program started
in it with ``chroot``, as the image's user, with its environment and working folder. For an image
of another architecture the kernel hands its programs to qemu-user through binfmt_misc
(:func:`pet_harness.clusters.node_base_image.foreign_arch_problem` says whether it can).

This is for checks such as ``--version``: no namespaces, no cgroups, no network of its own.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess  # nosec B404 # argv lists, never a shell
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pet_harness.clusters.base import ClusterError
from pet_harness.clusters.node_base_image import foreign_arch_problem
from pet_harness.clusters.node_images import go_arch
from pet_harness.oci_image import OciImage, unpack


@dataclasses.dataclass(frozen=True)
class RunResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    platform: str


def chroot_command(rootfs: Path, config: dict[str, object], args: Sequence[str], entrypoint: bool = True) -> list[str]:
    """``chroot`` argv running the image's entrypoint with ``args`` (or ``args`` alone when
    ``entrypoint`` is false) as the image's user, with its environment and working folder."""
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    user = str(config.get("User") or "0:0")
    if ":" not in user:
        user = f"{user}:{user}" if user.isdigit() else user
    workdir = str(config.get("WorkingDir") or "/")
    command = [*(list(config.get("Entrypoint") or []) if entrypoint else []), *args]  # type: ignore[call-overload]
    if not command:
        raise ClusterError("nothing to run: the image has no entrypoint and no arguments were given")
    environment = [str(e) for e in (config.get("Env") or [])]  # type: ignore[attr-defined]
    # the image's own env(1) (coreutils): a clean environment and the working folder (chroot(1) has
    # no option for it)
    return [chroot, f"--userspec={user}", str(rootfs), "/usr/bin/env", "-i", f"--chdir={workdir}", *environment,
            *command]


def run_in_image(tar: Path, args: Sequence[str], platform: str | None = None, entrypoint: bool = True,
                 timeout: float = 300) -> RunResult:
    """Run the image's entrypoint (or ``args`` alone) in its unpacked root filesystem; root needed.
    The folder is removed on every exit path."""
    with OciImage(tar, platform) as image:
        arch = str(image.config.get("architecture", ""))
        if arch and arch != go_arch() and (problem := foreign_arch_problem(arch)):
            raise ClusterError(problem)
        config = dict(image.config.get("config") or {})
        with tempfile.TemporaryDirectory(prefix="pet-harness-rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            unpack(image, rootfs)
            argv = chroot_command(rootfs, config, args, entrypoint)
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)  # nosec B603 # argv of our own
            except subprocess.TimeoutExpired as exc:
                raise ClusterError(f"{' '.join(args)} in {tar.name} ({image.platform}) did not end within "
                                   f"{timeout:.0f}s") from exc
            return RunResult(argv, proc.returncode, proc.stdout, proc.stderr, image.platform)

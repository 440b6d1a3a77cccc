"""Images built from Dockerfiles by BuildKit, without Docker and without a registry.

``buildkitd`` runs for the length of one build, as root, with its own runc worker (Debian's runc;
overlayfs snapshots; host network, so that a ``RUN pip install`` reaches the package index), its
state in the cache (``buildkit-state``: layers of earlier builds are reused) and its socket in a
temporary folder; it is stopped on every exit path. ``buildctl`` sends the Dockerfile and the
files it copies (BuildKit transfers only those), the build arguments and named contexts: an
image made here (:class:`~pet_harness.clusters.node_base_image.OciLayout`) stands in for a
``FROM`` image through ``--oci-layout`` and ``context:<name>=oci-layout://...``. The result is an
OCI image tar, imported into a node's containerd with ``ctr images import``.

Built images are cached by content: the reference's tag is a hash of the Dockerfile, every input
file (path and bytes), the build arguments, the named contexts' digests and BuildKit's version, so
an unchanged tree is never rebuilt and a changed one always is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess  # nosec B404 # argv lists, never a shell
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from pet_harness import binaries, versions
from pet_harness.clusters.base import ClusterError
from pet_harness.clusters.node_base_image import OciLayout
from pet_harness.clusters.node_images import images_dir
from pet_harness.clusters.node_packages import tool
from pet_harness.file_lock import exclusive_lock
from pet_harness.processes import ManagedProcess


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    reference: str  #: repository:content-hash
    tar: Path  #: the OCI image tar
    seconds: float = 0.0  #: the build's length (0 when it came from the cache)


def content_hash(context: Path, dockerfile: str, inputs: Sequence[str], build_args: Mapping[str, str],
                 named: Mapping[str, OciLayout], folders: Mapping[str, Path] | None = None,
                 platform: str | None = None) -> str:
    """A hash of everything the build reads: ``inputs`` are paths relative to ``context``; the
    files of ``folders`` (named local contexts) count by name and size; ``platform`` when one is
    asked for."""
    digest = hashlib.sha256()
    digest.update(f"buildkit {versions.BUILDKIT_VERSION}\n".encode())
    if platform:
        digest.update(f"platform {platform}\n".encode())
    digest.update((context / dockerfile).read_bytes())
    for rel in sorted(set(inputs)):
        path = context / rel
        if not path.is_file():
            raise ClusterError(f"the image input {rel} is not a file under {context}")
        digest.update(f"\0{rel}\0".encode())
        digest.update(path.read_bytes())
    for key in sorted(build_args):
        digest.update(f"\0arg {key}={build_args[key]}".encode())
    for name in sorted(named):
        digest.update(f"\0context {name}={named[name].manifest_digest}".encode())
    for name, folder in sorted((folders or {}).items()):
        listing = sorted(f"{p.relative_to(folder)}:{p.stat().st_size}" for p in folder.rglob("*") if p.is_file())
        digest.update(f"\0folder {name}={listing}".encode())
    return digest.hexdigest()[:16]


def buildctl_command(buildctl: Path, socket: Path, context: Path, dockerfile: str, build_args: Mapping[str, str],
                     named: Mapping[str, OciLayout], out_tar: Path, reference: str,
                     folders: Mapping[str, Path] | None = None, platform: str | None = None) -> list[str]:
    """``platform``: ``linux/arm64`` builds for that platform (its ``RUN`` steps through qemu-user
    and binfmt_misc when it is not the host's)."""
    argv = [
        str(buildctl), "--addr", f"unix://{socket}", "build", "--progress=plain",
        "--frontend", "dockerfile.v0",
        "--local", f"context={context}", "--local", f"dockerfile={(context / dockerfile).parent}",
        "--opt", f"filename={Path(dockerfile).name}",
    ]
    if platform:
        argv += ["--opt", f"platform={platform}"]
    for key, value in sorted(build_args.items()):
        argv += ["--opt", f"build-arg:{key}={value}"]
    for index, (name, layout) in enumerate(sorted(named.items())):
        store = f"store{index}"
        argv += ["--oci-layout", f"{store}={layout.path}",
                 "--opt", f"context:{name}=oci-layout://{store}@{layout.manifest_digest}"]
    for name, folder in sorted((folders or {}).items()):
        argv += ["--local", f"{name}={folder}", "--opt", f"context:{name}=local:{name}"]
    argv += ["--output", f"type=oci,dest={out_tar},name={reference}"]
    return argv


def buildkitd_command(buildkitd: Path, root: Path, socket: Path) -> list[str]:
    return [
        str(buildkitd), "--root", str(root), "--addr", f"unix://{socket}",
        "--oci-worker=true", "--containerd-worker=false",
        f"--oci-worker-binary={tool('runc')}", "--oci-worker-snapshotter=overlayfs",
        "--oci-worker-net=host", "--oci-worker-gc=true",
    ]


@contextlib.contextmanager
def state_lock(state: Path, timeout: float = 1800, say: binaries.Progress | None = None) -> Iterator[None]:
    """One buildkitd at a time on ``state`` (two on one state folder fight over its database):
    wait up to ``timeout`` seconds for another build of this machine, then fail naming the lock."""
    lock_file = state.with_name(state.name + ".lock")

    def waiting() -> None:
        if say:
            say(f"waiting for another image build of this machine ({lock_file})")

    def too_long() -> Exception:
        return ClusterError(f"another image build holds {lock_file}; waited {timeout:.0f}s")

    with exclusive_lock(lock_file, timeout, waiting, too_long):
        yield


#: the prefix of the temporary folder that holds a build's buildkitd socket and log
SOCKET_DIR_PREFIX = "pet-harness-buildkit-"


def sweep_socket_dirs(tmp: Path | None = None) -> list[Path]:
    """Remove the socket folders of earlier builds whose owner was killed before its cleanup. Call
    it holding :func:`state_lock`: only its holder runs a buildkitd, so every such folder is stale."""
    root = Path(tmp or tempfile.gettempdir())
    removed = []
    for path in root.glob(SOCKET_DIR_PREFIX + "*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def running_buildkitd(progress: binaries.Progress | None = None, timeout: float = 60) -> Iterator[Path]:
    """A buildkitd for the block's length; yields its socket. Stopped (and its runc containers with
    it) on every exit path."""
    bins = binaries.ensure_buildkit(build=True, progress=progress)
    state = binaries.cache_root() / "buildkit-state"
    state.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(state_lock(state, say=progress))
        sweep_socket_dirs()
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=SOCKET_DIR_PREFIX))
        socket = Path(tmp) / "buildkitd.sock"
        proc = ManagedProcess("buildkitd", buildkitd_command(bins["buildkitd"], state, socket),
                              Path(tmp) / "buildkitd.log", cwd=Path(tmp))
        proc.start()
        try:
            deadline = time.monotonic() + timeout
            while True:
                if not proc.running:
                    raise ClusterError(f"buildkitd exited with code {proc.returncode}:\n{proc.log_text()[-2000:]}")
                ready = socket.exists() and subprocess.run(  # nosec B603 # argv of our own, no shell
                    [str(bins["buildctl"]), "--addr", f"unix://{socket}", "debug", "workers"],
                    capture_output=True, timeout=10).returncode == 0
                if ready:
                    break
                if time.monotonic() > deadline:
                    raise ClusterError(f"buildkitd did not answer within {timeout:.0f}s:\n{proc.log_text()[-2000:]}")
                time.sleep(0.2)
            yield socket
        finally:
            proc.stop(grace=10)


def build_image(context: Path, repository: str, inputs: Sequence[str], dockerfile: str = "Dockerfile",
                build_args: Mapping[str, str] | None = None, named: Mapping[str, OciLayout] | None = None,
                folders: Mapping[str, Path] | None = None, progress: binaries.Progress | None = None,
                platform: str | None = None) -> BuiltImage:
    """The image of ``context/dockerfile``, from the cache or built now. ``named``: images made here
    standing in for ``FROM`` names; ``folders``: local folders as named build contexts;
    ``platform``: ``os/arch`` to build for (the host's by default)."""
    say = progress or (lambda line: None)
    args = dict(build_args or {})
    contexts = dict(named or {})
    local = dict(folders or {})
    tag = content_hash(context, dockerfile, inputs, args, contexts, local, platform)
    reference = f"{repository}:{tag}"
    out_dir = images_dir() / "built"
    if platform:  # kept apart: the pruning of the host's builds leaves them alone
        out_dir = out_dir / platform.replace("/", "-")
    out_dir.mkdir(parents=True, exist_ok=True)
    tar = out_dir / (reference.replace("/", "_").replace(":", "_") + ".tar")
    if tar.is_file():
        os.utime(tar)  # its last use: what pruning goes by
        return BuiltImage(reference, tar)
    started = time.monotonic()
    say(f"building {reference} from {context / dockerfile} with BuildKit" + (f" for {platform}" if platform else ""))
    partial = tar.with_name(tar.name + ".partial")
    buildctl = binaries.ensure_buildkit(build=True, progress=progress)["buildctl"]
    try:
        with running_buildkitd(progress) as socket:
            proc = subprocess.run(  # nosec B603 # argv of our own, no shell
                buildctl_command(buildctl, socket, context, dockerfile, args, contexts, partial, reference, local,
                                 platform),
                capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise ClusterError(f"building {reference} failed (code {proc.returncode}):\n{proc.stderr.strip()[-4000:]}")
        partial.replace(tar)
    finally:
        partial.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    say(f"  built {reference} in {seconds:.0f}s ({tar.stat().st_size / 1e6:.0f} MB)")
    (out_dir / (tar.name + ".json")).write_text(json.dumps({"reference": reference, "seconds": round(seconds, 1)}))
    prune_built(out_dir, repository, keep=tar)
    return BuiltImage(reference, tar, seconds)


def prune_built(out_dir: Path, repository: str, keep: Path, count: int = 2, min_age: float = 3600.0,
                now: float | None = None) -> list[Path]:
    """Remove older builds of ``repository`` (each a hundred MB or more): ``keep`` and the others
    used most recently, up to ``count`` in all, stay, and so does any used within ``min_age``
    seconds (another run of this machine may be about to import it)."""
    now = time.time() if now is None else now
    prefix = repository.replace("/", "_").replace(":", "_") + "_"
    others = sorted((p for p in out_dir.glob(prefix + "*.tar") if p != keep), key=lambda p: p.stat().st_mtime,
                    reverse=True)
    removed = [p for p in others[max(count - 1, 0):] if now - p.stat().st_mtime > min_age]
    for path in removed:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".json").unlink(missing_ok=True)
    return removed


def remove_state() -> None:
    """Forget BuildKit's layer cache (``pet-harness`` cache's ``buildkit-state``)."""
    shutil.rmtree(binaries.cache_root() / "buildkit-state", ignore_errors=True)

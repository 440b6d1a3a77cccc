"""Find or build the control-plane binaries: ``kube-apiserver`` and ``etcd``, the optional
``kube-controller-manager`` (only clusters started with a controller manager need it), and for a
cluster with a node ``kube-scheduler``, ``kubelet`` and ``kube-proxy``.

Lookup order, first hit wins, for each binary:

1. ``TEST_ASSET_KUBE_APISERVER`` / ``TEST_ASSET_ETCD`` / ``TEST_ASSET_KUBE_CONTROLLER_MANAGER`` /
   ``TEST_ASSET_KUBE_SCHEDULER`` / ``TEST_ASSET_KUBELET`` / ``TEST_ASSET_KUBE_PROXY`` (a path to the binary);
2. ``KUBEBUILDER_ASSETS`` (a folder holding them, the setup-envtest convention);
3. the per-version cache, ``$PET_HARNESS_CACHE`` or ``~/.cache/pet-harness``;
4. if allowed, a build from the official Go modules into that cache.

The build uses throwaway Go modules under the cache, one per binary so that their
dependency versions never merge. ``kube-controller-manager`` and the node's commands are built
from the same ``k8s.io/kubernetes`` version as ``kube-apiserver``, the same way.
``k8s.io/kubernetes`` requires its staging modules at ``v0.0.0``; the replace directives mapping
them to the matching ``v0.N.P`` are generated from the upstream ``go.mod``, never typed by hand.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess  # nosec B404 # argv lists, never a shell
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pet_harness import versions

Progress = Callable[[str], None]


class BinaryError(RuntimeError):
    """A binary could not be found or built; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class ControlPlaneBinaries:
    kube_apiserver: Path
    etcd: Path
    source: str  # where they came from: "env", "kubebuilder-assets", "cache" or "built"


def cache_root() -> Path:
    env = os.environ.get("PET_HARNESS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pet-harness"


def apiserver_cache_path(kubernetes_version: str = versions.KUBERNETES_VERSION) -> Path:
    return cache_root() / f"kubernetes-v{kubernetes_version}" / "kube-apiserver"


def controller_manager_cache_path(kubernetes_version: str = versions.KUBERNETES_VERSION) -> Path:
    return kubernetes_command_cache_path("kube-controller-manager", kubernetes_version)


def etcd_cache_path(etcd_version: str = versions.ETCD_VERSION) -> Path:
    return cache_root() / f"etcd-v{etcd_version}" / "etcd"


def _executable(path: Path, origin: str) -> Path:
    if not path.is_file():
        raise BinaryError(f"{origin} points at {path}, which is not a file")
    if not os.access(path, os.X_OK):
        raise BinaryError(f"{origin} points at {path}, which is not executable (chmod +x it)")
    return path


def _locate(environ: os._Environ[str] | dict[str, str]) -> dict[str, tuple[Path, str]]:
    """Each binary that the environment or the cache provides: name -> (path, source)."""
    found: dict[str, tuple[Path, str]] = {}
    for name, var, cached in (
        ("kube-apiserver", "TEST_ASSET_KUBE_APISERVER", apiserver_cache_path()),
        ("etcd", "TEST_ASSET_ETCD", etcd_cache_path()),
    ):
        if environ.get(var):
            found[name] = (_executable(Path(environ[var]), var), "env")
        elif environ.get("KUBEBUILDER_ASSETS"):
            found[name] = (_executable(Path(environ["KUBEBUILDER_ASSETS"]) / name, "KUBEBUILDER_ASSETS"),
                           "kubebuilder-assets")
        elif cached.is_file() and os.access(cached, os.X_OK):
            found[name] = (cached, "cache")
    return found


def find_binaries(environ: os._Environ[str] | dict[str, str] | None = None) -> ControlPlaneBinaries | None:
    """The binaries from the environment or the cache, or None when they do not give both."""
    found = _locate(os.environ if environ is None else environ)
    if len(found) < 2:
        return None
    sources = "+".join(sorted({source for _, source in found.values()}))
    return ControlPlaneBinaries(found["kube-apiserver"][0], found["etcd"][0], sources)


def ensure_binaries(build: bool = True, progress: Progress | None = None) -> ControlPlaneBinaries:
    """Find the binaries, building only what is missing when ``build`` is true.

    A binary given by the environment is always used as given; only the other one is built.
    """
    found = _locate(os.environ)
    if len(found) == 2:
        return ControlPlaneBinaries(
            found["kube-apiserver"][0], found["etcd"][0],
            "+".join(sorted({source for _, source in found.values()})),
        )
    if not build:
        raise BinaryError(
            "kube-apiserver and etcd are not built yet: run `pet-harness binaries build` "
            f"(cache: {cache_root()}), or point TEST_ASSET_KUBE_APISERVER and TEST_ASSET_ETCD "
            "or KUBEBUILDER_ASSETS at binaries you already have"
        )
    say = progress or _stderr
    apiserver = found["kube-apiserver"][0] if "kube-apiserver" in found else build_kube_apiserver(progress=say)
    etcd = found["etcd"][0] if "etcd" in found else build_etcd(progress=say)
    return ControlPlaneBinaries(apiserver, etcd, "built")


#: The other commands built from ``k8s.io/kubernetes`` beside kube-apiserver, each with the
#: variable that points at a binary the user already has.
KUBERNETES_COMMAND_VARS = {
    "kube-controller-manager": "TEST_ASSET_KUBE_CONTROLLER_MANAGER",
    "kube-scheduler": "TEST_ASSET_KUBE_SCHEDULER",
    "kubelet": "TEST_ASSET_KUBELET",
    "kube-proxy": "TEST_ASSET_KUBE_PROXY",
}
CONTROLLER_MANAGER_VAR = KUBERNETES_COMMAND_VARS["kube-controller-manager"]

#: What a cluster with a node needs beyond the control plane and the controller manager
#: (``pet-harness binaries build --node``).
NODE_COMMANDS = ("kube-scheduler", "kubelet", "kube-proxy")


def kubernetes_command_cache_path(command: str, kubernetes_version: str = versions.KUBERNETES_VERSION) -> Path:
    if command not in KUBERNETES_COMMAND_VARS:
        raise BinaryError(
            f"unknown Kubernetes command {command!r}: one of {', '.join(KUBERNETES_COMMAND_VARS)}"
        )
    return cache_root() / f"kubernetes-v{kubernetes_version}" / command


def find_kubernetes_command(
    command: str, environ: os._Environ[str] | dict[str, str] | None = None,
) -> tuple[Path, str] | None:
    """``command`` (one of :data:`KUBERNETES_COMMAND_VARS`) from the environment or the cache:
    (path, source), or None."""
    env = os.environ if environ is None else environ
    var = KUBERNETES_COMMAND_VARS.get(command)
    if var is None:
        raise BinaryError(
            f"unknown Kubernetes command {command!r}: one of {', '.join(KUBERNETES_COMMAND_VARS)}"
        )
    if env.get(var):
        return _executable(Path(env[var]), var), "env"
    if env.get("KUBEBUILDER_ASSETS"):
        path = Path(env["KUBEBUILDER_ASSETS"]) / command
        return _executable(path, "KUBEBUILDER_ASSETS"), "kubebuilder-assets"
    cached = kubernetes_command_cache_path(command)
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached, "cache"
    return None


def ensure_kubernetes_command(command: str, build: bool = True, progress: Progress | None = None) -> Path:
    """``command``, built (same Kubernetes version as kube-apiserver) when missing and ``build``
    is true."""
    found = find_kubernetes_command(command)
    if found is not None:
        return found[0]
    if not build:
        flag = " --node" if command in NODE_COMMANDS else ""
        raise BinaryError(
            f"{command} is not built yet: run `pet-harness binaries build{flag}` "
            f"(cache: {cache_root()}), or point {KUBERNETES_COMMAND_VARS[command]} or "
            "KUBEBUILDER_ASSETS at a binary you already have"
        )
    return build_kubernetes_command(command, progress=progress or _stderr)


def find_controller_manager(
    environ: os._Environ[str] | dict[str, str] | None = None,
) -> tuple[Path, str] | None:
    """``kube-controller-manager`` from the environment or the cache: (path, source), or None."""
    return find_kubernetes_command("kube-controller-manager", environ)


def ensure_controller_manager(build: bool = True, progress: Progress | None = None) -> Path:
    """``kube-controller-manager``, built (same Kubernetes version as kube-apiserver) when missing
    and ``build`` is true."""
    return ensure_kubernetes_command("kube-controller-manager", build, progress)


def ensure_node_binaries(build: bool = True, progress: Progress | None = None) -> dict[str, Path]:
    """kube-controller-manager and :data:`NODE_COMMANDS`, each built when missing and ``build``."""
    return {
        command: ensure_kubernetes_command(command, build, progress)
        for command in ("kube-controller-manager", *NODE_COMMANDS)
    }


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- building -------------------------------------------------------------------------


def go_executable() -> str:
    go = shutil.which("go")
    if go is None:
        raise BinaryError(
            "the Go toolchain is not on PATH: it is needed once to build kube-apiserver and "
            "etcd. Install Go 1.24 or newer (Debian: apt-get install golang-go, or the "
            "official tarball), or set TEST_ASSET_KUBE_APISERVER and TEST_ASSET_ETCD "
            "(or KUBEBUILDER_ASSETS) to binaries you already have"
        )
    return go


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")
    env.setdefault("GOFLAGS", "-mod=mod")
    return env


def _run_go(args: Sequence[str], cwd: Path, what: str) -> str:
    proc = subprocess.run(  # nosec B603 # argv of our own, no shell
        [go_executable(), *args], cwd=cwd, env=_go_env(), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise BinaryError(_explain_go_failure(what, proc.stderr))
    return proc.stdout


def _explain_go_failure(what: str, stderr: str) -> str:
    tail = "\n".join(stderr.strip().splitlines()[-15:])
    hint = ""
    if re.search(r"dial tcp|no such host|connection refused|i/o timeout|proxyconnect|TLS handshake", stderr):
        hint = (
            "\nThe Go module proxy could not be reached. Check network access to the proxy "
            "named by GOPROXY (now "
            f"{os.environ.get('GOPROXY', 'the default')!r}), set GOPROXY to one you can "
            "reach, or set TEST_ASSET_KUBE_APISERVER / TEST_ASSET_ETCD to prebuilt binaries."
        )
    elif "requires go >=" in stderr or "toolchain" in stderr:
        hint = "\nThis Go is too old for the module; install a newer Go or set GOTOOLCHAIN."
    return f"{what} failed:\n{tail}{hint}"


def staging_replaces(upstream_go_mod: str, staging_version: str) -> list[str]:
    """``replace`` lines for every ``k8s.io/...`` requirement pinned at ``v0.0.0``.

    >>> staging_replaces("require (\\n\\tk8s.io/api v0.0.0\\n\\tk8s.io/utils v0.0.0-2024\\n)", "v0.34.4")
    ['replace k8s.io/api => k8s.io/api v0.34.4']
    """
    modules: list[str] = []
    for match in re.finditer(r"^\s*(?:require\s+)?(k8s\.io/[\w./-]+)\s+v0\.0\.0\s*(?://.*)?$", upstream_go_mod, re.M):
        if match.group(1) not in modules:
            modules.append(match.group(1))
    return [f"replace {m} => {m} {staging_version}" for m in modules]


def _build_progress(lines: Iterator[str], say: Progress, label: str, started: float) -> list[str]:
    """Relay ``go build -v`` package lines as throttled progress; keep the tail for errors."""
    tail: list[str] = []
    count = 0
    last = 0.0
    for line in lines:
        line = line.rstrip()
        tail = [*tail, line][-40:]
        if not line or " " in line:  # compiler messages carry spaces; package paths do not
            continue
        count += 1
        now = time.monotonic()
        if now - last >= 5:
            last = now
            say(f"  {label}: {count} packages compiled, {now - started:.0f}s ({line})")
    return tail


def _go_build(workdir: Path, package: str, output: Path, ldflags: str, say: Progress, label: str) -> None:
    started = time.monotonic()
    tmp_out = output.with_name(output.name + ".partial")
    cmd = [go_executable(), "build", "-v", "-trimpath", "-ldflags", ldflags, "-o", str(tmp_out), package]
    proc = subprocess.Popen(  # nosec B603 # argv of our own, no shell
        cmd, cwd=workdir, env=_go_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if proc.stdout is None:  # stdout=PIPE always gives one
        raise BinaryError(f"{label}: go build started without its output pipe")
    try:
        tail = _build_progress(iter(proc.stdout.readline, ""), say, label, started)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        tmp_out.unlink(missing_ok=True)
        raise
    if rc != 0:
        tmp_out.unlink(missing_ok=True)
        raise BinaryError(_explain_go_failure(f"go build {package}", "\n".join(tail)))
    tmp_out.replace(output)
    say(f"  {label}: built {output} in {time.monotonic() - started:.0f}s")


def _module_dir(name: str) -> Path:
    path = cache_root() / "build" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_kube_apiserver(
    kubernetes_version: str = versions.KUBERNETES_VERSION, progress: Progress | None = None
) -> Path:
    return _build_kubernetes_command(
        "kube-apiserver", apiserver_cache_path(kubernetes_version), kubernetes_version, progress
    )


def build_kube_controller_manager(
    kubernetes_version: str = versions.KUBERNETES_VERSION, progress: Progress | None = None
) -> Path:
    return build_kubernetes_command("kube-controller-manager", kubernetes_version, progress)


def build_kubernetes_command(
    command: str, kubernetes_version: str = versions.KUBERNETES_VERSION, progress: Progress | None = None
) -> Path:
    """Build ``k8s.io/kubernetes/cmd/<command>`` into the cache (one of :data:`KUBERNETES_COMMAND_VARS`)."""
    return _build_kubernetes_command(
        command, kubernetes_command_cache_path(command, kubernetes_version), kubernetes_version, progress
    )


def kubernetes_ldflags(kubernetes_version: str, stamp: str) -> str:
    """The ``-X`` flags that make a binary built from the module report its release version."""
    major, minor, _ = kubernetes_version.split(".")
    tag = f"v{kubernetes_version}"
    return " ".join(
        f"-X {pkg}.{key}={value}"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for key, value in (
            ("gitVersion", tag),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
            ("buildDate", stamp),
        )
    )


def _build_kubernetes_command(
    command: str, output: Path, kubernetes_version: str, progress: Progress | None
) -> Path:
    """Build ``k8s.io/kubernetes/cmd/<command>`` at ``kubernetes_version`` into ``output``."""
    say = progress or _stderr
    started = time.monotonic()
    output.parent.mkdir(parents=True, exist_ok=True)
    tag = f"v{kubernetes_version}"
    workdir = _module_dir(f"{command}-{tag}")
    say(f"building {command} {tag} from k8s.io/kubernetes (first build takes minutes)")
    say("  resolving k8s.io/kubernetes and its staging modules")
    info = json.loads(_run_go(["mod", "download", "-json", f"k8s.io/kubernetes@{tag}"], workdir, "go mod download"))
    upstream = Path(info["GoMod"]).read_text()
    replaces = staging_replaces(upstream, versions.staging_version(kubernetes_version))
    if not replaces:
        raise BinaryError(f"k8s.io/kubernetes@{tag}: its go.mod lists no k8s.io staging module at v0.0.0")
    go_line = re.search(r"^go\s+(\S+)", upstream, re.M)
    (workdir / "go.mod").write_text(
        f"module pet-harness.local/build/{command}\n\n"
        f"go {go_line.group(1) if go_line else '1.24'}\n\n"
        f"require k8s.io/kubernetes {tag}\n\n" + "\n".join(replaces) + "\n"
    )
    say(f"  {len(replaces)} staging replaces generated; downloading dependencies")
    _run_go(["get", f"k8s.io/kubernetes/cmd/{command}@{tag}"], workdir, f"go get {command}")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ldflags = kubernetes_ldflags(kubernetes_version, stamp)
    _go_build(workdir, f"k8s.io/kubernetes/cmd/{command}", output, f"-s -w {ldflags}", say, command)
    say(f"{command} {tag} ready after {time.monotonic() - started:.0f}s")
    return output


def build_etcd(etcd_version: str = versions.ETCD_VERSION, progress: Progress | None = None) -> Path:
    say = progress or _stderr
    started = time.monotonic()
    output = etcd_cache_path(etcd_version)
    output.parent.mkdir(parents=True, exist_ok=True)
    tag = f"v{etcd_version}"
    workdir = _module_dir(f"etcd-{tag}")
    say(f"building etcd {tag} from go.etcd.io/etcd/server/v3")
    (workdir / "go.mod").write_text(
        f"module pet-harness.local/build/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 {tag}\n"
    )
    _run_go(["get", f"go.etcd.io/etcd/server/v3@{tag}"], workdir, "go get etcd")
    _go_build(workdir, "go.etcd.io/etcd/server/v3", output, "-s -w", say, "etcd")
    say(f"etcd {tag} ready after {time.monotonic() - started:.0f}s")
    return output


def helm_cache_path(helm_version: str = versions.HELM_VERSION) -> Path:
    return cache_root() / f"helm-v{helm_version}" / "helm"


HELM_VAR = "TEST_ASSET_HELM"


def find_helm(environ: os._Environ[str] | dict[str, str] | None = None) -> tuple[Path, str] | None:
    """``helm`` from ``TEST_ASSET_HELM`` or the cache: (path, source), or None. A ``helm`` on PATH is
    not used: its version is not the pinned one, and rendering must not depend on the machine."""
    env = os.environ if environ is None else environ
    if env.get(HELM_VAR):
        return _executable(Path(env[HELM_VAR]), HELM_VAR), "env"
    cached = helm_cache_path()
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached, "cache"
    return None


def ensure_helm(build: bool = True, progress: Progress | None = None) -> Path:
    """``helm``, built from ``helm.sh/helm/v3`` at the pinned version when missing and ``build`` is true."""
    found = find_helm()
    if found is not None:
        return found[0]
    if not build:
        raise BinaryError(
            f"helm is not built yet: run `pet-harness binaries build --helm` (cache: {cache_root()}), "
            f"or point {HELM_VAR} at a helm {versions.HELM_VERSION} you already have"
        )
    return build_helm(progress=progress or _stderr)


def helm_ldflags(helm_version: str, client_go_version: str) -> str:
    """The ``-X`` flags of helm's own Makefile: its version, and the Kubernetes version that
    ``helm template`` and ``helm lint`` assume by default (from the client-go it is built with,
    v0.N.P meaning Kubernetes 1.N).

    >>> helm_ldflags("3.21.4", "v0.36.2").split()[1]
    'helm.sh/helm/v3/internal/version.version=v3.21.4'
    """
    minor = client_go_version.lstrip("v").split(".")[1]
    flags = [f"helm.sh/helm/v3/internal/version.version=v{helm_version}",
             "helm.sh/helm/v3/internal/version.gitTreeState=clean"]
    for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"{pkg}.k8sVersionMajor=1", f"{pkg}.k8sVersionMinor={minor}"]
    return " ".join(f"-X {flag}" for flag in flags)


def build_helm(helm_version: str = versions.HELM_VERSION, progress: Progress | None = None) -> Path:
    """Build ``helm.sh/helm/v3/cmd/helm`` at ``helm_version`` into the cache (a throwaway module of
    its own, like the control-plane binaries)."""
    say = progress or _stderr
    started = time.monotonic()
    output = helm_cache_path(helm_version)
    output.parent.mkdir(parents=True, exist_ok=True)
    tag = f"v{helm_version}"
    workdir = _module_dir(f"helm-{tag}")
    say(f"building helm {tag} from helm.sh/helm/v3 (first build takes minutes)")
    info = json.loads(_run_go(["mod", "download", "-json", f"helm.sh/helm/v3@{tag}"], workdir, "go mod download"))
    upstream = Path(info["GoMod"]).read_text()
    client_go = re.search(r"^\s*k8s\.io/client-go\s+(v\S+)", upstream, re.M)
    if client_go is None:
        raise BinaryError(f"helm.sh/helm/v3@{tag}: its go.mod requires no k8s.io/client-go")
    go_line = re.search(r"^go\s+(\S+)", upstream, re.M)
    (workdir / "go.mod").write_text(
        f"module pet-harness.local/build/helm\n\ngo {go_line.group(1) if go_line else '1.24'}\n\n"
        f"require helm.sh/helm/v3 {tag}\n"
    )
    _run_go(["get", f"helm.sh/helm/v3/cmd/helm@{tag}"], workdir, "go get helm")
    _go_build(workdir, "helm.sh/helm/v3/cmd/helm", output,
              f"-s -w {helm_ldflags(helm_version, client_go.group(1))}", say, "helm")
    say(f"helm {tag} ready after {time.monotonic() - started:.0f}s")
    return output


def buildkit_cache_dir(buildkit_version: str = versions.BUILDKIT_VERSION) -> Path:
    return cache_root() / f"buildkit-v{buildkit_version}"


def ensure_buildkit(build: bool = True, progress: Progress | None = None) -> dict[str, Path]:
    """``buildkitd`` and ``buildctl`` (BuildKit, built from ``github.com/moby/buildkit``), built into the
    cache when missing and ``build`` is true."""
    folder = buildkit_cache_dir()
    found = {name: folder / name for name in ("buildkitd", "buildctl")}
    if all(p.is_file() and os.access(p, os.X_OK) for p in found.values()):
        return found
    if not build:
        raise BinaryError(f"BuildKit (buildkitd, buildctl) is not built yet: run `pet-harness binaries build --node` "
                          f"(cache: {folder})")
    return build_buildkit(progress=progress or _stderr)


def build_buildkit(
    buildkit_version: str = versions.BUILDKIT_VERSION, progress: Progress | None = None
) -> dict[str, Path]:
    say = progress or _stderr
    started = time.monotonic()
    folder = buildkit_cache_dir(buildkit_version)
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"v{buildkit_version}"
    workdir = _module_dir(f"buildkit-{tag}")
    say(f"building buildkitd and buildctl {tag} from github.com/moby/buildkit (first build takes minutes)")
    (workdir / "go.mod").write_text(
        f"module pet-harness.local/build/buildkit\n\ngo 1.24\n\nrequire github.com/moby/buildkit {tag}\n"
    )
    _run_go(["get", f"github.com/moby/buildkit@{tag}"], workdir, "go get buildkit")
    ldflags = f"-s -w -X github.com/moby/buildkit/version.Version={tag}"
    out = {}
    for name in ("buildkitd", "buildctl"):
        out[name] = folder / name
        _go_build(workdir, f"github.com/moby/buildkit/cmd/{name}", out[name], ldflags, say, name)
    say(f"BuildKit {tag} ready after {time.monotonic() - started:.0f}s")
    return out


def binary_version(path: Path, ask: Sequence[str] = ("--version",)) -> str:
    """What a binary says of its own version (first line of its answer to ``ask``: ``--version``, or
    ``version --short`` for helm, which has no such flag)."""
    with tempfile.TemporaryDirectory() as tmp:  # etcd may write default.etcd into cwd
        proc = subprocess.run(  # nosec B603 # argv of our own, no shell
            [str(path), *ask], capture_output=True, text=True, cwd=tmp, timeout=60)
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else ""

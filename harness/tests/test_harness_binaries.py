"""versions.py and binaries.py: pinned versions, binary lookup order, build helpers."""

from __future__ import annotations

import itertools
import json
import os
import re
import stat
import types
from pathlib import Path

import pytest

from pet_harness import binaries, versions
from pet_harness.binaries import BinaryError

# --- versions ---------------------------------------------------------------------------


def test_pinned_versions_are_major_minor_patch() -> None:
    assert re.fullmatch(r"1\.\d+\.\d+", versions.KUBERNETES_VERSION)
    assert re.fullmatch(r"3\.\d+\.\d+", versions.ETCD_VERSION)


@pytest.mark.parametrize(
    ("kubernetes", "staging"),
    [("1.34.4", "v0.34.4"), ("v1.30.0", "v0.30.0"), ("1.9.12", "v0.9.12")],
)
def test_staging_version(kubernetes: str, staging: str) -> None:
    assert versions.staging_version(kubernetes) == staging


def test_staging_version_defaults_to_the_pinned_release() -> None:
    _, minor, patch = versions.KUBERNETES_VERSION.split(".")
    assert versions.staging_version() == f"v0.{minor}.{patch}"


def test_staging_version_rejects_other_majors() -> None:
    with pytest.raises(ValueError, match=r"'2\.0\.0': only 1\.x is supported"):
        versions.staging_version("2.0.0")


@pytest.mark.parametrize("bad", ["1.34", "1.34.4.1", "1.34.x", "", "1.34.4-rc.1"])
def test_staging_version_rejects_malformed_versions(bad: str) -> None:
    with pytest.raises(ValueError, match=r"MAJOR\.MINOR\.PATCH"):
        versions.staging_version(bad)


# --- lookup -----------------------------------------------------------------------------


def _fake_binary(path: Path, executable: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho fake\n")
    path.chmod(0o755 if executable else 0o644)
    return path


def _fill_cache() -> tuple[Path, Path]:
    return _fake_binary(binaries.apiserver_cache_path()), _fake_binary(binaries.etcd_cache_path())


def test_cache_root_prefers_pet_harness_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PET_HARNESS_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert binaries.cache_root() == tmp_path / "mine"


def test_cache_root_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PET_HARNESS_CACHE", "~/c")
    assert binaries.cache_root() == tmp_path / "c"


def test_cache_root_falls_back_to_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PET_HARNESS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert binaries.cache_root() == tmp_path / "xdg" / "pet-harness"


def test_cache_root_falls_back_to_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PET_HARNESS_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert binaries.cache_root() == tmp_path / ".cache" / "pet-harness"


def test_cache_paths_are_per_version(clean_env: Path) -> None:
    assert binaries.apiserver_cache_path("1.2.3") == clean_env / "kubernetes-v1.2.3" / "kube-apiserver"
    assert binaries.etcd_cache_path("3.4.5") == clean_env / "etcd-v3.4.5" / "etcd"
    assert binaries.apiserver_cache_path() == clean_env / f"kubernetes-v{versions.KUBERNETES_VERSION}" / (
        "kube-apiserver"
    )
    assert binaries.etcd_cache_path() == clean_env / f"etcd-v{versions.ETCD_VERSION}" / "etcd"


def test_nothing_found_with_an_empty_cache() -> None:
    assert binaries.find_binaries() is None


def test_found_in_cache() -> None:
    apiserver, etcd = _fill_cache()
    found = binaries.find_binaries()
    assert found == binaries.ControlPlaneBinaries(apiserver, etcd, "cache")


def test_cache_needs_both_binaries() -> None:
    _fake_binary(binaries.apiserver_cache_path())
    assert binaries.find_binaries() is None


def test_non_executable_cache_entry_is_ignored() -> None:
    _fake_binary(binaries.apiserver_cache_path())
    _fake_binary(binaries.etcd_cache_path(), executable=False)
    assert binaries.find_binaries() is None


def test_test_asset_variables_win_over_kubebuilder_assets_and_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fill_cache()
    assets = tmp_path / "assets"
    _fake_binary(assets / "kube-apiserver")
    _fake_binary(assets / "etcd")
    apiserver = _fake_binary(tmp_path / "env" / "my-apiserver")
    etcd = _fake_binary(tmp_path / "env" / "my-etcd")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    monkeypatch.setenv("TEST_ASSET_KUBE_APISERVER", str(apiserver))
    monkeypatch.setenv("TEST_ASSET_ETCD", str(etcd))
    assert binaries.find_binaries() == binaries.ControlPlaneBinaries(apiserver, etcd, "env")


def test_kubebuilder_assets_win_over_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fill_cache()
    assets = tmp_path / "assets"
    apiserver = _fake_binary(assets / "kube-apiserver")
    etcd = _fake_binary(assets / "etcd")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    assert binaries.find_binaries() == binaries.ControlPlaneBinaries(apiserver, etcd, "kubebuilder-assets")


def test_sources_mix_per_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, cached_etcd = _fill_cache()
    apiserver = _fake_binary(tmp_path / "env" / "kube-apiserver")
    monkeypatch.setenv("TEST_ASSET_KUBE_APISERVER", str(apiserver))
    found = binaries.find_binaries()
    assert found == binaries.ControlPlaneBinaries(apiserver, cached_etcd, "cache+env")


def test_explicit_environ_mapping_is_used_instead_of_os_environ(tmp_path: Path) -> None:
    apiserver = _fake_binary(tmp_path / "a")
    etcd = _fake_binary(tmp_path / "e")
    env = {"TEST_ASSET_KUBE_APISERVER": str(apiserver), "TEST_ASSET_ETCD": str(etcd)}
    assert binaries.find_binaries(env) == binaries.ControlPlaneBinaries(apiserver, etcd, "env")
    assert binaries.find_binaries() is None  # os.environ holds neither


def test_non_executable_test_asset_names_variable_and_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _fake_binary(tmp_path / "kube-apiserver", executable=False)
    monkeypatch.setenv("TEST_ASSET_KUBE_APISERVER", str(path))
    with pytest.raises(BinaryError) as info:
        binaries.find_binaries()
    message = str(info.value)
    assert "TEST_ASSET_KUBE_APISERVER" in message
    assert str(path) in message
    assert "not executable" in message
    assert "chmod +x" in message


def test_missing_test_asset_says_not_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "etcd"
    monkeypatch.setenv("TEST_ASSET_ETCD", str(missing))
    with pytest.raises(BinaryError, match=rf"TEST_ASSET_ETCD points at {re.escape(str(missing))}, which is not a file"):
        binaries.find_binaries()


def test_test_asset_pointing_at_a_directory_is_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TEST_ASSET_ETCD", str(tmp_path))
    with pytest.raises(BinaryError, match="not a file"):
        binaries.find_binaries()


def test_kubebuilder_assets_missing_binary_names_variable_and_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake_binary(tmp_path / "kube-apiserver")  # etcd is missing from the folder
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    with pytest.raises(BinaryError) as info:
        binaries.find_binaries()
    assert "KUBEBUILDER_ASSETS" in str(info.value)
    assert str(tmp_path / "etcd") in str(info.value)


def test_ensure_binaries_returns_what_find_binaries_finds() -> None:
    apiserver, etcd = _fill_cache()
    assert binaries.ensure_binaries(build=False) == binaries.ControlPlaneBinaries(apiserver, etcd, "cache")


def test_ensure_binaries_without_build_says_what_to_do(clean_env: Path) -> None:
    with pytest.raises(BinaryError) as info:
        binaries.ensure_binaries(build=False)
    message = str(info.value)
    assert "pet-harness binaries build" in message
    assert str(clean_env) in message
    for var in ("TEST_ASSET_KUBE_APISERVER", "TEST_ASSET_ETCD", "KUBEBUILDER_ASSETS"):
        assert var in message
    assert not clean_env.exists(), "a lookup must not create the cache"


def test_ensure_binaries_builds_only_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    apiserver = _fake_binary(binaries.apiserver_cache_path())
    built: list[str] = []

    def fake_build_etcd(progress: binaries.Progress | None = None) -> Path:
        built.append("etcd")
        return _fake_binary(binaries.etcd_cache_path())

    def fake_build_apiserver(progress: binaries.Progress | None = None) -> Path:
        built.append("kube-apiserver")
        raise AssertionError("kube-apiserver is cached and must not be rebuilt")

    monkeypatch.setattr(binaries, "build_etcd", fake_build_etcd)
    monkeypatch.setattr(binaries, "build_kube_apiserver", fake_build_apiserver)
    found = binaries.ensure_binaries(build=True, progress=lambda line: None)
    assert built == ["etcd"]
    assert found == binaries.ControlPlaneBinaries(apiserver, binaries.etcd_cache_path(), "built")


# --- go ---------------------------------------------------------------------------------


def test_go_executable_missing_tells_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(BinaryError) as info:
        binaries.go_executable()
    message = str(info.value)
    assert "Go toolchain is not on PATH" in message
    assert "Install Go 1.24 or newer" in message
    assert "apt-get install golang-go" in message
    assert "TEST_ASSET_KUBE_APISERVER" in message
    assert "KUBEBUILDER_ASSETS" in message


def test_go_executable_found_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    go = _fake_binary(tmp_path / "bin" / "go")
    monkeypatch.setenv("PATH", str(go.parent))
    assert binaries.go_executable() == str(go)


def test_run_go_failure_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    go = tmp_path / "bin" / "go"
    go.parent.mkdir()
    go.write_text("#!/bin/sh\necho 'go: k8s.io/kubernetes@v1.34.4: dial tcp: i/o timeout' >&2\nexit 1\n")
    go.chmod(0o755)
    monkeypatch.setenv("PATH", f"{go.parent}{os.pathsep}/usr/bin{os.pathsep}/bin")
    with pytest.raises(BinaryError) as info:
        binaries._run_go(["mod", "download"], tmp_path, "go mod download")
    message = str(info.value)
    assert message.startswith("go mod download failed:\n")
    assert "dial tcp: i/o timeout" in message
    assert "GOPROXY" in message


def test_go_env_defaults_without_overriding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CGO_ENABLED", raising=False)
    monkeypatch.setenv("GOFLAGS", "-mod=readonly")
    env = binaries._go_env()
    assert env["CGO_ENABLED"] == "0"
    assert env["GOFLAGS"] == "-mod=readonly"


def test_explain_go_failure_unreachable_proxy_hint() -> None:
    stderr = (
        "go: downloading k8s.io/kubernetes v1.34.4\n"
        "go: k8s.io/kubernetes@v1.34.4: Get \"https://proxy.golang.org/k8s.io/kubernetes/@v/v1.34.4.info\": "
        "dial tcp: lookup proxy.golang.org: no such host\n"
    )
    message = binaries._explain_go_failure("go mod download", stderr)
    assert message.startswith("go mod download failed:\n")
    assert "lookup proxy.golang.org: no such host" in message
    assert "Go module proxy could not be reached" in message
    assert "GOPROXY" in message
    assert "'the default'" in message
    assert "TEST_ASSET_KUBE_APISERVER" in message


def test_explain_go_failure_names_the_configured_goproxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOPROXY", "https://goproxy.example.invalid")
    message = binaries._explain_go_failure("go get", "dial tcp 10.0.0.1:443: connect: connection refused")
    assert "'https://goproxy.example.invalid'" in message


def test_explain_go_failure_old_go_hint() -> None:
    message = binaries._explain_go_failure("go get", "go: module k8s.io/kubernetes requires go >= 1.24.0")
    assert "too old" in message
    assert "GOPROXY" not in message


def test_explain_go_failure_without_a_known_cause_has_no_hint() -> None:
    message = binaries._explain_go_failure("go build x", "x.go:1:1: syntax error")
    assert message == "go build x failed:\nx.go:1:1: syntax error"


def test_explain_go_failure_keeps_only_the_tail() -> None:
    stderr = "\n".join(f"line {i}" for i in range(40))
    message = binaries._explain_go_failure("go build", stderr)
    assert "line 39" in message
    assert "line 25" in message
    assert "line 24" not in message


# --- staging replaces -------------------------------------------------------------------

UPSTREAM_GO_MOD = """\
// This is a generated file. Do not edit directly.

module k8s.io/kubernetes

go 1.24.0

godebug default=go1.24

require (
\tgithub.com/Microsoft/go-winio v0.6.2
\tgithub.com/blang/semver/v4 v4.0.0
\tgo.etcd.io/etcd/client/v3 v3.6.4
\tk8s.io/api v0.0.0
\tk8s.io/apiextensions-apiserver v0.0.0
\tk8s.io/apimachinery v0.0.0
\tk8s.io/client-go v0.0.0 // indirect
\tk8s.io/klog/v2 v2.130.1
\tk8s.io/kube-openapi v0.0.0-20250710124328-f3f2b991d03b
\tk8s.io/utils v0.0.0-20241104100929-3ea5e8cea738
\tsigs.k8s.io/yaml v1.6.0
)

require k8s.io/x v0.0.0

require (
\tgithub.com/google/cel-go v0.26.0 // indirect
\tk8s.io/api v0.0.0 // listed twice on purpose
\tk8s.io/cri-client v0.0.0 // indirect
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/apimachinery => ./staging/src/k8s.io/apimachinery
)
"""


def test_staging_replaces_from_a_realistic_go_mod() -> None:
    assert binaries.staging_replaces(UPSTREAM_GO_MOD, "v0.34.4") == [
        "replace k8s.io/api => k8s.io/api v0.34.4",
        "replace k8s.io/apiextensions-apiserver => k8s.io/apiextensions-apiserver v0.34.4",
        "replace k8s.io/apimachinery => k8s.io/apimachinery v0.34.4",
        "replace k8s.io/client-go => k8s.io/client-go v0.34.4",
        "replace k8s.io/x => k8s.io/x v0.34.4",
        "replace k8s.io/cri-client => k8s.io/cri-client v0.34.4",
    ]


def test_staging_replaces_leaves_pseudo_versions_and_other_hosts_alone() -> None:
    lines = binaries.staging_replaces(UPSTREAM_GO_MOD, "v0.34.4")
    joined = "\n".join(lines)
    assert "k8s.io/utils" not in joined
    assert "k8s.io/kube-openapi" not in joined
    assert "k8s.io/klog" not in joined
    assert "sigs.k8s.io" not in joined
    assert "github.com" not in joined


def test_staging_replaces_single_line_require() -> None:
    assert binaries.staging_replaces("module m\n\nrequire k8s.io/x v0.0.0\n", "v0.30.1") == [
        "replace k8s.io/x => k8s.io/x v0.30.1"
    ]


def test_staging_replaces_nothing_to_replace() -> None:
    assert binaries.staging_replaces("module m\n\nrequire k8s.io/utils v0.0.0-2024\n", "v0.30.1") == []


# --- build progress ---------------------------------------------------------------------


def test_build_progress_counts_packages_and_keeps_the_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = itertools.count(0.0, 3.0)  # every reading is 3 "seconds" after the previous one
    monkeypatch.setattr(binaries, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    lines = [f"k8s.io/pkg{i}\n" for i in range(50)] + ["./x.go:1: undefined: foo\n", "\n"]
    said: list[str] = []
    tail = binaries._build_progress(iter(lines), said.append, "kube-apiserver", 0.0)
    assert len(tail) == 40
    assert tail[-2:] == ["./x.go:1: undefined: foo", ""]
    assert said, "progress must be reported"
    assert all(line.startswith("  kube-apiserver: ") for line in said)
    # readings at 0, 3, 6, ... seconds: a line at most every 5 seconds, i.e. every other package
    assert said[0] == "  kube-apiserver: 3 packages compiled, 6s (k8s.io/pkg2)"
    assert said[-1] == "  kube-apiserver: 49 packages compiled, 144s (k8s.io/pkg48)"
    assert len(said) == 24


def test_binary_version_first_line(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\necho \"tool v1.2.3 ($1)\"\necho second line\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    assert binaries.binary_version(tool) == "tool v1.2.3 (--version)"


def test_binary_version_reads_stderr_when_stdout_is_empty(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\necho 'etcd Version: 3.6.16' >&2\n")
    tool.chmod(0o755)
    assert binaries.binary_version(tool) == "etcd Version: 3.6.16"


# --- kube-controller-manager (optional) --------------------------------------------------


def test_controller_manager_is_cached_next_to_the_apiserver_of_the_same_version() -> None:
    assert binaries.controller_manager_cache_path().parent == binaries.apiserver_cache_path().parent
    assert binaries.controller_manager_cache_path("1.2.3").parent.name == "kubernetes-v1.2.3"
    assert binaries.controller_manager_cache_path().name == "kube-controller-manager"


def test_controller_manager_not_found_and_not_required_by_find_binaries() -> None:
    apiserver, etcd = _fill_cache()
    assert binaries.find_controller_manager() is None
    assert binaries.find_binaries() == binaries.ControlPlaneBinaries(apiserver, etcd, "cache")


def test_controller_manager_lookup_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cached = _fake_binary(binaries.controller_manager_cache_path())
    assert binaries.find_controller_manager() == (cached, "cache")
    assets = tmp_path / "assets"
    in_assets = _fake_binary(assets / "kube-controller-manager")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    assert binaries.find_controller_manager() == (in_assets, "kubebuilder-assets")
    given = _fake_binary(tmp_path / "mine" / "kcm")
    monkeypatch.setenv("TEST_ASSET_KUBE_CONTROLLER_MANAGER", str(given))
    assert binaries.find_controller_manager() == (given, "env")
    assert binaries.find_controller_manager({}) == (cached, "cache")


def test_controller_manager_from_a_bad_variable_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TEST_ASSET_KUBE_CONTROLLER_MANAGER", str(_fake_binary(tmp_path / "kcm", executable=False)))
    with pytest.raises(BinaryError, match=r"TEST_ASSET_KUBE_CONTROLLER_MANAGER.*not executable"):
        binaries.find_controller_manager()


def test_ensure_controller_manager_without_build_says_what_to_do(clean_env: Path) -> None:
    with pytest.raises(BinaryError) as info:
        binaries.ensure_controller_manager(build=False)
    message = str(info.value)
    assert "pet-harness binaries build" in message
    assert "TEST_ASSET_KUBE_CONTROLLER_MANAGER" in message
    assert not clean_env.exists(), "a lookup must not create the cache"


def test_ensure_controller_manager_builds_it_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []

    def fake_build(command: str, progress: binaries.Progress | None = None) -> Path:
        built.append(command)
        return _fake_binary(binaries.controller_manager_cache_path())

    monkeypatch.setattr(binaries, "build_kubernetes_command", fake_build)
    assert binaries.ensure_controller_manager(build=True) == binaries.controller_manager_cache_path()
    assert binaries.ensure_controller_manager(build=True) == binaries.controller_manager_cache_path()
    assert built == ["kube-controller-manager"], "built once, then found in the cache"


def test_kubernetes_commands_are_built_from_the_same_module_the_same_way(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    upstream = tmp_path / "upstream.go.mod"
    upstream.write_text("module k8s.io/kubernetes\n\ngo 1.24.0\n\nrequire (\n\tk8s.io/api v0.0.0\n)\n")
    go_calls: list[tuple[str, ...]] = []
    builds: list[tuple[str, Path, str]] = []

    def fake_run_go(args: list[str], cwd: Path, what: str) -> str:
        go_calls.append(tuple(args))
        return json.dumps({"GoMod": str(upstream)}) if args[:2] == ["mod", "download"] else ""

    def fake_go_build(workdir: Path, package: str, output: Path, ldflags: str, say: object, label: str) -> None:
        builds.append((package, output, ldflags))
        assert "require k8s.io/kubernetes v1.34.4" in (workdir / "go.mod").read_text()
        assert "replace k8s.io/api => k8s.io/api v0.34.4" in (workdir / "go.mod").read_text()
        _fake_binary(output)

    monkeypatch.setattr(binaries, "_run_go", fake_run_go)
    monkeypatch.setattr(binaries, "_go_build", fake_go_build)
    quiet: binaries.Progress = lambda line: None  # noqa: E731
    assert binaries.build_kube_controller_manager("1.34.4", quiet) == binaries.controller_manager_cache_path("1.34.4")
    assert binaries.build_kube_apiserver("1.34.4", quiet) == binaries.apiserver_cache_path("1.34.4")
    assert [b[0] for b in builds] == ["k8s.io/kubernetes/cmd/kube-controller-manager",
                                      "k8s.io/kubernetes/cmd/kube-apiserver"]
    assert ("get", "k8s.io/kubernetes/cmd/kube-controller-manager@v1.34.4") in go_calls
    for _, _, ldflags in builds:
        assert "-X k8s.io/component-base/version.gitVersion=v1.34.4" in ldflags
        assert "-X k8s.io/component-base/version.gitMinor=34" in ldflags


def test_kubernetes_ldflags() -> None:
    flags = binaries.kubernetes_ldflags("1.34.4", "2026-01-01T00:00:00Z")
    assert "-X k8s.io/client-go/pkg/version.gitVersion=v1.34.4" in flags
    assert "-X k8s.io/component-base/version.buildDate=2026-01-01T00:00:00Z" in flags


# --- the node's commands (kube-scheduler, kubelet, kube-proxy) ----------------------------


@pytest.mark.parametrize("command", binaries.NODE_COMMANDS)
def test_node_commands_are_cached_next_to_the_apiserver(command: str) -> None:
    assert binaries.kubernetes_command_cache_path(command) == binaries.apiserver_cache_path().parent / command


def test_an_unknown_kubernetes_command_is_refused_by_name() -> None:
    with pytest.raises(BinaryError, match=r"unknown Kubernetes command 'kubectl': one of .*kubelet"):
        binaries.kubernetes_command_cache_path("kubectl")
    with pytest.raises(BinaryError, match=r"'kube-dns'"):
        binaries.find_kubernetes_command("kube-dns")


@pytest.mark.parametrize(("command", "var"), [
    ("kubelet", "TEST_ASSET_KUBELET"), ("kube-proxy", "TEST_ASSET_KUBE_PROXY"),
    ("kube-scheduler", "TEST_ASSET_KUBE_SCHEDULER"),
])
def test_node_command_lookup_order(command: str, var: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert binaries.find_kubernetes_command(command) is None
    cached = _fake_binary(binaries.kubernetes_command_cache_path(command))
    assert binaries.find_kubernetes_command(command) == (cached, "cache")
    assets = tmp_path / "assets"
    in_assets = _fake_binary(assets / command)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    assert binaries.find_kubernetes_command(command) == (in_assets, "kubebuilder-assets")
    given = _fake_binary(tmp_path / "mine" / command)
    monkeypatch.setenv(var, str(given))
    assert binaries.find_kubernetes_command(command) == (given, "env")


def test_ensure_a_node_command_without_build_names_the_node_flag(clean_env: Path) -> None:
    with pytest.raises(BinaryError) as info:
        binaries.ensure_kubernetes_command("kubelet", build=False)
    message = str(info.value)
    assert "pet-harness binaries build --node" in message
    assert "TEST_ASSET_KUBELET" in message
    assert not clean_env.exists(), "a lookup must not create the cache"


def test_ensure_node_binaries_builds_only_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    present = _fake_binary(binaries.kubernetes_command_cache_path("kube-controller-manager"))
    built: list[str] = []

    def fake_build(command: str, kubernetes_version: str = "", progress: object = None) -> Path:
        built.append(command)
        return _fake_binary(binaries.kubernetes_command_cache_path(command))

    monkeypatch.setattr(binaries, "build_kubernetes_command", fake_build)
    found = binaries.ensure_node_binaries(build=True)
    assert built == list(binaries.NODE_COMMANDS)
    assert found["kube-controller-manager"] == present
    assert set(found) == {"kube-controller-manager", *binaries.NODE_COMMANDS}
    built.clear()
    binaries.ensure_node_binaries(build=True)
    assert built == [], "a second call finds everything in the cache"

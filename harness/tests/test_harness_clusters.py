"""clusters/base.py, factory.py and external.py: kubeconfigs, backend choice, external backends.

No Docker runs here: the k3s backend is covered through a fake container.
"""

from __future__ import annotations

import base64
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import config as kube_config

from pet_harness import versions
from pet_harness.clusters import BACKENDS, Cluster, ClusterError, external, make_cluster
from pet_harness.clusters import local as local_module
from pet_harness.clusters.base import write_kubeconfig
from pet_harness.clusters.external import K3S_IMAGE, K3sCluster, KubeconfigCluster
from pet_harness.clusters.factory import backend_name
from pet_harness.clusters.local import LocalCluster, free_port
from pet_harness.pki import CertificateAuthority

CA_PEM = b"-----BEGIN CERTIFICATE-----\nfake ca\n-----END CERTIFICATE-----\n"
CERT_PEM = b"-----BEGIN CERTIFICATE-----\nfake client\n-----END CERTIFICATE-----\n"
# a fake PEM (the tests check where keys are written, not what they hold):
# pragma: allowlist nextline secret
KEY_PEM = b"-----BEGIN PRIVATE KEY-----\nfake key\n-----END PRIVATE KEY-----\n"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# --- write_kubeconfig -------------------------------------------------------------------


def test_write_kubeconfig_structure(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "deep" / "admin.kubeconfig", "https://127.0.0.1:6443", CA_PEM, "admin", CERT_PEM, KEY_PEM
    )
    assert path == tmp_path / "deep" / "admin.kubeconfig"
    assert _mode(path) == 0o600
    data = yaml.safe_load(path.read_text())
    assert data["apiVersion"] == "v1"
    assert data["kind"] == "Config"
    assert data["current-context"] == "admin@pet-harness"
    [cluster] = data["clusters"]
    assert cluster["name"] == "pet-harness"
    assert set(cluster["cluster"]) == {"server", "certificate-authority-data"}
    assert cluster["cluster"]["server"] == "https://127.0.0.1:6443"
    assert _b64decode(cluster["cluster"]["certificate-authority-data"]) == CA_PEM
    assert data["contexts"] == [{"name": "admin@pet-harness", "context": {"cluster": "pet-harness", "user": "admin"}}]
    [user] = data["users"]
    assert user["name"] == "admin"
    assert set(user["user"]) == {"client-certificate-data", "client-key-data"}
    assert _b64decode(user["user"]["client-certificate-data"]) == CERT_PEM
    assert _b64decode(user["user"]["client-key-data"]) == KEY_PEM


def test_write_kubeconfig_token_namespace_and_cluster_name(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "kc", "https://h:1", CA_PEM, "sa", token="tok-123", cluster_name="c1", namespace="pets"
    )
    data = yaml.safe_load(path.read_text())
    assert data["users"] == [{"name": "sa", "user": {"token": "tok-123"}}]
    assert data["contexts"] == [{"name": "sa@c1", "context": {"cluster": "c1", "user": "sa", "namespace": "pets"}}]
    assert data["current-context"] == "sa@c1"
    assert data["clusters"][0]["name"] == "c1"


def test_write_kubeconfig_needs_both_cert_and_key_for_cert_auth(tmp_path: Path) -> None:
    data = yaml.safe_load(write_kubeconfig(tmp_path / "kc", "https://h:1", CA_PEM, "u", CERT_PEM).read_text())
    assert data["users"] == [{"name": "u", "user": {}}]


def test_write_kubeconfig_tightens_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "kc"
    path.write_text("old")
    path.chmod(0o644)
    write_kubeconfig(path, "https://h:1", CA_PEM, "u", CERT_PEM, KEY_PEM)
    assert _mode(path) == 0o600
    assert "old" not in path.read_text()


def test_kubernetes_client_accepts_the_kubeconfig(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    pair = ca.client("alice", ["devs"])
    path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:6443", ca.cert_pem, "alice", pair.cert_pem,
                            pair.key_pem)
    api_client = kube_config.new_client_from_config(config_file=str(path))
    with api_client:
        conf = api_client.configuration
        assert conf.host == "https://127.0.0.1:6443"
        assert Path(conf.ssl_ca_cert).read_bytes() == ca.cert_pem
        assert Path(conf.cert_file).read_bytes() == pair.cert_pem
        assert Path(conf.key_file).read_bytes() == pair.key_pem
        assert conf.verify_ssl


def test_kubernetes_client_accepts_a_token_kubeconfig(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:6443", CertificateAuthority().cert_pem, "sa",
                            token="tok-123")
    with kube_config.new_client_from_config(config_file=str(path)) as api_client:
        assert api_client.configuration.get_api_key_with_prefix("BearerToken") == "Bearer tok-123"


# --- the Cluster base class -------------------------------------------------------------


class _Recorder(Cluster):
    backend = "recorder"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")
        if self.fail:
            raise ClusterError("cannot start")

    def stop(self) -> None:
        self.calls.append("stop")

    @property
    def kubeconfig_path(self) -> Path:
        return Path("/k")


def test_cluster_context_manager_starts_and_stops() -> None:
    cluster = _Recorder()
    with cluster as entered:
        assert entered is cluster
        assert cluster.calls == ["start"]
    assert cluster.calls == ["start", "stop"]


def test_cluster_context_manager_stops_after_a_failed_start() -> None:
    cluster = _Recorder(fail=True)
    with pytest.raises(ClusterError, match="cannot start"), cluster:
        pytest.fail("the body must not run")
    assert cluster.calls == ["start", "stop"]


def test_cluster_defaults() -> None:
    cluster = _Recorder()
    assert cluster.describe() == {"backend": "recorder", "kubeconfig": "/k"}
    assert not cluster.owns_control_plane
    with pytest.raises(ClusterError, match="the recorder backend cannot mint client identities"):
        cluster.user_kubeconfig("alice", ("devs",))


# --- factory ----------------------------------------------------------------------------


def test_backend_defaults_to_local() -> None:
    assert backend_name() == "local"


def test_empty_pet_cluster_means_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PET_CLUSTER", "")
    assert backend_name() == "local"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("local", "local"), ("k3s", "k3s"), ("kubeconfig", "kubeconfig"), (" K3S ", "k3s"), ("KubeConfig", "kubeconfig")],
)
def test_backend_from_pet_cluster(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    monkeypatch.setenv("PET_CLUSTER", value)
    assert backend_name() == expected


def test_explicit_backend_wins_over_pet_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PET_CLUSTER", "k3s")
    assert backend_name("kubeconfig") == "kubeconfig"


def test_unknown_backend_names_value_and_allowed_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PET_CLUSTER", "Kind")
    with pytest.raises(ClusterError) as info:
        make_cluster()
    message = str(info.value)
    assert "'kind'" in message
    assert "local, node, k3s, kubeconfig" in message
    assert BACKENDS == ("local", "node", "k3s", "kubeconfig")


def test_make_cluster_local() -> None:
    cluster = make_cluster()
    assert isinstance(cluster, LocalCluster)
    assert cluster.backend == "local"
    assert cluster.owns_control_plane


def test_make_cluster_k3s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PET_CLUSTER", "k3s")
    cluster = make_cluster()
    assert isinstance(cluster, K3sCluster)
    assert not cluster.owns_control_plane


def test_make_cluster_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PET_KUBECONFIG", str(tmp_path / "kc"))
    cluster = make_cluster("kubeconfig")
    assert isinstance(cluster, KubeconfigCluster)
    assert cluster.source == tmp_path / "kc"


# --- KubeconfigCluster ------------------------------------------------------------------

TWO_CONTEXTS = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "staging", "cluster": {"server": "https://staging:6443"}},
                 {"name": "dev", "cluster": {"server": "https://dev:6443"}}],
    "users": [{"name": "me", "user": {"token": "t"}}],
    "contexts": [{"name": "staging", "context": {"cluster": "staging", "user": "me"}},
                 {"name": "dev", "context": {"cluster": "dev", "user": "me"}}],
    "current-context": "staging",
}


@pytest.fixture
def source_kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "source" / "config"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(TWO_CONTEXTS))
    return path


@pytest.fixture
def reachability(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, str, dict[str, Any]]]:
    """Replace the network check; record the kubeconfig (and its content) it was given."""
    checked: list[tuple[Path, str, dict[str, Any]]] = []

    def fake_check(kubeconfig: Path, what: str) -> None:
        checked.append((kubeconfig, what, yaml.safe_load(kubeconfig.read_text())))

    monkeypatch.setattr(external, "_check_reachable", fake_check)
    return checked


def test_kubeconfig_source_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "from-kubeconfig"))
    assert KubeconfigCluster().source == tmp_path / "from-kubeconfig"
    monkeypatch.setenv("PET_KUBECONFIG", str(tmp_path / "from-pet"))
    assert KubeconfigCluster().source == tmp_path / "from-pet"
    assert KubeconfigCluster(tmp_path / "explicit").source == tmp_path / "explicit"


def test_kubeconfig_default_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    default = tmp_path / ".kube" / "config"
    default.parent.mkdir()
    default.write_text("{}")
    assert KubeconfigCluster().source == default


def test_kubeconfig_nothing_to_use(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ClusterError) as info:
        KubeconfigCluster()
    message = str(info.value)
    assert "PET_KUBECONFIG" in message
    assert "KUBECONFIG" in message
    assert str(tmp_path / ".kube" / "config") in message


def test_kubeconfig_missing_file(tmp_path: Path, reachability: list[Any]) -> None:
    cluster = KubeconfigCluster(tmp_path / "missing")
    with pytest.raises(ClusterError, match=r"kubeconfig .*missing does not exist"):
        cluster.start()
    assert reachability == []
    with pytest.raises(ClusterError, match="not started"):
        _ = cluster.kubeconfig_path


def test_kubeconfig_without_context_is_used_as_is(source_kubeconfig: Path, reachability: list[Any]) -> None:
    cluster = KubeconfigCluster(source_kubeconfig)
    cluster.start()
    assert cluster.kubeconfig_path == source_kubeconfig
    assert reachability == [(source_kubeconfig, "kubeconfig backend", TWO_CONTEXTS)]
    assert cluster.describe() == {"backend": "kubeconfig", "kubeconfig": str(source_kubeconfig), "context": None}
    cluster.stop()
    assert source_kubeconfig.is_file(), "stop() must never delete the user's kubeconfig"


def test_kubeconfig_context_selection(source_kubeconfig: Path, reachability: list[Any]) -> None:
    original = source_kubeconfig.read_text()
    cluster = KubeconfigCluster(source_kubeconfig, context="dev")
    cluster.start()
    path = cluster.kubeconfig_path
    assert path != source_kubeconfig
    assert path.parent.name.startswith("pet-kubeconfig-")
    assert _mode(path) == 0o600
    data = yaml.safe_load(path.read_text())
    assert data["current-context"] == "dev"
    assert {k: v for k, v in data.items() if k != "current-context"} == {
        k: v for k, v in TWO_CONTEXTS.items() if k != "current-context"
    }
    assert source_kubeconfig.read_text() == original, "the source kubeconfig must stay untouched"
    assert [(p, what, d["current-context"]) for p, what, d in reachability] == [(path, "kubeconfig backend", "dev")]
    assert cluster.describe()["context"] == "dev"

    cluster.stop()
    assert not path.parent.exists()
    with pytest.raises(ClusterError):
        _ = cluster.kubeconfig_path
    cluster.stop()  # twice is fine


def test_kubeconfig_context_from_environment(
    monkeypatch: pytest.MonkeyPatch, source_kubeconfig: Path, reachability: list[Any]
) -> None:
    monkeypatch.setenv("PET_KUBECONFIG", str(source_kubeconfig))
    monkeypatch.setenv("PET_KUBE_CONTEXT", "dev")
    with KubeconfigCluster() as cluster:
        assert yaml.safe_load(cluster.kubeconfig_path.read_text())["current-context"] == "dev"
        tmp = cluster.kubeconfig_path.parent
    assert not tmp.exists()


def test_kubeconfig_unknown_context_names_the_available_ones(
    source_kubeconfig: Path, reachability: list[Any], private_tmpdir: Path
) -> None:
    cluster = KubeconfigCluster(source_kubeconfig, context="prod")
    with pytest.raises(ClusterError) as info:
        cluster.start()
    message = str(info.value)
    assert "'prod'" in message
    assert str(source_kubeconfig) in message
    assert "['staging', 'dev']" in message
    assert reachability == []
    assert list(private_tmpdir.iterdir()) == []


def test_kubeconfig_unreachable_cluster_cleans_up_in_a_with_block(
    source_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch, private_tmpdir: Path
) -> None:
    def unreachable(kubeconfig: Path, what: str) -> None:
        raise ClusterError(f"{what}: cannot read namespace 'default'")

    monkeypatch.setattr(external, "_check_reachable", unreachable)
    with pytest.raises(ClusterError, match="kubeconfig backend: cannot read"), KubeconfigCluster(
        source_kubeconfig, context="dev"
    ):
        pytest.fail("the body must not run")
    assert list(private_tmpdir.iterdir()) == []


def test_check_reachable_wraps_connection_errors(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    pair = ca.client("u")
    port = free_port()  # nothing listens there
    path = write_kubeconfig(tmp_path / "kc", f"https://127.0.0.1:{port}", ca.cert_pem, "u", pair.cert_pem,
                            pair.key_pem)
    with pytest.raises(ClusterError) as info:
        external._check_reachable(path, "probe")
    message = str(info.value)
    assert message.startswith(f"probe: cannot read namespace 'default' with {path}: ")
    assert str(port) in message
    assert info.value.__cause__ is not None


# --- K3sCluster -------------------------------------------------------------------------

K3S_CONFIG_YAML = yaml.safe_dump({
    "apiVersion": "v1", "kind": "Config", "current-context": "default",
    "clusters": [{"name": "default", "cluster": {"server": "https://localhost:32768"}}],
    "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
    "users": [{"name": "default", "user": {"token": "k3s"}}],
})


class FakeK3sContainer:
    def __init__(self, start_error: Exception | None = None, stop_error: Exception | None = None) -> None:
        self.start_error = start_error
        self.stop_error = stop_error
        self.calls: list[str] = []

    def start(self) -> FakeK3sContainer:
        self.calls.append("start")
        if self.start_error is not None:
            raise self.start_error
        return self

    def stop(self) -> None:
        self.calls.append("stop")
        if self.stop_error is not None:
            raise self.stop_error

    def config_yaml(self) -> str:
        self.calls.append("config_yaml")
        return K3S_CONFIG_YAML


def _use_container(monkeypatch: pytest.MonkeyPatch, container: FakeK3sContainer) -> list[str]:
    images: list[str] = []

    def new_container(self: K3sCluster) -> FakeK3sContainer:
        images.append(self.image)
        return container

    monkeypatch.setattr(K3sCluster, "_new_container", new_container)
    return images


def test_k3s_image_matches_the_pinned_kubernetes_version() -> None:
    assert K3S_IMAGE.startswith(f"rancher/k3s:v{versions.KUBERNETES_VERSION}-k3s")


def test_k3s_image_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert K3sCluster().image == K3S_IMAGE
    monkeypatch.setenv("PET_K3S_IMAGE", "rancher/k3s:v1.33.0-k3s1")
    assert K3sCluster().image == "rancher/k3s:v1.33.0-k3s1"
    assert K3sCluster("my/k3s:1").image == "my/k3s:1"


def test_k3s_start_and_stop(
    monkeypatch: pytest.MonkeyPatch, reachability: list[Any], private_tmpdir: Path
) -> None:
    container = FakeK3sContainer()
    images = _use_container(monkeypatch, container)
    cluster = K3sCluster("rancher/k3s:test")
    with pytest.raises(ClusterError, match="not started"):
        _ = cluster.kubeconfig_path

    cluster.start()
    assert images == ["rancher/k3s:test"]
    assert container.calls == ["start", "config_yaml"]
    path = cluster.kubeconfig_path
    assert path.parent.parent == private_tmpdir
    assert path.parent.name.startswith("pet-k3s-")
    assert path.read_text() == K3S_CONFIG_YAML
    assert _mode(path) == 0o600
    assert reachability == [(path, "k3s backend", yaml.safe_load(K3S_CONFIG_YAML))]
    assert cluster.describe() == {"backend": "k3s", "image": "rancher/k3s:test", "kubeconfig": str(path)}

    cluster.stop()
    assert container.calls == ["start", "config_yaml", "stop"]
    assert list(private_tmpdir.iterdir()) == []
    with pytest.raises(ClusterError, match="not started"):
        _ = cluster.kubeconfig_path
    cluster.stop()
    assert container.calls.count("stop") == 1, "a second stop() must not stop the container again"


def test_k3s_start_failure_mentions_docker(
    monkeypatch: pytest.MonkeyPatch, reachability: list[Any], private_tmpdir: Path
) -> None:
    cause = ConnectionError("Error while fetching server API version: No such file or directory")
    container = FakeK3sContainer(start_error=cause)
    _use_container(monkeypatch, container)
    cluster = K3sCluster()
    with pytest.raises(ClusterError) as info:
        cluster.start()
    message = str(info.value)
    assert K3S_IMAGE in message
    assert "Docker" in message
    assert "PET_CLUSTER=local" in message
    assert "Error while fetching server API version" in message
    assert info.value.__cause__ is cause
    assert reachability == []
    assert list(private_tmpdir.iterdir()) == []
    cluster.stop()  # safe after a failed start
    assert container.calls == ["start"]


def test_k3s_unreachable_cluster_is_torn_down_by_the_with_block(
    monkeypatch: pytest.MonkeyPatch, private_tmpdir: Path
) -> None:
    container = FakeK3sContainer()
    _use_container(monkeypatch, container)

    def unreachable(kubeconfig: Path, what: str) -> None:
        raise ClusterError(f"{what}: cannot read namespace 'default'")

    monkeypatch.setattr(external, "_check_reachable", unreachable)
    with pytest.raises(ClusterError, match="k3s backend: cannot read"), K3sCluster():
        pytest.fail("the body must not run")
    assert container.calls == ["start", "config_yaml", "stop"]
    assert list(private_tmpdir.iterdir()) == []


def test_k3s_container_creation_failure_mentions_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    # testcontainers' K3SContainer() already talks to Docker in its constructor: without an
    # engine, docker.from_env() raises there, before container.start() is ever reached
    cause = RuntimeError("Error while fetching server API version: ('Connection aborted.', FileNotFoundError(2))")

    def no_docker(self: K3sCluster) -> Any:
        raise cause

    monkeypatch.setattr(K3sCluster, "_new_container", no_docker)
    with pytest.raises(ClusterError, match="needs a running Docker engine") as info:
        K3sCluster().start()
    assert info.value.__cause__ is cause


def test_k3s_stop_cleans_up_even_if_the_container_stop_fails(
    monkeypatch: pytest.MonkeyPatch, reachability: list[Any], private_tmpdir: Path
) -> None:
    container = FakeK3sContainer(stop_error=ConnectionError("docker went away"))
    _use_container(monkeypatch, container)
    cluster = K3sCluster()
    cluster.start()
    with pytest.raises(ConnectionError, match="docker went away"):
        cluster.stop()
    assert list(private_tmpdir.iterdir()) == []
    with pytest.raises(ClusterError, match="not started"):
        _ = cluster.kubeconfig_path
    cluster.stop()  # the container is forgotten: no second stop attempt
    assert container.calls.count("stop") == 1


def test_temp_dirs_go_to_the_private_tmpdir(private_tmpdir: Path) -> None:
    # guards the fixture the k3s and kubeconfig tests rely on to count leftovers
    assert tempfile.gettempdir() == str(private_tmpdir)


class FakeSocket:
    """A socket whose bind(0) is given the next port of ``ports`` (the last one again when used up)."""

    ports: list[int] = []

    def __init__(self, *args: object) -> None:
        self.port = FakeSocket.ports.pop(0) if len(FakeSocket.ports) > 1 else FakeSocket.ports[0]

    def __enter__(self) -> FakeSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def bind(self, address: object) -> None:
        pass

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


@pytest.fixture
def kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine whose ephemeral range covers every port: free_port falls back to bind(0)."""
    monkeypatch.setattr(local_module, "ephemeral_range", lambda: (1024, 65535))


def test_free_port_skips_the_ports_to_avoid(monkeypatch: pytest.MonkeyPatch, kernel_picks: None) -> None:
    import socket as socket_module

    monkeypatch.setattr(FakeSocket, "ports", [41000, 41000, 41001])
    monkeypatch.setattr(socket_module, "socket", FakeSocket)
    assert free_port(avoid={41000}) == 41001


def test_free_port_gives_up_naming_what_it_avoided(monkeypatch: pytest.MonkeyPatch, kernel_picks: None) -> None:
    import socket as socket_module

    monkeypatch.setattr(FakeSocket, "ports", [41000])
    monkeypatch.setattr(socket_module, "socket", FakeSocket)
    with pytest.raises(OSError, match=r"outside \[41000\] after 100 tries"):
        free_port(avoid={41000})


def test_free_port_draws_below_the_ephemeral_range_skipping_taken_and_avoided_ports(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket as socket_module

    low = 1024  # ranges widened so that a port the kernel gave a listener can be drawn
    monkeypatch.setattr(local_module, "PORT_RANGE", (low, 65000))
    monkeypatch.setattr(local_module, "ephemeral_range", lambda: (65001, 65535))
    with socket_module.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert busy < 65000
        draws = iter([busy - low, 7, 8])  # a listened port (drawn as an offset), an avoided one, a free one
        monkeypatch.setattr(local_module.secrets, "randbelow", lambda n: next(draws))
        assert free_port(avoid={low + 7}) == low + 8


def test_the_drawn_ports_stay_out_of_the_kernels_range() -> None:
    low, high = local_module.ephemeral_range()
    if not (local_module.PORT_RANGE[1] <= low or local_module.PORT_RANGE[0] > high):
        pytest.skip(f"this machine's ephemeral range {low}-{high} overlaps {local_module.PORT_RANGE}")
    ports = {free_port() for _ in range(20)}
    assert all(local_module.PORT_RANGE[0] <= p < local_module.PORT_RANGE[1] for p in ports), ports
    assert len(ports) > 1, "drawn at random"


def test_the_ephemeral_range_is_read_from_the_kernel_file(tmp_path: Path) -> None:
    path = tmp_path / "range"
    path.write_text("40000\t50000\n")
    assert local_module.ephemeral_range(path) == (40000, 50000)
    path.write_text("garbage")
    assert local_module.ephemeral_range(path) == (32768, 60999)
    assert local_module.ephemeral_range(tmp_path / "absent") == (32768, 60999)

"""The node backend without starting it: configuration, guard rules, images, teardown helpers."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from pet_harness.clusters import node_network, node_teardown
from pet_harness.clusters.base import ClusterError
from pet_harness.clusters.node_config import (
    PAUSE_IMAGE,
    NodeLayout,
    cni_network,
    containerd_config,
    kube_proxy_config,
    kubelet_config,
)
from pet_harness.clusters.node_images import ImageSpec, oci_layout_tar

# --- layout and configuration ----------------------------------------------------------------


def _layout(tmp_path: Path) -> NodeLayout:
    return NodeLayout(root=tmp_path / "node")


def test_the_node_address_is_the_first_of_the_pod_range(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    assert layout.node_ip == "10.244.0.1"
    assert layout.node_ip_cidr == "10.244.0.1/24"
    assert layout.apiserver_service_ip == "10.97.0.1"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pod_cidr": "10.97.0.0/16"}, r"pod CIDR 10.97.0.0/16 overlaps service CIDR 10.97.0.0/24"),
    ({"pod_cidr": "10.244.0.0/30"}, r"pod CIDR 10.244.0.0/30 is too small"),
    ({"pod_cidr": "fd00:1::/64"}, r"must be IPv4"),
    ({"bridge": "a-very-long-bridge-name"}, r"'a-very-long-bridge-name' must be 1 to 15 characters"),
    ({"service_cidr": "10.97.0.0/33"}, r"10.97.0.0/33"),
])
def test_bad_layouts_are_refused_naming_the_value(tmp_path: Path, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NodeLayout(root=tmp_path, **kwargs)  # type: ignore[arg-type]


def test_containerd_keeps_everything_under_the_node_folder_and_sets_the_vm_fix(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    text = containerd_config(layout)
    assert "restrict_oom_score_adj = true" in text
    assert "SystemdCgroup = false" in text
    assert "disable_apparmor = true" in text
    assert "netns_mounts_under_state_dir = true" in text
    assert f'sandbox_image = "{PAUSE_IMAGE}"' in text
    assert 'snapshotter = "overlayfs"' in text
    for key in ("root", "state", "address", "path", "Root", "conf_dir"):
        values = [line.split("=", 1)[1].strip().strip('"') for line in text.splitlines()
                  if line.strip().startswith(f"{key} =")]
        assert values, key
        assert all(v == "" or v.startswith(str(layout.root)) for v in values), (key, values)
    assert 'bin_dir = "/usr/lib/cni"' in text


def test_the_cni_network_has_no_default_route_and_no_masquerade(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    network = cni_network(layout)
    (bridge,) = network["plugins"]  # type: ignore[misc]
    assert bridge["type"] == "bridge" and bridge["bridge"] == layout.bridge
    assert bridge["isGateway"] is True
    assert bridge["isDefaultGateway"] is False
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["routes"] == [{"dst": layout.service_cidr}]
    assert bridge["ipam"]["ranges"] == [[{"subnet": layout.pod_cidr, "gateway": layout.node_ip}]]
    assert bridge["ipam"]["dataDir"].startswith(str(layout.root))


def test_the_kubelet_serves_on_the_node_address_only_authenticated(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    config = yaml.safe_load(kubelet_config(layout, Path("/ca"), Path("/crt"), Path("/key")))
    assert config["address"] == layout.node_ip
    assert config["readOnlyPort"] == 0
    assert config["healthzBindAddress"] == "127.0.0.1"
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authentication"]["x509"]["clientCAFile"] == "/ca"
    assert config["authorization"]["mode"] == "Webhook"
    assert config["cgroupDriver"] == "cgroupfs" and config["failCgroupV1"] is False
    assert config["containerRuntimeEndpoint"] == f"unix://{layout.containerd_socket}"
    for key in ("resolvConf", "podLogsDir", "volumePluginDir"):
        assert config[key].startswith(str(layout.root)), key


def test_kube_proxy_writes_no_sysctl_and_no_localhost_node_ports(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    config = yaml.safe_load(kube_proxy_config(layout, Path("/kc")))
    assert config["mode"] == "iptables"
    assert config["clusterCIDR"] == layout.pod_cidr
    assert config["nodePortAddresses"] == [f"{layout.node_ip}/32"]
    assert config["iptables"]["localhostNodePorts"] is False
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["conntrack"]["tcpEstablishedTimeout"] == "0s"
    assert config["healthzBindAddress"].startswith("127.0.0.1:")
    assert config["metricsBindAddress"].startswith("127.0.0.1:")


# --- network guard, chains, nft tables -----------------------------------------------------------


class FakeRunner:
    """Records commands; answers from a table of (argv prefix -> stdout, returncode)."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[str, int]] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        for prefix, (out, code) in self.answers.items():
            if tuple(argv[:len(prefix)]) == prefix:
                return subprocess.CompletedProcess(list(argv), code, out, "")
        return subprocess.CompletedProcess(list(argv), 0, "", "")


def test_guard_rules_pass_bridge_to_bridge_and_drop_the_rest() -> None:
    assert node_network.guard_rules("br0", "G") == [
        ["-A", "G", "-i", "br0", "-o", "br0", "-j", "RETURN"],
        ["-A", "G", "-i", "br0", "-j", "DROP"],
        ["-A", "G", "-o", "br0", "-j", "DROP"],
    ]


def test_the_guard_is_installed_first_in_mangle_forward_for_both_families() -> None:
    runner = FakeRunner()
    node_network.install_guard("br0", "G", runner)
    for binary in ("iptables", "ip6tables"):
        mine = [c for c in runner.calls if c[0] == binary]
        assert all(c[1:5] == ["-w", "5", "-t", "mangle"] for c in mine)
        assert mine[0][5:] == ["-N", "G"]
        assert mine[-1][5:] == ["-I", "FORWARD", "1", "-j", "G"]
    assert not any("filter" in c or "-F" in c or "nat" in c for c in runner.calls), "nothing global is touched"


def test_the_node_address_takes_packets_from_loopback_and_the_bridge_only() -> None:
    runner = FakeRunner()
    node_network.install_guard("br0", "G", runner, node_ip="10.244.0.1")
    v4_input = [c[5:] for c in runner.calls if c[0] == "iptables" and "G-IN" in c]
    assert v4_input == [
        ["-N", "G-IN"],
        ["-A", "G-IN", "-i", "lo", "-j", "RETURN"],
        ["-A", "G-IN", "-i", "br0", "-j", "RETURN"],
        ["-A", "G-IN", "-d", "10.244.0.1/32", "-j", "DROP"],
        ["-I", "INPUT", "1", "-j", "G-IN"],
    ]
    assert not any("G-IN" in c for c in runner.calls if c[0] == "ip6tables"), "the node has no IPv6 address"


def test_removing_the_guard_deletes_every_jump_then_the_chain() -> None:
    jumps = {"iptables": 2, "ip6tables": 0}

    class Jumps(FakeRunner):
        def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
            self.calls.append(list(argv))
            if "-D" in argv:
                left = jumps[argv[0]]
                jumps[argv[0]] = left - 1
                return subprocess.CompletedProcess(list(argv), 0 if left > 0 else 1, "", "")
            return subprocess.CompletedProcess(list(argv), 0, "", "")

    runner = Jumps()
    node_network.remove_guard("G", runner)
    v4 = [c[5:] for c in runner.calls if c[0] == "iptables"]
    assert v4 == [["-D", "FORWARD", "-j", "G"]] * 3 + [["-F", "G"], ["-X", "G"]] + [
        ["-D", "INPUT", "-j", "G-IN"], ["-F", "G-IN"], ["-X", "G-IN"]]
    v6 = [c[5:] for c in runner.calls if c[0] == "ip6tables"]
    assert v6 == [["-D", "FORWARD", "-j", "G"], ["-F", "G"], ["-X", "G"]]


def test_listed_chains_lose_their_jumps_then_their_rules_then_themselves() -> None:
    listing = ('-P FORWARD ACCEPT\n-N KUBE-SERVICES\n-N OTHER\n'
               '-A FORWARD -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n'
               '-A FORWARD -j OTHER\n')
    runner = FakeRunner({("iptables", "-w", "5", "-t", "filter", "-S"): (listing, 0)})
    node_network.remove_chains([("iptables", "filter", "KUBE-SERVICES")], runner)
    verbs = [c[5:] for c in runner.calls if c[5] != "-S"]
    assert verbs == [
        ["-D", "FORWARD", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"],
        ["-F", "KUBE-SERVICES"],
        ["-X", "KUBE-SERVICES"],
    ]


def test_chains_are_found_by_prefix_in_every_table() -> None:
    runner = FakeRunner({("iptables", "-w", "5", "-t", "nat", "-S"): ("-N KUBE-POSTROUTING\n-N MINE\n", 0)})
    assert node_network.chains_with_prefix(["KUBE-"], runner) == [("iptables", "nat", "KUBE-POSTROUTING")]


def test_only_new_and_empty_nft_tables_are_deleted() -> None:
    tables = json.dumps({"nftables": [{"metainfo": {}}, {"table": {"family": "ip", "name": "filter"}},
                                      {"table": {"family": "ip", "name": "nat"}},
                                      {"table": {"family": "inet", "name": "theirs"}}]})
    runner = FakeRunner({
        ("nft", "-j", "list", "tables"): (tables, 0),
        ("nft", "-j", "list", "table", "ip", "nat"): (json.dumps({"nftables": [{"rule": {}}]}), 0),
        ("nft", "-j", "list", "table", "ip", "filter"): (json.dumps({"nftables": [{"chain": {}}]}), 0),
    })
    removed = node_network.remove_new_empty_tables({("inet", "theirs")}, runner)
    assert removed == ["ip filter"], "a table with a rule, or one there before, stays"
    assert ["nft", "delete", "table", "ip", "filter"] in runner.calls


def test_routes_overlapping_the_node_ranges_are_reported() -> None:
    routes = json.dumps([{"dst": "default", "dev": "eth0"}, {"dst": "10.244.0.0/16", "dev": "other0"},
                         {"dst": "192.0.2.0/24", "dev": "eth0"}, {"dst": "10.97.0.5", "dev": "x", "type": "local"}])
    runner = FakeRunner({("ip", "-j", "route"): (routes, 0)})
    clashes = node_network.overlapping_routes(["10.244.0.0/24", "10.97.0.0/24"], runner)
    assert clashes == ["route 10.244.0.0/16 dev other0 overlaps 10.244.0.0/24"]


def test_conntrack_entries_of_both_ranges_are_deleted() -> None:
    assert node_network.conntrack_commands("10.244.0.0/24", "10.97.0.0/24") == [
        ["conntrack", "-D", "-s", "10.244.0.0/24"],
        ["conntrack", "-D", "-d", "10.244.0.0/24"],
        ["conntrack", "-D", "-d", "10.97.0.0/24"],
    ]


def test_sysctls_are_recorded_and_only_changed_ones_written_back(tmp_path: Path) -> None:
    (tmp_path / "net/ipv4").mkdir(parents=True)
    (tmp_path / "vm").mkdir()
    (tmp_path / "net/ipv4/ip_forward").write_text("0\n")
    (tmp_path / "vm/overcommit_memory").write_text("0\n")
    saved = node_network.record_sysctls(("net/ipv4/ip_forward", "vm/overcommit_memory", "kernel/missing"), tmp_path)
    assert saved == {"net/ipv4/ip_forward": "0", "vm/overcommit_memory": "0"}
    (tmp_path / "net/ipv4/ip_forward").write_text("1\n")
    assert node_network.restore_sysctls(saved, tmp_path) == ["net/ipv4/ip_forward: 1 -> 0"]
    assert (tmp_path / "net/ipv4/ip_forward").read_text().strip() == "0"
    assert node_network.restore_sysctls(saved, tmp_path) == []


# --- images -----------------------------------------------------------------------------------------


def test_the_oci_layout_names_the_image_and_its_layer_digest_is_its_diff_id() -> None:
    spec = ImageSpec("registry.k8s.io/pause:3.10", "/pause", ("/pause",), "65535:65535")
    data = oci_layout_tar(spec, b"\x7fELF program", arch="amd64")
    assert data == oci_layout_tar(spec, b"\x7fELF program", arch="amd64"), "the same input, the same bytes"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = json.loads(files["index.json"])["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "registry.k8s.io/pause:3.10"
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    for name, blob in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(blob).hexdigest() == name.rsplit("/", 1)[1]
    manifest = json.loads(files["blobs/sha256/" + entry["digest"].split(":")[1]])
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    assert config["rootfs"]["diff_ids"] == [layer["digest"]]
    assert config["config"]["Entrypoint"] == ["/pause"] and config["config"]["User"] == "65535:65535"
    with tarfile.open(fileobj=io.BytesIO(files["blobs/sha256/" + layer["digest"].split(":")[1]])) as inner:
        (program,) = inner.getmembers()
        assert program.name == "pause" and program.mode == 0o755 and program.uid == 0
        assert inner.extractfile(program).read() == b"\x7fELF program"  # type: ignore[union-attr]


# --- teardown helpers -------------------------------------------------------------------------------


def test_host_paths_absent_before_are_removed_and_others_lose_only_new_entries(tmp_path: Path) -> None:
    absent, present = tmp_path / "absent", tmp_path / "present"
    (present / "old").mkdir(parents=True)
    (present / "old" / "keep").write_text("x")
    before = node_teardown.snapshot_paths((str(absent), str(present)))
    assert before == {str(absent): None, str(present): ["old", "old/keep"]}
    (absent / "device-plugins").mkdir(parents=True)
    (absent / "device-plugins" / "kubelet.sock").write_text("")
    (present / "new" / "deep").mkdir(parents=True)
    (present / "old" / "added").write_text("y")
    removed = node_teardown.clean_paths(before)
    assert sorted(removed) == sorted([str(absent), str(present / "new"), str(present / "old" / "added")])
    assert not absent.exists()
    assert node_teardown.snapshot_paths((str(present),)) == {str(present): ["old", "old/keep"]}


def test_mounts_are_found_under_the_prefixes_deepest_first() -> None:
    mountinfo = "\n".join([
        "22 1 0:21 / / rw - ext4 /dev/vda rw",
        "30 22 0:40 / /tmp/w/node/kubelet rw - ext4 /dev/vda rw",
        "31 30 0:41 / /tmp/w/node/kubelet/pods/x/volumes/tmp rw - tmpfs tmpfs rw",
        "32 22 0:42 / /tmp/w2 rw - tmpfs tmpfs rw",
        "33 22 0:43 / /tmp/w/with\\040space rw - tmpfs tmpfs rw",
    ])
    assert node_teardown.mounts_under(["/tmp/w"], mountinfo) == [
        "/tmp/w/node/kubelet/pods/x/volumes/tmp", "/tmp/w/node/kubelet", "/tmp/w/with space",
    ]


def test_cgroup_folders_are_listed_deepest_first_in_every_hierarchy(tmp_path: Path) -> None:
    for hierarchy in ("cpu", "memory"):
        (tmp_path / hierarchy / "kubepods" / "besteffort" / "pod1").mkdir(parents=True)
        (tmp_path / hierarchy / "kubepods" / "besteffort" / "pod1" / "cgroup.procs").write_text("")
    (tmp_path / "cpu" / "other").mkdir()
    found = node_teardown.cgroup_dirs("kubepods", tmp_path)
    assert len(found) == 6
    assert found[0].name == "pod1" and found[-1].name == "kubepods"
    assert all("other" not in str(f) for f in found)
    assert node_teardown.cgroup_pids(found) == []


def test_the_lock_refuses_a_second_holder_naming_the_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state.json"
    monkeypatch.setattr(node_teardown, "STATE_FILE", state)
    node_teardown.write_state({"owner_pid": 4242, "workdir": "/tmp/first"}, state)
    lock = tmp_path / "node.lock"
    told: list[str] = []
    with node_teardown.node_lock(1, lock_file=lock):
        with pytest.raises(ClusterError) as info, node_teardown.node_lock(0.6, told.append, lock_file=lock):
            pass
        message = str(info.value)
        assert "owner pid 4242" in message and "/tmp/first" in message
        assert "only one runs on a machine at a time" in message
        assert told == ["waiting for the node cluster of pid 4242 to end (up to 1s)"]
    with node_teardown.node_lock(1, lock_file=lock):
        pass  # released when its holder leaves


def test_a_live_owner_is_not_swept_and_a_reused_pid_is_not_the_owner() -> None:
    import os

    me = {"owner_pid": os.getpid(), "owner_start": node_teardown.process_start_time(os.getpid())}
    assert node_teardown.owner_alive(me)
    assert not node_teardown.owner_alive({**me, "owner_start": "1"}), "same pid, other process"
    assert not node_teardown.owner_alive({"owner_pid": 0})


@pytest.mark.parametrize(("text", "expected"), [("", 300.0), ("1800", 1800.0), (" 0.5 ", 0.5), ("0", 0.0)])
def test_the_node_lock_wait_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, text: str,
                                                       expected: float) -> None:
    monkeypatch.setenv(node_teardown.LOCK_TIMEOUT_ENV, text)
    assert node_teardown.lock_timeout_from_env() == expected


@pytest.mark.parametrize("text", ["soon", "-1", "nan"])
def test_a_bad_node_lock_wait_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv(node_teardown.LOCK_TIMEOUT_ENV, text)
    with pytest.raises(ClusterError, match=rf"PET_NODE_LOCK_TIMEOUT={text!r}.*>= 0"):
        node_teardown.lock_timeout_from_env()

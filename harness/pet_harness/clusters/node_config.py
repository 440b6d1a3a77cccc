"""The configuration files of a node: containerd, the CNI network, kubelet and kube-proxy.

Pure text from a :class:`NodeLayout` (paths, names, addresses), so every setting can be checked
by a unit test without starting anything. The settings follow the trial run recorded in the
project's design notes (``shared/design/node.md``): containerd with its own root, state and
sockets, the one setting this VM needs (``restrict_oom_score_adj``: root lacks
``CAP_SYS_RESOURCE``, so runc cannot lower a container's OOM score), a CNI bridge that is the
pods' gateway for the service range only (no default route, no masquerading), and kubelet and
kube-proxy bound to the node's own bridge address or to loopback.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path

import yaml

#: the name the sandbox image is imported under, and what containerd's CRI asks for
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


@dataclasses.dataclass(frozen=True)
class NodeLayout:
    """Where a node keeps its files and which names and addresses it uses."""

    root: Path  #: the node's folder inside the cluster's work folder
    node_name: str = "pet-harness-node"
    bridge: str = "petharness0"
    network_name: str = "pet-harness-node"
    pod_cidr: str = "10.244.0.0/24"
    service_cidr: str = "10.97.0.0/24"
    runc: str = "/usr/sbin/runc"
    cni_bin_dir: str = "/usr/lib/cni"
    kubelet_healthz_port: int = 10248
    proxy_healthz_port: int = 10256
    proxy_metrics_port: int = 10249

    def __post_init__(self) -> None:
        pods = ipaddress.ip_network(self.pod_cidr)  # ValueError names the bad value
        services = ipaddress.ip_network(self.service_cidr)
        if pods.version != 4 or services.version != 4:
            raise ValueError(f"pod CIDR {self.pod_cidr} and service CIDR {self.service_cidr} must be IPv4")
        if pods.overlaps(services):
            raise ValueError(f"pod CIDR {self.pod_cidr} overlaps service CIDR {self.service_cidr}")
        if pods.num_addresses < 16:
            raise ValueError(f"pod CIDR {self.pod_cidr} is too small: at least a /28")
        if not 1 <= len(self.bridge) <= 15:
            raise ValueError(f"bridge name {self.bridge!r} must be 1 to 15 characters (a Linux interface name)")

    # --- addresses ------------------------------------------------------------------------

    @property
    def node_ip(self) -> str:
        """The bridge's own address: the pods' gateway and the node's InternalIP."""
        return str(next(ipaddress.ip_network(self.pod_cidr).hosts()))

    @property
    def node_ip_cidr(self) -> str:
        return f"{self.node_ip}/{ipaddress.ip_network(self.pod_cidr).prefixlen}"

    @property
    def apiserver_service_ip(self) -> str:
        """The first address of the service range: the ``kubernetes`` Service's ClusterIP."""
        return str(next(ipaddress.ip_network(self.service_cidr).hosts()))

    # --- paths ------------------------------------------------------------------------------

    @property
    def containerd_dir(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_config(self) -> Path:
        return self.containerd_dir / "config.toml"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def containerd_root(self) -> Path:
        return self.containerd_dir / "root"

    @property
    def containerd_state(self) -> Path:
        return self.containerd_dir / "state"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def proxy_config(self) -> Path:
        return self.root / "kube-proxy-config.yaml"

    @property
    def resolv_conf(self) -> Path:
        return self.root / "resolv.conf"

    @property
    def pki(self) -> Path:
        return self.root / "pki"


def _toml_string(value: str | Path) -> str:
    return json.dumps(str(value))  # a TOML basic string is a JSON string for the paths used here


def containerd_config(layout: NodeLayout) -> str:
    """containerd 1.6's configuration (version 2): every path under the node's folder."""
    d = layout
    q = _toml_string
    return f"""\
version = 2
root = {q(d.containerd_root)}
state = {q(d.containerd_state)}
# snapshotters and plugins this node does not use stay off (they probe the host at start)
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = {q(d.containerd_socket)}

[ttrpc]
  address = {q(d.containerd_dir / "containerd-ttrpc.sock")}

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {q(d.containerd_dir / "opt")}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {q(PAUSE_IMAGE)}
  disable_apparmor = true
  enable_selinux = false
  # root here lacks CAP_SYS_RESOURCE: runc cannot write a lower oom_score_adj, so it must not try
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_unprivileged_ports = false
  enable_unprivileged_icmp = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = {q(d.runc)}
        Root = {q(d.containerd_dir / "runc")}
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {q(d.cni_bin_dir)}
    conf_dir = {q(d.cni_conf_dir)}
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
"""


def cni_network(layout: NodeLayout) -> dict[str, object]:
    """The CNI network: the bridge plugin as the pods' gateway, but never their default gateway, no
    masquerading, and a single route, to the service range; host-local addresses from the pod
    range, recorded under the node's folder."""
    return {
        "cniVersion": "1.0.0",
        "name": layout.network_name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": layout.bridge,
                "isGateway": True,
                "isDefaultGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(layout.cni_ipam_dir),
                    "ranges": [[{"subnet": layout.pod_cidr, "gateway": layout.node_ip}]],
                    "routes": [{"dst": layout.service_cidr}],
                },
            }
        ],
    }


def kubelet_config(layout: NodeLayout, ca_file: Path, cert_file: Path, key_file: Path) -> str:
    """The kubelet's ``KubeletConfiguration``: cgroupfs (no systemd here), cgroup v1 accepted,
    served on the node's bridge address, authenticated and authorized by the API server."""
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": layout.node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": layout.kubelet_healthz_port,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "failSwapOn": False,
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "imageServiceEndpoint": f"unix://{layout.containerd_socket}",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(cert_file),
        "tlsPrivateKeyFile": str(key_file),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "resolvConf": str(layout.resolv_conf),
        "podLogsDir": str(layout.root / "pod-logs"),
        "volumePluginDir": str(layout.root / "volume-plugins"),
        "clusterDomain": "cluster.local",
        "registerNode": True,
        "protectKernelDefaults": False,
        "serializeImagePulls": False,
        # images are imported, never pulled: none may be collected (a busy disk would otherwise
        # remove the pause image) and eviction only when the machine is really short
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "maxPods": 50,
        "containerLogMaxSize": "10Mi",
        "containerLogMaxFiles": 2,
        "shutdownGracePeriod": "0s",
    }
    return yaml.safe_dump(config, sort_keys=False)


def kube_proxy_config(layout: NodeLayout, kubeconfig: Path) -> str:
    """kube-proxy in iptables mode: node ports on the node's address only, none on localhost, and
    conntrack left as it is (zero limits and timeouts: kube-proxy writes no sysctl)."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": layout.node_name,
        "bindAddress": layout.node_ip,
        "mode": "iptables",
        "clusterCIDR": layout.pod_cidr,
        "nodePortAddresses": [f"{layout.node_ip}/32"],
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False, "syncPeriod": "30s",
                     "minSyncPeriod": "1s"},
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
            "tcpBeLiberal": False,
            "udpTimeout": "0s",
            "udpStreamTimeout": "0s",
        },
        "healthzBindAddress": f"127.0.0.1:{layout.proxy_healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{layout.proxy_metrics_port}",
    }
    return yaml.safe_dump(config, sort_keys=False)


def resolv_conf() -> str:
    """Pods get no name server that leads anywhere: nothing in this cluster resolves names, and a
    resolver outside the machine must not be reachable."""
    return "# pet-harness node: no DNS for pods\nnameserver 127.0.0.1\noptions ndots:1 attempts:1 timeout:1\n"


def write_node_files(layout: NodeLayout, ca_file: Path, cert_file: Path, key_file: Path,
                     proxy_kubeconfig: Path) -> None:
    """Write every configuration file of the node under ``layout.root``."""
    for folder in (layout.containerd_dir, layout.cni_conf_dir, layout.cni_ipam_dir, layout.kubelet_dir,
                   layout.root / "pod-logs", layout.root / "volume-plugins"):
        folder.mkdir(parents=True, exist_ok=True)
    layout.containerd_config.write_text(containerd_config(layout))
    (layout.cni_conf_dir / "10-pet-harness-node.conflist").write_text(json.dumps(cni_network(layout), indent=2))
    layout.kubelet_config.write_text(kubelet_config(layout, ca_file, cert_file, key_file))
    layout.proxy_config.write_text(kube_proxy_config(layout, proxy_kubeconfig))
    layout.resolv_conf.write_text(resolv_conf())

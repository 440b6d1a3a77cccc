"""The embedded cluster with a real node: ``PET_CLUSTER=node`` or ``pet-harness cluster up --node``.

Beside etcd and kube-apiserver (as in :class:`~pet_harness.clusters.local.LocalCluster`) it runs
kube-controller-manager (every controller), kube-scheduler, and one node: containerd with runc,
the CNI bridge plugin, the kubelet and kube-proxy, all built or installed here, with a pause image
made here. Pods run for real; their network stays on the machine (see
:mod:`~pet_harness.clusters.node_network`).

It needs root, the Debian packages of :mod:`~pet_harness.clusters.node_packages` and the binaries
of ``pet-harness binaries build --node``. One runs per machine at a time (host paths the kubelet and
containerd write whatever their flags say would collide): a second waits for the first, then
fails with a message naming it. Everything it changed is recorded before it is changed and undone
on every exit path (:mod:`~pet_harness.clusters.node_teardown`); if the owner dies without its
teardown, a watcher process does it, and failing that the next start does.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess  # nosec B404 # argv lists, never a shell
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pet_harness import binaries as binaries_mod
from pet_harness.clusters import node_network, node_teardown
from pet_harness.clusters.base import ClusterError, write_kubeconfig, write_private
from pet_harness.clusters.local import LocalCluster, _PortCollision, distinct_ports
from pet_harness.clusters.node_config import NodeLayout, write_node_files
from pet_harness.clusters.node_images import image_tars, import_images, toolbox_reference
from pet_harness.clusters.node_packages import check_packages, tool
from pet_harness.processes import ManagedProcess

#: the identities of the components, bound by the API server's bootstrap RBAC (and the Node authorizer)
SCHEDULER_USER = "system:kube-scheduler"
PROXY_USER = "system:kube-proxy"


class NodeCluster(LocalCluster):
    backend = "node"
    workdir_prefix = "pet-harness-node-"
    #: the node's teardown (unmounting first) removes the folder; a plain folder watcher must not
    reap_workdir = False
    #: the API server's endpoint (the ``kubernetes`` Service's, which kube-proxy sends pods to)
    #: is written by the API server itself, as in any cluster
    endpoint_reconciler = "lease"

    def __init__(
        self,
        *,
        pod_cidr: str = "10.244.0.0/24",
        service_cidr: str = "10.97.0.0/24",
        lock_timeout: float | None = None,
        progress: binaries_mod.Progress | None = None,
        **kwargs: Any,
    ) -> None:
        """``pod_cidr``, ``service_cidr``: ranges used nowhere else on the machine (checked at
        start). ``lock_timeout``: how long to wait for another node cluster of this machine to end
        (default: ``$PET_NODE_LOCK_TIMEOUT``, else 300 seconds)."""
        kwargs.setdefault("start_timeout", 180.0)
        super().__init__(controller_manager=True, **kwargs)
        NodeLayout(root=Path("/"), pod_cidr=pod_cidr, service_cidr=service_cidr)  # bad ranges fail here
        self.pod_cidr = pod_cidr
        self.service_cidr = service_cidr
        self.lock_timeout = node_teardown.lock_timeout_from_env() if lock_timeout is None else lock_timeout
        self._say = progress or (lambda line: None)
        self.layout: NodeLayout | None = None
        self.containerd: ManagedProcess | None = None
        self.scheduler: ManagedProcess | None = None
        self.kubelet: ManagedProcess | None = None
        self.kube_proxy: ManagedProcess | None = None
        self.scheduler_port = 0
        self._lock: contextlib.ExitStack | None = None
        self._watcher: Any = None
        self._state: dict[str, Any] = {}
        self._node_bins: dict[str, Path] = {}
        self.timings: dict[str, float] = {}
        self.teardown_report: list[str] = []

    @property
    def node_name(self) -> str:
        return self._layout.node_name

    @property
    def apiserver_address(self) -> str:  # type: ignore[override]
        """kube-apiserver listens on the node's bridge address, not on 127.0.0.1: pods reach it there
        (through the ``kubernetes`` Service, whose endpoint it is) and so does everything on the
        machine. The address is the machine's own; the bridge's guard keeps it from the outside."""
        return self.node_ip

    @property
    def node_ip(self) -> str:
        """The bridge's address: the node's InternalIP, the pods' gateway and the API server's address."""
        return NodeLayout(root=Path("/"), pod_cidr=self.pod_cidr, service_cidr=self.service_cidr).node_ip

    @property
    def _layout(self) -> NodeLayout:
        if self.layout is None:
            raise ClusterError("the node cluster is not started")
        return self.layout

    @property
    def toolbox_image(self) -> str:
        """The image with the static ``toolbox`` program (``sleep``, ``connect HOST:PORT``)."""
        return toolbox_reference()

    def components(self) -> dict[str, ManagedProcess | None]:
        return {
            "etcd": self.etcd, "kube-apiserver": self.apiserver,
            "kube-controller-manager": self.controller_manager_process, "kube-scheduler": self.scheduler,
            "containerd": self.containerd, "kubelet": self.kubelet, "kube-proxy": self.kube_proxy,
        }

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        layout = self.layout
        info.update(
            components={name: (proc.pid if proc else None) for name, proc in self.components().items()},
            node=layout.node_name if layout else None,
            node_ip=layout.node_ip if layout else None,
            bridge=layout.bridge if layout else None,
            pod_cidr=self.pod_cidr,
            service_cidr=self.service_cidr,
            toolbox_image=self.toolbox_image,
            timings=self.timings,
        )
        return info

    # --- start -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.apiserver is not None and self.apiserver.running:
            return
        started = time.monotonic()
        check_packages()
        if os.geteuid() != 0:
            raise ClusterError("a cluster with a node needs root (containerd, runc, the bridge and iptables)")
        bins = self._binaries or binaries_mod.ensure_binaries(build=False)
        self._node_bins = binaries_mod.ensure_node_binaries(build=False)
        self._controller_manager_binary = self._node_bins["kube-controller-manager"]
        try:
            self._lock = contextlib.ExitStack()
            self._lock.enter_context(node_teardown.node_lock(self.lock_timeout, self._say))
            node_teardown.sweep_stale(self._say)
            self._prepare_workdir()
            self._record_state()
            self._mark("prepared", started)
            self._network_up()
            self._start_containerd()
            self._mark("containerd and images", started)
            for attempt in range(3):
                try:
                    self._start_processes(bins)
                    break
                except _PortCollision:
                    self._stop_control_plane()
                    if attempt == 2:
                        raise ClusterError("could not find free loopback ports after 3 tries") from None
            self._mark("control plane", started)
            self._start_controller_manager(self._node_bins["kube-controller-manager"])
            self._start_scheduler()
            self._start_kubelet()
            self._mark("node ready", started)
            self._start_kube_proxy()
            self._kubeconfig = self._write_admin_kubeconfig()
            self._wait_default_service_account()
            self._mark("default service account", started)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started

    def _mark(self, what: str, started: float) -> None:
        self.timings[what] = round(time.monotonic() - started, 2)

    def _record_state(self) -> None:
        """Write down how the machine is, before changing it: what the teardown undoes."""
        d = self._dir
        ports = distinct_ports(3)
        self.layout = NodeLayout(
            root=d / "node", pod_cidr=self.pod_cidr, service_cidr=self.service_cidr, runc=tool("runc"),
            kubelet_healthz_port=ports[0], proxy_healthz_port=ports[1], proxy_metrics_port=ports[2],
        )
        layout = self.layout
        self._state = {
            "owner_pid": os.getpid(),
            "owner_start": node_teardown.process_start_time(os.getpid()),
            "workdir": str(d),
            "bridge": "",  # set once the bridge is known to be this node's (see _network_up)
            "pod_cidr": layout.pod_cidr,
            "service_cidr": layout.service_cidr,
            "kube_proxy": str(self._node_bins["kube-proxy"]),
            "sysctls": node_network.record_sysctls(),
            "nft_tables_before": sorted(node_network.nft_tables()),
            "chains_before": sorted(node_network.chains_with_prefix(node_teardown.KUBE_CHAIN_PREFIXES)),
            "host_paths_before": node_teardown.snapshot_paths(),
        }
        node_teardown.write_state(self._state)
        self._watcher = node_teardown.start_watcher(os.getpid())

    def _network_up(self) -> None:
        layout = self._layout
        if node_network.link_exists(layout.bridge):
            raise ClusterError(f"the network interface {layout.bridge} exists already and is not this node's: "
                               "remove it (ip link delete) if it is a leftover")
        clashes = node_network.overlapping_routes([layout.pod_cidr, layout.service_cidr])
        if clashes:
            raise ClusterError(f"the node's ranges are in use on this machine: {'; '.join(clashes)}; "
                               "choose others (NodeCluster(pod_cidr=..., service_cidr=...))")
        # recorded only now: a bridge of that name that was there before is not ours to delete
        self._state["bridge"] = layout.bridge
        node_teardown.write_state(self._state)
        node_network.create_bridge(layout.bridge, layout.node_ip_cidr)
        node_network.install_guard(layout.bridge, node_ip=layout.node_ip)

    def _node_pki(self) -> Path:
        pki = self._layout.pki
        pki.mkdir(parents=True, exist_ok=True)
        return pki

    def _component_kubeconfig(self, name: str, user: str, groups: tuple[str, ...] = ()) -> Path:
        if self._ca is None:
            raise ClusterError("the node cluster is not started")
        pair = self._ca.client(user, groups)
        return write_kubeconfig(self._layout.root / f"{name}.kubeconfig", self.server_url, self._ca.cert_pem,
                                user, pair.cert_pem, pair.key_pem)

    def _start_containerd(self) -> None:
        layout = self._layout
        if self._ca is None:
            raise ClusterError("the node cluster is not started")
        pki = self._node_pki()
        self._ca.serving(layout.node_name, [layout.node_name], [layout.node_ip]).write(pki, "kubelet-serving")
        (pki / "ca.crt").write_bytes(self._ca.cert_pem)
        write_node_files(layout, pki / "ca.crt", pki / "kubelet-serving.crt", pki / "kubelet-serving.key",
                         layout.root / "kube-proxy.kubeconfig")  # written once the API server's port is known
        self.containerd = ManagedProcess(
            "containerd", [tool("containerd"), "--config", str(layout.containerd_config), "--log-level", "warn"],
            self._dir / "logs" / "containerd.log", cwd=layout.root, outlive_parent=self.outlive_parent,
        )
        self.containerd.start()
        self._wait(self.containerd, self._containerd_ready, time.monotonic() + self.start_timeout,
                   "containerd's socket")
        import_images(tool("ctr"), layout.containerd_socket, image_tars(self._say))

    def import_image(self, tar: Path, reference: str) -> float:
        """Import an OCI image tar (e.g. built by :mod:`~pet_harness.clusters.node_buildkit`) into the
        node's containerd, where pods with ``imagePullPolicy: Never`` find it; returns the seconds."""
        started = time.monotonic()
        ctr = [tool("ctr"), "--address", str(self._layout.containerd_socket), "--namespace", "k8s.io"]
        proc = subprocess.run(  # nosec B603 # argv of our own, no shell
            [*ctr, "images", "import", str(tar)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise ClusterError(f"ctr images import of {reference} ({tar}) failed: {proc.stderr.strip()}")
        listed = subprocess.run(  # nosec B603 # argv of our own, no shell
            [*ctr, "images", "ls", "-q"], capture_output=True, text=True, timeout=60).stdout.split()
        if reference not in listed:
            raise ClusterError(f"the image tar {tar} did not hold {reference} (containerd has {sorted(listed)})")
        return time.monotonic() - started

    def _containerd_ready(self) -> bool:
        if not self._layout.containerd_socket.exists():
            return False
        try:
            proc = subprocess.run([tool("ctr"), "--address", str(self._layout.containerd_socket), "version"],
                                  capture_output=True, timeout=10)  # nosec B603 # argv of our own, no shell
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0

    # --- control plane for a node ----------------------------------------------------------------

    def _apiserver_ips(self) -> list[str]:
        """Also the node's address, where the API server listens (the ``kubernetes`` Service's
        ClusterIP, which pods use, is the first of the service range: in the base list)."""
        return [*super()._apiserver_ips(), self.node_ip]

    def _apiserver_mode_args(self) -> list[str]:
        """The Node authorizer and NodeRestriction for the kubelet; ServiceAccount admission on (the
        controller manager makes the default service accounts); the kubelet reached on its
        InternalIP with a client certificate, its serving certificate checked."""
        pki = self._dir / "pki"
        node_pki = self._layout.pki
        if self._ca is None:
            raise ClusterError("the node cluster is not started")
        self._ca.client("kube-apiserver-kubelet-client", ["system:masters"]).write(pki, "kubelet-client")
        return [
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'kubelet-client.key'}",
            f"--kubelet-certificate-authority={node_pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def controller_manager_args(self, binary: Path, kubeconfig: Path) -> list[str]:
        d = self._dir
        pki = d / "pki"
        if self._ca is None:
            raise ClusterError("the node cluster is not started")
        write_private(pki / "ca.key", self._ca.key_pem)  # the controller manager's certificate signer
        return [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--controllers=*",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.controller_manager_port}",
            f"--cert-dir={d / 'controller-manager-certs'}",
            f"--service-account-private-key-file={pki / 'service-account.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--allocate-node-cidrs=false",
            f"--service-cluster-ip-range={self.service_cidr}",
            f"--flex-volume-plugin-dir={self._layout.root / 'flex-volume'}",
            "--namespace-sync-period=10s",
            "--profiling=false",
        ]

    def _start_scheduler(self) -> None:
        kubeconfig = self._component_kubeconfig("kube-scheduler", SCHEDULER_USER)
        self.scheduler_port = distinct_ports(1)[0]
        self.scheduler = ManagedProcess(
            "kube-scheduler",
            [
                str(self._node_bins["kube-scheduler"]),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.scheduler_port}",
                "--leader-elect=false",
                "--profiling=false",
            ],
            self._dir / "logs" / "kube-scheduler.log", cwd=self._dir, outlive_parent=self.outlive_parent,
        )
        self.scheduler.start()
        self._wait(self.scheduler, lambda: self._https_healthy(self.scheduler_port),
                   time.monotonic() + self.start_timeout, "kube-scheduler /healthz")

    def _https_healthy(self, port: int) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # a self-signed serving certificate made at its start
        try:
            url = f"https://127.0.0.1:{port}/healthz"
            with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:  # nosec B310 # our loopback https URL
                return bool(resp.status == 200)
        except urllib.error.HTTPError:
            return False

    # --- the node ---------------------------------------------------------------------------------

    def _start_kubelet(self) -> None:
        layout = self._layout
        kubeconfig = self._component_kubeconfig("kubelet", f"system:node:{layout.node_name}", ("system:nodes",))
        self.kubelet = ManagedProcess(
            "kubelet",
            [
                str(self._node_bins["kubelet"]),
                f"--config={layout.kubelet_config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={layout.kubelet_dir}",
                f"--hostname-override={layout.node_name}",
                f"--node-ip={layout.node_ip}",
                f"--cert-dir={layout.pki}",
                "--v=1",
            ],
            self._dir / "logs" / "kubelet.log", cwd=layout.root, outlive_parent=self.outlive_parent,
        )
        self.kubelet.start()
        self._wait(self.kubelet, self._node_ready, time.monotonic() + self.start_timeout, "the node to be Ready")

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self.server_url + path, context=self.admin_ssl_context(),  # noqa: S310
                                        timeout=5) as resp:  # nosec B310 # the cluster's own https URL
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def _node_ready(self) -> bool:
        node = self._get(f"/api/v1/nodes/{self._layout.node_name}")
        conditions = ((node or {}).get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _start_kube_proxy(self) -> None:
        layout = self._layout
        self._component_kubeconfig("kube-proxy", PROXY_USER)
        self.kube_proxy = ManagedProcess(
            "kube-proxy",
            [str(self._node_bins["kube-proxy"]), f"--config={layout.proxy_config}", "--v=1"],
            self._dir / "logs" / "kube-proxy.log", cwd=layout.root, outlive_parent=self.outlive_parent,
        )
        self.kube_proxy.start()

        def healthy() -> bool:
            url = f"http://127.0.0.1:{layout.proxy_healthz_port}/healthz"
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # nosec B310 # an https URL of our own cluster
                    return bool(resp.status == 200)
            except urllib.error.HTTPError:
                return False

        self._wait(self.kube_proxy, healthy, time.monotonic() + self.start_timeout, "kube-proxy /healthz")

    def _wait_default_service_account(self) -> None:
        """Pods are refused until the controller manager made the namespace's ``default`` account."""
        if self.controller_manager_process is None:  # an explicit check survives python -O
            raise ClusterError("the node cluster's kube-controller-manager is not running")
        self._wait(self.controller_manager_process,
                   lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default") is not None,
                   time.monotonic() + self.start_timeout, "the default ServiceAccount")

    # --- stop --------------------------------------------------------------------------------------

    def _delete_pods(self, timeout: float = 20.0) -> None:
        """Delete every pod through the API (a second's grace) so the kubelet stops them and their
        sandboxes (the CNI plugin takes their veths and addresses back) while it still runs."""
        if self.apiserver is None or not self.apiserver.running or self.kubelet is None or not self.kubelet.running:
            return
        # first the controller manager: its ReplicaSet, DaemonSet and Job controllers would make a
        # deleted pod again (a Deployment's pods kept the wait below busy until its timeout)
        if self.controller_manager_process is not None:
            self.controller_manager_process.stop(grace=10)
            self.controller_manager_process = None
        deadline = time.monotonic() + timeout
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError, ssl.SSLError):
            listing = self._get("/api/v1/pods") or {}
            for ns in sorted({p["metadata"]["namespace"] for p in listing.get("items", [])}):
                request = urllib.request.Request(  # noqa: S310 - the cluster's own loopback URL
                    f"{self.server_url}/api/v1/namespaces/{ns}/pods?gracePeriodSeconds=1", method="DELETE")
                context = self.admin_ssl_context()
                with urllib.request.urlopen(request, context=context, timeout=10):  # noqa: S310 # nosec B310 # ours
                    pass
            while time.monotonic() < deadline and (self._get("/api/v1/pods") or {}).get("items"):
                time.sleep(0.2)

    def _stop_control_plane(self) -> None:
        super()._stop_processes()

    def _stop_processes(self) -> None:
        for attr in ("kube_proxy", "kubelet", "scheduler", "containerd"):
            proc: ManagedProcess | None = getattr(self, attr)
            if proc is not None:
                proc.stop(grace=10)
                setattr(self, attr, None)
        super()._stop_processes()

    def stop(self) -> None:
        started = time.monotonic()
        had_node = bool(self._state)
        try:
            self._delete_pods()
            self._stop_processes()
            if self._state:
                self.teardown_report = node_teardown.teardown(self._state, self._say)
        finally:
            super().stop()  # removes the work folder (nothing is mounted in it any more)
            if self._state:
                node_teardown.STATE_FILE.unlink(missing_ok=True)
                self._state = {}
            if self._watcher is not None:
                with contextlib.suppress(Exception):
                    self._watcher.terminate()
                    self._watcher.wait(5)
                self._watcher = None
            if self._lock is not None:
                self._lock.close()
                self._lock = None
            self.layout = None
        if had_node:
            self.timings["teardown"] = round(time.monotonic() - started, 2)

"""Choose a cluster backend by name: the CLI flag, else ``PET_CLUSTER``, else ``local``.

``node`` is the embedded cluster with a real node (kubelet, containerd, kube-proxy; root only).
"""

from __future__ import annotations

import os

from pet_harness.clusters.base import Cluster, ClusterError

BACKENDS = ("local", "node", "k3s", "kubeconfig")


def backend_name(explicit: str | None = None) -> str:
    name = (explicit or os.environ.get("PET_CLUSTER") or "local").strip().lower()
    if name not in BACKENDS:
        raise ClusterError(f"unknown cluster backend {name!r}: PET_CLUSTER must be one of {', '.join(BACKENDS)}")
    return name


def make_cluster(explicit: str | None = None) -> Cluster:
    name = backend_name(explicit)
    if name == "local":
        from pet_harness.clusters.local import LocalCluster

        return LocalCluster()
    if name == "node":
        from pet_harness.clusters.node import NodeCluster

        return NodeCluster()
    if name == "k3s":
        from pet_harness.clusters.external import K3sCluster

        return K3sCluster()
    from pet_harness.clusters.external import KubeconfigCluster

    return KubeconfigCluster()

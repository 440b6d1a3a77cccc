"""Cluster backends behind one interface: ``local`` (default), ``node`` (local with a real node),
``k3s`` and ``kubeconfig``."""

from pet_harness.clusters.base import Cluster, ClusterError
from pet_harness.clusters.factory import BACKENDS, make_cluster

__all__ = ["BACKENDS", "Cluster", "ClusterError", "make_cluster"]

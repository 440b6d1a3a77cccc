"""pet-harness: real Kubernetes control planes for operator tests, with no Docker.

The public API is what this module exports; everything else is internal and may change.
Start with :mod:`pet_harness.pytest_core` (the pytest plugin, registered on install) and an
:class:`OperatorProfile` for your operator.
"""

from pet_harness.binaries import BinaryError, ControlPlaneBinaries, ensure_binaries
from pet_harness.clusters import Cluster, ClusterError, make_cluster
from pet_harness.clusters.local import LocalCluster
from pet_harness.fault_proxy import FaultProxy
from pet_harness.operator_process import OperatorProcess
from pet_harness.processes import ManagedProcess
from pet_harness.profile import OperatorProfile
from pet_harness.pytest_core import NamespaceFactory, OperatorFactory
from pet_harness.waiting import WaitTimeout, wait_for

__all__ = [
    "BinaryError",
    "Cluster",
    "ClusterError",
    "ControlPlaneBinaries",
    "FaultProxy",
    "LocalCluster",
    "ManagedProcess",
    "NamespaceFactory",
    "OperatorFactory",
    "OperatorProcess",
    "OperatorProfile",
    "WaitTimeout",
    "ensure_binaries",
    "make_cluster",
    "wait_for",
]

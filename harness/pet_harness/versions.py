"""The one place that pins the control-plane versions the harness builds and runs.

Change a version here and the next ``pet-harness binaries build`` builds it into a
new cache folder; the old one stays until you delete it.
"""

from __future__ import annotations

#: ``k8s.io/kubernetes`` module version that ``kube-apiserver`` is built from.
KUBERNETES_VERSION = "1.34.4"

#: ``go.etcd.io/etcd/server/v3`` module version that ``etcd`` is built from.
ETCD_VERSION = "3.6.16"


def staging_version(kubernetes_version: str = KUBERNETES_VERSION) -> str:
    """The ``k8s.io/*`` staging-module version matching a Kubernetes release.

    Kubernetes 1.N.P publishes its staging modules (``k8s.io/api`` and friends) as
    v0.N.P.

    >>> staging_version("1.34.4")
    'v0.34.4'
    """
    major, minor, patch = _split(kubernetes_version)
    if major != 1:
        raise ValueError(f"Kubernetes version {kubernetes_version!r}: only 1.x is supported")
    return f"v0.{minor}.{patch}"


def _split(version: str) -> tuple[int, int, int]:
    parts = version.lstrip("v").split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"version {version!r} is not of the form MAJOR.MINOR.PATCH")
    return int(parts[0]), int(parts[1]), int(parts[2])

#: ``github.com/prometheus-operator/prometheus-operator`` module version whose CRDs
#: (ServiceMonitor, PrometheusRule, ...) the harness installs; the CRD files ship in the module
#: under ``example/prometheus-operator-crd/``.
PROMETHEUS_OPERATOR_VERSION = "0.85.0"

#: ``helm.sh/helm/v3`` module version that ``helm`` is built from (``pet-harness binaries build --helm``):
#: it renders and lints the chart (deploy/helm/) and regenerates the raw manifests of deploy/ from it.
HELM_VERSION = "3.21.4"

#: ``github.com/cert-manager/cert-manager`` module version whose CRDs (Certificate, Issuer,
#: ClusterIssuer) the chart's e2e tests install to validate the chart's cert-manager objects; the
#: CRD files ship in the module under ``deploy/crds/`` (cert-manager's reference copies).
CERT_MANAGER_VERSION = "1.21.2"

#: ``github.com/moby/buildkit`` module version that ``buildkitd`` and ``buildctl`` are built from
#: (``pet-harness binaries build --node``): they build images from Dockerfiles for the node backend.
BUILDKIT_VERSION = "0.26.3"

#: the Debian release the node backend's base images are made from (mmdebstrap)
DEBIAN_SUITE = "bookworm"

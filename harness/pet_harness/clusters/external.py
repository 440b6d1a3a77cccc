"""Backends the harness does not run itself: k3s in Docker, and an existing kubeconfig."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pet_harness.clusters.base import Cluster, ClusterError, write_private

K3S_IMAGE = "rancher/k3s:v1.34.4-k3s1"


def _check_reachable(kubeconfig: Path, what: str) -> None:
    """Read the ``default`` namespace with the kubeconfig; raise a ClusterError if we cannot."""
    from kubernetes import client, config  # local import: heavy, and only needed here

    try:
        api_client = config.new_client_from_config(config_file=str(kubeconfig))
        with api_client:
            client.CoreV1Api(api_client).read_namespace("default", _request_timeout=10)
    except Exception as exc:
        raise ClusterError(f"{what}: cannot read namespace 'default' with {kubeconfig}: {exc}") from exc


class KubeconfigCluster(Cluster):
    """An existing cluster (staging, a dev cluster): the harness only connects to it."""

    backend = "kubeconfig"

    def __init__(self, kubeconfig: Path | None = None, context: str | None = None) -> None:
        source = kubeconfig or os.environ.get("PET_KUBECONFIG") or os.environ.get("KUBECONFIG")
        if not source:
            default = Path.home() / ".kube" / "config"
            if not default.exists():
                raise ClusterError(
                    "PET_CLUSTER=kubeconfig needs a kubeconfig: set PET_KUBECONFIG or KUBECONFIG, "
                    f"or create {default}"
                )
            source = str(default)
        self.source = Path(source).expanduser()
        self.context = context or os.environ.get("PET_KUBE_CONTEXT")
        self._path: Path | None = None
        self._tmp: Path | None = None

    @property
    def kubeconfig_path(self) -> Path:
        if self._path is None:
            raise ClusterError("the kubeconfig cluster is not started")
        return self._path

    def start(self) -> None:
        if not self.source.is_file():
            raise ClusterError(f"kubeconfig {self.source} does not exist")
        path = self.source
        if self.context:
            import yaml

            data = yaml.safe_load(self.source.read_text()) or {}
            if not isinstance(data, dict):
                raise ClusterError(f"{self.source} is not a kubeconfig (its YAML is not a mapping)")
            names = [c.get("name") for c in (data.get("contexts") or []) if isinstance(c, dict)]
            if self.context not in names:
                raise ClusterError(f"context {self.context!r} is not in {self.source} (it has {names})")
            data["current-context"] = self.context
            self._tmp = Path(tempfile.mkdtemp(prefix="pet-kubeconfig-"))
            path = write_private(self._tmp / "kubeconfig", yaml.safe_dump(data))
        _check_reachable(path, "kubeconfig backend")
        self._path = path

    def stop(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._path = None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "kubeconfig": str(self.source), "context": self.context}


class K3sCluster(Cluster):
    """k3s in a Docker container through testcontainers' ``K3SContainer``.

    Needs a Docker engine; none runs on the project's CI machines, so this backend is
    covered there by unit tests of its wiring only.
    """

    backend = "k3s"

    def __init__(self, image: str | None = None) -> None:
        self.image = image or os.environ.get("PET_K3S_IMAGE", K3S_IMAGE)
        self._container: Any = None
        self._tmp: Path | None = None
        self._path: Path | None = None

    @property
    def kubeconfig_path(self) -> Path:
        if self._path is None:
            raise ClusterError("the k3s cluster is not started")
        return self._path

    def _new_container(self) -> Any:
        try:
            from testcontainers.k3s import K3SContainer
        except ImportError as exc:  # pragma: no cover - the harness extra installs it
            raise ClusterError("PET_CLUSTER=k3s needs testcontainers: pip install 'testcontainers>=4.4'") from exc
        return K3SContainer(image=self.image)

    def start(self) -> None:
        try:
            container = self._new_container()  # testcontainers already talks to Docker here
            container.start()
        except Exception as exc:
            raise ClusterError(
                f"could not start k3s ({self.image}) through testcontainers: {exc}. "
                "The k3s backend needs a running Docker engine; without one use PET_CLUSTER=local."
            ) from exc
        self._container = container
        self._tmp = Path(tempfile.mkdtemp(prefix="pet-k3s-"))
        path = write_private(self._tmp / "kubeconfig", container.config_yaml())
        self._path = path
        _check_reachable(path, "k3s backend")

    def stop(self) -> None:
        try:
            if self._container is not None:
                self._container.stop()
        finally:
            self._container = None
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
            self._path = None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "image": self.image, "kubeconfig": str(self._path)}

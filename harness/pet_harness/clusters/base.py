"""What every cluster backend offers the harness, whatever runs the API server."""

from __future__ import annotations

import abc
import base64
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml


class ClusterError(RuntimeError):
    """The cluster could not be started, reached or stopped; the message says why."""


class Cluster(abc.ABC):
    #: backend name as chosen by ``PET_CLUSTER``: ``local``, ``k3s`` or ``kubeconfig``
    backend: str = ""
    #: whether the harness owns the control-plane processes (and can kill or restart them)
    owns_control_plane: bool = False

    @abc.abstractmethod
    def start(self) -> None:
        """Bring the cluster up (or connect to it) and return once it serves requests."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Release everything ``start`` took; safe to call twice or after a failed start."""

    @property
    @abc.abstractmethod
    def kubeconfig_path(self) -> Path:
        """A kubeconfig with cluster-admin rights, for the harness itself."""

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig authenticating as ``user`` in ``groups``; not every backend can."""
        raise ClusterError(f"the {self.backend} backend cannot mint client identities")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "kubeconfig": str(self.kubeconfig_path)}

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def write_private(path: Path, data: str | bytes) -> Path:
    """Write a file that only its owner can read, with no moment of wider permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(raw)
    path.chmod(0o600)  # an existing file keeps its old mode through O_CREAT
    return path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(
    path: Path,
    server: str,
    ca_pem: bytes,
    user: str,
    client_cert_pem: bytes | None = None,
    client_key_pem: bytes | None = None,
    token: str | None = None,
    cluster_name: str = "pet-harness",
    token_file: Path | None = None,
    namespace: str | None = None,
) -> Path:
    """Write a self-contained kubeconfig (certificates embedded) readable only by its owner."""
    creds: dict[str, str] = {}
    if client_cert_pem is not None and client_key_pem is not None:
        creds["client-certificate-data"] = _b64(client_cert_pem)
        creds["client-key-data"] = _b64(client_key_pem)
    if token is not None:
        creds["token"] = token
    if token_file is not None:  # read again by clients whenever it changes (a rotated token)
        creds["tokenFile"] = str(token_file.resolve())
    context: dict[str, str] = {"cluster": cluster_name, "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster_name, "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)}}
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": f"{user}@{cluster_name}", "context": context}],
        "current-context": f"{user}@{cluster_name}",
    }
    return write_private(path, yaml.safe_dump(config, sort_keys=False))

"""Just enough of a kubeconfig for a load client: server, CA, and a client certificate or token."""

from __future__ import annotations

import base64
import dataclasses
import ssl
import tempfile
from pathlib import Path
from typing import Any

import yaml


class KubeconfigError(ValueError):
    """The kubeconfig cannot be used by the load client; the message says which part and why."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    server: str
    ca_pem: bytes | None
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    token: str | None = None
    insecure: bool = False

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context: the cluster's CA (or none, if the kubeconfig says insecure) and the
        client certificate when there is one."""
        ctx = ssl.create_default_context()
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_pem:
            ctx.load_verify_locations(cadata=self.ca_pem.decode())
        if self.cert_pem and self.key_pem:
            # the ssl module loads a chain only from files: write them to a private temp folder
            with tempfile.TemporaryDirectory(prefix="pet-load-tls-") as tmp:
                cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
                cert.write_bytes(self.cert_pem)
                key.touch(mode=0o600)
                key.write_bytes(self.key_pem)
                ctx.load_cert_chain(str(cert), str(key))
        return ctx


def _data(entry: dict[str, Any], field: str, base: Path) -> bytes | None:
    if entry.get(f"{field}-data"):
        return base64.b64decode(entry[f"{field}-data"])
    if entry.get(field):
        path = Path(entry[field])
        return (path if path.is_absolute() else base / path).read_bytes()
    return None


def load(path: str | Path, context: str | None = None) -> Credentials:
    """Read ``path`` (its current context unless ``context`` is given)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise KubeconfigError(f"kubeconfig {path} is not a YAML mapping")
    name = context or doc.get("current-context")
    contexts = {c.get("name"): c.get("context") or {} for c in doc.get("contexts") or []}
    if name not in contexts:
        raise KubeconfigError(f"kubeconfig {path} has no context {name!r} (it has: {sorted(map(str, contexts))})")
    ctx = contexts[name]
    clusters = {c.get("name"): c.get("cluster") or {} for c in doc.get("clusters") or []}
    users = {u.get("name"): u.get("user") or {} for u in doc.get("users") or []}
    cluster = clusters.get(ctx.get("cluster"))
    if not cluster or not cluster.get("server"):
        raise KubeconfigError(f"kubeconfig {path}: context {name!r} names no cluster with a server")
    user = users.get(ctx.get("user"), {})
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    if user.get("exec") or user.get("auth-provider"):
        raise KubeconfigError(
            f"kubeconfig {path}: user {ctx.get('user')!r} authenticates through an exec or auth-provider "
            "plugin, which the load client does not run; give it a kubeconfig with a token or a client certificate"
        )
    base = path.parent
    return Credentials(
        server=str(cluster["server"]).rstrip("/"),
        ca_pem=_data(cluster, "certificate-authority", base),
        cert_pem=_data(user, "client-certificate", base),
        key_pem=_data(user, "client-key", base),
        token=token,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )

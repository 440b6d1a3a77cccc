"""Requests with any body at all, for bodies the typed client would refuse to send.

The credentials and the server come from a kubeconfig (client certificate or token), through the
``kubernetes`` client's configuration; every request carries a time limit.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3
from kubernetes import client, config

from pet_harness.kube import GROUP_VERSION

GROUP_PATH = f"/apis/{GROUP_VERSION}"


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int  # 0: no answer (time-out or connection error); ``error`` says which
    body: bytes
    seconds: float
    error: str = ""

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def message(self) -> str:
        doc = self.json()
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            return str(doc["message"])
        return self.body.decode("utf-8", "replace")[:4000]


class RawApi:
    def __init__(self, kubeconfig: Path | str, timeout: float = 15.0) -> None:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        self.host = cfg.host.rstrip("/")
        self.timeout = timeout
        self.headers: dict[str, str] = {}
        token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        if token:
            prefix = (cfg.api_key_prefix or {}).get("authorization", "")
            self.headers["Authorization"] = f"{prefix} {token}".strip()
        self.pool = urllib3.PoolManager(
            num_pools=2, maxsize=4, cert_reqs="CERT_REQUIRED" if cfg.verify_ssl else "CERT_NONE",
            ca_certs=cfg.ssl_ca_cert, cert_file=cfg.cert_file, key_file=cfg.key_file,
        )

    def close(self) -> None:
        self.pool.clear()

    def request(self, method: str, path: str, body: bytes | None = None, query: dict[str, str] | None = None,
                content_type: str = "application/json") -> Reply:
        url = self.host + path + (f"?{urlencode(query)}" if query else "")
        headers = dict(self.headers)
        headers["Content-Type"] = content_type
        headers["Accept"] = "application/json"
        started = time.monotonic()
        try:
            resp = self.pool.request(method, url, body=body, headers=headers, retries=False,
                                     timeout=urllib3.Timeout(connect=5, read=self.timeout), preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            return Reply(0, b"", time.monotonic() - started, f"{type(exc).__name__}: {exc}")
        return Reply(resp.status, resp.data, time.monotonic() - started)

    # --- the pet API --------------------------------------------------------------------------

    @staticmethod
    def collection(plural: str, namespace: str) -> str:
        return f"{GROUP_PATH}/namespaces/{namespace}/{plural}"

    def create(self, plural: str, namespace: str, body: bytes, dry_run: bool = True, strict: bool = True) -> Reply:
        query = {"fieldValidation": "Strict" if strict else "Ignore"}
        if dry_run:
            query["dryRun"] = "All"
        return self.request("POST", self.collection(plural, namespace), body, query)

    def replace(self, plural: str, namespace: str, name: str, body: bytes, dry_run: bool = True,
                strict: bool = True) -> Reply:
        query = {"fieldValidation": "Strict" if strict else "Ignore"}
        if dry_run:
            query["dryRun"] = "All"
        return self.request("PUT", f"{self.collection(plural, namespace)}/{name}", body, query)

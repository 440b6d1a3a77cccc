"""An admin API client from a kubeconfig, and raw GETs of any API path (generic)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException


def api_client(kubeconfig: Path | str) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


def get_text(api: client.ApiClient, path: str, accept: str = "application/json") -> str:
    """GET an API path (``/metrics``, a Table view...) and return the answer's text."""
    method, url, headers, body, post = api.param_serialize(
        "GET", path, header_params={"Accept": accept}, auth_settings=["BearerToken"]
    )
    response = api.call_api(method, url, header_params=headers, body=body, post_params=post)
    response.read()
    if not 200 <= response.status < 300:
        raise ApiException(status=response.status, reason=response.reason)
    return str(response.data.decode())


def get_raw(api: client.ApiClient, path: str, accept: str = "application/json") -> Any:
    """GET an API path and decode the JSON answer (for Tables and other raw views)."""
    return json.loads(get_text(api, path, accept))

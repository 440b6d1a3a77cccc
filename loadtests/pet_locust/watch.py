"""One watch of the load's pets per load process, feeding the :class:`~pet_locust.tracker.Tracker`.

A namespace's pets are listed (in pages) and then watched from the listing's resourceVersion; a
watch that ends is resumed from the last version seen, and one that is too old (410 Gone) is
relisted. Runs in greenlets under Locust (gevent makes the sockets cooperative), and stops when
``stop`` is set: every loop here is bounded by it, every request by a timeout.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import urllib3

from pet_locust.api import pets_path
from pet_locust.kubeconfig import Credentials
from pet_locust.tracker import Tracker

log = logging.getLogger("pet_locust.watch")

WATCH_SECONDS = 60  # the API server ends each watch after this; it is resumed at once


class Gone(Exception):
    """The watch's resourceVersion is too old: relist."""


class PetWatch:
    def __init__(
        self, creds: Credentials, namespaces: Sequence[str], tracker: Tracker, stopped: Callable[[], bool],
        page_size: int = 500,
    ) -> None:
        self.creds = creds
        self.namespaces = list(namespaces)
        self.tracker = tracker
        self.stopped = stopped
        self.page_size = page_size
        self.events = 0
        self.relists = 0
        self.errors = 0
        self._pool = urllib3.PoolManager(
            maxsize=max(2, len(self.namespaces) * 2), ssl_context=creds.ssl_context(),
            headers=creds.headers(), retries=False,
        )

    def run(self, namespace: str) -> None:
        """Keep the tracker fed with ``namespace``'s pets until stopped."""
        version = ""
        while not self.stopped():
            try:
                if not version:
                    version = self._list(namespace)
                    self.relists += 1
                version = self._watch(namespace, version)
            except Gone:
                version = ""
            except Exception as exc:  # noqa: BLE001 - a broken watch is resumed, never fatal
                self.errors += 1
                log.warning("watch of pets in %s failed (%s); resuming in 1 s", namespace, exc)
                time.sleep(1)

    def _get(self, path: str, fields: dict[str, str], timeout: urllib3.Timeout) -> urllib3.BaseHTTPResponse:
        return self._pool.request("GET", self.creds.server + path, fields=fields, preload_content=False,
                                  timeout=timeout)

    def _list(self, namespace: str) -> str:
        list_cursor = ""
        version = ""
        while not self.stopped():
            fields = {"limit": str(self.page_size)}
            if list_cursor:
                fields["continue"] = list_cursor
            resp = self._get(pets_path(namespace), fields, urllib3.Timeout(connect=10, read=60))
            try:
                body = json.loads(resp.read())
            finally:
                resp.release_conn()
            if resp.status != 200:
                raise RuntimeError(f"listing pets in {namespace}: HTTP {resp.status}: {body.get('message')}")
            now = self.tracker.clock()
            for item in body.get("items") or []:
                self.tracker.observe("ADDED", item, now)
            meta = body.get("metadata") or {}
            version = str(meta.get("resourceVersion", version))
            list_cursor = str(meta.get("continue") or "")
            if not list_cursor:
                break
        return version

    def _watch(self, namespace: str, version: str) -> str:
        fields = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(WATCH_SECONDS)}
        resp = self._get(pets_path(namespace), fields, urllib3.Timeout(connect=10, read=WATCH_SECONDS + 30))
        try:
            if resp.status == 410:
                raise Gone
            if resp.status != 200:
                raise RuntimeError(f"watching pets in {namespace}: HTTP {resp.status}: {resp.read()[:300]!r}")
            for event in _lines(resp, self.stopped):
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                self.events += 1
                self.tracker.observe(str(kind), obj)
        finally:
            resp.release_conn()
        return version


def _lines(resp: Any, stopped: Callable[[], bool]) -> Iterator[dict[str, Any]]:
    """JSON events of a watch response, each as soon as its chunk arrives."""
    chunks = resp.read_chunked(decode_content=True) if resp.chunked else resp.stream(4096)
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
        if stopped():
            return

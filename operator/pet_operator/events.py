"""Kubernetes Events for phase changes, aggregated like kubectl's and the kubelet's.

One Event per phase change, ``Normal`` for ``Active`` and ``Warning`` otherwise. The
Event's name is derived from the object's UID, the type, reason and message, so the
same event on the same object always lands on the same Event object: the first one is
created with ``count: 1``, every repeat patches ``count`` and ``lastTimestamp``.
``min_level`` filters: ``Warning`` posts only warnings, ``None`` posts nothing.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any, Protocol

from pet_operator import metrics, model
from pet_operator.model import PetSnapshot
from pet_operator.rest import ApiError

log = logging.getLogger(__name__)

LEVELS = {"Normal": 0, "Warning": 1, "None": 2}
COMPONENT = "pet-operator"


class EventApi(Protocol):
    """Events as ``{"count": N, "resourceVersion": "..."}`` views."""

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create an Event; None if one of that name exists already."""

    async def read_event(self, namespace: str, name: str) -> dict[str, Any] | None:
        """None if there is none of that name."""

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch; a ``metadata.resourceVersion`` in the patch is a precondition (409 if stale),
        404 if gone, both as ``ApiError``."""


def event_name(object_name: str, uid: str, type_: str, reason: str, message: str) -> str:
    digest = hashlib.sha256("\0".join((uid, type_, reason, message)).encode()).hexdigest()[:16]
    return f"{object_name[:200]}.{digest}"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(self, api: EventApi, min_level: str = "Normal", instance: str | None = None,
                 max_cached: int = 2_000, measure: metrics.OperatorMetrics | None = None) -> None:
        if min_level not in LEVELS:
            raise ValueError(f"event level {min_level!r} is not one of {', '.join(LEVELS)}")
        self.api = api
        self.min_level = min_level
        self.instance = instance or os.environ.get("POD_NAME") or socket.gethostname()
        # (namespace, event name) -> (count, resourceVersion) we last wrote or read; bounded, oldest
        # first out: an event whose count was forgotten is created (409), read and counted on as usual
        self._counts: collections.OrderedDict[tuple[str, str], tuple[int, str]] = collections.OrderedDict()
        self.max_cached = max_cached
        self.posted = 0
        self.metrics = measure if measure is not None else metrics.default()

    def wants(self, type_: str) -> bool:
        return LEVELS[type_] >= LEVELS[self.min_level]

    async def phase_changed(self, snap: PetSnapshot, previous: str | None, verdict: model.Verdict) -> None:
        type_ = "Normal" if verdict.phase is model.Phase.ACTIVE else "Warning"
        ref = {"apiVersion": f"{model.GROUP}/{model.VERSION}", "kind": "Pet", "name": snap.name,
               "namespace": snap.namespace, "uid": snap.uid}
        try:
            await self.post(ref, type_, verdict.reason, verdict.message)
        except Exception:
            # an event is a courtesy: failing to post one must never fail the reconciliation
            log.exception("could not post event %s/%s on pet %s/%s", type_, verdict.reason, snap.namespace, snap.name)

    async def post(self, ref: Mapping[str, str], type_: str, reason: str, message: str) -> None:
        if not self.wants(type_):
            return
        namespace = ref["namespace"]
        name = event_name(ref["name"], ref["uid"], type_, reason, message)
        now = _now()
        key = (namespace, name)
        cached = self._counts.get(key)
        if cached is None:
            body = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": namespace},
                "involvedObject": dict(ref),
                "type": type_,
                "reason": reason,
                "message": message,
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": COMPONENT},
                "reportingComponent": f"{model.GROUP}/{COMPONENT}",
                "reportingInstance": self.instance,
            }
            created = await self.api.create_event(namespace, body)
            if created is not None:
                self._remember(key, _version_of(created))
                self.posted += 1
                self.metrics.event_emitted(type_, reason, aggregated=False)
                return
            cached = await self._read(key)
        # Another recorder (another replica, or this one before a restart) may have counted
        # since: the patch names the version its count came from, and a stale one is refused
        # (409), read again and applied on top, so no increment is lost.
        for _ in range(5):
            if cached is None:  # gone (expired by --event-ttl): start again with a new Event
                self._counts.pop(key, None)
                await self.post(ref, type_, reason, message)
                return
            count, version = cached
            patch: dict[str, Any] = {"count": count + 1, "lastTimestamp": now}
            if version:
                patch["metadata"] = {"resourceVersion": version}
            try:
                updated = await self.api.patch_event(namespace, name, patch)
            except ApiError as exc:
                if exc.status == 404:
                    cached = None
                    continue
                if exc.status != 409:
                    raise
                cached = await self._read(key)
                continue
            self._remember(key, _version_of(updated))
            self.posted += 1
            self.metrics.event_emitted(type_, reason, aggregated=True)
            return
        raise RuntimeError(f"event {namespace}/{name}: its count kept changing under us (5 conflicts)")

    def _remember(self, key: tuple[str, str], value: tuple[int, str]) -> None:
        self._counts[key] = value
        self._counts.move_to_end(key)
        while len(self._counts) > self.max_cached:
            self._counts.popitem(last=False)

    async def _read(self, key: tuple[str, str]) -> tuple[int, str] | None:
        existing = await self.api.read_event(*key)
        return None if existing is None else _version_of(existing)


def _version_of(view: Mapping[str, Any]) -> tuple[int, str]:
    return int(view.get("count") or 1), str(view.get("resourceVersion") or "")

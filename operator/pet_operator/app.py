"""Run the operator: Kopf's machinery, the reconciler, and the health endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import kopf

from pet_operator import handlers, model
from pet_operator.cli import Config
from pet_operator.events import EventRecorder
from pet_operator.health import HealthServer
from pet_operator.kube import Kube, load_credentials
from pet_operator.reconciler import Reconciler

log = logging.getLogger("pet_operator")


def make_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # No Kopf peering: several replicas are coordinated by a Lease (leader election), not by
    # Kopf's freeze-on-peer protocol.
    settings.peering.standalone = True
    # Kopf keeps its own bookkeeping in annotations, never in status: the CRD schema has no
    # place for it, and pruned fields are what make Kopf warn about "inconsistencies".
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=model.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=model.GROUP, key="last-handled-configuration"
    )
    # Reconnect quickly after an API server restart.
    settings.watching.connect_timeout = 10
    settings.watching.server_timeout = 120
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = 60
    return settings


class Readiness:
    """Ready once Kopf has started and every existing object has been seen on a watch."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.synced_event = asyncio.Event()
        self.synced = False
        self.stopping = False
        self.detail = "starting"

    def check(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "shutting down"
        if self.synced:
            return True, "ok"
        return False, self.detail


async def _all_uids(kube: Kube, namespaces: tuple[str, ...] | None) -> set[str]:
    return await kube.list_uids(model.PETS, namespaces) | await kube.list_uids(model.PETSTORES, namespaces)


async def initial_sync(config: Config, kube: Kube, rec: Reconciler, readiness: Readiness) -> None:
    await readiness.started.wait()
    namespaces = None if config.all_namespaces else config.namespaces
    while True:
        try:
            wanted = await _all_uids(kube, namespaces)
            break
        except Exception as exc:  # noqa: BLE001 - report and retry until the API answers
            readiness.detail = f"cannot list pets and petstores yet: {exc}"
            await asyncio.sleep(1)
    polls = 0
    while True:
        missing = wanted - rec.observed
        if not missing:
            break
        readiness.detail = f"waiting for the watch streams: {len(missing)} of {len(wanted)} objects not seen yet"
        await asyncio.sleep(0.1)
        # objects deleted since the listing never show up: forget them after a re-list (every 10 polls)
        polls += 1
        if polls % 10 == 0:
            with contextlib.suppress(Exception):  # keep waiting on the old listing
                wanted &= await _all_uids(kube, namespaces)
    readiness.synced = True
    readiness.synced_event.set()
    log.info("ready: %d existing objects seen, serving %s", len(wanted), config.scope)


async def maintenance(config: Config, rec: Reconciler, indexes: handlers.Indexes, readiness: Readiness) -> None:
    """Once ready: collect orphaned id claims, then resync every ``--resync-period`` seconds."""
    await readiness.synced_event.wait()
    if indexes.pets is not None and indexes.stores is not None:
        pets, stores = indexes.pets, indexes.stores
        await handlers.with_retries("collect orphaned id claims", lambda: rec.collect_orphans(pets, stores))
    if config.resync_period > 0:
        await handlers.resync_forever(rec, indexes, config.resync_period)


async def main(config: Config) -> int:
    if config.kubeconfig:
        os.environ["KUBECONFIG"] = config.kubeconfig  # Kopf's login reads it too
    await load_credentials(config.kubeconfig)
    kube = Kube(claims_namespace=config.claims_namespace)
    recorder = EventRecorder(kube, config.event_level)
    rec = Reconciler(
        kube, on_phase_change=recorder.phase_changed, claims=kube, finalizers=kube,
        served=None if config.all_namespaces else frozenset(config.namespaces),
    )
    try:
        rec.prime_claims(await kube.list_claims())
    except Exception as exc:  # noqa: BLE001 - claims are read one by one then
        log.warning("cannot list id claims in namespace %s: %s", config.claims_namespace, exc)
    registry = kopf.OperatorRegistry()
    indexes = handlers.Indexes()
    handlers.register(registry, rec, indexes)
    readiness = Readiness()
    health = HealthServer(config.health_port, readiness.check)
    await health.start()
    log.info("serving %s; claims in %s; health on :%d", config.scope, config.claims_namespace, config.health_port)
    background = [asyncio.create_task(initial_sync(config, kube, rec, readiness))]
    background.append(asyncio.create_task(maintenance(config, rec, indexes, readiness)))
    try:
        await kopf.operator(
            registry=registry,
            settings=make_settings(),
            standalone=True,
            clusterwide=config.all_namespaces,
            namespaces=list(config.namespaces),
            ready_flag=readiness.started,
        )
    finally:
        readiness.stopping = True
        for task in background:
            task.cancel()
        await health.stop()
        await kube.close()
    log.info("stopped after %d status writes", rec.writes)
    return 0


def run(config: Config) -> int:
    return asyncio.run(main(config))

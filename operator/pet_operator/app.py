"""Run the operator: Kopf's machinery, the reconciler, and the health endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading

import kopf

from pet_operator import handlers, model
from pet_operator.cli import Config
from pet_operator.events import EventRecorder
from pet_operator.health import HealthServer
from pet_operator.kube import Kube, load_credentials
from pet_operator.leader import LeaderElector
from pet_operator.reconciler import Reconciler
from pet_operator.webhook import PATH, WebhookServer, certificates_for

log = logging.getLogger("pet_operator")


def make_settings(shutdown_grace: float = 20.0) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # On SIGTERM Kopf stops watching (no new work) and gives each object's worker this long
    # to finish what it is doing; every handler is idempotent, so a cut-off one is redone
    # by whichever replica reconciles next.
    settings.queueing.exit_timeout = shutdown_grace
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


async def start_webhook(config: Config, kube: Kube) -> WebhookServer | None:
    if not config.webhook_port:
        return None
    certificates, ca_pem = certificates_for(config.webhook_cert_dir, config.webhook_host_names)
    server = WebhookServer(config.webhook_port, certificates, kube.read_store, kube.read_claim)
    await server.start()
    log.info("admission webhook on :%d%s (%s certificate)", config.webhook_port, PATH,
             "mounted" if config.webhook_cert_dir else "self-signed")
    if ca_pem is not None and config.webhook_configuration:
        try:
            await kube.publish_ca_bundle(config.webhook_configuration, ca_pem)
            log.info("published the webhook CA into %s", config.webhook_configuration)
        except Exception as exc:  # noqa: BLE001 - the webhook still serves; the API server will not trust it
            log.error("cannot publish the webhook CA into %s: %s", config.webhook_configuration, exc)
    return server


def make_elector(
    config: Config, kube: Kube, recorder: EventRecorder, rec: Reconciler, indexes: handlers.Indexes,
    readiness: Readiness,
) -> LeaderElector:
    elector = LeaderElector(
        kube, config.lease_namespace, config.lease_name, config.leader_identity,
        lease_duration=config.lease_duration, renew_deadline=config.renew_deadline,
        retry_period=config.retry_period,
    )

    async def started_leading() -> None:
        ref = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": config.lease_name,
               "namespace": config.lease_namespace, "uid": elector.lease_uid}
        try:
            await recorder.post(ref, "Normal", "LeaderElected", f"{config.leader_identity} became the leader")
        except Exception as exc:  # noqa: BLE001 - an event is a courtesy
            log.warning("could not post the leadership event: %s", exc)
        await readiness.synced_event.wait()
        if indexes.pets is not None and indexes.stores is not None and indexes.by_store is not None:
            await handlers.resync_once(rec, indexes.pets, indexes.stores, indexes.by_store)  # catch up

    def new_leader(holder: str) -> None:
        log.info("the leader is now %s", holder)

    tasks: set[asyncio.Task[None]] = set()

    def on_started_leading() -> None:
        # in the background: the renew loop must not wait for the catch-up resync
        task = asyncio.create_task(started_leading())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    elector.on_started_leading = on_started_leading
    elector.on_new_leader = new_leader
    return elector


async def main(config: Config) -> int:
    if config.kubeconfig:
        os.environ["KUBECONFIG"] = config.kubeconfig  # Kopf's login reads it too
    await load_credentials(config.kubeconfig)
    kube = Kube(claims_namespace=config.claims_namespace)
    recorder = EventRecorder(kube, config.event_level)
    rec = Reconciler(
        kube, on_phase_change=recorder.phase_changed, claims=kube, finalizers=kube,
        served=None if config.all_namespaces else frozenset(config.namespaces), pet_reader=kube,
    )
    try:
        rec.prime_claims(await kube.list_claims())
    except Exception as exc:  # noqa: BLE001 - claims are read one by one then
        log.warning("cannot list id claims in namespace %s: %s", config.claims_namespace, exc)
    registry = kopf.OperatorRegistry()
    indexes = handlers.Indexes()
    handlers.register(registry, rec, indexes)
    readiness = Readiness()
    exit_code = 0
    stop_flag = asyncio.Event()
    elector: LeaderElector | None = None
    if config.leader_elect:
        elector = make_elector(config, kube, recorder, rec, indexes, readiness)
        rec.may_write = elector.is_leader

        async def lost_leadership() -> None:
            nonlocal exit_code
            exit_code = 1  # restart clean, as controller-runtime does; the new leader takes over
            readiness.stopping = True
            stop_flag.set()

        elector.on_stopped_leading = lost_leadership
    health = HealthServer(config.health_port, readiness.check,
                          leader=elector.status if elector is not None else None)
    await health.start()
    webhook = await start_webhook(config, kube)
    log.info("serving %s; claims in %s; health on :%d", config.scope, config.claims_namespace, config.health_port)
    background = [asyncio.create_task(initial_sync(config, kube, rec, readiness))]
    background.append(asyncio.create_task(maintenance(config, rec, indexes, readiness)))
    if elector is not None:
        background.append(asyncio.create_task(elector.run()))

    async def graceful_stop(sig: signal.Signals) -> None:
        """Unready at once, close the webhook and our own tasks, then let Kopf drain its workers.

        Kopf waits up to 5 s for tasks it did not start (the webhook's keep-alive connections
        from the API server would be such); closing them first makes shutdown prompt.
        """
        log.info("%s received: stopping (grace %.0fs)", sig.name, config.shutdown_grace)
        readiness.stopping = True
        for task in background:
            task.cancel()
        if webhook is not None:
            await webhook.stop()
        stop_flag.set()

    async def take_over_signals() -> None:
        await readiness.started.wait()  # Kopf has installed its own handlers by now: replace them
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            background.append(asyncio.create_task(graceful_stop(sig)))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)

    if threading.current_thread() is threading.main_thread():
        background.append(asyncio.create_task(take_over_signals()))
    try:
        await kopf.operator(
            registry=registry,
            settings=make_settings(config.shutdown_grace),
            standalone=True,
            clusterwide=config.all_namespaces,
            namespaces=list(config.namespaces),
            ready_flag=readiness.started,
            stop_flag=stop_flag,
        )
    finally:
        readiness.stopping = True
        for task in background:
            task.cancel()
        if elector is not None:
            await elector.release()  # a successor takes over at its next retry
        if webhook is not None:
            await webhook.stop()
        await health.stop()
        await kube.close()
    log.info("stopped after %d status writes (%d refused while not leading)", rec.writes, rec.fenced)
    return exit_code


def run(config: Config) -> int:
    return asyncio.run(main(config))

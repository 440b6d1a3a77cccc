"""Run the operator: Kopf's machinery, the reconciler, and the health endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

import kopf

from pet_operator import handlers, metrics, model
from pet_operator.api_reachability import ApiReachability, probe_while_failing
from pet_operator.bindings import BindingGuard
from pet_operator.config import Config
from pet_operator.events import EventRecorder
from pet_operator.fencing import Fence
from pet_operator.health import HealthServer
from pet_operator.id_claims import IdClaims
from pet_operator.indexes import Indexes
from pet_operator.kube import Kube, load_credentials
from pet_operator.leader import LeaderElector
from pet_operator.memory import release_forever, release_free_memory
from pet_operator.metrics import MetricsServer
from pet_operator.reconciler import Reconciler
from pet_operator.shutdown import (
    Deadlines,
    NotKopfs,
    Shutdown,
    Stopper,
    Watchdog,
    flush_logs,
    install_task_factory,
    own_tasks,
)
from pet_operator.webhook import MUTATE_PATH, PATH, StoreLookup, WebhookServer, certificates_for

log = logging.getLogger("pet_operator")


def make_settings(exit_timeout: float = 20.0) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # On SIGTERM Kopf stops watching (no new work) and gives each object's worker this long
    # to finish what it is doing (the shutdown grace less a reserve, see shutdown.py); every
    # handler is idempotent, so a cut-off one is redone by whichever replica reconciles next.
    settings.queueing.exit_timeout = exit_timeout
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
    # The listing before each watch in pages: one response of 25,000 pets is ~100 MB to decode at once.
    settings.watching.chunk_size = 500
    settings.networking.request_timeout = 60
    # Kopf runs one worker task per object that has events. Its worker_limit is NOT set: a worker
    # that has indexed its object waits, holding its slot, until every object has been indexed,
    # so with a limit below the number of objects at start-up the indexes never fill (measured:
    # a limit of 64 stalled a restart at 4,000 pets for minutes, 128 objects indexed). What is
    # bounded instead are the API calls in flight (kube.API_CONNECTIONS); an idle worker gives
    # its place up after half a second instead of five.
    settings.queueing.idle_timeout = 0.5
    return settings



class Readiness:
    """Ready once Kopf has started and every existing object has been seen on a watch, and while
    the API server answers this replica's requests (``api``; api_reachability.py says why)."""

    def __init__(self, api: ApiReachability | None = None) -> None:
        self.api = api
        self.started = asyncio.Event()
        self.synced_event = asyncio.Event()
        self.synced = False
        self.stopping = False
        self.detail = "starting"

    def check(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "shutting down"
        if not self.synced:
            return False, self.detail
        problem = self.api.problem() if self.api is not None else None
        if problem is not None:
            return False, problem
        return True, "ok"


RELIST_SECONDS = 10.0  # initial sync: how often objects still unseen are listed again
_now = time.monotonic  # the initial sync's clock (tests move it)


async def _all_uids(kube: Kube, namespaces: tuple[str, ...] | None) -> set[str]:
    return await kube.list_uids(model.PETS, namespaces) | await kube.list_uids(model.PETSTORES, namespaces)


async def _watched_namespaces(kube: Kube, namespaces: tuple[str, ...]) -> tuple[str, ...]:
    """The served namespaces that Kopf watches: not one that is already being deleted at start-up (Kopf
    leaves it out; the RoleBinding guard finalizes its pets from a listing, bindings.py). Waiting for its
    objects to show up on a watch would keep the operator from ever being ready."""
    watched = []
    for namespace in namespaces:
        try:
            if await kube.namespace_terminating(namespace):
                log.info("namespace %s is being deleted: its pets are finalized without a watch", namespace)
                continue
        except Exception as exc:  # noqa: BLE001 - waiting for its objects is the safe side
            log.warning("cannot read namespace %s: %s", namespace, exc)
        watched.append(namespace)
    return tuple(watched)


async def initial_sync(config: Config, kube: Kube, rec: Reconciler, readiness: Readiness) -> None:
    await readiness.started.wait()
    namespaces = None if config.all_namespaces else await _watched_namespaces(kube, config.namespaces)
    while True:
        try:
            wanted = await _all_uids(kube, namespaces)
            break
        except Exception as exc:  # noqa: BLE001 - report and retry until the API answers
            readiness.detail = f"cannot list pets and petstores yet: {exc}"
            await asyncio.sleep(1)
    listed = _now()
    while True:
        missing = wanted - rec.observed
        if not missing:
            break
        readiness.detail = f"waiting for the watch streams: {len(missing)} of {len(wanted)} objects not seen yet"
        await asyncio.sleep(0.1)
        # objects deleted since the listing never show up: forget them after a re-list (a listing of
        # thousands of objects takes the loop from the watches: at most every RELIST_SECONDS)
        if _now() - listed >= RELIST_SECONDS:
            with contextlib.suppress(Exception):  # keep waiting on the old listing
                wanted &= await _all_uids(kube, namespaces)
            listed = _now()
    readiness.synced = True
    readiness.synced_event.set()
    log.info("ready: %d existing objects seen, serving %s", len(wanted), config.scope)


async def maintenance(
    config: Config, rec: Reconciler, indexes: Indexes, readiness: Readiness, catch_up: bool = True,
) -> None:
    """Once every object of the start-up is indexed: one pass over them all (``catch_up``; a leader-
    electing replica makes it when it starts leading instead), which reconciles what was only indexed
    so far and collects orphaned id claims; then a resync every ``--resync-period`` seconds."""
    await readiness.synced_event.wait()
    if catch_up:
        await handlers.resync_once(rec, indexes.pets, indexes.stores, indexes.by_store)
    release_free_memory()  # the start-up listing's peak is over
    if config.resync_period > 0:
        await handlers.resync_forever(rec, indexes, config.resync_period)


async def publish_ca(config: Config, kube: Kube, ca_pem: bytes) -> None:
    """Write a self-signed CA into the webhook configurations named on the command line; a failure
    is logged (the webhook still serves, but the API server will not trust it through that one)."""
    targets = []
    if config.webhook_configuration:
        targets.append(("ValidatingWebhookConfiguration", config.webhook_configuration, kube.publish_ca_bundle))
    if config.mutating_webhook_configuration:
        targets.append(("MutatingWebhookConfiguration", config.mutating_webhook_configuration,
                        kube.publish_mutating_ca_bundle))
    for kind, name, publish in targets:
        try:
            await publish(name, ca_pem)
            log.info("published the webhook CA into %s %s", kind, name)
        except Exception as exc:  # noqa: BLE001 - the webhook still serves; the API server will not trust it
            log.error("cannot publish the webhook CA into %s %s: %s", kind, name, exc)


def store_lookup(kube: Kube, indexes: Indexes, readiness: Readiness) -> StoreLookup:
    """How the webhook finds a pet's store: in this replica's watch index once it has seen every
    store (no API call on the hot path of every create), else, or if the index has no such store
    (created a moment ago), from the API server's watch cache."""

    async def lookup(namespace: str, name: str) -> model.StoreView | None:
        if readiness.synced:
            for snap in indexes.stores.get((namespace, name), ()) or ():
                view: model.StoreView = snap.view()
                return view
        return await kube.read_store(namespace, name)

    return lookup


async def start_webhook(
    config: Config, kube: Kube, stores: StoreLookup | None = None,
) -> WebhookServer | None:
    """Serve the admission webhooks; ``stores`` finds a store (default: ask the API server)."""
    if not config.webhook_port:
        return None
    certificates, ca_pem = certificates_for(config.webhook_cert_dir, config.webhook_host_names)
    server = WebhookServer(
        config.webhook_port, certificates, stores or kube.read_store, kube.read_claim_cached,
        host=config.webhook_bind_addresses, served=None if config.all_namespaces else frozenset(config.namespaces),
    )
    await server.start()
    log.info("admission webhooks on %s port %d, paths %s and %s (%s certificate)",
             ", ".join(config.webhook_bind_addresses), config.webhook_port, PATH, MUTATE_PATH,
             "mounted" if config.webhook_cert_dir else "self-signed")
    if ca_pem is not None:
        await publish_ca(config, kube, ca_pem)
    return server


async def prime_claims(config: Config, kube: Kube, ids: IdClaims) -> None:
    """Fill the claim cache from one paged listing of every claim (a failure is logged: claims are
    then read one by one)."""
    try:
        ids.prime_claims(await kube.list_claims())
    except Exception as exc:  # noqa: BLE001 - claims are read one by one then
        log.warning("cannot list id claims in namespace %s: %s", config.claims_namespace, exc)


def make_elector(
    config: Config, kube: Kube, recorder: EventRecorder, ids: IdClaims, rec: Reconciler, indexes: Indexes,
    readiness: Readiness,
) -> LeaderElector:
    tasks: set[asyncio.Task[None]] = set()

    async def started_leading() -> None:
        ref = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": config.lease_name,
               "namespace": config.lease_namespace, "uid": elector.lease_uid}
        try:
            await recorder.post(ref, "Normal", "LeaderElected", f"{config.leader_identity} became the leader")
        except Exception as exc:  # noqa: BLE001 - an event is a courtesy
            log.warning("could not post the leadership event: %s", exc)
        # The claim cache is the last leader's picture, or empty (a standby since start-up, or
        # cleared when leadership was lost): read every claim in one paged listing, not one
        # create-then-read per pet in the catch-up below.
        ids.forget_claims()
        await prime_claims(config, kube, ids)
        await readiness.synced_event.wait()
        await handlers.resync_once(rec, indexes.pets, indexes.stores, indexes.by_store)  # catch up

    def on_started_leading() -> None:
        # in the background: the renew loop must not wait for the catch-up resync
        task = asyncio.create_task(started_leading())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def new_leader(holder: str) -> None:
        log.info("the leader is now %s", holder)

    elector = LeaderElector(
        kube, config.lease_namespace, config.lease_name, config.leader_identity,
        lease_duration=config.lease_duration, renew_deadline=config.renew_deadline,
        retry_period=config.retry_period, on_started_leading=on_started_leading, on_new_leader=new_leader,
    )
    return elector


async def start_metrics(
    config: Config, rec: Reconciler, ids: IdClaims, elector: LeaderElector | None,
) -> MetricsServer | None:
    """Metrics hook: point the scrape-time metrics at this process's parts and serve them (every
    replica, leader or standby); None when ``--metrics-port 0``."""
    measure = metrics.default()
    measure.watch(may_write=rec.may_write, claims_held=lambda: ids.claims_held,
                  id_conflicts=lambda: rec.id_conflicts, orphans_collected=lambda: ids.orphans_collected)
    if elector is not None:
        measure.watch(leader=elector.is_leader, lease_name=elector.name,
                      leader_transitions=lambda: elector.acquisitions)
    if not config.metrics_port:
        return None
    server = MetricsServer(config.metrics_port, measure, host=config.metrics_bind_addresses)
    await server.start()
    log.info("metrics on %s port %d, path /metrics", ", ".join(config.metrics_bind_addresses), config.metrics_port)
    return server


async def campaign_forever(elector: LeaderElector, ids: IdClaims, shutdown: Shutdown) -> None:
    """Lead while the Lease allows, then campaign again as a standby. The process is stopped
    (exit 1) only when it can no longer be trusted: its event loop stood still for longer than
    a lease (frozen, starved: its view of the cluster is stale and a write it had in flight may
    land late), or the election itself failed unexpectedly."""
    try:
        while True:
            await elector.run()  # returns when leadership is lost
            if elector.stalled:
                shutdown.request(f"the process stood still for {elector.stalled:.1f}s, longer than the "
                                 f"{elector.lease_duration:g}s lease: it can no longer be trusted", exit_code=1)
                return
            ids.forget_claims()  # another leader may change them meanwhile: read them again when leading
            log.info("lost the leadership: campaigning again as a standby")
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("leader election failed")
        shutdown.request("leader election failed", exit_code=1)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def main(
    config: Config, exit_now: Callable[[int], None] = os._exit, stop_signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
) -> int:
    """Run until asked to stop (``stop_signals``) or until the process can no longer be trusted;
    returns the exit code. A shutdown cut short by its grace ends the process with ``exit_now``."""
    install_task_factory(asyncio.get_running_loop())
    if config.kubeconfig:
        os.environ["KUBECONFIG"] = config.kubeconfig  # Kopf's login reads it too
    reachability = ApiReachability()
    kube = Kube(load_credentials(config.kubeconfig), claims_namespace=config.claims_namespace,
                reachability=reachability)
    recorder = EventRecorder(kube, config.event_level)
    # Every write is fenced by leadership. The elector is built last (when it starts leading it
    # reconciles through the objects below), so the fence asks it by name: with leader election on,
    # nothing is written before the elector exists and leads.
    elector: LeaderElector | None = None
    fence = Fence(lambda: not config.leader_elect or (elector is not None and elector.is_leader()))
    ids = IdClaims(kube, kube, pet_reader=kube, fence=fence,
                   served=None if config.all_namespaces else frozenset(config.namespaces))
    bindings = None
    if not config.all_namespaces and config.role_binding:
        # namespace mode: keep the RoleBinding of each served namespace until its pets are finalized
        bindings = BindingGuard(kube, config.namespaces, config.role_binding, may_write=fence.may_write)
    rec = Reconciler(kube, ids, on_phase_change=recorder.phase_changed, fence=fence, bindings=bindings)
    if not config.leader_elect:  # a leader-electing replica lists them when it starts leading
        await prime_claims(config, kube, ids)
    registry = kopf.OperatorRegistry()
    readiness = Readiness(reachability)
    indexes = Indexes(complete=readiness.synced_event)  # handlers reconcile once all is indexed
    counts = handlers.register(registry, rec, indexes)
    deadlines = Deadlines(config.shutdown_grace, config.shutdown_drain_delay if config.webhook_port else 0.0)
    watchdog = Watchdog(config.shutdown_grace + 1.0, exit_now)
    shutdown = Shutdown(deadlines, on_request=watchdog.arm)
    stop_flag = asyncio.Event()
    if config.leader_elect:
        elector = make_elector(config, kube, recorder, ids, rec, indexes, readiness)
    with own_tasks():  # Kopf's shutdown must leave these (and their connections) alone
        health = HealthServer(config.health_port, readiness.check, host=config.health_bind_addresses,
                              leader=elector.status if elector is not None else None)
        await health.start()
        metrics_server = await start_metrics(config, rec, ids, elector)  # metrics hook
        webhook = await start_webhook(config, kube, store_lookup(kube, indexes, readiness))
        background = [asyncio.create_task(initial_sync(config, kube, rec, readiness)),
                      asyncio.create_task(release_forever()),
                      asyncio.create_task(maintenance(config, rec, indexes, readiness, catch_up=elector is None)),
                      asyncio.create_task(probe_while_failing(reachability, kube.server_version))]
        campaign = asyncio.create_task(campaign_forever(elector, ids, shutdown)) if elector is not None else None
        requested = asyncio.create_task(shutdown.requested.wait())
    log.info("serving %s; claims in %s; health on %s port %d", config.scope, config.claims_namespace,
             ", ".join(config.health_bind_addresses), config.health_port)
    existing = {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}
    existing.add(asyncio.current_task())  # type: ignore[arg-type]
    kopf_tasks = await kopf.spawn_tasks(
        registry=registry,
        settings=make_settings(max(0.0, deadlines.kopf - 0.5)),
        standalone=True,
        clusterwide=config.all_namespaces,
        namespaces=list(config.namespaces),
        ready_flag=readiness.started,
        stop_flag=stop_flag,
    )
    if threading.current_thread() is threading.main_thread():
        loop = asyncio.get_running_loop()
        for sig in stop_signals:  # in place of Kopf's own handlers
            loop.add_signal_handler(sig, shutdown.request, f"{sig.name} received")
    kopf_task = asyncio.create_task(kopf.run_tasks(kopf_tasks, ignored=NotKopfs(existing)))
    await asyncio.wait({kopf_task, requested}, return_when=asyncio.FIRST_COMPLETED)
    if not shutdown.requested.is_set():
        failure = None if kopf_task.cancelled() else kopf_task.exception()
        if failure is not None:
            log.error("Kopf stopped: %r", failure)
        shutdown.request("Kopf stopped on its own", exit_code=1)
    requested.cancel()

    async def release() -> bool:
        return await elector.release() if elector is not None else False

    stopper = Stopper(
        unready=lambda: setattr(readiness, "stopping", True),
        stop_kopf=stop_flag.set,
        kopf=kopf_task,
        background=background,
        stop_campaign=(lambda: _cancel(campaign)) if campaign is not None else None,
        release_lease=release if elector is not None else None,
        webhook_stop=webhook.stop if webhook is not None else None,
        closers=(counts.close, health.stop, kube.close, *((metrics_server.stop,) if metrics_server else ())),
    )
    code = await shutdown.run(stopper)
    log.info("stopped after %d status writes (%d refused while not leading)", rec.writes, rec.fenced)
    if shutdown.abandoned:
        flush_logs()
        exit_now(code)  # what is left may not even stop when cancelled: do not wait for it
    watchdog.disarm()
    return code


def run(config: Config) -> int:
    return asyncio.run(main(config))

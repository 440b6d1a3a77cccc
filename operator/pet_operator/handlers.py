"""Kopf wiring: event handlers that keep the indexes (:mod:`indexes`) and reconcile.

Only ``on.event`` handlers are used: the operator is level-based, every event (and the
initial listing at start-up, and the periodic resync) leads to the same idempotent
reconciliation. So Kopf writes no progress or diff-base annotations, no handler
returns anything, and every status write is the reconciler's explicit patch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import kopf

from pet_operator import metrics, model, rest
from pet_operator.indexes import Indexes as Indexes  # the handlers' view; re-exported
from pet_operator.metrics import Controller, OperatorMetrics, WorkItem
from pet_operator.model import Key, PetIndex, PetsByStore, PetSnapshot, StoreIndex, StoreSnapshot
from pet_operator.reconciler import Reconciler
from pet_operator.rest import ApiError
from pet_operator.store_counts import StoreCounts

log = logging.getLogger(__name__)

RETRIES = 5


async def with_retries(what: str, call: Callable[[], Awaitable[Any]]) -> None:
    """Retry transient API failures (5xx, 429, connection errors) with backoff; a 409 ends the call.

    ``on.event`` handlers are not retried by Kopf; the periodic resync is the last resort.
    """
    delay = 0.2
    for attempt in range(1, RETRIES + 1):
        try:
            await call()
            return
        except ApiError as exc:
            if exc.status == 409:
                # the object changed since the view this decision was made on: the watch event of that
                # change is queued behind this very handler (Kopf runs one object's handlers one after
                # another), and its handler decides again on the fresh view. Retrying here would only
                # repeat the stale precondition (measured: 8 clients updating 40 pets left 380 such
                # retries failing for 3 s each, and the last decisions waited for the resync)
                log.debug("%s: the object moved (409); its next event reconciles it", what)
                return
            if exc.status == 403:
                # Not final: RBAC can change under a running operator (a binding still reaching the API
                # server's cache, or deleted with a namespace; bindings.py keeps that one). Retried like
                # the rest, and after that by the next event or resync: never given up for good.
                error: str = (f"403 Forbidden ({exc.message or exc.reason}): the operator's RBAC does not allow "
                              "this now")
            elif exc.status < 500 and exc.status != 429:
                log.error("%s failed for good: %s %s", what, exc.status, exc.reason)
                return
            else:
                error = f"{exc.status} {exc.reason}"
        except (TimeoutError, OSError, aiohttp.ClientConnectionError) as exc:
            error = repr(exc)
        if attempt == RETRIES:
            log.error("%s failed %d times, last: %s; the next event or resync retries it", what, attempt, error)
            return
        log.warning("%s failed (%s), retry %d in %.1fs", what, error, attempt, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def in_cluster_server(info: kopf.ConnectionInfo, environ: Mapping[str, str] = os.environ) -> kopf.ConnectionInfo:
    """The API server's address in a pod as client-go finds it: ``$KUBERNETES_SERVICE_HOST`` and
    ``$KUBERNETES_SERVICE_PORT``, which the kubelet sets in every container. Kopf's service-account
    login names ``https://kubernetes.default.svc``, which only a cluster DNS resolves; the
    variables need none (the Service's ClusterIP is in the API server's certificate)."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return info
    if ":" in host:
        host = f"[{host}]"
    return dataclasses.replace(info, server=f"https://{host}:{port}")


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Kopf's credentials: in a pod the mounted service-account token (the server from the
    environment, :func:`in_cluster_server`); elsewhere ``$KUBECONFIG`` (or
    ``~/.kube/config``). Kopf's own kubeconfig reader knows ``token`` but not ``tokenFile``, so a
    token file (a rotated token: the harness's, a projected one) is read here, afresh at every
    login: Kopf logs in again when the API server answers 401, i.e. once the old token expired."""
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    if info is not None:
        return in_cluster_server(info)
    info = kopf.login_with_kubeconfig(**kwargs)
    if info is None or info.token or info.certificate_path or info.certificate_data:
        return info
    path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
    try:
        token = rest.from_kubeconfig(path).token()
    except rest.ConfigError as exc:
        log.warning("cannot read the token of %s: %s", path, exc)
        return info
    return dataclasses.replace(info, token=token) if token else info


# --- metrics hooks: reconciles and work queues (what is measured: docs/observability.md) ------------

def received(ctl: Controller, rec: Reconciler, count: int = 1) -> list[WorkItem]:
    """``count`` changes entering ``ctl``'s queue; a standby keeps no queue (it only keeps its view)."""
    return ctl.queue.received(count) if rec.may_write() else [metrics.UNQUEUED] * count


def measured(ctl: Controller, rec: Reconciler, item: WorkItem,
             call: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    """``call`` as reconcile attempts of ``ctl``: the first one ends ``item``'s wait in the queue; each
    (a retry too) counts as one reconcile on a replica that may write: ``requeue`` when the object
    moved (409: its next event decides again), ``error`` when it raised."""

    async def attempt() -> Any:
        item.start()
        if not rec.may_write():
            return await call()  # a standby's handler: no reconcile (NotLeader inside anyway)
        with ctl.reconciling() as outcome:
            try:
                return await call()
            except ApiError as exc:
                if exc.status == 409:
                    outcome.result = "requeue"
                raise

    return attempt


STORE_FANOUT = 16  # pets of one store reconciled at once after the store changed


async def bounded_gather(calls: list[Awaitable[Any]], limit: int) -> None:
    """Await ``calls`` with at most ``limit`` running at once (each is already retry-wrapped)."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[Any]) -> None:
        async with gate:
            await call

    await asyncio.gather(*(one(c) for c in calls))


def register(registry: kopf.OperatorRegistry, rec: Reconciler, indexes: Indexes,
             counts: StoreCounts | None = None, measure: OperatorMetrics | None = None) -> StoreCounts:
    """Register the operator's indexes and handlers on ``registry``; returns the store counter the
    handlers request counts from (``counts``, or a new one). ``measure``: the metrics (default: the
    process's)."""
    measure = measure if measure is not None else metrics.default()
    pet_ctl, store_ctl = measure.controller("pet"), measure.controller("petstore")

    async def count_store(what: str, call: Callable[[], Awaitable[Any]]) -> None:
        await with_retries(what, measured(store_ctl, rec, metrics.UNQUEUED, call))

    counts = counts if counts is not None else StoreCounts(
        rec.recount, count_store, enqueue=lambda: received(store_ctl, rec)[0])
    kopf.on.login(id="login", registry=registry)(login)

    pets_resource = (model.GROUP, model.VERSION, model.PETS)
    stores_resource = (model.GROUP, model.VERSION, model.PETSTORES)
    pets, stores, by_store = indexes.pets, indexes.stores, indexes.by_store

    def complete() -> bool:
        """Reconcile only once every object that existed at start-up is indexed (a pet's store, or
        an older twin, may come later in the initial listing than the pet). Until then an event is
        indexed and nothing more: its handler returns at once, so Kopf does not hold thousands of
        bodies while the listing goes on, and the start-up catch-up pass (``resync_once``, run by
        ``app`` once the indexes are complete) reconciles what was indexed."""
        return indexes.complete is None or indexes.complete.is_set()

    guard = rec.bindings
    if guard is not None:
        async def finalize_unwatched(body: dict[str, Any]) -> None:
            await rec.finalize_unwatched(body, pets, stores)

        guard.finalize = finalize_unwatched

        @kopf.on.event("", "v1", "namespaces", id="namespace_event", registry=registry)
        async def namespace_event(type: str | None, body: kopf.Body, **_: Any) -> None:
            if type == "DELETED":
                return
            if not complete():  # noted only: the catch-up pass then guards or releases them all
                guard.observe(body)
                return
            name = body.get("metadata", {}).get("name", "")
            if name in guard.served:
                await with_retries(f"RoleBinding of namespace {name}",
                                   lambda: guard.namespace_changed(body))

    @kopf.on.event(*pets_resource, id="pet_event", registry=registry)
    async def pet_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        meta = body.get("metadata", {})
        key: Key = (meta.get("namespace", ""), meta.get("name", ""))
        store = (body.get("spec") or {}).get("store")
        stores_to_count: set[str] = {store} if store else set()
        if type == "DELETED":
            measure.pets.gone(*key)
            pets.remove(key)
            by_store.place(key, None)
            if guard is not None:
                guard.pet_gone(*key)
            previous = rec.forget_pet(key[0], key[1], meta.get("uid", ""))
        else:
            measure.pets.seen(key[0], key[1], body)
            snap = PetSnapshot.from_body(body)
            rec.observe_pet(snap)
            pets.put(key, snap)
            if guard is not None:
                guard.pet_seen(key[0], key[1], snap.finalizers)
            by_store.place(key, (key[0], snap.store) if snap.store else None)
            if not complete():
                return
            item = received(pet_ctl, rec)[0]
            await with_retries(f"reconcile pet {key[0]}/{key[1]}",
                               measured(pet_ctl, rec, item, lambda: rec.sync_pet(key, pets, stores)))
            previous = rec.moved_from(key)
        if previous:
            stores_to_count.add(previous)
        for name in stores_to_count:
            counts.request((key[0], name), pets, stores, by_store)
        if guard is not None and key[0] in guard.terminating and complete():
            # the last pet of a namespace being deleted lets the operator's RoleBinding go
            await with_retries(f"RoleBinding of namespace {key[0]}",
                               lambda: guard.release_when_done(key[0]))

    @kopf.on.event(*stores_resource, id="store_event", registry=registry)
    async def store_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        meta = body.get("metadata", {})
        skey: Key = (meta.get("namespace", ""), meta.get("name", ""))
        snap = None if type == "DELETED" else StoreSnapshot.from_body(body)
        if snap is None:
            stores.remove(skey)
        else:
            rec.observe_store(skey, snap.uid, str(meta.get("resourceVersion", "")))
            stores.put(skey, snap)
        if not complete():
            return
        if rec.store_changed(snap, skey):
            # every pet of the store, several at a time: a narrowed store with thousands of pets must
            # not wait for one status write after another
            def sync(pet_key: Key, item: WorkItem) -> Awaitable[None]:
                return with_retries(f"reconcile pet {pet_key[0]}/{pet_key[1]}",
                                    measured(pet_ctl, rec, item, lambda: rec.sync_pet(pet_key, pets, stores)))

            keys = list(by_store.get(skey, ()) or ())
            items = received(pet_ctl, rec, len(keys))
            try:
                await bounded_gather([sync(k, i) for k, i in zip(keys, items, strict=True)], STORE_FANOUT)
            finally:
                for item in items:
                    item.drop()  # those never started (the handler cancelled, a call raised)
        if snap is not None:
            counts.request(skey, pets, stores, by_store)

    return counts


async def resync_forever(rec: Reconciler, indexes: Indexes, period: float,
                         measure: OperatorMetrics | None = None) -> None:
    """Re-reconcile every known object and collect orphaned claims every ``period`` seconds."""
    while True:
        await asyncio.sleep(period)
        pets, stores, by_store = indexes.pets, indexes.stores, indexes.by_store
        try:
            await resync_once(rec, pets, stores, by_store, measure)
        except Exception:
            log.exception("resync pass failed; the next one runs in %.0fs", period)


YIELD_EVERY = 100  # a resync lets the event loop turn this often (Lease renewals, the webhook)


async def resync_once(rec: Reconciler, pets: PetIndex, stores: StoreIndex, by_store: PetsByStore,
                      measure: OperatorMetrics | None = None) -> None:
    """One pass: orphaned claims, RoleBindings, then every pet and every store, one after another
    (every object enters its controller's queue when the pass starts, as a resync does in Go)."""
    measure = measure if measure is not None else metrics.default()
    pet_ctl, store_ctl = measure.controller("pet"), measure.controller("petstore")
    await with_retries("collect orphaned id claims", lambda: rec.collect_orphans(pets, stores))
    guard = rec.bindings
    if guard is not None:
        await with_retries("RoleBindings of the served namespaces", guard.sweep)
    pet_keys, store_keys = list(pets.keys()), list(stores.keys())
    pet_items, store_items = received(pet_ctl, rec, len(pet_keys)), received(store_ctl, rec, len(store_keys))
    try:
        for number, (key, item) in enumerate(zip(pet_keys, pet_items, strict=True)):
            if number % YIELD_EVERY == YIELD_EVERY - 1:
                # pets whose status is right need no I/O, so nothing else would run during the pass: at
                # tens of thousands of pets the leader could miss its renew deadline
                await asyncio.sleep(0)
            await with_retries(
                f"resync pet {key[0]}/{key[1]}",
                measured(pet_ctl, rec, item, lambda key=key: rec.sync_pet(key, pets, stores)),  # type: ignore[misc]
            )
        for skey, item in zip(store_keys, store_items, strict=True):
            await with_retries(
                f"resync store {skey[0]}/{skey[1]}",
                measured(store_ctl, rec, item,
                         lambda skey=skey: rec.sync_store(skey, pets, stores, by_store)),  # type: ignore[misc]
            )
    finally:
        for item in (*pet_items, *store_items):
            item.drop()  # the rest of a pass that failed or was cancelled

"""handlers: the retry wrapper, the Kopf registration, and the handlers' wiring to the reconciler."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from operator_fakes import (
    NS,
    Clock,
    FakeWriter,
    IdsNotEnforced,
    by_store_of,
    index_of,
    pet,
    pet_body,
    store,
    store_body,
)

from pet_operator import handlers, model
from pet_operator.model import PetSnapshot, StoreSnapshot
from pet_operator.reconciler import Reconciler
from pet_operator.rest import ApiError
from pet_operator.store_counts import StoreCounts

LOGGER = "pet_operator.handlers"


class Stop(Exception):
    """Raised by the fake sleep to end an endless loop under test."""


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Replace asyncio.sleep with a recorder: backoff is asserted, never waited for."""
    recorded: list[float] = []

    async def fake_sleep(delay: float, *args: Any, **kwargs: Any) -> None:
        recorded.append(delay)

    monkeypatch.setattr(handlers.asyncio, "sleep", fake_sleep)
    return recorded


def failing(*errors: BaseException) -> tuple[Callable[[], Awaitable[None]], list[int]]:
    """A call that raises ``errors`` in turn, then succeeds; returns it and its call counter."""
    pending = list(errors)
    calls = [0]

    async def call() -> None:
        calls[0] += 1
        if pending:
            raise pending.pop(0)

    return call, calls


# --- with_retries ------------------------------------------------------------------------------


async def test_success_needs_no_retry(delays: list[float]) -> None:
    call, calls = failing()
    await handlers.with_retries("thing", call)
    assert calls == [1]
    assert delays == []


@pytest.mark.parametrize(
    "error",
    [
        ApiError(status=500, reason="Internal Server Error"),
        ApiError(status=503, reason="Service Unavailable"),
        ApiError(status=504, reason="Gateway Timeout"),
        ApiError(status=429, reason="Too Many Requests"),
        ConnectionResetError("reset by peer"),
        ConnectionRefusedError("refused"),
        OSError("network unreachable"),
        TimeoutError(),
        aiohttp.ClientOSError(104, "Connection reset by peer"),  # aiohttp's OSError flavour
    ],
    ids=lambda e: type(e).__name__ + ("-" + str(e.status) if isinstance(e, ApiError) else ""),
)
async def test_transient_errors_are_retried_with_backoff(
    error: BaseException, delays: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    call, calls = failing(error, error)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await handlers.with_retries("reconcile pet default/rex", call)
    assert calls == [3]
    assert delays == [0.2, 0.4]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "reconcile pet default/rex failed" in warnings[0].getMessage()
    assert "retry 1 in 0.2s" in warnings[0].getMessage()
    assert "retry 2 in 0.4s" in warnings[1].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_conflict_ends_the_call_at_once_for_the_next_event_to_decide(
    delays: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    # the object moved: retrying would repeat the stale precondition while the fresh event waits
    # behind this handler
    call, calls = failing(ApiError(status=409, reason="Conflict"))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        await handlers.with_retries("reconcile pet default/rex", call)
    assert calls == [1]
    assert delays == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_gives_up_after_the_last_retry_and_logs_an_error(
    delays: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    error = ApiError(status=503, reason="Service Unavailable")
    call, calls = failing(*[error] * 10)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await handlers.with_retries("count pets of store default/shop", call)  # no exception escapes
    assert calls == [handlers.RETRIES] == [5]
    assert delays == [0.2, 0.4, 0.8, 1.6]  # no sleep after the last attempt
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "count pets of store default/shop failed 5 times, last: 503 Service Unavailable; "
        "the next event or resync retries it"
    ]


async def test_backoff_is_capped_at_five_seconds(
    delays: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "RETRIES", 10)
    call, calls = failing(*[OSError("down")] * 20)
    await handlers.with_retries("thing", call)
    assert calls == [10]
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0]


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, "Bad Request"),
        (401, "Unauthorized"),
        (404, "Not Found"),
        (410, "Gone"),
        (422, "Unprocessable Entity"),
    ],
)
async def test_client_errors_are_not_retried(
    status: int, reason: str, delays: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    call, calls = failing(ApiError(status=status, reason=reason))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await handlers.with_retries("reconcile pet default/rex", call)
    assert calls == [1]
    assert delays == []
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, f"reconcile pet default/rex failed for good: {status} {reason}")
    ]


async def test_forbidden_is_retried_with_backoff_and_never_given_up_for_good(
    delays: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """A 403 can pass (a RoleBinding still reaching the API server's cache; in a namespace being
    deleted, issue 13 finding 1, the binding the operator keeps): retried, said clearly, and left to
    the next event or resync, never "failed for good"."""
    error = ApiError(status=403, reason="Forbidden", message='pets "rex" is forbidden: User cannot patch')
    call, calls = failing(*[error] * 10)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await handlers.with_retries("reconcile pet default/rex", call)
    assert calls == [handlers.RETRIES]
    assert delays == [0.2, 0.4, 0.8, 1.6]
    messages = [r.getMessage() for r in caplog.records]
    assert "the operator's RBAC does not allow this now" in messages[0]
    assert 'pets "rex" is forbidden' in messages[0]
    assert "failed for good" not in " ".join(messages)
    assert messages[-1].endswith("the next event or resync retries it")
    call, calls = failing(error)
    await handlers.with_retries("reconcile pet default/rex", call)  # and a later success ends it
    assert calls == [2]


async def test_unexpected_errors_propagate(delays: list[float]) -> None:
    call, calls = failing(ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        await handlers.with_retries("thing", call)
    assert calls == [1]
    assert delays == []


async def test_server_disconnect_is_retried(delays: list[float]) -> None:
    call, calls = failing(aiohttp.ServerDisconnectedError())
    await handlers.with_retries("thing", call)
    assert calls == [2]
    assert delays == [0.2]


# --- Kopf registration -------------------------------------------------------------------------


@pytest.fixture
def writer() -> FakeWriter:
    return FakeWriter()


@pytest.fixture
def rec(writer: FakeWriter) -> Reconciler:
    return Reconciler(writer, IdsNotEnforced(), clock=Clock())


@pytest.fixture
def indexes() -> handlers.Indexes:
    return handlers.Indexes()


@pytest.fixture
def counts(rec: Reconciler) -> StoreCounts:
    """Store counts with no window: a test awaits ``counts.idle()`` to see them written."""
    return StoreCounts(rec.recount, handlers.with_retries, window=0)


@pytest.fixture
def registry(rec: Reconciler, indexes: handlers.Indexes, counts: StoreCounts) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    assert handlers.register(registry, rec, indexes, counts) is counts
    return registry


def handler_fn(registry: kopf.OperatorRegistry, kind: str, handler_id: str) -> Any:
    for handler in getattr(registry, kind).get_all_handlers():
        if handler.id == handler_id:
            return handler.fn
    raise LookupError(f"{handler_id} not in {kind}")


def ids(registry: kopf.OperatorRegistry, kind: str) -> set[str]:
    return {h.id for h in getattr(registry, kind).get_all_handlers()}


def test_registration_declares_exactly_the_expected_handlers(registry: kopf.OperatorRegistry) -> None:
    assert ids(registry, "_activities") == {"login"}
    # no Kopf indexes: their start-up hold-back is O(N^2) in the objects (pet_operator/indexes.py)
    assert ids(registry, "_indexing") == set()
    assert ids(registry, "_watching") == {"pet_event", "store_event"}
    # no change-detecting handlers (they would keep diff-base/progress and could return into status),
    # no daemons or timers, no webhooks
    assert ids(registry, "_changing") == set()
    assert ids(registry, "_spawning") == set()
    assert ids(registry, "_webhooks") == set()


def test_registration_selects_the_right_resources(registry: kopf.OperatorRegistry) -> None:
    selected = {
        h.id: (h.selector.group, h.selector.version, h.selector.any_name)
        for kind in ("_indexing", "_watching")
        for h in getattr(registry, kind).get_all_handlers()
    }
    pets = (model.GROUP, model.VERSION, "pets")
    stores = (model.GROUP, model.VERSION, "petstores")
    assert selected == {"pet_event": pets, "store_event": stores}
    assert model.GROUP == "petstore.example.com"
    assert model.VERSION == "v1"


def test_registration_activities(registry: kopf.OperatorRegistry) -> None:
    activities = {h.id: h.activity.value for h in registry._activities.get_all_handlers()}
    assert activities == {"login": "authentication"}


def test_registration_does_not_touch_the_global_registry(rec: Reconciler) -> None:
    before = {h.id for h in kopf.get_default_registry()._watching.get_all_handlers()}
    handlers.register(kopf.OperatorRegistry(), rec, handlers.Indexes())
    assert {h.id for h in kopf.get_default_registry()._watching.get_all_handlers()} == before


def test_login_uses_kubeconfig_outside_a_pod(
    registry: kopf.OperatorRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token"):
        pytest.skip("running in a pod: the service account wins")
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "contexts: [{name: c, context: {cluster: k, user: u, namespace: pets}}]\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: secret-token}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    info = handler_fn(registry, "_activities", "login")(
        settings=kopf.OperatorSettings(), logger=logging.getLogger()
    )
    assert isinstance(info, kopf.ConnectionInfo)
    assert info.server == "https://127.0.0.1:6443"
    assert info.token == "secret-token"


def test_login_reads_a_token_file_afresh_each_time(
    registry: kopf.OperatorRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 12: the harness rotates the operator's token in a file the kubeconfig names
    (``tokenFile``). Kopf's kubeconfig reader ignores it (no token at all before); each login reads
    it, and Kopf logs in again on a 401, so a rotated token is taken up."""
    if os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token"):
        pytest.skip("running in a pod: the service account wins")
    token = tmp_path / "token"
    token.write_text("first-token\n")
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443', insecure-skip-tls-verify: true}}]\n"
        f"users: [{{name: u, user: {{tokenFile: {token}}}}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    login = handler_fn(registry, "_activities", "login")
    info = login(settings=kopf.OperatorSettings(), logger=logging.getLogger())
    assert (info.server, info.token) == ("https://127.0.0.1:6443", "first-token")
    token.write_text("rotated-token-of-another-length\n")
    info = login(settings=kopf.OperatorSettings(), logger=logging.getLogger())
    assert info.token == "rotated-token-of-another-length"



def test_in_a_pod_the_server_comes_from_the_kubelets_environment_not_from_cluster_dns() -> None:
    """Kopf's service-account login names https://kubernetes.default.svc, which needs a cluster DNS
    (the node backend has none); client-go's in-cluster configuration uses the environment."""
    info = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="t", ca_path="/ca.crt")
    moved = handlers.in_cluster_server(info, {"KUBERNETES_SERVICE_HOST": "10.97.0.1",
                                              "KUBERNETES_SERVICE_PORT": "443"})
    assert (moved.server, moved.token, moved.ca_path) == ("https://10.97.0.1:443", "t", "/ca.crt")
    v6 = handlers.in_cluster_server(info, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"})
    assert v6.server == "https://[fd00::1]:443"
    assert handlers.in_cluster_server(info, {"KUBERNETES_SERVICE_HOST": "10.97.0.1"}) is info

# --- indexing in the handlers --------------------------------------------------------------------


def fill(indexes: handlers.Indexes, *snaps: PetSnapshot | StoreSnapshot) -> None:
    """Put pets and stores into the indexes as their earlier watch events would have."""
    for snap in snaps:
        key = (snap.namespace, snap.name)
        if isinstance(snap, PetSnapshot):
            indexes.pets.put(key, snap)
            indexes.by_store.place(key, (snap.namespace, snap.store) if snap.store else None)
        else:
            indexes.stores.put(key, snap)


async def test_pet_event_indexes_observes_and_places_the_pet(
    registry: kopf.OperatorRegistry, rec: Reconciler, indexes: handlers.Indexes, delays: list[float]
) -> None:
    fn = handler_fn(registry, "_watching", "pet_event")
    await fn(type=None, body=pet_body("rex", store="a"))
    [snap] = indexes.pets.get((NS, "rex")) or ()
    assert snap.store == "a"
    assert snap.uid in rec.observed
    assert set(indexes.by_store.get((NS, "a")) or ()) == {(NS, "rex")}
    await fn(type="MODIFIED", body=pet_body("rex", store="b", rv="2"))
    assert indexes.by_store.get((NS, "a")) is None
    assert set(indexes.by_store.get((NS, "b")) or ()) == {(NS, "rex")}
    await fn(type="DELETED", body=pet_body("rex", store="b", rv="3"))
    assert (NS, "rex") not in indexes.pets
    assert indexes.by_store.get((NS, "b")) is None
    assert snap.uid not in rec.observed


async def test_store_event_indexes_the_store_and_releases_the_write_cache(
    registry: kopf.OperatorRegistry, rec: Reconciler, writer: FakeWriter, indexes: handlers.Indexes,
    counts: StoreCounts,
) -> None:
    stale = store("shop", rv="1")
    await rec.sync_store((NS, "shop"), index_of(), index_of(stale), by_store_of())
    fn = handler_fn(registry, "_watching", "store_event")
    await fn(type="MODIFIED", body=store_body("shop", rv=str(writer.resource_version), status=writer.calls[0].status))
    await counts.idle()
    [snap] = indexes.stores.get((NS, "shop")) or ()
    assert snap.status == writer.calls[0].status
    assert stale.uid in rec.observed
    # the cache is released: the stale index decides again and the write is repeated
    await rec.sync_store((NS, "shop"), index_of(), index_of(stale), by_store_of())
    assert len(writer.calls) == 2
    await fn(type="DELETED", body=store_body("shop"))
    assert (NS, "shop") not in indexes.stores


async def test_until_the_start_up_is_indexed_handlers_only_index_and_the_catch_up_reconciles(
    rec: Reconciler, writer: FakeWriter, counts: StoreCounts
) -> None:
    # a pet listed before its store must not be written Pending/StoreNotFound for a moment; and the
    # handler must return at once (Kopf keeps each body while its handler runs)
    indexes = handlers.Indexes(complete=asyncio.Event())
    registry = kopf.OperatorRegistry()
    handlers.register(registry, rec, indexes, counts)
    await handler_fn(registry, "_watching", "pet_event")(type=None, body=pet_body("rex", store="shop"))
    await handler_fn(registry, "_watching", "store_event")(type=None, body=store_body("shop"))
    assert (NS, "rex") in indexes.pets and (NS, "shop") in indexes.stores
    assert writer.calls == []
    assert indexes.complete is not None
    indexes.complete.set()
    await handlers.resync_once(rec, indexes.pets, indexes.stores, indexes.by_store)  # what app runs then
    assert [(c.name, c.status["phase"]) for c in writer.of("pets")] == [("rex", "Active")]
    assert [c.status["petCount"] for c in writer.of("petstores")] == [1]


# --- event handlers ---------------------------------------------------------------------------


async def test_pet_event_reconciles_pet_and_counts_its_store(
    registry: kopf.OperatorRegistry, writer: FakeWriter, counts: StoreCounts, indexes: handlers.Indexes,
    delays: list[float],
) -> None:
    fill(indexes, store("shop"))
    await handler_fn(registry, "_watching", "pet_event")(type="ADDED", body=pet_body("rex", store="shop"))
    assert [c.plural for c in writer.calls] == ["pets"]  # the count comes after its window
    await counts.idle()
    assert [(c.plural, c.name) for c in writer.calls] == [("pets", "rex"), ("petstores", "shop")]
    assert writer.calls[0].status["phase"] == "Active"
    assert (writer.calls[1].status["petCount"], writer.calls[1].status["activeCount"]) == (1, 1)


async def test_pet_event_recounts_old_and_new_store_when_a_pet_moves(
    registry: kopf.OperatorRegistry, rec: Reconciler, writer: FakeWriter, counts: StoreCounts,
    indexes: handlers.Indexes, delays: list[float],
) -> None:
    counted = {"petCount": 1, "activeCount": 1}
    old = pet("rex", store="a", status={"phase": "Active"})
    rec.observe_pet(old)
    fill(indexes, old, store("a", status=counted), store("b"))
    await handler_fn(registry, "_watching", "pet_event")(type="MODIFIED", body=pet_body("rex", store="b", rv="2"))
    await counts.idle()
    stores = {c.name: (c.status["petCount"], c.status["activeCount"]) for c in writer.of("petstores")}
    assert stores == {"a": (0, 0), "b": (1, 1)}
    assert rec.moved_from((NS, "rex")) is None  # consumed by the handler


async def test_pet_event_deleted_forgets_the_pet_and_recounts(
    registry: kopf.OperatorRegistry, rec: Reconciler, writer: FakeWriter, counts: StoreCounts,
    indexes: handlers.Indexes, delays: list[float],
) -> None:
    gone = pet("rex", store="shop")
    rec.observe_pet(gone)
    fill(indexes, gone, store("shop", status={"petCount": 1, "activeCount": 1}))
    await handler_fn(registry, "_watching", "pet_event")(type="DELETED", body=pet_body("rex", store="shop"))
    await counts.idle()
    assert gone.uid not in rec.observed
    assert [(c.plural, c.name) for c in writer.calls] == [("petstores", "shop")]  # no write to the pet
    assert writer.calls[0].status["petCount"] == 0


async def test_store_event_with_new_spec_reconciles_its_pets(
    registry: kopf.OperatorRegistry, rec: Reconciler, writer: FakeWriter, counts: StoreCounts,
    indexes: handlers.Indexes, delays: list[float],
) -> None:
    fill(indexes, pet("rex", store="shop", tags=["cute"], status={"phase": "Active"}))
    await handler_fn(registry, "_watching", "store_event")(
        type="MODIFIED", body=store_body("shop", allowed=["big"], generation=2))
    await counts.idle()
    pet_call, store_call = writer.calls
    assert (pet_call.name, pet_call.status["phase"], pet_call.status["reason"]) == (
        "rex",
        "Invalid",
        "TagsNotAllowed",
    )
    assert "'cute'" in pet_call.status["message"]
    assert "[big]" in pet_call.status["message"]
    assert (store_call.name, store_call.status["petCount"], store_call.status["activeCount"]) == (
        "shop",
        1,
        0,
    )


async def test_store_event_without_spec_change_does_not_resync_pets(
    registry: kopf.OperatorRegistry,
    rec: Reconciler,
    writer: FakeWriter,
    indexes: handlers.Indexes,
    monkeypatch: pytest.MonkeyPatch,
    delays: list[float],
) -> None:
    synced: list[tuple[str, str]] = []
    real_sync_pet = rec.sync_pet

    async def spy(key: tuple[str, str], *args: Any) -> Any:
        synced.append(key)
        return await real_sync_pet(key, *args)

    monkeypatch.setattr(rec, "sync_pet", spy)
    fill(indexes, pet("rex", store="shop"))
    fn = handler_fn(registry, "_watching", "store_event")
    await fn(type=None, body=store_body("shop"))  # first sight (initial listing)
    assert synced == [(NS, "rex")]
    # our own status write comes back: same uid and generation
    await fn(type="MODIFIED", body=store_body("shop", rv="9", status={"petCount": 1}))
    assert synced == [(NS, "rex")]


async def test_store_event_deleted_turns_its_pets_pending(
    registry: kopf.OperatorRegistry, rec: Reconciler, writer: FakeWriter, indexes: handlers.Indexes,
    delays: list[float],
) -> None:
    fill(indexes, pet("rex", store="shop", status={"phase": "Active"}), store("shop"))
    rec.store_changed(store("shop"), (NS, "shop"))
    await handler_fn(registry, "_watching", "store_event")(type="DELETED", body=store_body("shop"))
    [call] = writer.calls  # the pet only: a deleted store gets no status write
    assert (call.plural, call.name, call.status["phase"], call.status["reason"]) == (
        "pets",
        "rex",
        "Pending",
        "StoreNotFound",
    )


async def test_event_handler_retries_transient_failures(
    registry: kopf.OperatorRegistry, writer: FakeWriter, delays: list[float]
) -> None:
    writer.errors.append(ApiError(status=500, reason="etcd leader changed"))
    await handler_fn(registry, "_watching", "pet_event")(type="ADDED", body=pet_body("rex"))
    assert delays == [0.2]
    assert len(writer.calls) == 2
    assert writer.calls[-1].status["phase"] == "Active"


# --- resync ----------------------------------------------------------------------------------------


async def test_resync_once_writes_what_changed_then_nothing(rec: Reconciler, writer: FakeWriter) -> None:
    p1, p2 = pet("rex", store="shop"), pet("fido", store="gone")
    args = (index_of(p1, p2), index_of(store("shop")), by_store_of(p1, p2))
    await handlers.resync_once(rec, *args)
    assert sorted((c.plural, c.name, c.status.get("phase")) for c in writer.calls) == [
        ("pets", "fido", "Pending"),
        ("pets", "rex", "Active"),
        ("petstores", "shop", None),
    ]
    await handlers.resync_once(rec, *args)
    assert len(writer.calls) == 3


def stopping_sleep(monkeypatch: pytest.MonkeyPatch, after: int) -> list[float]:
    """Fake asyncio.sleep that records periods and raises Stop on call number ``after``."""
    periods: list[float] = []

    async def fake_sleep(delay: float, *args: Any, **kwargs: Any) -> None:
        periods.append(delay)
        if len(periods) >= after:
            raise Stop

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    return periods


async def test_resync_forever_with_nothing_indexed_writes_nothing(
    rec: Reconciler, writer: FakeWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    periods = stopping_sleep(monkeypatch, after=3)
    with pytest.raises(Stop):
        await handlers.resync_forever(rec, handlers.Indexes(), 30.0)
    assert periods == [30.0, 30.0, 30.0]
    assert writer.calls == []


async def test_resync_forever_resyncs_every_period(
    rec: Reconciler, writer: FakeWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = pet("rex")
    indexes = handlers.Indexes()
    fill(indexes, p)
    periods = stopping_sleep(monkeypatch, after=3)
    with pytest.raises(Stop):
        await handlers.resync_forever(rec, indexes, 30.0)
    assert periods == [30.0, 30.0, 30.0]
    assert [c.name for c in writer.calls] == ["rex"]  # two passes, one write


async def test_resync_forever_survives_a_failing_pass(
    rec: Reconciler, writer: FakeWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = pet("rex")
    indexes = handlers.Indexes()
    fill(indexes, p)
    writer.errors.append(RuntimeError("unexpected"))  # anything with_retries does not handle
    periods = stopping_sleep(monkeypatch, after=3)
    with pytest.raises(Stop):
        await handlers.resync_forever(rec, indexes, 30.0)
    assert periods == [30.0, 30.0, 30.0]
    assert writer.calls[-1].status["phase"] == "Active"


async def test_resync_once_lets_the_event_loop_turn_during_a_long_pass(rec: Reconciler, writer: FakeWriter) -> None:
    many = [pet(f"p{i}", status={"phase": "Active"}) for i in range(1000)]
    pets = index_of(*many)
    await handlers.resync_once(rec, pets, index_of(), by_store_of())  # the first pass writes every status
    turns = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal turns
        while not stop.is_set():
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    writes = len(writer.calls)
    await handlers.resync_once(rec, pets, index_of(), by_store_of())  # nothing to write: no I/O at all
    stop.set()
    await task
    assert len(writer.calls) == writes
    assert turns >= 1000 // handlers.YIELD_EVERY - 1

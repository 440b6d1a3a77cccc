"""app: Readiness, Kopf settings, the initial-sync readiness gate, and main()'s wiring."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import kopf
import pytest
from claim_fakes import FakeClaimStore, FakeFinalizers
from operator_fakes import FakeWriter, IdsNotEnforced

from pet_operator import app, model
from pet_operator.cli import Config, parse_config
from pet_operator.id_claims import IdClaims
from pet_operator.reconciler import Reconciler
from pet_operator.shutdown import NotKopfs

REAL_SLEEP = asyncio.sleep


class Stop(Exception):
    """Raised by the fake sleep: the loop under test would have gone on forever."""


def config(*namespaces: str, all_namespaces: bool = False, resync: float = 0.0) -> Config:
    return Config(
        namespaces=namespaces,
        all_namespaces=all_namespaces,
        health_port=8080,
        kubeconfig=None,
        resync_period=resync,
        log_level="INFO",
        webhook_port=0,
    )


# --- Readiness -----------------------------------------------------------------------------------


def test_readiness_states() -> None:
    readiness = app.Readiness()
    assert readiness.check() == (False, "starting")
    readiness.detail = "waiting"
    assert readiness.check() == (False, "waiting")
    readiness.synced = True
    assert readiness.check() == (True, "ok")
    readiness.stopping = True
    assert readiness.check() == (False, "shutting down")


# --- Kopf settings ----------------------------------------------------------------------------------


def test_settings_keep_kopf_state_out_of_status() -> None:
    settings = app.make_settings()
    assert settings.peering.standalone is True
    progress = settings.persistence.progress_storage
    diffbase = settings.persistence.diffbase_storage
    # exactly the annotation storages: Kopf's default (smart/status) storages would write status.kopf
    assert type(progress) is kopf.AnnotationsProgressStorage
    assert type(diffbase) is kopf.AnnotationsDiffBaseStorage
    assert progress.prefix == model.GROUP
    assert diffbase.prefix == model.GROUP
    assert diffbase.key == "last-handled-configuration"
    assert settings.watching.connect_timeout == 10
    assert settings.watching.server_timeout == 120
    assert settings.networking.request_timeout == 60
    assert settings.watching.chunk_size == 500  # the listing before a watch comes in pages


def test_kopf_workers_are_not_limited() -> None:
    # a limited worker pool deadlocks Kopf's index pre-population once more objects exist at start-up
    # than the limit: each worker waits, holding its slot, for indexes that the others cannot fill
    settings = app.make_settings()
    assert settings.queueing.worker_limit is None
    assert settings.queueing.idle_timeout == 0.5


# --- initial_sync ---------------------------------------------------------------------------------


class FakeKube:
    """list_uids answers from ``objects`` (plural -> uids); ``failures`` are raised first."""

    def __init__(self, objects: dict[str, set[str]], failures: int = 0, terminating: tuple[str, ...] = ()) -> None:
        self.objects = objects
        self.failures = failures
        self.listed: list[tuple[str, tuple[str, ...] | None]] = []
        self.terminating = terminating

    async def namespace_terminating(self, name: str) -> bool:
        if name == "unreadable":
            raise ConnectionRefusedError("API server not up")
        return name in self.terminating

    async def list_uids(self, plural: str, namespaces: tuple[str, ...] | None) -> set[str]:
        self.listed.append((plural, namespaces))
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError("API server not up")
        return set(self.objects.get(plural, set()))


def fake_sleep(
    monkeypatch: pytest.MonkeyPatch, on_sleep: Callable[[int], None], limit: int = 50
) -> list[float]:
    """Replace asyncio.sleep: call ``on_sleep(n)`` on the n-th sleep, raise Stop past ``limit``."""
    delays: list[float] = []
    monkeypatch.setattr(app, "_now", lambda: sum(delays))  # the initial sync's clock moves with the sleeps

    async def sleep(delay: float, *args: Any, **kwargs: Any) -> None:
        delays.append(delay)
        if len(delays) > limit:
            raise Stop(f"still not ready after {limit} polls")
        on_sleep(len(delays))

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return delays


@pytest.fixture
def rec() -> Reconciler:
    return Reconciler(FakeWriter(), IdsNotEnforced())


async def test_initial_sync_ready_at_once_when_everything_was_seen(
    rec: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = FakeKube({"pets": {"p1"}, "petstores": {"s1"}})
    rec.observed |= {"p1", "s1", "unrelated"}
    readiness = app.Readiness()
    readiness.started.set()
    delays = fake_sleep(monkeypatch, lambda n: None)
    await app.initial_sync(config("default", "other"), kube, rec, readiness)  # type: ignore[arg-type]
    assert readiness.check() == (True, "ok")
    assert delays == []
    assert kube.listed == [("pets", ("default", "other")), ("petstores", ("default", "other"))]


async def test_initial_sync_leaves_out_a_namespace_already_being_deleted(
    rec: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kopf does not watch a namespace that is being deleted when it starts: waiting for its objects on a
    watch would keep the operator unready, and nothing reconciled, for good (bindings.py finalizes them)."""
    kube = FakeKube({"pets": set()}, terminating=("doomed",))
    readiness = app.Readiness()
    readiness.started.set()
    fake_sleep(monkeypatch, lambda n: None)
    await app.initial_sync(config("default", "doomed", "unreadable"), kube, rec, readiness)  # type: ignore[arg-type]
    assert readiness.check() == (True, "ok")
    assert kube.listed[0] == ("pets", ("default", "unreadable"))  # a namespace it cannot read: waited for


async def test_initial_sync_lists_cluster_wide_for_all_namespaces(
    rec: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = FakeKube({})
    readiness = app.Readiness()
    readiness.started.set()
    fake_sleep(monkeypatch, lambda n: None)
    await app.initial_sync(config(all_namespaces=True), kube, rec, readiness)  # type: ignore[arg-type]
    assert readiness.synced
    assert kube.listed == [("pets", None), ("petstores", None)]


async def test_initial_sync_waits_for_kopf_start_and_for_the_api(
    rec: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = FakeKube({"pets": {"p1"}}, failures=2)
    readiness = app.Readiness()
    details: list[str] = []

    def on_sleep(n: int) -> None:
        details.append(readiness.detail)
        if n == 3:
            rec.observed.add("p1")

    delays = fake_sleep(monkeypatch, on_sleep)
    task = asyncio.create_task(app.initial_sync(config("default"), kube, rec, readiness))  # type: ignore[arg-type]
    for _ in range(3):
        await REAL_SLEEP(0)  # let the task run as far as it can
    assert kube.listed == []  # nothing happens before Kopf has started
    assert not task.done()
    readiness.started.set()
    await asyncio.wait_for(task, 2)
    assert delays == [1, 1, 0.1]
    assert details[0].startswith("cannot list pets and petstores yet: ")
    assert "API server not up" in details[0]
    assert details[2] == "waiting for the watch streams: 1 of 1 objects not seen yet"
    assert readiness.check() == (True, "ok")


async def test_initial_sync_forgets_objects_deleted_since_the_listing(
    rec: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = FakeKube({"pets": {"p1", "p2"}})
    rec.observed.add("p1")
    readiness = app.Readiness()
    readiness.started.set()

    def on_sleep(n: int) -> None:
        kube.objects["pets"] = {"p1"}  # p2 was deleted before the watch saw it

    delays = fake_sleep(monkeypatch, on_sleep, limit=200)
    await app.initial_sync(config("default"), kube, rec, readiness)  # type: ignore[arg-type]
    assert readiness.synced
    # listed once at the start and again only after RELIST_SECONDS (a listing is costly at scale)
    assert len(kube.listed) == 2 * 2  # pets and petstores, twice
    assert sum(delays) >= app.RELIST_SECONDS


async def test_initial_sync_ready_when_the_only_object_is_deleted(
    rec: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = FakeKube({"pets": {"p1"}})
    readiness = app.Readiness()
    readiness.started.set()

    def on_sleep(n: int) -> None:
        # the watch saw p1, then p1 was deleted: the DELETED handler forgets it
        rec.observed.add("p1")
        rec.forget_pet("default", "p1", "p1")
        kube.objects["pets"] = set()

    fake_sleep(monkeypatch, on_sleep, limit=200)
    await app.initial_sync(config("default"), kube, rec, readiness)  # type: ignore[arg-type]
    assert readiness.synced


# --- main ---------------------------------------------------------------------------------------------


class FakeAppKube(FakeWriter):
    closed = False

    async def namespace_terminating(self, name: str) -> bool:
        return False

    async def list_uids(self, plural: str, namespaces: tuple[str, ...] | None) -> set[str]:
        return set()

    async def close(self) -> None:
        self.closed = True

    async def server_version(self) -> dict[str, Any]:
        return {"gitVersion": "v0.0.0-fake"}

    async def list_claims(self) -> list[Any]:
        return []


class FakeKopf:
    """spawn_tasks records its arguments; run_tasks plays Kopf's run until its stop flag is set.

    ``then`` decides what happens once Kopf runs: "signal" sends the process SIGUSR1 (the test's
    stop signal), "exit" returns at once as if Kopf had stopped on its own."""

    def __init__(self, then: str = "signal") -> None:
        self.then = then
        self.spawned: dict[str, Any] = {}
        self.ignored: Any = None
        self.stop_flag_seen = False

    async def spawn_tasks(self, **kwargs: Any) -> list[Any]:
        self.spawned.update(kwargs)
        kwargs["ready_flag"].set()
        return []

    async def run_tasks(self, tasks: Any, ignored: Any = ()) -> None:
        self.ignored = ignored
        if self.then == "exit":
            return
        os.kill(os.getpid(), signal.SIGUSR1)
        await self.spawned["stop_flag"].wait()
        self.stop_flag_seen = True


def _run_main(cfg: Config, fake: FakeKopf, kube: FakeAppKube, monkeypatch: pytest.MonkeyPatch) -> Any:
    credentials: list[str | None] = []

    def fake_load_credentials(kubeconfig: str | None) -> None:
        credentials.append(kubeconfig)

    monkeypatch.setattr(app, "load_credentials", fake_load_credentials)
    monkeypatch.setattr(app, "Kube", lambda credentials, claims_namespace, reachability: kube)
    monkeypatch.setattr(kopf, "spawn_tasks", fake.spawn_tasks)
    monkeypatch.setattr(kopf, "run_tasks", fake.run_tasks)
    exits: list[int] = []
    with socket.socket() as probe:  # metrics: a free port (the default 9090 collides between xdist workers)
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    cfg = Config(**{**cfg.__dict__, "health_port": 0, "metrics_port": metrics_port})  # health: any free port
    code = app.main(cfg, exit_now=exits.append, stop_signals=(signal.SIGUSR1,))
    return code, credentials, exits


@pytest.mark.parametrize(
    ("cfg", "clusterwide", "namespaces"),
    [(config("default", "pets"), False, ["default", "pets"]), (config(all_namespaces=True), True, [])],
    ids=["namespaced", "cluster-wide"],
)
async def test_main_wires_kopf_with_the_configured_scope_and_stops_on_the_signal(
    cfg: Config, clusterwide: bool, namespaces: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = FakeAppKube()
    fake = FakeKopf()
    run, credentials, exits = _run_main(cfg, fake, kube, monkeypatch)
    assert await run == 0
    assert exits == []
    assert fake.stop_flag_seen
    assert credentials == [None]
    seen = fake.spawned
    assert seen["clusterwide"] is clusterwide
    assert seen["namespaces"] == namespaces
    assert seen["standalone"] is True
    assert seen["settings"].persistence.progress_storage.prefix == model.GROUP
    # grace 20 s: 2 s kept for the Lease and the servers, Kopf's workers cut half a second before that
    assert seen["settings"].queueing.exit_timeout == 17.5
    registry = seen["registry"]
    # namespace mode also watches Namespaces: the RoleBinding of each served one is kept (bindings.py)
    extra = set() if clusterwide else {"namespace_event"}
    assert {h.id for h in registry._watching.get_all_handlers()} == {"pet_event", "store_event", *extra}
    assert isinstance(fake.ignored, NotKopfs)
    assert kube.closed


async def test_main_exits_1_when_kopf_stops_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeAppKube()
    run, _, exits = _run_main(config("default"), FakeKopf(then="exit"), kube, monkeypatch)
    assert await run == 1
    assert exits == []
    assert kube.closed


# --- campaign_forever -------------------------------------------------------------------------------


class FakeElector:
    """run() plays one term per entry of ``terms``: the seconds it stood still (0: it simply lost)."""

    lease_duration = 4.0

    def __init__(self, terms: list[float | Exception]) -> None:
        self.terms = terms
        self.runs = 0
        self.stalled = 0.0
        self.done = asyncio.Event()

    async def run(self) -> None:
        if self.runs == len(self.terms):
            self.done.set()
            await asyncio.Event().wait()  # campaigning, never elected again
        term = self.terms[self.runs]
        self.runs += 1
        if isinstance(term, Exception):
            raise term
        self.stalled = term


class ForgetfulReconciler:
    forgotten = 0

    def forget_claims(self) -> None:
        self.forgotten += 1


def _shutdown() -> Any:
    from pet_operator.shutdown import Deadlines, Shutdown

    return Shutdown(Deadlines(grace=20))


async def test_a_replica_that_loses_leadership_campaigns_again_and_forgets_its_claims() -> None:
    elector, rec, stop = FakeElector([0.0, 0.0]), ForgetfulReconciler(), _shutdown()
    task = asyncio.create_task(app.campaign_forever(elector, rec, stop))  # type: ignore[arg-type]
    await asyncio.wait_for(elector.done.wait(), 5)
    assert elector.runs == 2 and rec.forgotten == 2
    assert not stop.requested.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(("term", "why"), [(9.5, "stood still for 9.5s"), (RuntimeError("bug"), "election failed")])
async def test_a_replica_that_can_no_longer_be_trusted_stops_with_exit_1(term: float | Exception, why: str) -> None:
    elector, rec, stop = FakeElector([term]), ForgetfulReconciler(), _shutdown()
    await asyncio.wait_for(app.campaign_forever(elector, rec, stop), 5)  # type: ignore[arg-type]
    assert stop.requested.is_set()
    assert stop.exit_code == 1
    assert why in stop.reason
    assert rec.forgotten == 0


# --- leadership ----------------------------------------------------------------------------------


class ClaimListingKube(FakeAppKube):
    def __init__(self, claims: list[Any]) -> None:
        super().__init__()
        self.claims = claims
        self.listings = 0

    async def list_claims(self) -> list[Any]:
        self.listings += 1
        return list(self.claims)


class SilentRecorder:
    async def post(self, *args: Any) -> None:
        return None


async def test_a_new_leader_reads_every_claim_before_it_catches_up() -> None:
    # a standby primed at start-up (or cleared when it lost the lead) must not create-then-read
    # a claim per pet when it takes over: one paged listing fills its cache
    from pet_operator.claims import Claim

    fresh = Claim(7, "default/rex", "uid-rex", "11")
    kube = ClaimListingKube([fresh])
    store = FakeClaimStore()  # the cluster's claims, as the catch-up's orphan pass lists them
    store.put(7, "default", "rex", "uid-rex")
    ids = IdClaims(store, FakeFinalizers(), served=frozenset())  # serves no namespace: no orphan is judged
    rec = Reconciler(FakeWriter(), ids)
    ids.prime_claims([Claim(8, "default/stale", "uid-stale", "3")])
    readiness = app.Readiness()
    elector = app.make_elector(config("default"), kube, SilentRecorder(), ids, rec, app.handlers.Indexes(), readiness)  # type: ignore[arg-type]

    assert elector.on_started_leading is not None
    elector.on_started_leading()
    readiness.synced_event.set()
    for _ in range(5):
        await REAL_SLEEP(0)

    assert kube.listings == 1
    assert ids.cache == {7: fresh}


class CaPublisher:
    """The two Kube calls that write a CA into a webhook configuration, recorded; ``failing`` raises."""

    def __init__(self, failing: str = "") -> None:
        self.failing = failing
        self.calls: list[tuple[str, str, bytes]] = []

    async def _record(self, kind: str, name: str, ca_pem: bytes) -> None:
        self.calls.append((kind, name, ca_pem))
        if kind == self.failing:
            raise RuntimeError(f"403 on {name}")

    async def publish_ca_bundle(self, name: str, ca_pem: bytes) -> None:
        await self._record("validating", name, ca_pem)

    async def publish_mutating_ca_bundle(self, name: str, ca_pem: bytes) -> None:
        await self._record("mutating", name, ca_pem)


@pytest.mark.parametrize(("argv", "expected"), [
    ((), []),
    (("--webhook-configuration", "v"), [("validating", "v", b"CA")]),
    (("--mutating-webhook-configuration", "m"), [("mutating", "m", b"CA")]),
    (("--webhook-configuration", "v", "--mutating-webhook-configuration", "m"),
     [("validating", "v", b"CA"), ("mutating", "m", b"CA")]),
], ids=["none", "validating", "mutating", "both"])
async def test_publish_ca_writes_into_each_configuration_named(argv: tuple[str, ...], expected: list[Any]) -> None:
    kube = CaPublisher()
    await app.publish_ca(parse_config(["--namespace", "ns", *argv], environ={}), kube, b"CA")  # type: ignore[arg-type]
    assert kube.calls == expected


async def test_a_failed_ca_publication_is_logged_and_the_other_still_happens(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pet_operator")
    kube = CaPublisher(failing="validating")
    config = parse_config(["--namespace", "ns", "--webhook-configuration", "v",
                           "--mutating-webhook-configuration", "m"], environ={})
    await app.publish_ca(config, kube, b"CA")  # type: ignore[arg-type]
    assert [call[0] for call in kube.calls] == ["validating", "mutating"]
    assert "cannot publish the webhook CA into ValidatingWebhookConfiguration v: 403 on v" in caplog.text
    assert "published the webhook CA into MutatingWebhookConfiguration m" in caplog.text


# --- the webhook's store lookup ------------------------------------------------------------------


class StoreReadingKube(FakeAppKube):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, str]] = []

    async def read_store(self, namespace: str, name: str) -> model.StoreView | None:
        self.reads.append((namespace, name))
        return model.StoreView(name, ("from-api",))


async def test_the_webhook_finds_stores_in_the_index_once_synced_and_asks_the_api_otherwise() -> None:
    from operator_fakes import index_of, store

    kube = StoreReadingKube()
    indexes = app.handlers.Indexes()
    indexes.stores = index_of(store("shop", allowed=["dog"]))  # type: ignore[assignment]
    readiness = app.Readiness()
    lookup = app.store_lookup(kube, indexes, readiness)  # type: ignore[arg-type]

    assert (await lookup("default", "shop")).allowed_tags == ("from-api",)  # type: ignore[union-attr]
    readiness.synced = True
    assert (await lookup("default", "shop")).allowed_tags == ("dog",)  # type: ignore[union-attr]
    assert (await lookup("default", "new-shop")).allowed_tags == ("from-api",)  # type: ignore[union-attr]
    assert kube.reads == [("default", "shop"), ("default", "new-shop")]


# --- the start-up catch-up -----------------------------------------------------------------------


async def test_maintenance_reconciles_what_was_indexed_once_synced(monkeypatch: pytest.MonkeyPatch) -> None:
    from operator_fakes import pet

    writer = FakeWriter()
    rec = Reconciler(writer, IdsNotEnforced())
    readiness = app.Readiness()
    indexes = app.Indexes(complete=readiness.synced_event)
    indexes.pets.put(("default", "rex"), pet("rex"))
    passes: list[str] = []

    async def no_resync(*args: Any) -> None:
        passes.append("forever")

    monkeypatch.setattr(app.handlers, "resync_forever", no_resync)
    task = asyncio.create_task(app.maintenance(config("default"), rec, indexes, readiness))
    await REAL_SLEEP(0)
    assert writer.calls == []
    readiness.synced_event.set()
    await task
    assert [(c.name, c.status["phase"]) for c in writer.calls] == [("rex", "Active")]

    writer.calls.clear()
    readiness2 = app.Readiness()
    readiness2.synced_event.set()
    await app.maintenance(config("default"), Reconciler(writer, IdsNotEnforced()), indexes, readiness2, catch_up=False)
    assert writer.calls == []  # a leader-electing replica catches up when it starts leading

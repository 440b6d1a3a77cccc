"""metrics: the names and labels of the contract, what each hook counts, the leader-only domain gauges,
no ``_created`` series, and the series count at 1,000 namespaces."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from aiohttp import web
from claim_fakes import FakeClaimStore, FakeEventApi, FakeFinalizers
from operator_fakes import NS, Clock, FakeWriter, IdsNotEnforced, pet_body, plain_http
from prometheus_client.parser import text_string_to_metric_families

from pet_operator import admission, handlers, model, rest
from pet_operator.config import ConfigError, parse_config
from pet_operator.events import EventRecorder
from pet_operator.fencing import Fence
from pet_operator.id_claims import IdClaims
from pet_operator.metrics import NO_ANSWER, MetricsServer, OperatorMetrics, PetPhases
from pet_operator.model import PetSnapshot
from pet_operator.reconciler import Reconciler
from pet_operator.rest import ApiError
from pet_operator.store_counts import StoreCounts
from pet_operator.webhook import PATH, CertificateFiles, WebhookServer, self_signed

#: every name the monitoring rules and dashboards are written against (docs/observability.md)
CONTRACT = {
    "controller_runtime_reconcile_total", "controller_runtime_reconcile_errors_total",
    "controller_runtime_reconcile_time_seconds", "controller_runtime_active_workers", "workqueue_depth",
    "workqueue_queue_duration_seconds", "leader_election_master_status", "rest_client_requests_total",
    "rest_client_request_duration_seconds", "controller_runtime_webhook_requests_total",
    "controller_runtime_webhook_latency_seconds", "pet_operator_webhook_decisions_total", "pet_operator_pets",
    "pet_operator_pet_phase_oldest_seconds", "pet_operator_id_conflicts_total", "pet_operator_id_claims_held",
    "pet_operator_orphaned_claims_collected_total", "pet_operator_events_total",
    "pet_operator_events_aggregated_total", "pet_operator_leader_transitions_total",
    "process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
}


class Ticks:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def samples(m: OperatorMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The exposition as parsed by Prometheus's own parser: sample name -> (labels, value) each."""
    body, _ = m.exposition()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def value(m: OperatorMetrics, metric: str, /, **labels: str) -> float | None:
    return m.registry.get_sample_value(metric, labels)


def leading_metrics(leader: bool = True, **kwargs: Any) -> OperatorMetrics:
    m = OperatorMetrics(**kwargs)
    m.watch(may_write=lambda: leader, leader=lambda: leader, lease_name="pet-operator-leader")
    return m


# --- the exposition -------------------------------------------------------------------------------


def test_every_contract_name_is_exposed_with_the_process_collectors_and_no_created_series() -> None:
    m = leading_metrics(process=True)
    m.pets.seen(NS, "rex", pet_body("rex", status={"phase": "Active"}))
    m.api_request("GET", "127.0.0.1:6443", 200, 0.01)
    m.webhook_request(PATH, 200, 0.01)
    m.webhook_decision(PATH, True, "")
    m.event_emitted("Normal", "Reconciled", aggregated=True)
    names = {family.name for family in text_string_to_metric_families(m.exposition()[0].decode())}
    exposed = set(samples(m))
    missing = {n for n in CONTRACT if n not in exposed and n.removesuffix("_total") not in names
               and f"{n}_count" not in exposed}
    assert not missing
    assert not [name for name in exposed if name.endswith("_created")]


def test_controller_series_exist_at_zero_from_the_start() -> None:
    m = OperatorMetrics()
    for controller in ("pet", "petstore"):
        assert value(m, "workqueue_depth", name=controller) == 0
        assert value(m, "controller_runtime_active_workers", controller=controller) == 0
        assert value(m, "controller_runtime_reconcile_errors_total", controller=controller) == 0
        for result in ("success", "error", "requeue", "requeue_after"):
            assert value(m, "controller_runtime_reconcile_total", controller=controller, result=result) == 0


def test_openmetrics_is_served_when_asked_for() -> None:
    body, content_type = OperatorMetrics().exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")
    assert "_created" not in body.decode()


async def test_the_server_answers_a_scrape_and_stops_listening() -> None:
    m = leading_metrics()
    server = MetricsServer(0, m, host="127.0.0.1")
    await server.start()
    assert server._runner is not None
    port = server._runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
    finally:
        await server.stop()
    assert 'leader_election_master_status{name="pet-operator-leader"} 1.0' in text
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics"):
            pass


# --- leader and standby ---------------------------------------------------------------------------


def test_a_standby_exports_no_domain_gauges_and_no_claims() -> None:
    standby = leading_metrics(leader=False)
    standby.watch(claims_held=lambda: 7)
    standby.pets.seen(NS, "rex", pet_body("rex", status={"phase": "Pending"}))
    got = samples(standby)
    assert got["leader_election_master_status"] == [({"name": "pet-operator-leader"}, 0.0)]
    assert "pet_operator_pets" not in got
    assert "pet_operator_pet_phase_oldest_seconds" not in got
    assert got["pet_operator_id_claims_held"] == [({}, 0.0)]


def test_the_leader_exports_the_same_view() -> None:
    leader = leading_metrics()
    leader.watch(claims_held=lambda: 7)
    leader.pets.seen(NS, "rex", pet_body("rex", status={"phase": "Pending"}))
    got = samples(leader)
    assert ({"namespace": NS, "phase": "Pending"}, 1.0) in got["pet_operator_pets"]
    assert ({"namespace": NS, "phase": "Active"}, 0.0) in got["pet_operator_pets"]
    assert got["pet_operator_id_claims_held"] == [({}, 7.0)]
    assert got["leader_election_master_status"] == [({"name": "pet-operator-leader"}, 1.0)]


def test_without_leader_election_there_is_no_master_status_and_the_replica_exports_the_domain() -> None:
    m = OperatorMetrics()
    m.pets.seen(NS, "rex", pet_body("rex", status={"phase": "Active"}))
    got = samples(m)
    assert "leader_election_master_status" not in got
    assert ({"namespace": NS, "phase": "Active"}, 1.0) in got["pet_operator_pets"]


def test_counters_kept_by_the_reconciler_and_the_elector_are_read_when_scraped() -> None:
    m = OperatorMetrics()
    state = {"conflicts": 2, "orphans": 3, "leading": 1}
    m.watch(id_conflicts=lambda: state["conflicts"], orphans_collected=lambda: state["orphans"],
            leader_transitions=lambda: state["leading"])
    state["orphans"] = 4
    assert value(m, "pet_operator_id_conflicts_total") == 2
    assert value(m, "pet_operator_orphaned_claims_collected_total") == 4
    assert value(m, "pet_operator_leader_transitions_total") == 1


def test_an_unknown_source_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="claims_hold"):
        OperatorMetrics().watch(claims_hold=lambda: 1)


# --- pets by phase --------------------------------------------------------------------------------


def test_phases_follow_the_watch_events_and_deleted_pets_leave() -> None:
    book = PetPhases(wall=lambda: 0.0)
    book.seen("a", "rex", pet_body("rex", namespace="a", status={"phase": "Pending"}))
    book.seen("a", "tom", pet_body("tom", namespace="a", status={"phase": "Pending"}))
    book.seen("b", "kit", pet_body("kit", namespace="b", status={"phase": "Conflict"}))
    book.seen("a", "rex", pet_body("rex", namespace="a", status={"phase": "Active"}))  # moved on
    counts = book.counts()
    assert counts[("a", "Pending")] == 1
    assert counts[("a", "Active")] == 1
    assert counts[("b", "Conflict")] == 1
    assert counts[("b", "Active")] == 0
    book.gone("b", "kit")
    assert not [key for key in book.counts() if key[0] == "b"]  # a namespace without pets has no series
    assert len(book) == 2


def test_oldest_in_phase_comes_from_the_last_transition_time_and_survives_a_new_view() -> None:
    now = [1_700_000_600.0]  # 2023-11-14T22:23:20Z
    book = PetPhases(wall=lambda: now[0])
    entered = "2023-11-14T22:13:20Z"  # 600 s before
    book.seen(NS, "rex", pet_body("rex", status={"phase": "Pending", "lastTransitionTime": entered}))
    book.seen(NS, "tom", pet_body("tom", status={"phase": "Pending",
                                                 "lastTransitionTime": "2023-11-14T22:21:40Z"}))
    oldest = book.oldest()
    assert oldest["Pending"] == 600
    assert oldest["Conflict"] == 0
    fresh = PetPhases(wall=lambda: now[0])  # a new leader, or a restart: the same answer from the status
    fresh.seen(NS, "rex", pet_body("rex", status={"phase": "Pending", "lastTransitionTime": entered}))
    assert fresh.oldest()["Pending"] == 600


def test_without_a_transition_time_the_first_sight_in_the_phase_counts() -> None:
    now = [100.0]
    book = PetPhases(wall=lambda: now[0])
    book.seen(NS, "rex", pet_body("rex", status={"phase": "Conflict"}))
    now[0] = 130.0
    book.seen(NS, "rex", pet_body("rex", status={"phase": "Conflict"}))  # same phase: the clock keeps running
    assert book.oldest()["Conflict"] == 30
    book.seen(NS, "rex", pet_body("rex", status={"phase": "Active"}))
    assert book.oldest()["Conflict"] == 0
    assert book.oldest()["Active"] == 0


def test_a_pet_without_status_is_unset_since_its_creation() -> None:
    book = PetPhases(wall=lambda: 1_700_000_060.0)
    body = pet_body("rex")
    body["metadata"]["creationTimestamp"] = "2023-11-14T22:13:20Z"  # 1_700_000_000
    book.seen(NS, "rex", body)
    assert book.counts()[(NS, "Unset")] == 1
    assert book.oldest()["Unset"] == 60


def test_series_at_a_thousand_namespaces() -> None:
    """The worst case the docs state: 5 series of pet_operator_pets per namespace with pets, nothing else
    grows with namespaces (or pets, or ids)."""
    m = leading_metrics()
    empty = sum(len(v) for v in samples(m).values())
    for n in range(1000):
        for phase in model.Phase:
            m.pets.seen(f"ns-{n}", f"pet-{phase.value}", pet_body("p", status={"phase": phase.value}))
            m.pets.seen(f"ns-{n}", f"twin-{phase.value}", pet_body("p", status={"phase": phase.value}))
    full = sum(len(v) for v in samples(m).values())
    assert full - empty == 1000 * 5
    assert empty < 400  # the fixed part, whatever the cluster's size


# --- reconciles and queues, through the handlers ----------------------------------------------------


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


@pytest.fixture
def measure(ticks: Ticks) -> OperatorMetrics:
    return OperatorMetrics(clock=ticks)


@pytest.fixture
def writer() -> FakeWriter:
    return FakeWriter()


@pytest.fixture
def rec(writer: FakeWriter) -> Reconciler:
    return Reconciler(writer, IdsNotEnforced(), clock=Clock())


def handler(registry: kopf.OperatorRegistry, handler_id: str) -> Any:
    return next(h.fn for h in registry._watching.get_all_handlers() if h.id == handler_id)


@pytest.fixture
def registry(rec: Reconciler, measure: OperatorMetrics) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    counts = StoreCounts(rec.recount, handlers.with_retries, window=0)
    handlers.register(registry, rec, handlers.Indexes(), counts, measure=measure)
    return registry


async def test_a_pet_event_is_one_successful_reconcile_and_the_pet_is_in_the_gauge(
    registry: kopf.OperatorRegistry, measure: OperatorMetrics, writer: FakeWriter
) -> None:
    await handler(registry, "pet_event")(type="ADDED", body=pet_body("rex"))
    assert value(measure, "controller_runtime_reconcile_total", controller="pet", result="success") == 1
    assert value(measure, "controller_runtime_reconcile_time_seconds_count", controller="pet") == 1
    assert value(measure, "workqueue_queue_duration_seconds_count", name="pet") == 1
    assert value(measure, "workqueue_depth", name="pet") == 0
    assert measure.pets.counts() == {(NS, p): 1 if p == "Unset" else 0
                                     for p in ("Pending", "Active", "Invalid", "Conflict", "Unset")}
    await handler(registry, "pet_event")(type="DELETED", body=pet_body("rex"))
    assert measure.pets.counts() == {}


async def test_a_failing_reconcile_counts_an_error_per_attempt(
    registry: kopf.OperatorRegistry, measure: OperatorMetrics, writer: FakeWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_sleep(delay: float) -> None:
        return None

    monkeypatch.setattr(handlers.asyncio, "sleep", no_sleep)
    writer.errors = [ApiError(500, "InternalError"), ApiError(500, "InternalError")]
    await handler(registry, "pet_event")(type="ADDED", body=pet_body("rex"))
    assert value(measure, "controller_runtime_reconcile_total", controller="pet", result="error") == 2
    assert value(measure, "controller_runtime_reconcile_errors_total", controller="pet") == 2
    assert value(measure, "controller_runtime_reconcile_total", controller="pet", result="success") == 1
    assert value(measure, "workqueue_queue_duration_seconds_count", name="pet") == 1  # one change, one wait


async def test_a_conflict_is_a_requeue_not_an_error(
    registry: kopf.OperatorRegistry, measure: OperatorMetrics, writer: FakeWriter
) -> None:
    writer.errors = [ApiError(409, "Conflict")]
    await handler(registry, "pet_event")(type="ADDED", body=pet_body("rex"))
    assert value(measure, "controller_runtime_reconcile_total", controller="pet", result="requeue") == 1
    assert value(measure, "controller_runtime_reconcile_errors_total", controller="pet") == 0


async def test_a_standby_counts_no_reconcile_and_keeps_no_queue(
    registry: kopf.OperatorRegistry, measure: OperatorMetrics, rec: Reconciler
) -> None:
    rec.fence = Fence(lambda: False)  # a standby: it does not lead
    await handler(registry, "pet_event")(type="ADDED", body=pet_body("rex"))
    for result in ("success", "error", "requeue"):
        assert value(measure, "controller_runtime_reconcile_total", controller="pet", result=result) == 0
    assert value(measure, "workqueue_queue_duration_seconds_count", name="pet") == 0
    assert len(measure.pets) == 1  # its view is kept all the same, ready for when it leads


async def test_active_workers_count_reconciles_in_flight_and_a_cancelled_one_is_not_a_result(
    measure: OperatorMetrics, rec: Reconciler
) -> None:
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()

    ctl = measure.controller("pet")
    [item] = handlers.received(ctl, rec)
    task = asyncio.create_task(handlers.measured(ctl, rec, item, slow)())
    await asyncio.sleep(0)
    assert value(measure, "controller_runtime_active_workers", controller="pet") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert value(measure, "controller_runtime_active_workers", controller="pet") == 0
    assert value(measure, "controller_runtime_reconcile_time_seconds_count", controller="pet") == 0


async def test_a_resync_enqueues_every_object_at_once_and_measures_each_wait(
    measure: OperatorMetrics, ticks: Ticks
) -> None:
    depths: list[float | None] = []

    class Rec:
        bindings = None

        def may_write(self) -> bool:
            return True

        async def collect_orphans(self, pets: Any, stores: Any) -> int:
            return 0

        async def sync_pet(self, key: Any, pets: Any, stores: Any) -> None:
            depths.append(value(measure, "workqueue_depth", name="pet"))
            ticks.now += 2.0  # each pet takes 2 s: the last waited for the two before it

        async def sync_store(self, key: Any, pets: Any, stores: Any, by_store: Any) -> None:
            return None

    pets = {(NS, f"p{i}"): () for i in range(3)}
    stores = {(NS, "shop"): ()}
    await handlers.resync_once(Rec(), pets, stores, {}, measure)  # type: ignore[arg-type]
    assert depths == [2, 1, 0]  # three entered at once, each leaves as it starts
    assert value(measure, "workqueue_queue_duration_seconds_sum", name="pet") == pytest.approx(0 + 2 + 4)
    assert value(measure, "workqueue_queue_duration_seconds_count", name="petstore") == 1
    assert value(measure, "controller_runtime_reconcile_total", controller="petstore", result="success") == 1


async def test_a_failed_resync_leaves_no_phantom_depth(measure: OperatorMetrics) -> None:
    class Rec:
        bindings = None

        def may_write(self) -> bool:
            return True

        async def collect_orphans(self, pets: Any, stores: Any) -> int:
            return 0

        async def sync_pet(self, key: Any, pets: Any, stores: Any) -> None:
            raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        await handlers.resync_once(Rec(), {(NS, "a"): (), (NS, "b"): ()}, {}, {}, measure)  # type: ignore[arg-type]
    assert value(measure, "workqueue_depth", name="pet") == 0
    assert value(measure, "controller_runtime_reconcile_total", controller="pet", result="error") == 1


async def test_store_recount_requests_join_one_queued_change(
    measure: OperatorMetrics, rec: Reconciler, ticks: Ticks
) -> None:
    ctl = measure.controller("petstore")
    counts = StoreCounts(rec.recount, handlers.with_retries, window=0, enqueue=lambda: handlers.received(ctl, rec)[0])
    index: dict[Any, Any] = {}
    counts.request((NS, "shop"), index, index, index)
    counts.request((NS, "shop"), index, index, index)
    assert value(measure, "workqueue_depth", name="petstore") == 1
    ticks.now += 1.5
    await counts.idle()
    assert value(measure, "workqueue_depth", name="petstore") == 0
    assert value(measure, "workqueue_queue_duration_seconds_sum", name="petstore") == pytest.approx(1.5)
    assert value(measure, "workqueue_queue_duration_seconds_count", name="petstore") == 1


def dated(name: str, created: str) -> PetSnapshot:
    body = pet_body(name)
    body["metadata"]["creationTimestamp"] = created
    return PetSnapshot.from_body(body)


async def test_the_reconciler_counts_the_conflicts_it_writes_and_the_orphans_it_collects() -> None:
    claims = FakeClaimStore()
    ids = IdClaims(claims, FakeFinalizers())
    rec = Reconciler(FakeWriter(), ids, clock=Clock())
    older, younger = dated("old", "2024-01-01T00:00:00Z"), dated("new", "2024-01-01T00:00:09Z")
    for snap in (older, younger):
        rec.observe_pet(snap)
    pets = {(NS, s.name): [s] for s in (older, younger)}
    await rec.sync_pet((NS, "old"), pets, {})
    await rec.sync_pet((NS, "new"), pets, {})
    await rec.sync_pet((NS, "new"), pets, {})  # no new phase: no new count
    assert rec.id_conflicts == 1
    assert ids.claims_held == 1
    assert ids.orphans_collected == 0
    assert await rec.collect_orphans({}, {}) == 1  # the holder is gone from the index: an orphan
    assert ids.orphans_collected == 1


# --- the operator's own API calls -------------------------------------------------------------------


@pytest.fixture
async def api_server() -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.Response:
        if request.path == "/missing":
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        return web.json_response({"kind": "Thing"})

    async with plain_http(answer) as url:
        yield url


async def test_api_requests_are_counted_by_code_method_and_host(api_server: str) -> None:
    m = OperatorMetrics()
    client = rest.RestClient(rest.Credentials(api_server, False), measure=m)
    host = api_server.removeprefix("http://")
    try:
        await client.request("GET", "/thing", timeout=5)
        await client.request("PATCH", "/thing", timeout=5, body={})
        with pytest.raises(ApiError):
            await client.request("GET", "/missing", timeout=5)
    finally:
        await client.close()
    assert value(m, "rest_client_requests_total", code="200", method="GET", host=host) == 1
    assert value(m, "rest_client_requests_total", code="200", method="PATCH", host=host) == 1
    assert value(m, "rest_client_requests_total", code="404", method="GET", host=host) == 1
    assert value(m, "rest_client_request_duration_seconds_count", verb="GET", host=host) == 2


async def test_an_api_request_without_an_answer_is_code_error(unused_tcp_port: int) -> None:
    m = OperatorMetrics()
    client = rest.RestClient(rest.Credentials(f"http://127.0.0.1:{unused_tcp_port}", False), measure=m)
    try:
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.request("GET", "/thing", timeout=5)
    finally:
        await client.close()
    assert value(m, "rest_client_requests_total", code=NO_ANSWER, method="GET",
                 host=f"127.0.0.1:{unused_tcp_port}") == 1


# --- the webhook --------------------------------------------------------------------------------------


def review(operation: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u-1", "kind": {"group": model.GROUP, "version": "v1", "kind": "Pet"},
        "resource": {"group": model.GROUP, "version": "v1", "resource": "pets"},
        "operation": operation, "namespace": NS, "name": obj["metadata"]["name"], "object": obj}}).encode()


async def test_webhook_requests_and_decisions_are_counted_by_path_code_and_rule(tmp_path: Path) -> None:
    ca = self_signed(["localhost", "127.0.0.1"], tmp_path)
    m = OperatorMetrics()

    async def stores(namespace: str, name: str) -> model.StoreView | None:
        return model.StoreView.from_body(name, {"allowedTags": ["dog"]})

    async def claims(pet_id: int) -> Any:
        return None

    server = WebhookServer(0, CertificateFiles(tmp_path, watch=False), stores, claims, host="127.0.0.1", measure=m)
    await server.start()
    assert server._runner is not None
    port = server._runner.addresses[0][1]
    context = ssl.create_default_context(cadata=ca.decode())
    bad = pet_body("rex", store="shop", tags=["cat"])
    good = pet_body("tom", store="shop", tags=["dog"])
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            for path, body in ((PATH, review("CREATE", bad)), (PATH, review("CREATE", good)),
                               (PATH, b"not json"), ("/mutate-pets", review("CREATE", good)), ("/other", b"{}")):
                async with session.post(f"https://127.0.0.1:{port}{path}", data=body) as resp:
                    await resp.read()
    finally:
        await server.stop()
    assert value(m, "controller_runtime_webhook_requests_total", webhook=PATH, code="200") == 2
    assert value(m, "controller_runtime_webhook_requests_total", webhook=PATH, code="400") == 1
    assert value(m, "controller_runtime_webhook_requests_total", webhook="/mutate-pets", code="200") == 1
    assert value(m, "controller_runtime_webhook_latency_seconds_count", webhook=PATH) == 3
    assert value(m, "pet_operator_webhook_decisions_total", webhook=PATH, decision="denied",
                 rule=admission.RULE_TAGS) == 1
    assert value(m, "pet_operator_webhook_decisions_total", webhook=PATH, decision="allowed", rule="none") == 1
    assert value(m, "pet_operator_webhook_decisions_total", webhook="/mutate-pets", decision="allowed",
                 rule="none") == 1
    assert not [s for s in samples(m).get("controller_runtime_webhook_requests_total", [])
                if s[0]["webhook"] == "/other"]  # unknown paths are not a label


def test_a_denial_names_every_rule_that_denied() -> None:
    claim = type("C", (), {"holder": "other/pet", "holder_key": ("other", "pet")})()
    store = model.StoreView.from_body("shop", {"allowedTags": ["dog"]})
    decision = admission.review_pet("CREATE", NS, "rex", pet_body("rex", store="shop", tags=["cat"]), None,
                                    store, claim)  # type: ignore[arg-type]
    assert not decision.allowed
    assert decision.rule == "TagsNotAllowed+DuplicateId"
    assert admission.not_served("x").rule == "NamespaceNotServed"


# --- events ---------------------------------------------------------------------------------------------


async def test_events_are_counted_by_type_and_reason_and_repeats_as_aggregated() -> None:
    m = OperatorMetrics()
    recorder = EventRecorder(FakeEventApi(), measure=m)
    ref = {"apiVersion": "petstore.example.com/v1", "kind": "Pet", "name": "rex", "namespace": NS, "uid": "u-1"}
    await recorder.post(ref, "Warning", "StoreNotFound", "no store")
    await recorder.post(ref, "Warning", "StoreNotFound", "no store")
    await recorder.post(ref, "Normal", "Reconciled", "ok")
    assert value(m, "pet_operator_events_total", type="Warning", reason="StoreNotFound") == 2
    assert value(m, "pet_operator_events_total", type="Normal", reason="Reconciled") == 1
    assert value(m, "pet_operator_events_aggregated_total") == 1


async def test_filtered_events_are_not_counted() -> None:
    m = OperatorMetrics()
    recorder = EventRecorder(FakeEventApi(), min_level="Warning", measure=m)
    ref = {"apiVersion": "v1", "kind": "Pet", "name": "rex", "namespace": NS, "uid": "u-1"}
    await recorder.post(ref, "Normal", "Reconciled", "ok")
    assert value(m, "pet_operator_events_total", type="Normal", reason="Reconciled") is None


# --- configuration ------------------------------------------------------------------------------------


def test_metrics_port_defaults_to_9090_on_the_pod_address_and_loopback() -> None:
    config = parse_config(["-n", "a"], {"POD_IP": "10.0.0.5"})
    assert config.metrics_port == 9090
    assert config.metrics_bind_addresses == ("10.0.0.5", "127.0.0.1")
    assert parse_config(["-n", "a", "--metrics-port", "0"], {}).metrics_port == 0
    assert parse_config(["-n", "a", "--metrics-bind-address", "::1"], {}).metrics_bind_addresses == ("::1",)


@pytest.mark.parametrize(("args", "message"), [
    (["--metrics-port", "70000"], "--metrics-port 70000 is not a TCP port"),
    (["--metrics-port", "8080"], "--metrics-port and --health-port are both 8080"),
    (["--metrics-port", "9443"], "--metrics-port and --webhook-port are both 9443"),
    (["--metrics-bind-address", "everywhere"], "--metrics-bind-address 'everywhere' is not an IP address"),
])
def test_bad_metrics_options_are_refused_naming_the_value(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(["-n", "a", *args], {})

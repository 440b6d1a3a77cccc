"""Prometheus metrics of the operator, and the plain HTTP server that exposes them.

Names and labels follow controller-runtime and client-go where those have one (dashboards and
alerts written for Go operators work unchanged), plus ``pet_operator_*`` for the domain. What
each one measures exactly, and the cardinality, is in ``docs/observability.md`` ("Metrics").

One :class:`OperatorMetrics` per process (:func:`default`), with its own ``CollectorRegistry``:
the parts that measure (the REST client, the webhook, the handlers, the event recorder) take it
as an optional argument and use the process-wide one when none is given, so tests inject their
own. What is read at scrape time (the leader flag, pets by phase, claims held, counters the
reconciler keeps as plain integers) comes from :meth:`OperatorMetrics.watch`, called once by
``app.main``. Nothing here calls the API server: a scrape costs no API call.

Every replica serves its metrics, leader or standby. The domain gauges describe the cluster,
which every replica sees the same: only a replica that may write (the leader, or the only
replica without leader election) exports ``pet_operator_pets`` and
``pet_operator_pet_phase_oldest_seconds`` (a standby exports no such series), and
``pet_operator_id_claims_held`` is 0 on a standby, so ``sum()`` over replicas never counts twice.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from pet_operator.connections import serve_plain

log = logging.getLogger(__name__)

# No ``*_created`` series (the creation time of each counter and histogram child): they double the
# series count for nothing a dashboard or alert uses. Process-wide in prometheus_client.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

#: The two controllers, as controller-runtime would name them.
CONTROLLERS = ("pet", "petstore")
#: ``controller_runtime_reconcile_total``'s results, as controller-runtime has them.
RESULTS = ("success", "error", "requeue", "requeue_after")
#: The phases of a pet, and the label of a pet that has no phase yet (never reconciled).
PHASES = ("Pending", "Active", "Invalid", "Conflict")
NO_PHASE = "Unset"
#: The webhook's paths (``webhook`` label); other paths are not counted (their number is not bounded).
WEBHOOK_PATHS = ("/validate-pets", "/mutate-pets")
#: The ``rule`` label of an allowed review.
NO_RULE = "none"

#: controller-runtime's buckets of reconcile_time_seconds
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8,
                     0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30,
                     40, 50, 60)
#: client-go's workqueue buckets (exponential from 10 ns, factor 10, 12 of them: up to 1,000 s)
QUEUE_BUCKETS = tuple(1e-8 * 10 ** i for i in range(12))
#: client-go's buckets of rest_client_request_duration_seconds
REST_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
#: Prometheus's default buckets (controller-runtime's webhook latency uses them)
WEBHOOK_BUCKETS = Histogram.DEFAULT_BUCKETS

#: client-go's code label of a request that got no HTTP answer
NO_ANSWER = "<error>"

Key = tuple[str, str]


class WorkItem:
    """One change waiting in a controller's queue: counted in its depth from :meth:`Queue.received`
    until :meth:`start` (its wait observed) or :meth:`drop`; both idempotent, so a retried call
    that starts it again changes nothing."""

    __slots__ = ("_queue", "at", "done")

    def __init__(self, queue: Queue | None, at: float) -> None:
        self._queue = queue
        self.at = at
        self.done = queue is None

    def start(self) -> None:
        if not self.done and self._queue is not None:
            self.done = True
            self._queue.finish(self, started=True)

    def drop(self) -> None:
        if not self.done and self._queue is not None:
            self.done = True
            self._queue.finish(self, started=False)


class Queue:
    """The depth and waiting time of one controller's changes (``workqueue_*{name}``)."""

    def __init__(self, depth: Any, duration: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._depth = depth
        self._duration = duration
        self._clock = clock
        self.waiting = 0

    def received(self, count: int = 1) -> list[WorkItem]:
        now = self._clock()
        self.waiting += count
        self._depth.set(self.waiting)
        return [WorkItem(self, now) for _ in range(count)]

    def finish(self, item: WorkItem, started: bool) -> None:
        self.waiting -= 1
        self._depth.set(self.waiting)
        if started:
            self._duration.observe(max(0.0, self._clock() - item.at))


#: A work item that is not measured (a standby's, or a call outside any queue).
UNQUEUED = WorkItem(None, 0.0)


@dataclasses.dataclass
class Attempt:
    """What one reconcile attempt came to; the caller may set ``result`` to ``requeue``."""

    result: str = "success"


class Controller:
    """controller-runtime's metrics of one controller."""

    def __init__(self, metrics: OperatorMetrics, name: str) -> None:
        self.name = name
        self.queue = Queue(metrics.workqueue_depth.labels(name), metrics.workqueue_queue_duration.labels(name),
                           metrics.clock)
        self._metrics = metrics
        self._active = metrics.active_workers.labels(name)
        self._time = metrics.reconcile_time.labels(name)
        self._errors = metrics.reconcile_errors.labels(name)
        self._results = {result: metrics.reconcile_total.labels(name, result) for result in RESULTS}

    @contextlib.contextmanager
    def reconciling(self) -> Iterator[Attempt]:
        """Measure one reconcile: active while inside; an exception is an ``error`` (unless the caller
        said ``requeue``), a cancellation (shutdown) is not counted."""
        attempt = Attempt()
        started = self._metrics.clock()
        self._active.inc()
        try:
            yield attempt
        except Exception:
            if attempt.result == "success":
                attempt.result = "error"
            raise
        except BaseException:
            attempt.result = ""  # cancelled: neither success nor error
            raise
        finally:
            self._active.dec()
            if attempt.result:
                self._time.observe(max(0.0, self._metrics.clock() - started))
                self._results[attempt.result].inc()
                if attempt.result == "error":
                    self._errors.inc()


def _parse_time(value: Any) -> float | None:
    """An RFC 3339 time as epoch seconds; None if it is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


class PetPhases:
    """Pets by namespace and phase, and since when each is in its phase, from the watch events the
    operator receives (its own view: no listing, ever). ``since`` is the status's
    ``lastTransitionTime`` (the contract moves it only with the phase, so it survives restarts and
    leader changes); without one, the first time this process saw the pet in that phase (for a pet
    with no phase yet: its creation time)."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._pets: dict[Key, tuple[str, float]] = {}
        self._counts: collections.Counter[Key] = collections.Counter()  # (namespace, phase) -> pets
        self._namespaces: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self._pets)

    def seen(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        status = body.get("status") or {}
        phase = status.get("phase") if isinstance(status, Mapping) else None
        phase = phase if phase in PHASES else NO_PHASE
        key = (namespace, name)
        old = self._pets.get(key)
        if phase == NO_PHASE:
            since = _parse_time((body.get("metadata") or {}).get("creationTimestamp"))
        else:
            since = _parse_time(status.get("lastTransitionTime"))
        if since is None:
            since = old[1] if old is not None and old[0] == phase else self._wall()
        if old is not None:
            self._drop(namespace, old[0])
        self._pets[key] = (phase, since)
        self._counts[(namespace, phase)] += 1
        self._namespaces[namespace] += 1

    def gone(self, namespace: str, name: str) -> None:
        old = self._pets.pop((namespace, name), None)
        if old is not None:
            self._drop(namespace, old[0])

    def _drop(self, namespace: str, phase: str) -> None:
        self._counts[(namespace, phase)] -= 1
        if self._counts[(namespace, phase)] <= 0:
            del self._counts[(namespace, phase)]
        self._namespaces[namespace] -= 1
        if self._namespaces[namespace] <= 0:
            del self._namespaces[namespace]

    def counts(self) -> dict[Key, int]:
        """(namespace, phase) -> pets, every phase of every namespace that has a pet (0s included)."""
        return {(ns, phase): self._counts.get((ns, phase), 0)
                for ns in sorted(self._namespaces) for phase in (*PHASES, NO_PHASE)}

    def oldest(self) -> dict[str, float]:
        """phase -> seconds the longest-standing pet in it has been there (0 when none)."""
        now = self._wall()
        earliest: dict[str, float] = {}
        for phase, since in self._pets.values():
            if since < earliest.get(phase, math.inf):
                earliest[phase] = since
        return {phase: max(0.0, now - earliest[phase]) if phase in earliest else 0.0 for phase in (*PHASES, NO_PHASE)}


@dataclasses.dataclass
class Sources:
    """What a scrape reads from the running operator (set by :meth:`OperatorMetrics.watch`)."""

    may_write: Callable[[], bool] = lambda: True
    claims_held: Callable[[], int] = lambda: 0
    id_conflicts: Callable[[], int] = lambda: 0
    orphans_collected: Callable[[], int] = lambda: 0
    leader_transitions: Callable[[], int] = lambda: 0
    leader: Callable[[], bool] | None = None  # None: no leader election
    lease_name: str = ""


class _ScrapeTime(Collector):
    """The series computed when scraped, from :class:`Sources` and :class:`PetPhases`."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        src, phases = self.metrics.sources, self.metrics.pets
        writes = src.may_write()
        if src.leader is not None:
            status = GaugeMetricFamily("leader_election_master_status",
                                       "1 while this replica holds the leader Lease, else 0", labels=["name"])
            status.add_metric([src.lease_name], 1.0 if src.leader() else 0.0)
            yield status
        pets = GaugeMetricFamily("pet_operator_pets", "Pets by namespace and phase, from this replica's watch "
                                 "(exported by the leader only)", labels=["namespace", "phase"])
        oldest = GaugeMetricFamily("pet_operator_pet_phase_oldest_seconds",
                                   "Seconds the longest-standing pet in each phase has been in it, 0 when none "
                                   "(exported by the leader only)", labels=["phase"])
        if writes:
            for (namespace, phase), count in phases.counts().items():
                pets.add_metric([namespace, phase], float(count))
            for phase, seconds in phases.oldest().items():
                oldest.add_metric([phase], seconds)
        yield pets
        yield oldest
        yield GaugeMetricFamily("pet_operator_id_claims_held", "Id claims (Leases) in the leader's claim cache; "
                                "0 on a standby", value=float(src.claims_held()) if writes else 0.0)
        counters = (
            ("pet_operator_id_conflicts", "Pets this replica turned Conflict (DuplicateId)", src.id_conflicts),
            ("pet_operator_orphaned_claims_collected", "Id claims whose pet was gone, deleted by this replica",
             src.orphans_collected),
            ("pet_operator_leader_transitions", "Times this replica became the leader", src.leader_transitions),
        )
        for name, text, read in counters:
            yield CounterMetricFamily(name, text, value=float(read()))

    def describe(self) -> Iterable[Metric]:
        return ()  # computed at scrape time: nothing to check for clashes at registration


class OperatorMetrics:
    """Every metric of one operator process, in its own registry."""

    def __init__(self, process: bool = False, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        """``process``: also the default process, platform and GC collectors (RSS, CPU, open fds)."""
        self.registry = CollectorRegistry()
        self.clock = clock
        if process:
            prometheus_client.ProcessCollector(registry=self.registry)
            prometheus_client.PlatformCollector(registry=self.registry)
            prometheus_client.GCCollector(registry=self.registry)
        r = self.registry
        self.reconcile_total = Counter("controller_runtime_reconcile_total", "Reconciliations per controller and "
                                       "result", ["controller", "result"], registry=r)
        self.reconcile_errors = Counter("controller_runtime_reconcile_errors_total", "Reconciliations that failed "
                                        "with an error, per controller", ["controller"], registry=r)
        self.reconcile_time = Histogram("controller_runtime_reconcile_time_seconds", "Length of one "
                                        "reconciliation, per controller", ["controller"], buckets=RECONCILE_BUCKETS,
                                        registry=r)
        self.active_workers = Gauge("controller_runtime_active_workers", "Reconciliations running now, per "
                                    "controller", ["controller"], registry=r)
        self.workqueue_depth = Gauge("workqueue_depth", "Changes received and not handled yet, per controller",
                                     ["name"], registry=r)
        self.workqueue_queue_duration = Histogram("workqueue_queue_duration_seconds", "Seconds from the receipt of "
                                                  "a change to the start of its handling", ["name"],
                                                  buckets=QUEUE_BUCKETS, registry=r)
        self.rest_requests = Counter("rest_client_requests_total", "The operator's own API requests, by status "
                                     "code, method and host", ["code", "method", "host"], registry=r)
        self.rest_duration = Histogram("rest_client_request_duration_seconds", "Latency of the operator's own API "
                                       "requests, by verb and host", ["verb", "host"], buckets=REST_BUCKETS,
                                       registry=r)
        self.webhook_requests = Counter("controller_runtime_webhook_requests_total", "Admission requests by path "
                                        "and HTTP status", ["webhook", "code"], registry=r)
        self.webhook_latency = Histogram("controller_runtime_webhook_latency_seconds", "Time to answer an "
                                         "admission request, by path", ["webhook"], buckets=WEBHOOK_BUCKETS,
                                         registry=r)
        self.webhook_decisions = Counter("pet_operator_webhook_decisions", "Admission decisions by path, verdict "
                                         "and the rule that denied", ["webhook", "decision", "rule"], registry=r)
        self.events = Counter("pet_operator_events", "Kubernetes Events emitted (created or aggregated), by type "
                              "and reason", ["type", "reason"], registry=r)
        self.events_aggregated = Counter("pet_operator_events_aggregated", "Events emitted as a repeat: the count "
                                         "of an existing Event raised", registry=r)
        self.controllers = {name: Controller(self, name) for name in CONTROLLERS}
        for name in CONTROLLERS:  # every series from the start, at 0, as controller-runtime does
            self.workqueue_depth.labels(name).set(0)
        for path in WEBHOOK_PATHS:
            self.webhook_latency.labels(path)
        self.pets = PetPhases(wall)
        self.sources = Sources()
        self.registry.register(_ScrapeTime(self))

    def controller(self, name: str) -> Controller:
        return self.controllers[name]

    def watch(self, **sources: Any) -> None:
        """Set what scrapes read (the fields of :class:`Sources`)."""
        for name, value in sources.items():
            if not hasattr(self.sources, name):
                raise TypeError(f"unknown metrics source {name!r}")
            setattr(self.sources, name, value)

    # --- hooks of the parts that measure --------------------------------------------------------

    def api_request(self, method: str, host: str, code: int | None, seconds: float) -> None:
        """One API request of the operator's own client; ``code`` None when no answer came."""
        self.rest_requests.labels(NO_ANSWER if code is None else str(code), method, host).inc()
        self.rest_duration.labels(method, host).observe(seconds)

    def webhook_request(self, path: str, code: int, seconds: float) -> None:
        self.webhook_requests.labels(path, str(code)).inc()
        self.webhook_latency.labels(path).observe(seconds)

    def webhook_decision(self, path: str, allowed: bool, rule: str) -> None:
        self.webhook_decisions.labels(path, "allowed" if allowed else "denied",
                                      NO_RULE if allowed else (rule or "unnamed")).inc()

    def event_emitted(self, type_: str, reason: str, aggregated: bool) -> None:
        self.events.labels(type_, reason).inc()
        if aggregated:
            self.events_aggregated.inc()

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The metrics as a scrape asked for them (``Accept``): body and content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


_default: OperatorMetrics | None = None


def default() -> OperatorMetrics:
    """This process's metrics (made on first use, with the process collectors)."""
    global _default
    if _default is None:
        _default = OperatorMetrics(process=True)
    return _default


class MetricsServer:
    """``GET /metrics`` over plain HTTP on the event loop: a scrape reads the state the loop keeps
    without locks, and a process whose loop stands still answers no scrape (which is the truth)."""

    def __init__(self, port: int, metrics: OperatorMetrics, host: str | Sequence[str] = "127.0.0.1") -> None:
        self.port = port
        self.hosts = (host,) if isinstance(host, str) else tuple(host)
        self.metrics = metrics
        self._runner: web.AppRunner | None = None

    async def _scrape(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.exposition(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        self._runner = await serve_plain(app, self.hosts, self.port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

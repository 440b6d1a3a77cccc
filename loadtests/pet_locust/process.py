"""Per-process wiring under Locust: options, the tracker and its watch, pending counts for the master.

``setup(environment)`` runs on every process that runs users (the only one without
``--processes``/``--worker``, or each worker); the master only collects the workers' pending
counts, which the load shapes read to end a run once every write has settled.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import gevent
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from pet_locust import kubeconfig
from pet_locust.tenant import WRITERS, LoadProcess
from pet_locust.tracker import Tracker
from pet_locust.watch import PetWatch

log = logging.getLogger("pet_locust")

PENDING_MESSAGE = "pet_pending"
PENDING: dict[str, int] = {}  # node id -> writes not settled yet (the master's view, or this process's)


class State:
    """This process's load, once the test has started."""

    load: LoadProcess | None = None
    tracker: Tracker | None = None
    watch: PetWatch | None = None
    stopped = False
    greenlets: list[gevent.Greenlet] = []


STATE = State()


def add_arguments(parser: Any) -> None:
    group = parser  # Locust's own parser: its web UI shows these (groups would not take include_in_web_ui)
    group.add_argument("--kube-config", default=os.environ.get("KUBECONFIG", ""), include_in_web_ui=False,
                       help="kubeconfig of the tenant the load runs as (default: $KUBECONFIG)")
    group.add_argument("--status-kube-config", default="", include_in_web_ui=False,
                       help="kubeconfig for the raw writer's status patches (default: --kube-config)")
    group.add_argument("--pet-namespaces", default="", help="comma-separated namespaces to create pets in")
    group.add_argument("--pet-stores", type=int, default=2, help="stores per namespace, named store-0.. (existing)")
    group.add_argument("--pet-max", type=int, default=1000,
                       help="creates in the whole run, over all processes (the load stops creating there)")
    group.add_argument("--pet-user-rate", type=float, default=1.0, help="operations per second of each user")
    group.add_argument("--pet-duplicate-share", type=float, default=0.02,
                       help="share of creates that reuse a live pet's id")
    group.add_argument("--pet-duplicates", choices=("reject", "conflict"), default="reject",
                       help="what a duplicate id leads to: refused by the webhook, or Conflict")
    group.add_argument("--pet-writer", choices=WRITERS, default="operator",
                       help="who writes status: the operator, or the client itself (the raw ceiling)")
    group.add_argument("--pet-status-path", default="status",
                       help="dotted path of the status the operator writes (status.reconcile for the naive peer)")
    group.add_argument("--pet-claims-namespace", default="", help="namespace of id claims (client-chain writer)")
    group.add_argument("--pet-reconcile-timeout", type=float, default=60.0,
                       help="seconds a write may take to show its predicted status before it counts as failed")
    group.add_argument("--pet-id-base", type=int, default=(int(time.time()) % 1_000_000) * 1_000_000_000,
                       help="first id of the run (ids stay below 2^53)")
    # the shapes' knobs (loadtests/shapes.py)
    group.add_argument("--pet-shape", choices=("ramp", "step", "constant"), default="constant")
    group.add_argument("--pet-rate", type=float, default=20.0, help="constant shape: operations per second")
    group.add_argument("--pet-seconds", type=float, default=60.0, help="constant shape: how long")
    group.add_argument("--pet-start-rate", type=float, default=10.0, help="ramp/step: first rate (ops/s)")
    group.add_argument("--pet-rate-step", type=float, default=10.0, help="ramp/step: rate added per step")
    group.add_argument("--pet-max-rate", type=float, default=400.0, help="ramp/step: highest rate")
    group.add_argument("--pet-step-seconds", type=float, default=20.0, help="ramp/step: seconds per step")
    group.add_argument("--pet-p99-limit", type=float, default=2.0,
                       help="ramp: stop once a step's p99 reconcile latency passes this (seconds)")
    group.add_argument("--pet-drain-seconds", type=float, default=90.0,
                       help="after the last step: wait this long at most for every write to settle")
    group.add_argument("--pet-steps-file", default="", include_in_web_ui=False,
                       help="ramp/step: write each step's figures (JSON) here")


def _workers(environment: Environment) -> int:
    options = environment.parsed_options
    if isinstance(environment.runner, WorkerRunner):
        return max(1, int(getattr(options, "expect_workers", 1) or 1))
    return 1


def _report(environment: Environment):  # type: ignore[no-untyped-def]
    def report(name: str, seconds: float, error: Exception | None) -> None:
        environment.events.request.fire(request_type="RECONCILE", name=name, response_time=seconds * 1000.0,
                                        response_length=0, exception=error, context={})
    return report


def start(environment: Environment) -> None:
    """Build this process's load and start its watch (on test start, once options are final)."""
    if isinstance(environment.runner, MasterRunner) or STATE.load is not None:
        return
    options = environment.parsed_options
    namespaces = [ns for ns in str(options.pet_namespaces).split(",") if ns]
    if not options.kube_config:
        raise SystemExit("pet load: --kube-config (or KUBECONFIG) is required")
    creds = kubeconfig.load(options.kube_config)
    tracker = Tracker(_report(environment), str(options.pet_status_path).split("."), options.pet_reconcile_timeout)
    index = max(0, int(getattr(environment.runner, "worker_index", 0) or 0))
    STATE.tracker = tracker
    STATE.load = LoadProcess(
        tracker, namespaces, options.pet_stores, math.ceil(options.pet_max / _workers(environment)),
        options.pet_id_base, worker_index=index, duplicate_share=options.pet_duplicate_share,
        duplicates=options.pet_duplicates, writer=options.pet_writer,
        claims_namespace=options.pet_claims_namespace,
    )
    STATE.stopped = False
    STATE.watch = PetWatch(creds, namespaces, tracker, lambda: STATE.stopped)
    STATE.greenlets = [gevent.spawn(STATE.watch.run, ns) for ns in namespaces]
    STATE.greenlets.append(gevent.spawn(_sweep_and_report, environment))
    log.info("pet load process %d: %d namespaces, up to %d creates, ids from %d", index, len(namespaces),
             STATE.load.max_creates, STATE.load.first_id)


def _sweep_and_report(environment: Environment) -> None:
    while not STATE.stopped:
        gevent.sleep(1.0)
        if STATE.tracker is None:
            continue
        STATE.tracker.sweep()
        _publish_pending(environment, STATE.tracker.outstanding)


def _publish_pending(environment: Environment, count: int) -> None:
    if isinstance(environment.runner, WorkerRunner):
        environment.runner.send_message(PENDING_MESSAGE, count)
    else:
        PENDING["local"] = count


def stop(environment: Environment) -> None:
    """The run is over: give what is still pending a last chance to settle (the shapes drain before
    this; a swarm stopped from the web UI does not), fail what never settled, stop the watch."""
    tracker = STATE.tracker
    if tracker is not None:
        options = environment.parsed_options
        deadline = time.monotonic() + min(float(options.pet_drain_seconds), float(options.pet_reconcile_timeout) + 5)
        while tracker.outstanding and time.monotonic() < deadline:
            gevent.sleep(0.5)
        failed = tracker.fail_all("still not reconciled when the run ended")
        if failed:
            log.warning("%d writes never reached their predicted status", failed)
        _publish_pending(environment, 0)
    STATE.stopped = True
    for greenlet in STATE.greenlets:
        greenlet.kill(block=False)
    STATE.greenlets = []
    STATE.load = None
    STATE.tracker = None


def register() -> None:
    events.init_command_line_parser.add_listener(add_arguments)

    @events.init.add_listener
    def on_init(environment: Environment, **_: Any) -> None:
        if isinstance(environment.runner, MasterRunner):
            def on_pending(environment: Environment, msg: Any, **_: Any) -> None:
                PENDING[str(msg.node_id)] = int(msg.data)
            environment.runner.register_message(PENDING_MESSAGE, on_pending)
        if environment.web_ui is not None:
            @environment.web_ui.app.route("/pet-load")
            def pet_load_state() -> dict[str, Any]:
                """Writes not settled yet, for whoever ends a web-UI run (pet-harness load --web)."""
                runner = environment.runner
                return {"state": runner.state if runner else None, "pending": sum(PENDING.values())}

    events.test_start.add_listener(lambda environment, **_: start(environment))
    events.test_stop.add_listener(lambda environment, **_: stop(environment))

"""``pet-harness load``: its options, and the command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pet_harness.load import subjects
from pet_harness.load.runner import LoadOptions


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "load", help="Locust load on a fresh embedded cluster: the operator's latency, throughput, API cost, RSS",
        description="Run the pet load (loadtests/locustfile.py) against an operator on a fresh embedded cluster "
                    "and write results/load/<timestamp>/ (summary.md/json, Locust CSV and HTML, plots).")
    p.add_argument("--operator", default="ours", choices=[*subjects.KINDS, "all"],
                   help="ours (default), naive-kopf, raw (the client writes status: the ceiling), raw-chain (the "
                        "client makes our operator's writes), or all = ours, naive-kopf and raw one after another")
    p.add_argument("--pets", type=_positive(int), default=1000, help="creates at most (default 1000)")
    p.add_argument("--namespaces", type=_positive(int), default=2, help="load namespaces load-0.. (default 2)")
    p.add_argument("--namespace", action="append", default=[], dest="namespace_names",
                   help="--target kubeconfig: use this namespace (repeatable; created with stores if absent)")
    p.add_argument("--stores", type=int, default=2, help="stores per namespace (default 2; 0 = pets name none)")
    p.add_argument("--mix", choices=("create", "tenant"), default="create",
                   help="create: creates only (rate and population); tenant: creates, tag updates, store moves, "
                        "deletes (default create)")
    p.add_argument("--shape", choices=("constant", "step", "ramp"), default=None,
                   help="constant (default when headless), step, or ramp (raise the rate until p99 passes "
                        "--p99-limit or a write fails); with --web and no --shape the UI's form decides")
    p.add_argument("--rate", type=_positive(float), default=20.0, help="constant: operations/s (default 20)")
    p.add_argument("--seconds", type=_positive(float), default=60.0, help="constant: seconds (default 60)")
    p.add_argument("--start-rate", type=_positive(float), default=10.0, help="step/ramp: first rate (default 10)")
    p.add_argument("--rate-step", type=_positive(float), default=10.0, help="step/ramp: added per step (default 10)")
    p.add_argument("--max-rate", type=_positive(float), default=400.0, help="step/ramp: highest rate (default 400)")
    p.add_argument("--step-seconds", type=_positive(float), default=20.0, help="step/ramp: step length (default 20)")
    p.add_argument("--p99-limit", type=_positive(float), default=2.0, help="ramp: p99 limit in seconds (default 2)")
    p.add_argument("--user-rate", type=_positive(float), default=1.0, help="operations/s per Locust user (default 1)")
    p.add_argument("--duplicate-share", type=float, default=0.02, help="share of creates reusing a live id (0.02)")
    p.add_argument("--reconcile-timeout", type=_positive(float), default=60.0,
                   help="seconds a write may take to show its predicted status (default 60)")
    p.add_argument("--drain-seconds", type=_positive(float), default=90.0,
                   help="after the load: wait at most this for every write to settle (default 90)")
    p.add_argument("--processes", type=_positive(int), default=1,
                   help="Locust processes (Locust's --processes; default 1)")
    p.add_argument("--no-webhook", dest="webhook", action="store_false",
                   help="ours: run without the admission webhook (duplicates then end Conflict)")
    p.add_argument("--web", action="store_true", help="Locust's web UI on 127.0.0.1 instead of a headless run")
    p.add_argument("--web-port", type=_positive(int), default=8089, help="web UI port (default 8089)")
    p.add_argument("--target", choices=("local", "kubeconfig"), default="local",
                   help="local (default): a fresh embedded cluster per operator; kubeconfig: the cluster of "
                        "--kubeconfig where the operator is already deployed (no RSS sampling there)")
    p.add_argument("--kubeconfig", default=None, help="--target kubeconfig: default $KUBECONFIG")
    p.add_argument("--status-path", default="status", help="--target kubeconfig: where its operator writes status")
    p.add_argument("--duplicates", choices=("reject", "conflict"), default="reject",
                   help="--target kubeconfig: does its webhook refuse held ids (reject) or not (conflict)")
    p.add_argument("--claims-namespace", default="pet-system", help="where id claims live (default pet-system)")
    p.add_argument("--keep-pets", action="store_true", help="--target kubeconfig: leave the load's pets in place")
    p.add_argument("--results", default="results/load", help="results root (default results/load)")
    p.set_defaults(func=command)


def options_from(args: argparse.Namespace) -> LoadOptions:
    operators = ("ours", "naive-kopf", "raw") if args.operator == "all" else (args.operator,)
    kubeconfig = args.kubeconfig or (os.environ.get("KUBECONFIG") if args.target == "kubeconfig" else None)
    return LoadOptions(
        operators=operators, pets=args.pets, namespaces=args.namespaces, namespace_names=args.namespace_names,
        stores=args.stores, mix=args.mix, shape=args.shape, rate=args.rate, seconds=args.seconds,
        start_rate=args.start_rate, rate_step=args.rate_step, max_rate=args.max_rate, step_seconds=args.step_seconds,
        p99_limit=args.p99_limit, user_rate=args.user_rate, duplicate_share=args.duplicate_share,
        reconcile_timeout=args.reconcile_timeout, drain_seconds=args.drain_seconds, processes=args.processes,
        webhook=args.webhook, web=args.web, web_port=args.web_port, target=args.target,
        kubeconfig=Path(kubeconfig) if kubeconfig else None, status_path=args.status_path,
        duplicates=args.duplicates, claims_namespace=args.claims_namespace, out=Path(args.results),
        keep_pets=args.keep_pets,
    )


def command(args: argparse.Namespace) -> int:
    from pet_harness import binaries
    from pet_harness.load import runner
    from pet_harness.processes import install_signal_handlers

    install_signal_handlers()  # SIGTERM/SIGHUP: every finally runs, the clusters and processes stop
    options = options_from(args)
    try:
        options.validate()
    except ValueError as exc:
        print(f"pet-harness: error: {exc}", file=sys.stderr)
        return 2
    if options.target == "local":
        binaries.ensure_binaries(build=True)
    root, summaries = runner.run(options, say=lambda line: print(line, file=sys.stderr, flush=True))
    print((root / "summary.md").read_text())
    print(f"results: {root}")
    return 0 if all(s["verify"]["ok"] for s in summaries) else 1


def add_limits_parser(sub: Any) -> None:
    p = sub.add_parser(
        "limits", help="measure one operator's limits: a large population, restart, updates, narrowing, mass "
                       "delete, failover (results/limits/<timestamp>/; docs/limits.md)")
    p.add_argument("--population", type=_positive(int), default=25_000, help="pets to grow to (default 25000)")
    p.add_argument("--namespaces", type=_positive(int), default=10, help="namespaces they spread over (default 10)")
    p.add_argument("--rate", type=_positive(float), default=60.0, help="creates per second (default 60)")
    p.add_argument("--narrow-pets", type=_positive(int), default=5000, help="pets of the narrowed store (5000)")
    p.add_argument("--delete-pets", type=_positive(int), default=10_000, help="pets deleted at once (10000)")
    p.add_argument("--updaters", type=_positive(int), default=8, help="concurrent updating clients (default 8)")
    p.add_argument("--results", default="results/limits", help="results root (default results/limits)")
    p.set_defaults(func=limits_command)


def limits_command(args: argparse.Namespace) -> int:
    from pet_harness import binaries
    from pet_harness.load import limits
    from pet_harness.processes import install_signal_handlers

    install_signal_handlers()
    options = limits.LimitsOptions(population=args.population, namespaces=args.namespaces, rate=args.rate,
                                   narrow_pets=args.narrow_pets, delete_pets=args.delete_pets,
                                   updaters=args.updaters, out=Path(args.results))
    try:
        options.validate()
    except ValueError as exc:
        print(f"pet-harness: error: {exc}", file=sys.stderr)
        return 2
    binaries.ensure_binaries(build=True)
    command = "pet-harness " + " ".join(sys.argv[1:]) if sys.argv[1:] else "pet-harness limits"
    root = limits.run(options, command, say=lambda line: print(line, file=sys.stderr, flush=True))
    print((root / "limits.md").read_text())
    print(f"results: {root}")
    return 0

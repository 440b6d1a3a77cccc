"""``pet-operator``: command line and environment into a validated configuration."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence

_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ConfigError(ValueError):
    """The command line or environment is wrong; the message names the value and the rule."""


@dataclasses.dataclass(frozen=True)
class Config:
    namespaces: tuple[str, ...]
    all_namespaces: bool
    health_port: int
    kubeconfig: str | None
    resync_period: float
    log_level: str
    claims_namespace: str = "pet-system"
    event_level: str = "Normal"

    @property
    def scope(self) -> str:
        return "all namespaces" if self.all_namespaces else "namespaces " + ", ".join(self.namespaces)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pet-operator",
        description="Reconcile Pet and PetStore resources (petstore.example.com/v1).",
    )
    scope = parser.add_argument_group("scope (one of them is required)")
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], metavar="NS",
        help="serve this namespace; repeat for several (env: KOPF_NAMESPACE, comma-separated)",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="serve every namespace (explicit opt-in)")
    parser.add_argument("--health-port", type=int, default=8080, help="port of /healthz and /readyz (default 8080)")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    parser.add_argument(
        "--resync-period", type=float, default=300.0,
        help="re-reconcile every object this often, in seconds; 0 turns it off (default 300)",
    )
    parser.add_argument(
        "--claims-namespace", default=None, metavar="NS",
        help="namespace of the id claims, the operator's own (default: $POD_NAMESPACE, else pet-system)",
    )
    parser.add_argument(
        "--event-level", default="Normal", choices=["Normal", "Warning", "None"],
        help="post Events of this type and above: Normal (all), Warning (warnings only), None (default Normal)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def parse_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    namespaces = [ns.strip() for ns in args.namespace if ns.strip()]
    if not namespaces and not args.all_namespaces and env.get("KOPF_NAMESPACE"):
        namespaces = [ns.strip() for ns in env["KOPF_NAMESPACE"].split(",") if ns.strip()]
    if args.all_namespaces and namespaces:
        raise ConfigError(
            f"--all-namespaces and namespaces ({', '.join(namespaces)}) exclude each other: give one of them"
        )
    if not args.all_namespaces and not namespaces:
        raise ConfigError(
            "no namespace to serve: give --namespace NS (repeatable), set KOPF_NAMESPACE=ns1,ns2, "
            "or opt in to every namespace with --all-namespaces"
        )
    for ns in namespaces:
        if not _NAMESPACE_RE.match(ns):
            raise ConfigError(
                f"namespace {ns!r} is not a valid namespace name (lower-case letters, digits and '-', "
                "1 to 63 characters, starting and ending with a letter or digit)"
            )
    if not 1 <= args.health_port <= 65535:
        raise ConfigError(f"--health-port {args.health_port} is not a TCP port (1..65535)")
    if not math.isfinite(args.resync_period) or args.resync_period < 0:
        raise ConfigError(f"--resync-period {args.resync_period} must be 0 (off) or positive")
    claims_namespace = args.claims_namespace or env.get("POD_NAMESPACE") or "pet-system"
    if not _NAMESPACE_RE.match(claims_namespace):
        raise ConfigError(
            f"claims namespace {claims_namespace!r} is not a valid namespace name (lower-case letters, "
            "digits and '-', 1 to 63 characters, starting and ending with a letter or digit)"
        )
    return Config(
        claims_namespace=claims_namespace,
        event_level=args.event_level,
        namespaces=tuple(dict.fromkeys(namespaces)),
        all_namespaces=bool(args.all_namespaces),
        health_port=args.health_port,
        kubeconfig=args.kubeconfig or None,
        resync_period=args.resync_period,
        log_level=args.log_level,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_config(argv)
    except ConfigError as exc:
        print(f"pet-operator: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    from pet_operator.app import run  # imported late: kopf is heavy and --help should be quick

    return run(config)


if __name__ == "__main__":
    sys.exit(main())

"""The operator's configuration: command line and environment into a validated :class:`Config`."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import os
import re
import socket
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from pet_operator.version import version

# an RFC 1123 label: a namespace name, and each dot-separated part of a DNS name
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# an object name (RFC 1123 subdomain): what a RoleBinding may be called
_DNS_SUBDOMAIN_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _host_name_ok(name: str) -> bool:
    """A DNS name (dot-separated RFC 1123 labels, ASCII, at most 253 characters) or an IP address."""
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return 0 < len(name) <= 253 and all(_NAMESPACE_RE.match(label) for label in name.lower().split("."))


#: seconds the webhook keeps serving after SIGTERM by default (endpoint removal reaching every node)
DEFAULT_DRAIN_DELAY = 5.0


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
    webhook_port: int = 9443
    webhook_cert_dir: str | None = None
    webhook_configuration: str | None = None
    mutating_webhook_configuration: str | None = None
    webhook_host_names: tuple[str, ...] = ()
    webhook_bind_addresses: tuple[str, ...] = ("127.0.0.1",)
    health_bind_addresses: tuple[str, ...] = ("127.0.0.1",)
    metrics_port: int = 9090
    metrics_bind_addresses: tuple[str, ...] = ("127.0.0.1",)
    shutdown_grace: float = 20.0
    shutdown_drain_delay: float = 5.0
    leader_elect: bool = False
    lease_name: str = "pet-operator-leader"
    lease_namespace: str = "pet-system"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    leader_identity: str = ""
    role_binding: str = "pet-operator"

    @property
    def scope(self) -> str:
        return "all namespaces" if self.all_namespaces else "namespaces " + ", ".join(self.namespaces)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pet-operator",
        description="Reconcile Pet and PetStore resources (petstore.example.com/v1).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print the version (from the git tags, docs/versioning.md) and exit")
    scope = parser.add_argument_group("scope (one of them is required)")
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], metavar="NS",
        help="serve this namespace; repeat for several (env: KOPF_NAMESPACE, comma-separated)",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="serve every namespace (explicit opt-in)")
    parser.add_argument("--health-port", type=int, default=8080, help="port of /healthz and /readyz (default 8080)")
    parser.add_argument("--health-bind-address", action="append", default=[], metavar="IP",
                        help="address of the health port, repeatable (0.0.0.0 or :: for every interface of that "
                             "family); default: $POD_IP and 127.0.0.1, else 127.0.0.1")
    parser.add_argument("--metrics-port", type=int, default=9090,
                        help="port of the Prometheus metrics, /metrics over plain HTTP (default 9090); 0 turns "
                             "them off")
    parser.add_argument("--metrics-bind-address", action="append", default=[], metavar="IP",
                        help="address of the metrics port, repeatable (0.0.0.0 or :: for every interface of that "
                             "family); default: $POD_IP and 127.0.0.1, else 127.0.0.1")
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
        "--role-binding", default="pet-operator", metavar="NAME",
        help="namespace mode: the operator's RoleBinding in each served namespace, which it keeps (with a "
             "finalizer) until its pets there are finalized when the namespace is deleted; '' turns that off "
             "(default pet-operator, as deploy/rbac/namespaced-mode.yaml names it)",
    )
    parser.add_argument(
        "--event-level", default="Normal", choices=["Normal", "Warning", "None"],
        help="post Events of this type and above: Normal (all), Warning (warnings only), None (default Normal)",
    )
    hook = parser.add_argument_group("admission webhook (TLS)")
    hook.add_argument("--webhook-port", type=int, default=9443,
                      help="HTTPS port of /validate-pets and /mutate-pets; 0 turns it off")
    hook.add_argument("--webhook-bind-address", action="append", default=[], metavar="IP",
                      help="address to listen on, repeatable (IPv4 or IPv6; 0.0.0.0 or :: for every interface "
                           "of that family); default: $POD_IP, else 127.0.0.1")
    hook.add_argument("--webhook-cert-dir", default=None, metavar="DIR",
                      help="folder with tls.crt and tls.key (re-read on change); default: self-signed at start")
    hook.add_argument("--webhook-configuration", default=None, metavar="NAME",
                      help="ValidatingWebhookConfiguration whose caBundle gets the self-signed CA")
    hook.add_argument("--mutating-webhook-configuration", default=None, metavar="NAME",
                      help="MutatingWebhookConfiguration (/mutate-pets) whose caBundle gets the self-signed CA")
    hook.add_argument("--webhook-host-name", action="append", default=[], metavar="NAME",
                      help="host name or IP for the self-signed certificate (repeatable; default: the Service "
                           "name pet-operator-webhook.<claims namespace>.svc, localhost and 127.0.0.1)")
    elect = parser.add_argument_group("leader election (only the leader reconciles; every replica serves the webhook)")
    elect.add_argument("--leader-elect", action="store_true", help="campaign for a coordination.k8s.io Lease")
    elect.add_argument("--lease-name", default="pet-operator-leader", help="default pet-operator-leader")
    elect.add_argument("--lease-namespace", default=None, help="default: the claims namespace")
    elect.add_argument("--lease-duration", type=float, default=15.0,
                       help="seconds (default 15); published in the Lease rounded up to whole seconds")
    elect.add_argument("--renew-deadline", type=float, default=10.0, help="seconds (default 10)")
    elect.add_argument("--retry-period", type=float, default=2.0, help="seconds (default 2)")
    elect.add_argument("--leader-identity", default=None, help="default: $POD_NAME or the host name, plus a suffix")
    parser.add_argument("--shutdown-grace", type=float, default=20.0,
                        help="seconds from SIGTERM to exit, whatever is still running (default 20)")
    parser.add_argument("--shutdown-drain-delay", type=float, default=None, metavar="SECONDS",
                        help="after SIGTERM, keep serving the webhook this long while unready, so a Service "
                             "stops routing here first; at most the grace (default 5, or half the grace if less)")
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
    if args.metrics_port != 0 and not 1 <= args.metrics_port <= 65535:
        raise ConfigError(f"--metrics-port {args.metrics_port} is not a TCP port (1..65535, or 0 for off)")
    if args.metrics_port and args.metrics_port in (args.health_port, args.webhook_port):
        other = "--health-port" if args.metrics_port == args.health_port else "--webhook-port"
        raise ConfigError(f"--metrics-port and {other} are both {args.metrics_port}: they need two ports")
    if not math.isfinite(args.resync_period) or args.resync_period < 0:
        raise ConfigError(f"--resync-period {args.resync_period} must be 0 (off) or positive")
    claims_namespace = args.claims_namespace or env.get("POD_NAMESPACE") or "pet-system"
    if not _NAMESPACE_RE.match(claims_namespace):
        raise ConfigError(
            f"claims namespace {claims_namespace!r} is not a valid namespace name (lower-case letters, "
            "digits and '-', 1 to 63 characters, starting and ending with a letter or digit)"
        )
    if args.webhook_port != 0 and not 1 <= args.webhook_port <= 65535:
        raise ConfigError(f"--webhook-port {args.webhook_port} is not a TCP port (1..65535, or 0 for off)")
    if args.webhook_port and args.webhook_port == args.health_port:
        raise ConfigError(f"--webhook-port and --health-port are both {args.health_port}: they need two ports")
    if not math.isfinite(args.shutdown_grace) or args.shutdown_grace < 0:
        raise ConfigError(f"--shutdown-grace {args.shutdown_grace} must be 0 or a positive number of seconds")
    drain_delay = (min(DEFAULT_DRAIN_DELAY, args.shutdown_grace / 2) if args.shutdown_drain_delay is None
                   else args.shutdown_drain_delay)
    if not math.isfinite(drain_delay) or not 0 <= drain_delay <= args.shutdown_grace:
        raise ConfigError(f"--shutdown-drain-delay {drain_delay} must be between 0 and --shutdown-grace "
                          f"({args.shutdown_grace}) seconds: the drain is part of the grace")
    timings = (args.lease_duration, args.renew_deadline, args.retry_period)
    ordered = args.lease_duration > args.renew_deadline > args.retry_period > 0
    if not all(math.isfinite(t) for t in timings) or not ordered:
        raise ConfigError(
            f"leader election timings must satisfy lease duration > renew deadline > retry period > 0; got "
            f"--lease-duration {args.lease_duration}, --renew-deadline {args.renew_deadline}, "
            f"--retry-period {args.retry_period}"
        )
    lease_namespace = args.lease_namespace or claims_namespace
    if not _NAMESPACE_RE.match(lease_namespace):
        raise ConfigError(f"--lease-namespace {lease_namespace!r} is not a valid namespace name")
    identity = args.leader_identity or (
        f"{env.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    )
    host_names = tuple(args.webhook_host_name) or (
        f"pet-operator-webhook.{claims_namespace}.svc", "localhost", "127.0.0.1"
    )
    if args.webhook_port:
        for name in host_names:
            if not _host_name_ok(name):
                raise ConfigError(
                    f"--webhook-host-name {name!r} is neither a DNS name (ASCII labels of letters, digits and "
                    "'-', 1 to 63 characters each, separated by single dots) nor an IP address"
                )
    bind_addresses = tuple(dict.fromkeys(args.webhook_bind_address)) or (env.get("POD_IP") or "127.0.0.1",)
    for address in bind_addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            source = "--webhook-bind-address" if args.webhook_bind_address else "$POD_IP"
            raise ConfigError(
                f"{source} {address!r} is not an IP address (give the pod's own address, e.g. from $POD_IP; "
                "0.0.0.0 or :: listen on every interface of that family)"
            ) from None
    pod_ip = env.get("POD_IP")
    health_addresses = tuple(dict.fromkeys(args.health_bind_address)) or tuple(
        dict.fromkeys((pod_ip, "127.0.0.1") if pod_ip else ("127.0.0.1",)))
    for address in health_addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            source = "--health-bind-address" if args.health_bind_address else "$POD_IP"
            raise ConfigError(f"{source} {address!r} is not an IP address (0.0.0.0 or :: listen on every "
                              "interface of that family)") from None
    metrics_addresses = tuple(dict.fromkeys(args.metrics_bind_address)) or tuple(
        dict.fromkeys((pod_ip, "127.0.0.1") if pod_ip else ("127.0.0.1",)))
    for address in metrics_addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            source = "--metrics-bind-address" if args.metrics_bind_address else "$POD_IP"
            raise ConfigError(f"{source} {address!r} is not an IP address (0.0.0.0 or :: listen on every "
                              "interface of that family)") from None
    if args.all_namespaces is False and claims_namespace in namespaces:
        raise ConfigError(
            f"claims namespace {claims_namespace!r} is also a served namespace: whoever may write pets there "
            "could usually write Leases too, and so forge or delete id claims for every namespace; keep the "
            "claims in the operator's own namespace, which serves no pets"
        )
    role_binding = args.role_binding.strip()
    if role_binding and not _DNS_SUBDOMAIN_RE.match(role_binding):
        raise ConfigError(f"--role-binding {role_binding!r} is not a valid object name")
    return Config(
        webhook_bind_addresses=bind_addresses,
        health_bind_addresses=health_addresses,
        metrics_port=args.metrics_port,
        metrics_bind_addresses=metrics_addresses,
        leader_elect=bool(args.leader_elect),
        lease_name=args.lease_name,
        lease_namespace=lease_namespace,
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
        leader_identity=identity,
        role_binding=role_binding,
        webhook_port=args.webhook_port,
        webhook_cert_dir=args.webhook_cert_dir,
        webhook_configuration=args.webhook_configuration,
        mutating_webhook_configuration=args.mutating_webhook_configuration,
        webhook_host_names=host_names,
        shutdown_grace=args.shutdown_grace,
        shutdown_drain_delay=drain_delay,
        claims_namespace=claims_namespace,
        event_level=args.event_level,
        namespaces=tuple(dict.fromkeys(namespaces)),
        all_namespaces=bool(args.all_namespaces),
        health_port=args.health_port,
        kubeconfig=args.kubeconfig or None,
        resync_period=args.resync_period,
        log_level=args.log_level,
    )


def check_files(config: Config) -> None:
    """What the configuration names on disk, checked before anything starts (ConfigError if wrong)."""
    if not config.webhook_port or not config.webhook_cert_dir:
        return
    folder = Path(config.webhook_cert_dir)
    if not folder.is_dir():
        raise ConfigError(f"--webhook-cert-dir {str(folder)!r}: no such directory (it must hold tls.crt and "
                          "tls.key, e.g. a mounted Secret)")
    for name in ("tls.crt", "tls.key"):
        if not (folder / name).is_file():
            raise ConfigError(f"--webhook-cert-dir {str(folder)!r} has no {name} (it must hold tls.crt and "
                              "tls.key, e.g. a mounted Secret)")

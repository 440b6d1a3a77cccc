"""The node's network, kept on the machine: its own bridge, a guard chain, sysctls put back.

* The bridge is made before the kubelet starts (its address is the node's InternalIP); the CNI
  bridge plugin then attaches each pod's veth to it.
* A guard chain in the ``mangle`` table of iptables and ip6tables, jumped to first from
  ``FORWARD``, lets traffic from the bridge to the bridge pass (pod to pod, pod to Service after
  kube-proxy's DNAT) and drops anything else forwarded from or to it. With the pods' only route
  being the service range (no default route, no masquerading) nothing a pod sends leaves the
  machine, and nothing from outside reaches a pod. A second chain, jumped to first from ``INPUT``
  (IPv4: the node's addresses are IPv4 only), drops packets for the node's own address (where the
  API server and the kubelet listen) unless they come over loopback or the bridge: nothing from
  another machine reaches them, even with a route to the pod range.
* The sysctls the components may write (the bridge plugin turns ``ip_forward`` on; the kubelet
  sets its kernel tunables) are recorded before and written back after.
* Every command touches only what it names: this bridge, this chain, these address ranges.
  Nothing global is flushed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shlex
import subprocess  # nosec B404 # argv lists, never a shell
from collections.abc import Callable, Sequence
from pathlib import Path

from pet_harness.clusters.base import ClusterError
from pet_harness.clusters.node_packages import find_tool

#: the guard chain's name in ``mangle`` (iptables and ip6tables)
GUARD_CHAIN = "PET-HARNESS-GUARD"
#: the suffix of the guard's ``INPUT`` chain (``PET-HARNESS-GUARD-IN``, iptables only)
INPUT_SUFFIX = "-IN"

#: sysctls a node's components may change: recorded at start, written back at teardown
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "net/netfilter/nf_conntrack_tcp_be_liberal",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def run(argv: Sequence[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a host tool (looked up in the sbin folders too); ``check`` raises with its stderr."""
    path = find_tool(argv[0]) or argv[0]
    proc = subprocess.run([path, *argv[1:]], capture_output=True, text=True, timeout=timeout)  # nosec B603 # argv of our own, no shell
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed with code {proc.returncode}: {proc.stderr.strip()}")
    return proc


# --- guard chain ------------------------------------------------------------------------------


def guard_rules(bridge: str, chain: str = GUARD_CHAIN) -> list[list[str]]:
    """The chain's rules (arguments after the binary): bridge to bridge passes, the rest of what is
    forwarded from or to the bridge is dropped."""
    return [
        ["-A", chain, "-i", bridge, "-o", bridge, "-j", "RETURN"],
        ["-A", chain, "-i", bridge, "-j", "DROP"],
        ["-A", chain, "-o", bridge, "-j", "DROP"],
    ]


def input_guard_rules(bridge: str, node_ip: str, chain: str) -> list[list[str]]:
    """The ``INPUT`` chain's rules: the node's address takes packets from loopback and the bridge only."""
    return [
        ["-A", chain, "-i", "lo", "-j", "RETURN"],
        ["-A", chain, "-i", bridge, "-j", "RETURN"],
        ["-A", chain, "-d", f"{node_ip}/32", "-j", "DROP"],
    ]


def guard_install_commands(bridge: str, chain: str = GUARD_CHAIN, node_ip: str | None = None) -> list[list[str]]:
    """Every command that installs the guard, for iptables and ip6tables (and, given the node's
    address, the ``INPUT`` chain for iptables)."""
    commands: list[list[str]] = []
    for binary in ("iptables", "ip6tables"):
        base = [binary, "-w", "5", "-t", "mangle"]
        commands.append([*base, "-N", chain])
        commands += [[*base, *rule] for rule in guard_rules(bridge, chain)]
        commands.append([*base, "-I", "FORWARD", "1", "-j", chain])
    if node_ip is not None:
        base = ["iptables", "-w", "5", "-t", "mangle"]
        chain_in = chain + INPUT_SUFFIX
        commands.append([*base, "-N", chain_in])
        commands += [[*base, *rule] for rule in input_guard_rules(bridge, node_ip, chain_in)]
        commands.append([*base, "-I", "INPUT", "1", "-j", chain_in])
    return commands


def install_guard(bridge: str, chain: str = GUARD_CHAIN, runner: Runner | None = None,
                  node_ip: str | None = None) -> None:
    for command in guard_install_commands(bridge, chain, node_ip):
        (runner or run)(command)


def remove_guard(chain: str = GUARD_CHAIN, runner: Runner | None = None) -> None:
    """Remove every jump to the chains from FORWARD and INPUT, then the chains; quiet when they are
    not there."""
    execute = runner or (lambda argv: run(argv, check=False))
    for binary in ("iptables", "ip6tables"):
        base = [binary, "-w", "5", "-t", "mangle"]
        targets = [("FORWARD", chain)] + ([("INPUT", chain + INPUT_SUFFIX)] if binary == "iptables" else [])
        for builtin, target in targets:
            for _ in range(20):  # one jump is inserted per start; a few stale ones at most
                if execute([*base, "-D", builtin, "-j", target]).returncode != 0:
                    break
            execute([*base, "-F", target])
            execute([*base, "-X", target])


def chains_with_prefix(prefixes: Sequence[str], runner: Runner | None = None) -> list[tuple[str, str, str]]:
    """Chains named with one of ``prefixes``: (binary, table, chain) for iptables and ip6tables."""
    execute = runner or (lambda argv: run(argv, check=False))
    found = []
    for binary in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            listing = execute([binary, "-w", "5", "-t", table, "-S"])
            for line in listing.stdout.splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "-N" and parts[1].startswith(tuple(prefixes)):
                    found.append((binary, table, parts[1]))
    return found


def remove_chains(chains: Sequence[tuple[str, str, str]], runner: Runner | None = None) -> None:
    """Remove the listed chains ((binary, table, chain), e.g. kube-proxy's ``KUBE-`` ones left after
    its clean-up): first every rule that jumps to one of them, then their rules, then the chains."""
    execute = runner or (lambda argv: run(argv, check=False))
    by_table: dict[tuple[str, str], set[str]] = {}
    for binary, table, chain in chains:
        by_table.setdefault((binary, table), set()).add(chain)
    for (binary, table), ours in by_table.items():
        base = [binary, "-w", "5", "-t", table]
        for line in execute([*base, "-S"]).stdout.splitlines():
            parts = shlex.split(line)
            if parts[:1] == ["-A"] and "-j" in parts[:-1] and parts[parts.index("-j") + 1] in ours:
                execute([*base, "-D", *parts[1:]])
        for verb in ("-F", "-X"):
            for chain in sorted(ours):
                execute([*base, verb, chain])


# --- nft tables iptables-nft made --------------------------------------------------------------


def nft_tables(runner: Runner | None = None) -> set[tuple[str, str]]:
    """(family, name) of every nftables table now."""
    proc = (runner or (lambda argv: run(argv, check=False)))(["nft", "-j", "list", "tables"])
    if proc.returncode != 0:
        return set()
    items = json.loads(proc.stdout or "{}").get("nftables", [])
    return {(i["table"]["family"], i["table"]["name"]) for i in items if "table" in i}


def nft_rule_count(family: str, name: str, runner: Runner | None = None) -> int:
    proc = (runner or (lambda argv: run(argv, check=False)))(["nft", "-j", "list", "table", family, name])
    if proc.returncode != 0:
        return 0
    return sum(1 for item in json.loads(proc.stdout or "{}").get("nftables", []) if "rule" in item)


def remove_new_empty_tables(before: set[tuple[str, str]], runner: Runner | None = None) -> list[str]:
    """Delete the tables that did not exist at start and hold no rule now (iptables-nft makes a
    table the first time a chain of it is touched, and leaves it behind empty)."""
    execute = runner or (lambda argv: run(argv, check=False))
    removed = []
    for family, name in sorted(nft_tables(execute) - before):
        if nft_rule_count(family, name, execute) == 0:
            execute(["nft", "delete", "table", family, name])
            removed.append(f"{family} {name}")
    return removed


# --- bridge and links --------------------------------------------------------------------------


def overlapping_routes(cidrs: Sequence[str], runner: Runner | None = None) -> list[str]:
    """Routes and addresses of the machine that overlap one of ``cidrs``: such a range is in use."""
    execute = runner or (lambda argv: run(argv, check=False))
    wanted = [ipaddress.ip_network(c) for c in cidrs]
    clashes = []
    routes = json.loads(execute(["ip", "-j", "route", "show", "table", "all"]).stdout or "[]")
    for route in routes:
        dst = route.get("dst", "")
        if dst in ("default", "") or route.get("type") in ("broadcast", "local", "multicast"):
            continue
        try:
            network = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
        except ValueError:
            continue
        for cidr in wanted:
            if network.version == cidr.version and network.overlaps(cidr):
                clashes.append(f"route {dst} dev {route.get('dev', '?')} overlaps {cidr}")
    return clashes


def create_bridge(bridge: str, address_cidr: str, runner: Runner | None = None) -> None:
    execute = runner or run
    execute(["ip", "link", "add", "name", bridge, "type", "bridge"])
    execute(["ip", "addr", "add", address_cidr, "dev", bridge])
    execute(["ip", "link", "set", bridge, "up"])


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def remove_bridge(bridge: str, runner: Runner | None = None) -> list[str]:
    """Delete the veths attached to ``bridge``, then the bridge; returns the links deleted."""
    execute = runner or (lambda argv: run(argv, check=False))
    removed: list[str] = []
    if not link_exists(bridge):
        return removed
    for link in json.loads(execute(["ip", "-j", "link", "show", "master", bridge]).stdout or "[]"):
        name = link.get("ifname")
        if name:
            execute(["ip", "link", "delete", name])
            removed.append(name)
    execute(["ip", "link", "delete", bridge])
    removed.append(bridge)
    return removed


def bridge_ports(bridge: str) -> list[str]:
    folder = Path("/sys/class/net", bridge, "brif")
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# --- conntrack -----------------------------------------------------------------------------------


def conntrack_commands(pod_cidr: str, service_cidr: str) -> list[list[str]]:
    """Delete the connection-tracking entries of the node's ranges (sources and destinations)."""
    return [
        ["conntrack", "-D", "-s", pod_cidr],
        ["conntrack", "-D", "-d", pod_cidr],
        ["conntrack", "-D", "-d", service_cidr],
    ]


def clear_conntrack(pod_cidr: str, service_cidr: str, runner: Runner | None = None) -> None:
    execute = runner or (lambda argv: run(argv, check=False))
    for command in conntrack_commands(pod_cidr, service_cidr):
        execute(command)  # "0 flow entries" exits 1: nothing to delete is fine


def conntrack_entries(pod_cidr: str, service_cidr: str, runner: Runner | None = None) -> list[str]:
    execute = runner or (lambda argv: run(argv, check=False))
    lines: list[str] = []
    for flag, cidr in (("-s", pod_cidr), ("-d", pod_cidr), ("-d", service_cidr)):
        lines += [line for line in execute(["conntrack", "-L", flag, cidr]).stdout.splitlines() if line.strip()]
    return lines


# --- sysctls -------------------------------------------------------------------------------------


def record_sysctls(names: Sequence[str] = SYSCTLS, root: Path = Path("/proc/sys")) -> dict[str, str]:
    """The current value of each sysctl that exists here."""
    values = {}
    for name in names:
        with contextlib.suppress(OSError):
            values[name] = (root / name).read_text().strip()
    return values


def restore_sysctls(saved: dict[str, str], root: Path = Path("/proc/sys")) -> list[str]:
    """Write back every recorded sysctl whose value changed; returns ``name: now -> saved`` lines."""
    changed = []
    for name, value in saved.items():
        path = root / name
        try:
            now = path.read_text().strip()
        except OSError:
            continue
        if now.split() != value.split():
            with contextlib.suppress(OSError):
                path.write_text(value + "\n")
                changed.append(f"{name}: {now} -> {value}")
    return changed

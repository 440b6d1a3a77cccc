"""Cutting a pod off from the API server on its own node: reject rules in the pod's network namespace.

The staging cut (:func:`petchaos.staging.cut_leader`) is a NetworkPolicy, which only a CNI that
enforces NetworkPolicy turns into a cut; the CNI bridge plugin of the harness's node backend
enforces none, so there the policy is written and nothing happens. With the configuration key
``cut_mode=pod-netns`` the cut is made where the pod's packets leave it instead: in the pod's own
network namespace, entered with ``nsenter`` from the node (so the chaos process must run on the
pod's node, as root).

Why rules inside the pod rather than on the host, keyed on the pod's address: they see the pod's
packets before any NAT (the ``kubernetes`` Service's ClusterIP as the pod dialled it), they touch
nothing of the host's own tables (kube-proxy's, the node's guard), and they cannot outlive the
pod: its network namespace, and every rule in it, goes when the pod's sandbox goes (a pod deleted,
a node torn down), whatever happens to the chaos process. They cut only what the fault means,
TCP from the pod to the API server (the ``kubernetes`` Service's ClusterIP and ports, and the
addresses of its EndpointSlices), with a reset (``REJECT --reject-with tcp-reset``), as the
embedded target's fault proxy resets every connection; the kubelet's probes and the API server's
webhook calls into the pod are connections *to* the pod and go on. Every rule also stops
matching by itself after :data:`SAFETY_SECONDS` (``-m time --datestop``), a safety net like the
freeze's automatic thaw; ``heal`` removes them, reading first how many packets they rejected.

The rules live in a chain of their own, :data:`CHAIN`, jumped to first from ``OUTPUT`` of the
namespace's ``filter`` table. Which network namespace is the pod's: that of a process of the pod,
found by the pod's UID in the processes' cgroup paths (``.../pod<uid>/...`` with the kubelet's
cgroupfs driver, ``...-pod<uid with _>.slice/...`` with its systemd driver), checked to differ
from the caller's own.
"""

from __future__ import annotations

import datetime
import os
import subprocess  # nosec B404 # argv lists, never a shell
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CHAIN",
    "METHOD",
    "NETWORK_POLICY_NOT_USED",
    "SAFETY_SECONDS",
    "NotOnThisNode",
    "apiserver_endpoints",
    "cut",
    "cut_rules",
    "pod_pid",
    "rejected_packets",
    "uncut",
]

CHAIN = "PETCHAOS-CUT"
COMMENT = "petchaos cut-leader"
METHOD = "pod-netns"
#: the rules stop matching by themselves this long after the cut, should nothing heal it
SAFETY_SECONDS = 120
NETWORK_POLICY_NOT_USED = (
    "no NetworkPolicy written: cut_mode=pod-netns (a NetworkPolicy is enforced only by a CNI that "
    "implements it; the CNI bridge plugin of the harness's node backend does not, so the policy would "
    "cut nothing there)"
)

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


class NotOnThisNode(RuntimeError):
    """No process of the pod runs on this machine (or it shares this process's network namespace)."""


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)  # nosec B603 # argv of ours


# --- pure parts (unit-tested) --------------------------------------------------------------------


def cut_rules(endpoints: Sequence[tuple[str, int]], until: datetime.datetime) -> list[list[str]]:
    """The ``iptables`` arguments that make the cut, in order: the chain, the jump first in
    ``OUTPUT``, one reject rule per ``(address, port)``, each matching only until ``until`` (UTC)."""
    if not endpoints:
        raise ValueError("no API server address to cut the pod off from")
    stamp = until.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    rules = [["-N", CHAIN], ["-I", "OUTPUT", "1", "-j", CHAIN]]
    for address, port in endpoints:
        rules.append(["-A", CHAIN, "-p", "tcp", "-d", address, "--dport", str(int(port)),
                      "-m", "time", "--datestop", stamp, "-m", "comment", "--comment", COMMENT,
                      "-j", "REJECT", "--reject-with", "tcp-reset"])
    return rules


UNJUMP: list[str] = ["-D", "OUTPUT", "-j", CHAIN]
UNDO_RULES: list[list[str]] = [["-F", CHAIN], ["-X", CHAIN]]


def in_netns(pid: int, args: Sequence[str]) -> list[str]:
    """``iptables`` run in the network namespace of process ``pid`` (and nothing else of it)."""
    return ["nsenter", f"--target={int(pid)}", "--net", "--", "iptables", "-w", "5", *args]


def rejected_packets(listing: str) -> int:
    """The packets the chain's rules rejected, from ``iptables -L CHAIN -v -x -n``."""
    total = 0
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[0].isdigit() and fields[2] == "REJECT":
            total += int(fields[0])
    return total


def pod_cgroup_markers(pod_uid: str) -> tuple[str, str]:
    """How a pod's UID appears in its processes' cgroup paths: the cgroupfs and the systemd driver."""
    return f"/pod{pod_uid}/", f"-pod{pod_uid.replace('-', '_')}.slice/"


def pod_pid(pod_uid: str, proc: Path = Path("/proc")) -> int:
    """A process of the pod whose UID is ``pod_uid``, in a network namespace other than ours
    (the lowest pid: usually the sandbox's pause process). Raises :class:`NotOnThisNode`."""
    if not pod_uid:
        raise ValueError("pod UID is empty")
    markers = pod_cgroup_markers(pod_uid)
    try:
        own_netns = os.readlink(proc / "self" / "ns" / "net")
    except OSError:
        own_netns = ""
    candidates = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        if any(marker in line + "/" for line in cgroups.splitlines() for marker in markers):
            candidates.append(int(entry.name))
    for pid in sorted(candidates):
        try:
            netns = os.readlink(proc / str(pid) / "ns" / "net")
        except OSError:  # gone meanwhile, or no permission to look: not usable
            continue
        if netns != own_netns:
            return pid
    raise NotOnThisNode(
        f"no process of pod {pod_uid} in a network namespace of its own on this machine "
        f"({len(candidates)} in its cgroups): cut_mode=pod-netns must run on the pod's node, as root")


# --- the node -----------------------------------------------------------------------------------


def apiserver_endpoints(api: Any) -> list[tuple[str, int]]:
    """Where a pod reaches the API server: the ``default/kubernetes`` Service's ClusterIP and TCP
    ports, and the addresses and ports of its EndpointSlices."""
    from kubernetes import client

    found: list[tuple[str, int]] = []
    service = client.CoreV1Api(api).read_namespaced_service("kubernetes", "default")
    for ip in service.spec.cluster_ips or [service.spec.cluster_ip]:
        for port in service.spec.ports or []:
            if ip and ip != "None" and (port.protocol or "TCP") == "TCP" and ":" not in ip:
                found.append((ip, int(port.port)))
    slices = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=kubernetes")
    for item in slices.items:
        if item.address_type != "IPv4":
            continue
        ports = [int(p.port) for p in item.ports or [] if (p.protocol or "TCP") == "TCP" and p.port]
        for endpoint in item.endpoints or []:
            found += [(address, port) for address in endpoint.addresses or [] for port in ports]
    return sorted(set(found))


def cut(pid: int, endpoints: Sequence[tuple[str, int]], now: datetime.datetime | None = None,
        run: Runner = _run) -> list[str]:
    """Make the cut in the network namespace of ``pid``; returns the rules as ``iptables -S``
    lists them. Anything half-made is undone before an error is raised."""
    now = now or datetime.datetime.now(datetime.UTC)
    for args in cut_rules(endpoints, now + datetime.timedelta(seconds=SAFETY_SECONDS)):
        done = run(in_netns(pid, args))
        if done.returncode != 0:
            uncut(pid, run)
            raise RuntimeError(f"cut in the network namespace of pid {pid}: iptables {' '.join(args)} failed "
                               f"({done.returncode}): {done.stderr.strip()[:300]}")
    listed = run(in_netns(pid, ["-S", CHAIN]))
    return [line for line in listed.stdout.splitlines() if line.startswith("-A ")]


def uncut(pid: int, run: Runner = _run) -> dict[str, Any]:
    """Remove the cut from the network namespace of ``pid`` (nothing to do if it is not there);
    says whether it was there and how many packets it rejected."""
    listing = run(in_netns(pid, ["-L", CHAIN, "-v", "-x", "-n"]))
    if listing.returncode != 0:
        return {"present": False, "rejected_packets": 0}
    for _ in range(5):  # the jump, as often as it is there (a cut made twice); absent after a half-made cut
        if run(in_netns(pid, UNJUMP)).returncode != 0:
            break
    errors = []
    for args in UNDO_RULES:
        done = run(in_netns(pid, args))
        if done.returncode != 0:
            errors.append(f"iptables {' '.join(args)}: {done.stderr.strip()[:200]}")
    if errors:
        raise RuntimeError(f"heal in the network namespace of pid {pid}: " + "; ".join(errors))
    return {"present": True, "rejected_packets": rejected_packets(listing.stdout)}

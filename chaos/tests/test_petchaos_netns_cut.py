"""The node cut (cut_mode=pod-netns): the rules, the pod's process found in a fake /proc, the
commands against a recording runner; the staging activities choosing it. The real thing runs in
scenarios/test_node_chaos.py on a node cluster."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from petchaos import netns_cut, staging

UID = "59804287-0af2-4874-a20c-a0852d9ddda0"
UNTIL = datetime.datetime(2026, 12, 6, 5, 0, 0, tzinfo=datetime.UTC)


def test_the_rules_reject_tcp_to_each_api_server_address_until_the_safety_deadline() -> None:
    rules = netns_cut.cut_rules([("10.97.0.1", 443), ("10.244.0.1", 39015)], UNTIL)
    assert rules[:2] == [["-N", "PETCHAOS-CUT"], ["-I", "OUTPUT", "1", "-j", "PETCHAOS-CUT"]]
    assert rules[2] == ["-A", "PETCHAOS-CUT", "-p", "tcp", "-d", "10.97.0.1", "--dport", "443", "-m", "time",
                        "--datestop", "2026-12-06T05:00:00", "-m", "comment", "--comment", "petchaos cut-leader",
                        "-j", "REJECT", "--reject-with", "tcp-reset"]
    assert rules[3][5:8] == ["10.244.0.1", "--dport", "39015"]
    with pytest.raises(ValueError, match="no API server address"):
        netns_cut.cut_rules([], UNTIL)


def test_rules_run_in_the_pods_network_namespace_only() -> None:
    assert netns_cut.in_netns(42, ["-S"]) == ["nsenter", "--target=42", "--net", "--", "iptables", "-w", "5", "-S"]


def test_rejected_packets_are_read_from_the_chain_listing() -> None:
    listing = """Chain PETCHAOS-CUT (1 references)
    pkts      bytes target     prot opt in     out     source               destination
      13      780 REJECT     6    --  *      *       0.0.0.0/0            10.97.0.1            tcp dpt:443
       2      120 REJECT     6    --  *      *       0.0.0.0/0            10.244.0.1           tcp dpt:39015
"""
    assert netns_cut.rejected_packets(listing) == 15
    assert netns_cut.rejected_packets("") == 0


def fake_proc(tmp_path: Path, processes: dict[int, tuple[str, str]], own_netns: str = "net:[1]") -> Path:
    """/proc with ``pid -> (cgroup text, netns link)`` and ``self``."""
    proc = tmp_path / "proc"
    for pid, (cgroup, netns) in [*processes.items(), ("self", ("", own_netns))]:
        (proc / str(pid) / "ns").mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(cgroup)
        os.symlink(netns, proc / str(pid) / "ns" / "net")
    return proc


def test_the_pods_process_is_found_by_its_uid_in_the_cgroup_path(tmp_path: Path) -> None:
    cgroupfs = f"8:pids:/kubepods/burstable/pod{UID}/e7ff776fbe\n9:name=systemd:/kubepods/burstable/pod{UID}/e7ff\n"
    systemd = f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/cri-x\n"
    proc = fake_proc(tmp_path, {
        300: (cgroupfs, "net:[7]"),
        200: (cgroupfs, "net:[7]"),
        100: ("8:pids:/kubepods/burstable/podother/abc\n", "net:[9]"),
        50: (f"8:pids:/kubepods/burstable/pod{UID}\n", "net:[1]"),  # its cgroup, but our own network: not it
    })
    assert netns_cut.pod_pid(UID, proc) == 200
    assert netns_cut.pod_pid(UID, fake_proc(tmp_path / "s", {77: (systemd, "net:[8]")})) == 77


def test_a_pod_that_is_not_here_is_named(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {100: ("8:pids:/kubepods/burstable/podother/abc\n", "net:[9]")})
    with pytest.raises(netns_cut.NotOnThisNode, match=rf"no process of pod {UID} .* must run on the pod's node"):
        netns_cut.pod_pid(UID, proc)
    with pytest.raises(ValueError, match="pod UID is empty"):
        netns_cut.pod_pid("", proc)


class Runner:
    """Records the argv lists; answers from ``fail`` (argument tuple -> (code, stderr)) or 0."""

    def __init__(self, fail: dict[tuple[str, ...], tuple[int, str]] | None = None, listing: str = "") -> None:
        self.calls: list[list[str]] = []
        self.fail = fail or {}
        self.listing = listing

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        args = tuple(argv[7:])
        code, err = self.fail.get(args, (0, ""))
        out = self.listing if args[:1] in (("-L",), ("-S",)) else ""
        return subprocess.CompletedProcess(argv, code, out, err)


def test_cut_makes_the_rules_and_lists_them() -> None:
    runner = Runner(listing="-N PETCHAOS-CUT\n-A PETCHAOS-CUT -d 10.97.0.1/32 -j REJECT\n")
    listed = netns_cut.cut(42, [("10.97.0.1", 443)], now=UNTIL, run=runner)
    assert listed == ["-A PETCHAOS-CUT -d 10.97.0.1/32 -j REJECT"]
    made = [c[7:] for c in runner.calls]
    assert made[:3] == netns_cut.cut_rules([("10.97.0.1", 443)], UNTIL + datetime.timedelta(seconds=120))
    assert all(c[:4] == ["nsenter", "--target=42", "--net", "--"] for c in runner.calls)


def test_a_cut_that_fails_half_way_is_undone_and_the_error_names_the_rule() -> None:
    runner = Runner(fail={("-I", "OUTPUT", "1", "-j", "PETCHAOS-CUT"): (4, "iptables: Permission denied")},
                    listing="Chain PETCHAOS-CUT (0 references)\n")
    with pytest.raises(RuntimeError, match=r"iptables -I OUTPUT 1 -j PETCHAOS-CUT failed \(4\): .*Permission denied"):
        netns_cut.cut(42, [("10.97.0.1", 443)], now=UNTIL, run=runner)
    assert [c[7:] for c in runner.calls][-2:] == [["-F", "PETCHAOS-CUT"], ["-X", "PETCHAOS-CUT"]]


def test_uncut_removes_the_chain_and_counts_what_it_rejected() -> None:
    listing = "Chain PETCHAOS-CUT (1 references)\n pkts bytes target\n 5 300 REJECT 6 -- * * 0/0 10.97.0.1\n"
    runner = Runner(fail={("-D", "OUTPUT", "-j", "PETCHAOS-CUT"): (1, "")}, listing=listing)
    assert netns_cut.uncut(42, run=runner) == {"present": True, "rejected_packets": 5}
    assert [c[7:] for c in runner.calls] == [["-L", "PETCHAOS-CUT", "-v", "-x", "-n"],
                                             ["-D", "OUTPUT", "-j", "PETCHAOS-CUT"],
                                             ["-F", "PETCHAOS-CUT"], ["-X", "PETCHAOS-CUT"]]


def test_uncut_without_a_cut_does_nothing() -> None:
    runner = Runner(fail={("-L", "PETCHAOS-CUT", "-v", "-x", "-n"): (1, "No chain/target/match by that name.")})
    assert netns_cut.uncut(42, run=runner) == {"present": False, "rejected_packets": 0}
    assert len(runner.calls) == 1


def test_uncut_that_cannot_remove_the_chain_fails() -> None:
    runner = Runner(fail={("-X", "PETCHAOS-CUT"): (1, "Device or resource busy")}, listing="Chain PETCHAOS-CUT\n")
    with pytest.raises(RuntimeError, match="heal in the network namespace of pid 42: iptables -X PETCHAOS-CUT"):
        netns_cut.uncut(42, run=runner)


def test_the_cut_mode_is_a_setting_checked_by_name() -> None:
    assert staging.Settings({}).cut_mode == "network-policy"
    assert staging.Settings({"cut_mode": "pod-netns"}).cut_mode == "pod-netns"
    assert staging.Settings({"cut_mode": ""}).cut_mode == "network-policy"
    with pytest.raises(ValueError, match=r"cut_mode 'iptables' must be one of network-policy, pod-netns"):
        staging.Settings({"cut_mode": "iptables"})


class FakePod:
    def __init__(self, name: str, uid: str) -> None:
        self.metadata = type("Meta", (), {"name": name, "uid": uid})()


def test_cut_leader_on_pod_netns_cuts_in_the_leaders_namespace_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, Any] = {}

    class Core:
        def __init__(self, api: Any) -> None:
            pass

        def patch_namespaced_pod(self, name: str, ns: str, body: dict[str, Any]) -> None:
            calls["label"] = (name, ns, body)

        def read_namespaced_pod(self, name: str, ns: str) -> FakePod:
            return FakePod(name, UID)

    from kubernetes import client

    monkeypatch.setattr(staging, "_api", lambda: object())
    monkeypatch.setattr(staging, "leader_pod", lambda s, api=None: "pet-operator-abc-1")
    monkeypatch.setattr(client, "CoreV1Api", Core)
    monkeypatch.setattr(netns_cut, "apiserver_endpoints", lambda api: [("10.97.0.1", 443)])
    monkeypatch.setattr(netns_cut, "pod_pid", lambda uid: {UID: 4242}[uid])
    monkeypatch.setattr(netns_cut, "cut", lambda pid, endpoints: calls.setdefault("cut", (pid, endpoints)) and ["r"])
    result = staging.cut_leader({"target": "kubernetes", "cut_mode": "pod-netns"})
    assert calls["cut"] == (4242, [("10.97.0.1", 443)])
    assert calls["label"] == ("pet-operator-abc-1", "pet-system", {"metadata": {"labels": {staging.CUT_LABEL: "true"}}})
    assert result["cut_method"] == "pod-netns" and result["rejected"] == ["10.97.0.1:443"]
    assert result["network_policy"].startswith("no NetworkPolicy written")

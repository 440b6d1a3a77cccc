"""Helpers of the node scenarios (``-m node``): pods of the toolbox image, waiting for their phase."""

from __future__ import annotations

import os
from typing import Any

import pytest
from kubernetes import client

from pet_harness.waiting import wait_for

#: the uid the restricted pods run as (the operator's image uses the same)
POD_UID = 65532


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the node backend needs root (containerd, runc, the bridge and iptables)")


def restricted_pod(name: str, image: str, args: list[str], restart: str = "Always",
                   labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod that passes Pod Security ``restricted``: non-root uid 65532, every capability dropped,
    no privilege escalation, RuntimeDefault seccomp, a read-only root; the image is never pulled."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {
            "restartPolicy": restart,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 2,
            "securityContext": {
                "runAsNonRoot": True, "runAsUser": POD_UID, "runAsGroup": POD_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "main",
                "image": image,
                "imagePullPolicy": "Never",
                "args": args,
                "securityContext": {
                    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        },
    }


def restricted_namespace(core: client.CoreV1Api, name: str) -> str:
    core.create_namespace({"metadata": {"name": name, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}})
    return name


def wait_phase(core: client.CoreV1Api, namespace: str, name: str, phases: set[str], timeout: float = 90) -> Any:
    return wait_for(lambda: core.read_namespaced_pod(name, namespace),
                    lambda pod: pod.status.phase in phases, timeout, f"pod {namespace}/{name} in {sorted(phases)}")


def wait_ready(core: client.CoreV1Api, namespace: str, name: str, timeout: float = 90) -> Any:
    def ready(pod: Any) -> bool:
        return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))

    return wait_for(lambda: core.read_namespaced_pod(name, namespace), ready, timeout,
                    f"pod {namespace}/{name} Ready")


def pids_with_cmdline(text: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmdline == text:
            found.append(int(entry.name))
    return found


def uids_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Uid:"):
                return [int(x) for x in line.split()[1:]]
    return []

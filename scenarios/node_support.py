"""Helpers of the node scenarios (``-m node``): pods of the toolbox image, waiting for their phase, a
writer of pets that runs while an operator is rolled."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream

from pet_harness.kube import PetApi
from pet_harness.waiting import wait_for

#: the uid the restricted pods run as (the operator's image uses the same)
POD_UID = 65532
#: the finalizer the operator's mutating webhook puts on a pet as it is created
ID_CLAIM_FINALIZER = "petstore.example.com/id-claim"


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


class Writer(threading.Thread):
    """Creates pets one after another until told to stop (bounded in count and time); records
    every failure, and every pet created without the finalizer the mutating webhook puts on."""

    def __init__(self, pets: PetApi, store: str, first_id: int, limit: int = 400, seconds: float = 180,
                 pause: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pets, self.store, self.next_id = pets, store, first_id
        self.limit, self.deadline, self.pause = limit, time.monotonic() + seconds, pause
        self.created: list[str] = []
        self.failures: list[str] = []
        self.unmutated: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and len(self.created) < self.limit and time.monotonic() < self.deadline:
            name = f"w-{self.next_id}"
            try:
                created = self.pets.create_pet(name, {"id": self.next_id, "name": name, "store": self.store,
                                                      "tags": []})
                self.created.append(name)
                if ID_CLAIM_FINALIZER not in (created["metadata"].get("finalizers") or []):
                    self.unmutated.append(name)  # the mutating webhook (failurePolicy Ignore) was not answered
            except ApiException as exc:
                self.failures.append(f"{name}: {exc.status} {exc.body}")
            except Exception as exc:  # noqa: BLE001 - any failure of a write is what the test looks for
                self.failures.append(f"{name}: {exc!r}")
            self.next_id += 1
            self.stop.wait(self.pause)


def operator_exec(api: client.ApiClient, namespace: str, pod: str, command: list[str]) -> str:
    """``command`` run in the operator container of ``pod`` (what ``kubectl exec`` does); its output."""
    core = client.CoreV1Api(api)
    return str(stream(core.connect_get_namespaced_pod_exec, pod, namespace, container="operator",
                      command=command, stdin=False, stdout=True, stderr=True, tty=False, _request_timeout=30))

"""Chaos Toolkit python provider for the pet operator's chaos experiments.

Every function takes Chaos Toolkit's ``configuration`` with two keys:

* ``control_url``: the control server of a :class:`pet_harness.chaos_env.ChaosEnvironment`
  (``pet-harness chaos`` passes it with ``--var control_url=...``);
* ``target``: ``local`` (the embedded cluster and operator processes, implemented) or
  ``kubernetes`` (a real cluster: use the chaostoolkit-kubernetes activities named in
  the error raised, see docs/chaos.md).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["KUBERNETES_EQUIVALENTS", "TargetNotImplemented", "call", "target_of"]

#: what each local action becomes on a real cluster (target=kubernetes)
KUBERNETES_EQUIVALENTS = {
    "kill_leader": "chaosk8s.pod.actions.terminate_pods(label_selector='app.kubernetes.io/name=pet-operator', "
                   "ns=<operator namespace>, name_pattern=<leader pod, from the Lease holderIdentity>, "
                   "grace_period=0)",
    "freeze_leader": "chaosk8s.pod.actions.exec_in_pods(cmd='kill -STOP 1', "
                     "label_selector='app.kubernetes.io/name=pet-operator', name_pattern=<leader pod>) "
                     "(needs a shell in the image, or an ephemeral debug container)",
    "thaw": "chaosk8s.pod.actions.exec_in_pods(cmd='kill -CONT 1', "
            "label_selector='app.kubernetes.io/name=pet-operator')",
    "cut_leader": "chaosk8s.networking.actions.create_network_policy (deny egress from the leader pod "
                  "to the API server, pod selector app.kubernetes.io/name=pet-operator)",
    "heal": "chaosk8s.networking.actions.remove_network_policy",
    "delete_lease": "kubectl delete lease pet-operator-leader -n <operator namespace> "
                    "(chaostoolkit process provider; chaosk8s has no Lease action)",
    "steal_lease": "kubectl patch lease pet-operator-leader -n <operator namespace> "
                   "(chaostoolkit process provider; chaosk8s has no Lease action)",
    "restart_apiserver": "not on a managed staging cluster; on a kubeadm cluster: "
                         "chaosk8s.pod.actions.terminate_pods(label_selector='component=kube-apiserver', "
                         "ns='kube-system')",
    "restart_etcd": "not on a managed staging cluster; on a kubeadm cluster: "
                    "chaosk8s.pod.actions.terminate_pods(label_selector='component=etcd', ns='kube-system')",
    "restart_dead_replicas": "nothing: the Deployment's ReplicaSet restarts pods "
                             "(chaosk8s.pod.probes.pods_in_phase(label_selector='app.kubernetes.io/name=pet-operator', "
                             "phase='Running') to wait for it)",
    "steady_state": "chaosk8s.pod.probes.pods_in_phase plus a custom probe of the pets "
                    "(kubectl get pets -A -o json) and of the Lease",
}


class TargetNotImplemented(NotImplementedError):
    """This activity exists only for target=local; the message names the chaostoolkit-kubernetes one."""


def target_of(configuration: dict[str, Any] | None) -> str:
    return str((configuration or {}).get("target") or "local")


def _check_target(configuration: dict[str, Any] | None, activity: str) -> None:
    target = target_of(configuration)
    if target == "local":
        return
    if target == "kubernetes":
        raise TargetNotImplemented(
            f"petchaos.{activity} is implemented for target=local only; on target=kubernetes use "
            f"{KUBERNETES_EQUIVALENTS[activity]} (chaostoolkit-kubernetes), see docs/chaos.md"
        )
    raise ValueError(f"unknown target {target!r}: expected 'local' or 'kubernetes'")


def call(configuration: dict[str, Any] | None, activity: str, method: str, path: str,
         body: dict[str, Any] | None = None, timeout: float = 180) -> dict[str, Any]:
    """One JSON request to the control server; raises on an error answer (the activity fails)."""
    _check_target(configuration, activity)
    base = str((configuration or {}).get("control_url") or "").rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError("configuration control_url is missing: run with --var control_url=http://127.0.0.1:PORT")
    data = json.dumps(body or {}).encode() if method == "POST" else None
    request = urllib.request.Request(base + path, data=data, method=method,  # noqa: S310 - http(s) checked above
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            result: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        raise RuntimeError(f"{method} {path} failed with {exc.code}: {text}") from None
    return result

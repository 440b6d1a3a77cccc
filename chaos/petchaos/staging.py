"""The experiments' activities on a real cluster (``target: kubernetes``), e.g. staging.

The operator runs there as the Deployment of ``deploy/operator`` (two replicas with
``--leader-elect``); its Lease ``holderIdentity`` is ``<pod name>_<8 hex>`` (``$POD_NAME``
plus a suffix), which is how the leader's pod is found. Process faults become pod faults
through chaostoolkit-kubernetes (``chaosk8s``): SIGKILL is a pod deletion with grace 0,
SIGSTOP/SIGCONT an exec into the leader's container, the cut a NetworkPolicy that denies
the leader pod every egress (or, with ``cut_mode=pod-netns``, reject rules in the leader pod's
network namespace made from its node: :mod:`petchaos.netns_cut`). Lease faults and the steady
state use the API directly.
Control-plane restarts need node access and are refused with a message saying so.

Credentials: those of chaosk8s (``KUBECONFIG`` or ``~/.kube/config``, ``KUBERNETES_CONTEXT``,
or in-cluster with ``CHAOSTOOLKIT_IN_POD=true``). Configuration keys, all optional, are
listed in :data:`DEFAULTS`; see docs/chaos.md.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from petchaos.steady import CLAIM_PREFIX

__all__ = [
    "CUT_LABEL",
    "CUT_POLICY",
    "DEFAULTS",
    "NotAvailableOnTarget",
    "Settings",
    "cut_policy",
    "freeze_script",
    "leader_problems",
    "pod_of_holder",
]

logger = logging.getLogger("chaostoolkit")

#: configuration keys of target=kubernetes and their defaults (deploy/ uses these names)
DEFAULTS: dict[str, Any] = {
    "operator_namespace": "pet-system",  # the operator's pods, its leader Lease and the id claims
    "operator_selector": "app.kubernetes.io/name=pet-operator",
    "operator_container": "operator",
    "operator_deployment": "pet-operator",
    "lease_name": "pet-operator-leader",
    "pets_namespaces": "",  # pets the steady state checks: comma-separated, "" = all namespaces
    "clock_skew_seconds": 2,  # tolerated between this machine and the Lease's renewTime
    "cut_mode": "network-policy",  # or "pod-netns": rules in the leader pod's network namespace (on its node)
}

#: how ``cut_leader`` cuts: a NetworkPolicy (needs a CNI that enforces it), or rules in the pod's
#: network namespace (needs the chaos process on the pod's node, as root: petchaos.netns_cut)
CUT_MODES = ("network-policy", "pod-netns")

CUT_LABEL = "petchaos.example.com/cut"
CUT_POLICY = "petchaos-cut-leader"
#: the pet API, once in petchaos (the claim prefix is the steady state's)
GROUP, VERSION, PETS = "petstore.example.com", "v1", "pets"


class NotAvailableOnTarget(RuntimeError):
    """The activity cannot be done on a real cluster from outside (it needs node access)."""


class Settings:
    """The configuration of one activity, with :data:`DEFAULTS` filled in."""

    def __init__(self, configuration: dict[str, Any] | None) -> None:
        merged = {**DEFAULTS, **{k: v for k, v in (configuration or {}).items() if k in DEFAULTS and v != ""}}
        self.operator_namespace = str(merged["operator_namespace"])
        self.operator_selector = str(merged["operator_selector"])
        self.operator_container = str(merged["operator_container"])
        self.operator_deployment = str(merged["operator_deployment"])
        self.lease_name = str(merged["lease_name"])
        self.pets_namespaces = [n.strip() for n in str(merged["pets_namespaces"]).split(",") if n.strip()]
        try:
            self.clock_skew = float(merged["clock_skew_seconds"])
        except (TypeError, ValueError):
            raise ValueError(f"configuration clock_skew_seconds {merged['clock_skew_seconds']!r} "
                             "must be a number of seconds") from None
        self.cut_mode = str(merged["cut_mode"])
        if self.cut_mode not in CUT_MODES:
            raise ValueError(f"configuration cut_mode {self.cut_mode!r} must be one of {', '.join(CUT_MODES)}")


# --- pure parts (unit-tested) ------------------------------------------------------------------


def pod_of_holder(holder: str) -> str:
    """The pod name in a holder identity ``<pod>_<suffix>`` (the operator's default identity)."""
    pod, sep, suffix = holder.rpartition("_")
    return pod if sep and pod and suffix else holder


def parse_time(value: Any) -> datetime.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    text = str(value).replace("Z", "+00:00")
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def pod_ready(pod: dict[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pods_problems(pods: Sequence[dict[str, Any]]) -> list[str]:
    """Every operator pod must be ready: standbys serve the webhook."""
    not_ready = sorted(str((p.get("metadata") or {}).get("name")) for p in pods if not pod_ready(p))
    return (["no operator pods"] if not pods else []) + ([f"operator pods not ready: {not_ready}"] if not_ready else [])


def lease_problems(lease: dict[str, Any] | None, pods: Sequence[dict[str, Any]], now: datetime.datetime,
                   skew: float = 2) -> tuple[str | None, list[str]]:
    """The leader pod and what is wrong with it: a held, fresh Lease whose holder is a ready
    pod of the operator."""
    if lease is None:
        return None, ["no leader Lease"]
    spec = lease.get("spec") or {}
    holder = str(spec.get("holderIdentity") or "")
    if not holder:
        return None, ["the leader Lease has no holder"]
    problems: list[str] = []
    names = {(p.get("metadata") or {}).get("name"): p for p in pods}
    pod = pod_of_holder(holder)
    if pod not in names:
        problems.append(f"the Lease holder {holder!r} is not a pod of the operator (no pod {pod!r})")
    elif not pod_ready(names[pod]):
        problems.append(f"the leader pod {pod} is not ready")
    renewed = parse_time(spec.get("renewTime"))
    duration = float(spec.get("leaseDurationSeconds") or 0)
    if renewed is None:
        problems.append("the leader Lease has no renewTime")
    elif (now - renewed).total_seconds() > duration + skew:
        problems.append(f"the leader Lease was last renewed {(now - renewed).total_seconds():.1f}s ago "
                        f"(lease {duration:.0f}s): nobody leads")
    return (pod if pod in names else None), problems


def leader_problems(lease: dict[str, Any] | None, pods: Sequence[dict[str, Any]], now: datetime.datetime,
                    skew: float = 2) -> tuple[str | None, list[str]]:
    """The leader pod and what is wrong: exactly one leader (:func:`lease_problems`) and every
    operator pod ready (:func:`pods_problems`)."""
    pod, problems = lease_problems(lease, pods, now, skew)
    return pod, [*pods_problems(pods), *problems]


#: run in the operator's container by ``python3 -c``: signal every process but this one whose
#: command line holds one of the words in argv[2:], then report each one's state (T = stopped).
#: argv[1] is the signal name.
FREEZE_SCRIPT = r"""
import json, os, signal, sys, time
sig = getattr(signal, sys.argv[1])
words = sys.argv[2:]
me = os.getpid()
hit = []
for entry in os.listdir('/proc'):
    if not entry.isdigit() or int(entry) == me:
        continue
    try:
        with open('/proc/%s/cmdline' % entry, 'rb') as f:
            cmd = f.read().replace(b'\0', b' ').decode(errors='replace')
    except OSError:
        continue
    if any(w in cmd for w in words):
        os.kill(int(entry), sig)
        hit.append(int(entry))
time.sleep(0.2)
states = {}
for pid in hit:
    try:
        with open('/proc/%d/status' % pid) as f:
            states[pid] = next((l.split()[1] for l in f if l.startswith('State:')), '?')
    except OSError:
        states[pid] = 'gone'
print(json.dumps(states))
""".strip()


OPERATOR_WORDS = ("pet-operator", "pet_operator")


def freeze_script(signal_name: str, words: Sequence[str] = OPERATOR_WORDS) -> list[str]:
    """The command that sends ``signal_name`` to the operator's processes in its container."""
    if signal_name not in ("SIGSTOP", "SIGCONT"):
        raise ValueError(f"signal {signal_name!r}: only SIGSTOP and SIGCONT are sent into the operator's container")
    return ["python3", "-c", FREEZE_SCRIPT, signal_name, *words]


def check_frozen(pod: str, stdout: str) -> list[int]:
    """The pids stopped, from the script's output; raises when nothing was."""
    try:
        states = {int(k): str(v) for k, v in json.loads(stdout.strip().splitlines()[-1]).items()}
    except (ValueError, IndexError, AttributeError):
        raise RuntimeError(f"freeze in pod {pod}: unexpected output {stdout[:300]!r}") from None
    if not states:
        raise RuntimeError(f"freeze in pod {pod}: no pet-operator process found in the container")
    stopped = sorted(pid for pid, state in states.items() if state == "T")
    if not stopped:
        detail = ("it is PID 1 of its container, and the kernel drops SIGSTOP sent to a PID namespace's init "
                  "from inside it; run the operator under an init (e.g. tini) or set shareProcessNamespace: true "
                  "in the pod spec (docs/chaos.md)") if 1 in states else f"states {states}"
        raise RuntimeError(f"freeze in pod {pod}: SIGSTOP did not stop the operator: {detail}")
    return stopped


def cut_policy(namespace: str) -> dict[str, Any]:
    """A NetworkPolicy denying every egress of the pods labelled :data:`CUT_LABEL`."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": CUT_POLICY, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "petchaos"}},
        "spec": {"podSelector": {"matchLabels": {CUT_LABEL: "true"}}, "policyTypes": ["Egress"], "egress": []},
    }


def deployment_ready(deployment: dict[str, Any]) -> tuple[bool, str]:
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    want = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    current = (status.get("observedGeneration") or 0) >= ((deployment.get("metadata") or {}).get("generation") or 0)
    ok = current and ready == want and updated == want and int(status.get("replicas") or 0) == want
    return ok, f"{ready}/{want} ready, {updated} updated, {status.get('replicas') or 0} pods"


# --- the cluster -------------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _api() -> Any:
    from chaosk8s import create_k8s_api_client

    return create_k8s_api_client()


def _plain(api: Any, obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = api.sanitize_for_serialization(obj)
    return data


def _read_lease(api: Any, s: Settings) -> dict[str, Any] | None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        return _plain(api, client.CoordinationV1Api(api).read_namespaced_lease(s.lease_name, s.operator_namespace))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _operator_pods(api: Any, s: Settings) -> list[dict[str, Any]]:
    from kubernetes import client

    pods = client.CoreV1Api(api).list_namespaced_pod(s.operator_namespace, label_selector=s.operator_selector)
    return [_plain(api, p) for p in pods.items]


def leader_pod(s: Settings, api: Any = None) -> str:
    """The name of the pod that holds the leader Lease now; raises saying why there is none."""
    api = api or _api()
    pod, problems = lease_problems(_read_lease(api, s), _operator_pods(api, s), _now(), s.clock_skew)
    if pod is None or problems:
        raise RuntimeError(f"no leader pod in {s.operator_namespace} (selector {s.operator_selector}): "
                           + "; ".join(problems))
    return pod


def _exec_signal(s: Settings, signal_name: str, pod: str | None) -> list[dict[str, Any]]:
    from chaosk8s.pod.actions import exec_in_pods

    selection: dict[str, Any] = {"name_pattern": f"^{re.escape(pod)}$"} if pod else {"all": True}
    results: list[dict[str, Any]] = exec_in_pods(
        cmd=freeze_script(signal_name), label_selector=s.operator_selector, ns=s.operator_namespace,
        container_name=s.operator_container, request_timeout=30, **selection,
    )
    if not results:
        raise RuntimeError(f"{signal_name}: no pod of {s.operator_selector} in {s.operator_namespace} has a "
                           f"container named {s.operator_container!r} (configuration operator_container)")
    return results


_timers: list[threading.Timer] = []


def kill_leader(configuration: dict[str, Any] | None) -> dict[str, Any]:
    from chaosk8s.pod.actions import terminate_pods

    s = Settings(configuration)
    pod = leader_pod(s)
    deleted = terminate_pods(label_selector=s.operator_selector, name_pattern=f"^{re.escape(pod)}$",
                             ns=s.operator_namespace, grace_period=0)
    return {"killed": pod, "deleted_pods": deleted}


def freeze_leader(seconds: float, configuration: dict[str, Any] | None) -> dict[str, Any]:
    s = Settings(configuration)
    pod = leader_pod(s)
    result = _exec_signal(s, "SIGSTOP", pod)[0]
    stopped = check_frozen(pod, str(result.get("stdout") or ""))
    timer = threading.Timer(float(seconds), _thaw_quietly, (s,))  # a safety net, as on target=local
    timer.daemon = True
    timer.start()
    _timers.append(timer)
    return {"frozen": pod, "pids": stopped, "auto_thaw_after": seconds}


def _thaw_quietly(s: Settings) -> None:
    try:
        _exec_signal(s, "SIGCONT", None)
    except Exception:  # a safety net: the experiment's own thaw reports errors
        logger.exception("automatic thaw failed")


def thaw(configuration: dict[str, Any] | None) -> dict[str, Any]:
    for timer in _timers:
        timer.cancel()
    _timers.clear()
    results = _exec_signal(Settings(configuration), "SIGCONT", None)
    return {"thawed": [r.get("pod_name") for r in results]}


def cut_leader(configuration: dict[str, Any] | None) -> dict[str, Any]:
    """Label the leader pod :data:`CUT_LABEL` and cut it: the NetworkPolicy :data:`CUT_POLICY`, or
    (``cut_mode=pod-netns``) reject rules in its network namespace. The result names the method."""
    from kubernetes import client

    s = Settings(configuration)
    api = _api()
    pod = leader_pod(s, api)
    core = client.CoreV1Api(api)
    core.patch_namespaced_pod(pod, s.operator_namespace, {"metadata": {"labels": {CUT_LABEL: "true"}}})
    if s.cut_mode == "pod-netns":
        from petchaos import netns_cut

        uid = str(core.read_namespaced_pod(pod, s.operator_namespace).metadata.uid)
        endpoints = netns_cut.apiserver_endpoints(api)
        pid = netns_cut.pod_pid(uid)
        rules = netns_cut.cut(pid, endpoints)
        return {"cut": pod, "cut_method": netns_cut.METHOD, "netns_of_pid": pid,
                "rejected": [f"{ip}:{port}" for ip, port in endpoints], "rules": rules,
                "expires_after_seconds": netns_cut.SAFETY_SECONDS,
                "network_policy": netns_cut.NETWORK_POLICY_NOT_USED}
    from chaosk8s.networking.actions import create_network_policy

    create_network_policy(spec=cut_policy(s.operator_namespace), ns=s.operator_namespace)
    return {"cut": pod, "cut_method": "network-policy", "network_policy": f"{s.operator_namespace}/{CUT_POLICY}"}


def _heal_netns(s: Settings, api: Any) -> dict[str, Any]:
    """Remove the cut from every operator pod on this node (and every pod labelled cut)."""
    from kubernetes import client

    from petchaos import netns_cut

    core = client.CoreV1Api(api)
    pods = {p.metadata.name: p for p in core.list_namespaced_pod(s.operator_namespace,
                                                                 label_selector=s.operator_selector).items}
    pods.update({p.metadata.name: p for p in core.list_namespaced_pod(s.operator_namespace,
                                                                      label_selector=CUT_LABEL).items})
    healed: dict[str, Any] = {}
    for name, pod in sorted(pods.items()):
        try:
            pid = netns_cut.pod_pid(str(pod.metadata.uid))
        except netns_cut.NotOnThisNode:
            healed[name] = "no process here (gone, or not started): its network namespace holds no cut"
            continue
        healed[name] = netns_cut.uncut(pid)
    return {"cut_method": netns_cut.METHOD, "healed": healed}


def _unlabel_cut(s: Settings, api: Any) -> list[str]:
    from kubernetes import client

    core = client.CoreV1Api(api)
    unlabelled = []
    for pod in core.list_namespaced_pod(s.operator_namespace, label_selector=CUT_LABEL).items:
        core.patch_namespaced_pod(pod.metadata.name, s.operator_namespace, {"metadata": {"labels": {CUT_LABEL: None}}})
        unlabelled.append(pod.metadata.name)
    return unlabelled


def heal(configuration: dict[str, Any] | None) -> dict[str, Any]:
    """Undo every cut of the configured ``cut_mode`` and remove the label (idempotent)."""
    s = Settings(configuration)
    api = _api()
    if s.cut_mode == "pod-netns":
        result = _heal_netns(s, api)
        result["unlabelled"] = _unlabel_cut(s, api)
        return result
    from chaosk8s.networking.actions import remove_network_policy
    from kubernetes.client.exceptions import ApiException

    removed = True
    try:
        remove_network_policy(CUT_POLICY, ns=s.operator_namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        removed = False
    return {"network_policy_removed": removed, "unlabelled": _unlabel_cut(s, api)}


def delete_lease(configuration: dict[str, Any] | None) -> dict[str, Any]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    s = Settings(configuration)
    try:
        client.CoordinationV1Api(_api()).delete_namespaced_lease(s.lease_name, s.operator_namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return {"deleted": False}
    return {"deleted": True}


def steal_lease(holder: str, duration: int, configuration: dict[str, Any] | None) -> dict[str, Any]:
    from kubernetes import client

    s = Settings(configuration)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    client.CoordinationV1Api(_api()).patch_namespaced_lease(
        s.lease_name, s.operator_namespace,
        {"spec": {"holderIdentity": holder, "acquireTime": now, "renewTime": now,
                  "leaseDurationSeconds": int(duration)}},
    )
    return {"stolen_by": holder}


def restart_dead_replicas(timeout: float, configuration: dict[str, Any] | None,
                          sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """On a cluster the Deployment restarts pods; wait until all its replicas are ready again."""
    from kubernetes import client

    s = Settings(configuration)
    apps = client.AppsV1Api(_api())
    deadline = time.monotonic() + float(timeout)
    while True:
        deployment = _plain(apps.api_client, apps.read_namespaced_deployment(s.operator_deployment,
                                                                             s.operator_namespace))
        ok, detail = deployment_ready(deployment)
        if ok:
            return {"deployment": f"{s.operator_namespace}/{s.operator_deployment}", "status": detail}
        if time.monotonic() >= deadline:
            raise RuntimeError(f"deployment {s.operator_namespace}/{s.operator_deployment} not ready after "
                               f"{timeout:.0f}s: {detail}")
        sleep(1.0)


# --- the steady state ----------------------------------------------------------------------------


def snapshot(s: Settings, api: Any = None) -> dict[str, Any]:
    from kubernetes import client

    from petchaos.steady import check_pets

    api = api or _api()
    custom = client.CustomObjectsApi(api)
    pets: list[dict[str, Any]] = []
    if s.pets_namespaces:
        for namespace in s.pets_namespaces:
            pets += custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PETS)["items"]
    else:
        pets = custom.list_cluster_custom_object(GROUP, VERSION, PETS)["items"]
    leases = client.CoordinationV1Api(api).list_namespaced_lease(s.operator_namespace).items
    claims = [_plain(api, lease) for lease in leases if lease.metadata.name.startswith(CLAIM_PREFIX)]
    if s.pets_namespaces:  # ids of pets outside the checked namespaces are not orphans
        claims = [c for c in claims
                  if str((c.get("spec") or {}).get("holderIdentity") or "").split("/")[0] in s.pets_namespaces]
    result = check_pets(pets, claims)
    lease = next((_plain(api, x) for x in leases if x.metadata.name == s.lease_name), None)
    leader, problems = leader_problems(lease, _operator_pods(api, s), _now(), s.clock_skew)
    result["leaders"] = [leader] if leader else []
    if problems:
        result["ok"] = False
        result["problems"] = [*result["problems"], *problems][:20]
    return result


def steady_state(timeout: float, configuration: dict[str, Any] | None,
                 sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Wait up to ``timeout`` s for the steady state (the staging load paused meanwhile)."""
    from petchaos import load

    s = Settings(configuration)
    api = _api()
    with load.paused():
        deadline = time.monotonic() + float(timeout)
        while True:
            try:
                last = snapshot(s, api)
            except Exception as exc:  # noqa: BLE001 - the API server may be unreachable for a moment
                last = {"ok": False, "problems": [f"{type(exc).__name__}: {exc}"[:300]]}
            if last["ok"] or time.monotonic() >= deadline:
                break
            sleep(0.5)
    last["waited_seconds"] = round(float(timeout) - max(0.0, deadline - time.monotonic()), 2)
    return last

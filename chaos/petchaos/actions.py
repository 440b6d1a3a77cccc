"""Faults and rollbacks (Chaos Toolkit actions): on target=local through the chaos
environment's control server, on target=kubernetes on the cluster (:mod:`petchaos.staging`)."""

from __future__ import annotations

from typing import Any

from petchaos import call, on_kubernetes, staging

__all__ = [
    "cut_leader", "delete_lease", "freeze_leader", "heal", "kill_leader", "restart_apiserver",
    "restart_dead_replicas", "restart_etcd", "steal_lease", "thaw",
]

Configuration = dict[str, Any] | None


def _act(configuration: Configuration, activity: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """target=kubernetes: ``staging.<activity>(**body, configuration)`` (refused if it has none);
    target=local: POST the body to the control server's ``/actions/<activity>``."""
    if on_kubernetes(configuration):
        on_cluster = getattr(staging, activity, None)
        if on_cluster is None:
            return staging.not_available(activity)
        result_on_cluster: dict[str, Any] = on_cluster(**(body or {}), configuration=configuration)
        return result_on_cluster
    answer = call(configuration, activity, "POST", "/actions/" + activity.replace("_", "-"), body)
    result: dict[str, Any] = answer.get("result", answer)
    return result


def kill_leader(configuration: Configuration = None) -> dict[str, Any]:
    """SIGKILL the replica that leads now."""
    return _act(configuration, "kill_leader")


def freeze_leader(seconds: float = 30, configuration: Configuration = None) -> dict[str, Any]:
    """SIGSTOP the leader; it is thawed by ``thaw`` or at the latest after ``seconds``."""
    return _act(configuration, "freeze_leader", {"seconds": seconds})


def thaw(configuration: Configuration = None) -> dict[str, Any]:
    """SIGCONT every frozen replica."""
    return _act(configuration, "thaw")


def cut_leader(configuration: Configuration = None) -> dict[str, Any]:
    """Cut the leader off from the API server (its fault proxy resets every connection)."""
    return _act(configuration, "cut_leader")


def heal(configuration: Configuration = None) -> dict[str, Any]:
    """Every replica's fault proxy back to pass-through."""
    return _act(configuration, "heal")


def delete_lease(configuration: Configuration = None) -> dict[str, Any]:
    """Delete the leader Lease."""
    return _act(configuration, "delete_lease")


def steal_lease(holder: str = "chaos-thief", duration: int = 4, configuration: Configuration = None) -> dict[str, Any]:
    """Write another holder into the leader Lease (as admin), as a rogue candidate would."""
    return _act(configuration, "steal_lease", {"holder": holder, "duration": duration})


def restart_apiserver(configuration: Configuration = None) -> dict[str, Any]:
    """Stop kube-apiserver and start it again on the same port (returns once it is ready); target=local only."""
    return _act(configuration, "restart_apiserver")


def restart_etcd(down_seconds: float = 0, configuration: Configuration = None) -> dict[str, Any]:
    """Stop etcd, keep it down ``down_seconds``, start it again on its data (returns once the API
    server is ready again); target=local only."""
    return _act(configuration, "restart_etcd", {"down_seconds": down_seconds})


def restart_dead_replicas(timeout: float = 120, configuration: Configuration = None) -> dict[str, Any]:
    """Start again the replicas that exited (killed, or stepped down with code 1), as a Deployment would;
    on a cluster, wait until the Deployment has all its replicas ready again."""
    return _act(configuration, "restart_dead_replicas", {"timeout": timeout})

"""Faults and rollbacks (Chaos Toolkit actions), through the chaos environment's control server."""

from __future__ import annotations

from typing import Any

from petchaos import call

__all__ = [
    "cut_leader", "delete_lease", "freeze_leader", "heal", "kill_leader", "restart_apiserver",
    "restart_dead_replicas", "restart_etcd", "steal_lease", "thaw",
]

Configuration = dict[str, Any] | None


def _act(configuration: Configuration, activity: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
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
    """Stop kube-apiserver and start it again on the same port (returns once it is ready)."""
    return _act(configuration, "restart_apiserver")


def restart_etcd(configuration: Configuration = None) -> dict[str, Any]:
    """Stop etcd and start it again on its data (returns once the API server is ready again)."""
    return _act(configuration, "restart_etcd")


def restart_dead_replicas(configuration: Configuration = None) -> dict[str, Any]:
    """Start again the replicas that exited (killed, or stepped down with code 1), as a Deployment would."""
    return _act(configuration, "restart_dead_replicas")

"""Every fault of the chaos experiments, declared once.

A :class:`Fault` has a name, typed parameters with defaults, what it does on the embedded
cluster (a call on the :class:`EmbeddedTarget`, the harness's chaos environment), and what it does
on a real cluster (a function of :mod:`petchaos.staging`) or why it cannot. The Chaos Toolkit
actions (:mod:`petchaos.actions`), the control server of the embedded environment
(``POST /actions/<name>``, :mod:`pet_harness.chaos_control`) and the staging target are all
derived from :data:`FAULTS`; nothing else names a fault.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from petchaos import staging

Result = dict[str, Any]


class EmbeddedTarget(Protocol):
    """What the embedded environment (``pet_harness.chaos_env.ChaosEnvironment``) does for each fault."""

    def kill_leader(self) -> Result: ...
    def freeze_leader(self, seconds: float) -> Result: ...
    def thaw(self) -> Result: ...
    def cut_leader(self) -> Result: ...
    def heal(self) -> Result: ...
    def delete_lease(self) -> Result: ...
    def steal_lease(self, holder: str, duration: int) -> Result: ...
    def restart_apiserver(self) -> Result: ...
    def restart_etcd(self, down_seconds: float) -> Result: ...
    def restart_dead_replicas(self, timeout: float) -> Result: ...


KIND_WORDS: dict[type, str] = {float: "a number", int: "an integer", str: "a string"}


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    kind: type[float] | type[int] | type[str]
    default: float | int | str


@dataclasses.dataclass(frozen=True)
class Fault:
    name: str  # the Chaos Toolkit function's name; the control server's path uses dashes
    summary: str
    embedded: Callable[..., Result]  # (target, **arguments)
    on_cluster: Callable[..., Result] | None  # (**arguments, configuration=...), or None: see why_not
    params: tuple[Param, ...] = ()
    why_not: str = ""  # on_cluster is None: why a real cluster cannot have it

    @property
    def path(self) -> str:
        return "/actions/" + self.name.replace("_", "-")

    def arguments(self, given: Mapping[str, Any], positional: Sequence[Any] = ()) -> dict[str, Any]:
        """The fault's arguments from what a caller gave: names checked, values converted to their
        type, defaults filled in; a ValueError names the fault, the argument and the rule."""
        if len(positional) > len(self.params):
            raise ValueError(f"fault {self.name} takes {len(self.params)} argument(s), not {len(positional)}")
        values = dict(zip((p.name for p in self.params), positional, strict=False))
        for key, value in given.items():
            if key in values:
                raise ValueError(f"fault {self.name}: argument {key!r} given twice")
            values[key] = value
        known = {p.name for p in self.params}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"fault {self.name} has no argument {', '.join(map(repr, unknown))} "
                             f"(it takes: {', '.join(sorted(known)) or 'none'})")
        out: dict[str, Any] = {}
        for p in self.params:
            value = values.get(p.name, p.default)
            try:
                out[p.name] = p.kind(value)
            except (TypeError, ValueError):
                what = KIND_WORDS[p.kind]
                raise ValueError(f"fault {self.name}: argument {p.name}={value!r} is not {what}") from None
        return out

    def signature(self) -> inspect.Signature:
        """The Chaos Toolkit function's signature: the parameters, then ``configuration``."""
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        params = [inspect.Parameter(p.name, kind, default=p.default, annotation=p.kind) for p in self.params]
        params.append(inspect.Parameter("configuration", kind, default=None))
        return inspect.Signature(params, return_annotation=dict)


CONTROL_PLANE_ONLY = ("restarting the control plane needs access to its nodes (on kubeadm, move the static pod "
                      "manifest out of /etc/kubernetes/manifests and back; managed clusters do not allow it). "
                      "Run this experiment on target=local (pet-harness chaos).")

FAULTS: tuple[Fault, ...] = (
    Fault("kill_leader", "SIGKILL the replica that leads now.",
          lambda t: t.kill_leader(), staging.kill_leader),
    Fault("freeze_leader", "SIGSTOP the leader; it is thawed by ``thaw`` or at the latest after ``seconds``.",
          lambda t, seconds: t.freeze_leader(seconds), staging.freeze_leader, (Param("seconds", float, 30),)),
    Fault("thaw", "SIGCONT every frozen replica.", lambda t: t.thaw(), staging.thaw),
    Fault("cut_leader", "Cut the leader off from the API server (every connection reset; on a cluster a "
          "NetworkPolicy denying its pod all egress, or with cut_mode=pod-netns reject rules in its pod's "
          "network namespace).", lambda t: t.cut_leader(), staging.cut_leader),
    Fault("heal", "Undo every cut.", lambda t: t.heal(), staging.heal),
    Fault("delete_lease", "Delete the leader Lease.", lambda t: t.delete_lease(), staging.delete_lease),
    Fault("steal_lease", "Write another holder into the leader Lease (as admin), as a rogue candidate would.",
          lambda t, holder, duration: t.steal_lease(holder, duration), staging.steal_lease,
          (Param("holder", str, "chaos-thief"), Param("duration", int, 4))),
    Fault("restart_apiserver", "Stop kube-apiserver and start it again on the same port (returns once it is ready).",
          lambda t: t.restart_apiserver(), None, why_not=CONTROL_PLANE_ONLY),
    Fault("restart_etcd", "Stop etcd, keep it down ``down_seconds``, start it again on its data (returns once the "
          "API server is ready again).", lambda t, down_seconds: t.restart_etcd(down_seconds), None,
          (Param("down_seconds", float, 0),), why_not=CONTROL_PLANE_ONLY),
    Fault("restart_dead_replicas", "Start again the replicas that exited (killed, or stepped down with code 1), "
          "as a Deployment would; on a cluster, wait until the Deployment has all its replicas ready again.",
          lambda t, timeout: t.restart_dead_replicas(timeout), staging.restart_dead_replicas,
          (Param("timeout", float, 120),)),
)

BY_NAME: dict[str, Fault] = {f.name: f for f in FAULTS}


def by_path(name: str) -> Fault:
    """The fault of a control-server path segment (``kill-leader``); KeyError if there is none."""
    return BY_NAME[name.replace("-", "_")]

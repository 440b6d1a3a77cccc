"""Who wrote what, and when: leader election proven from the API server's audit log.

The embedded cluster (:mod:`pet_harness.clusters.local`) writes an audit log of every write
(``audit.k8s.io/v1`` Events, one JSON object a line, stage ``ResponseComplete`` only, Leases
with their request body). From it this module rebuilds, without trusting anything the
operator says about itself:

* :func:`leadership` - the terms of the leader Lease: who held it, from when, the last
  renewal, and how it ended (taken over, or released gracefully);
* :func:`operator_writes` - the operator's successful writes to the resources it manages (the
  ``(resource, subresource)`` pairs given) and to Leases of its own besides the leader Lease
  (the name prefixes given, e.g. per-object lock Leases);
* :func:`split_brain` - every one of those writes made by a user who did not hold a valid
  (unexpired, unreleased, not taken over) term at the moment the API server received it;
* :func:`failover_gaps` - for each change of holder, the time from the old holder's last
  renewal to the new holder's first write.

Times are the API server's own (``requestReceivedTimestamp``), so the replicas' clocks play
no part. Writes are attributed by *user*, and for a ServiceAccount token bound to a pod (what the
kubelet mounts into every pod) by user *and pod*: the API server records the pod's name in the
user's extra field ``authentication.kubernetes.io/pod-name``, and :func:`parse_event` makes the
writer ``<user>@<pod>``. So the replicas of a Deployment, which share one ServiceAccount, are
told apart; replicas outside pods need a ServiceAccount each (``<name>-0``, ``<name>-1``, ...),
or two of them become indistinguishable.

This module knows no operator: what an operator writes is given to :func:`operator_writes` and
:func:`analyze_events`; :mod:`pet_harness.audit` gives them for this project's operator, with a command line.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import re
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
LEASE_WRITE_VERBS = frozenset({"create", "update"})
#: a patch of a Lease changes its holder only when the patch names one (a rogue's, a chaos tool's)
LEASE_PATCH = "patch"

# violation reasons
HELD_BY_OTHER = "held-by-other"  # another user held a valid term at the time
LEASE_EXPIRED = "lease-expired"  # the last term had not been renewed within its lease duration
RELEASED = "released"  # the last term had been released and nobody had taken the lease yet
NO_LEADER_YET = "no-leader-yet"  # before the first term
#: held by someone outside the election (not an operator user) who overwrote the Lease a moment
#: before, and written by the holder it robbed before that one's next Lease round could see it
#: (within the robbed term's longest interval between renewals): no elector can fence that
#: without server-side fencing, which Leases lack; counted apart from the writes by non-leaders
BEFORE_SEEING_TAKEOVER = "before-seeing-takeover"

#: the user's extra field in which the API server names the pod a ServiceAccount token is bound to
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"

_TIMESTAMP = re.compile(r"^(?P<base>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<frac>\d+))?(?P<tz>Z|z|[+-]\d\d:?\d\d)?$")


def parse_time(value: str) -> datetime.datetime:
    """RFC 3339 with any number of fractional digits (the API server writes six) as aware UTC."""
    match = _TIMESTAMP.match(value.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}")
    frac = (match["frac"] or "")[:6].ljust(6, "0")
    tz = match["tz"] or "Z"
    tz = "+00:00" if tz in ("Z", "z") else tz
    parsed = datetime.datetime.fromisoformat(f"{match['base']}.{frac}{tz}")
    return parsed.astimezone(datetime.UTC)


def _iso(value: datetime.datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _seconds(delta: datetime.timedelta) -> float:
    return round(delta.total_seconds(), 6)


# --- events ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    time: datetime.datetime  # requestReceivedTimestamp
    done: datetime.datetime  # stageTimestamp (ResponseComplete)
    user: str  # the writer: the username, ``<username>@<pod>`` for a token bound to a pod (:func:`writer`)
    verb: str
    resource: str
    subresource: str  # "" for the main resource
    namespace: str  # "" for cluster-scoped objects
    name: str  # "" for collections (create without a name in the path, deletecollection)
    code: int  # responseStatus.code, 0 if absent
    request_object: dict[str, Any] | None  # only at level Request or above (Leases)
    api_group: str = ""  # "" for the core group
    audit_id: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS

    def lease_spec(self) -> dict[str, Any] | None:
        """``spec`` of the Lease in the request body, if the body was recorded."""
        if self.request_object is None:
            return None
        spec = self.request_object.get("spec")
        return spec if isinstance(spec, dict) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": _iso(self.time), "done": _iso(self.done), "user": self.user, "verb": self.verb,
            "resource": self.resource, "subresource": self.subresource, "namespace": self.namespace,
            "name": self.name, "code": self.code, "audit_id": self.audit_id,
        }


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def writer(user: Any) -> str:
    """The writer an audit event's ``user`` names: its username, followed by ``@<pod>`` when the
    credential is a ServiceAccount token bound to a pod (the pod's name in :data:`POD_NAME_EXTRA`)."""
    if not isinstance(user, dict):
        return ""
    name = _str(user.get("username"))
    extra = user.get("extra")
    pods = extra.get(POD_NAME_EXTRA) if isinstance(extra, dict) else None
    pod = pods[0] if isinstance(pods, list) and len(pods) == 1 and isinstance(pods[0], str) else ""
    return f"{name}@{pod}" if name and pod else name


def parse_event(raw: Any) -> AuditEvent | None:
    """One decoded audit line as an :class:`AuditEvent`; None if it is not a complete request."""
    if not isinstance(raw, dict) or raw.get("stage") != "ResponseComplete":
        return None
    try:
        received = parse_time(raw["requestReceivedTimestamp"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    try:
        done = parse_time(raw["stageTimestamp"])
    except (KeyError, TypeError, ValueError, AttributeError):
        done = received
    user = raw.get("user")
    ref = raw.get("objectRef")
    status = raw.get("responseStatus")
    ref = ref if isinstance(ref, dict) else {}
    code = status.get("code") if isinstance(status, dict) else None
    body = raw.get("requestObject")
    return AuditEvent(
        time=received,
        done=done,
        user=writer(user),
        verb=_str(raw.get("verb")),
        resource=_str(ref.get("resource")),
        subresource=_str(ref.get("subresource")),
        namespace=_str(ref.get("namespace")),
        name=_str(ref.get("name")),
        code=code if isinstance(code, int) else 0,
        request_object=body if isinstance(body, dict) else None,
        api_group=_str(ref.get("apiGroup")),
        audit_id=_str(raw.get("auditID")),
    )


def parse_lines(lines: Iterable[str]) -> list[AuditEvent]:
    """Events from audit log lines, sorted by request time; anything else is skipped."""
    events = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            raw = json.loads(line)
        except ValueError:  # not JSON, or the last line cut short by a kill
            continue
        event = parse_event(raw)
        if event is not None:
            events.append(event)
    events.sort(key=lambda e: (e.time, e.done))
    return events


def load(path: str | Path) -> list[AuditEvent]:
    """The ``ResponseComplete`` events of a JSON-lines audit log, sorted by request time."""
    with Path(path).open(encoding="utf-8", errors="replace") as handle:
        return parse_lines(handle)


# --- leadership ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Term:
    identity: str  # holderIdentity
    user: str  # who wrote the Lease making it the holder
    start: datetime.datetime  # the write that made it the holder
    last_renewal: datetime.datetime  # its last successful write as holder
    end: datetime.datetime | None  # the next holder's start, or its release; None: still holding
    released: bool  # ended by a graceful release (holder "")
    lease_duration: float  # seconds, as last written by this holder
    renewals: int = 0  # successful writes as holder after the first
    transitions: int = 0  # spec.leaseTransitions written at the start
    renew_interval: float = 0.0  # the longest time between two of its successive writes as holder

    @property
    def expires(self) -> datetime.datetime:
        return self.last_renewal + datetime.timedelta(seconds=self.lease_duration)

    def valid_at(self, when: datetime.datetime) -> bool:
        """Holder at ``when``: started, renewed within the lease duration, not released or taken over."""
        return self.start <= when <= self.expires and (self.end is None or when < self.end)

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity, "user": self.user, "start": _iso(self.start),
            "last_renewal": _iso(self.last_renewal), "end": _iso(self.end), "released": self.released,
            "lease_duration": self.lease_duration, "renewals": self.renewals, "transitions": self.transitions,
            "renew_interval": self.renew_interval,
        }


def _names_holder(event: AuditEvent) -> bool:
    """A successful create or update of a Lease with its spec, or a patch whose body sets the holder."""
    spec = event.lease_spec()
    if not event.ok or spec is None:
        return False
    return event.verb in LEASE_WRITE_VERBS or (event.verb == LEASE_PATCH and "holderIdentity" in spec)


def lease_writes(events: Iterable[AuditEvent], lease_namespace: str, lease_name: str) -> list[AuditEvent]:
    """Successful writes of one Lease that say who holds it: creates and updates carrying its spec,
    and patches that set ``holderIdentity`` (someone taking the Lease over with a patch, as a chaos
    tool stealing it does)."""
    return [
        e for e in events
        if e.resource == "leases" and not e.subresource and e.namespace == lease_namespace
        and e.name == lease_name and _names_holder(e)
    ]


def _holder(event: AuditEvent) -> str:
    spec = event.lease_spec() or {}
    return _str(spec.get("holderIdentity"))


def _duration(event: AuditEvent) -> float:
    spec = event.lease_spec() or {}
    value = spec.get("leaseDurationSeconds")
    return float(value) if isinstance(value, int | float) else 0.0


def leadership(events: Iterable[AuditEvent], lease_namespace: str, lease_name: str) -> list[Term]:
    """The terms of the leader Lease, oldest first, from its successful writes.

    A write naming a new holder starts a term (and ends the current one); a write by the
    current holder renews it; a write with an empty holder releases it. Failed writes (409
    conflicts of the losing candidates, say) change nothing. A patch that leaves the lease
    duration out keeps the one the Lease had.
    """
    terms: list[Term] = []
    current: Term | None = None
    for event in lease_writes(events, lease_namespace, lease_name):
        holder = _holder(event)
        duration = _duration(event) or (current.lease_duration if current is not None else 0.0)
        if not holder:
            if current is not None:
                terms.append(dataclasses.replace(current, end=event.time, released=True))
                current = None
            continue
        if current is not None and holder == current.identity:
            current = dataclasses.replace(
                current, last_renewal=event.time, lease_duration=duration, renewals=current.renewals + 1,
                renew_interval=max(current.renew_interval, _seconds(event.time - current.last_renewal)),
            )
            continue
        if current is not None:
            terms.append(dataclasses.replace(current, end=event.time))
        spec = event.lease_spec() or {}
        transitions = spec.get("leaseTransitions")
        current = Term(
            identity=holder, user=event.user, start=event.time, last_renewal=event.time, end=None,
            released=False, lease_duration=duration,
            transitions=transitions if isinstance(transitions, int) else 0,
        )
    if current is not None:
        terms.append(current)
    return terms


# --- the operator's writes -------------------------------------------------------------------


def operator_writes(
    events: Iterable[AuditEvent], users_prefix: str, *, resources: Iterable[tuple[str, str]],
    lease_prefixes: Sequence[str] = (), lease: tuple[str, str] | None = None,
) -> list[AuditEvent]:
    """Successful writes by users named ``users_prefix...`` to ``resources`` (``(resource,
    subresource)`` pairs, ``""`` for the object itself) and to Leases whose names start with one of
    ``lease_prefixes``; never the leader Lease (``lease``: its namespace, name)."""
    wanted = frozenset(resources)
    found = []
    for e in events:
        if not (e.ok and e.is_write and e.user.startswith(users_prefix)):
            continue
        if lease is not None and e.resource == "leases" and (e.namespace, e.name) == lease:
            continue
        own_lease = e.resource == "leases" and not e.subresource and e.name.startswith(tuple(lease_prefixes)) \
            if lease_prefixes else False
        if (e.resource, e.subresource) in wanted or own_lease:
            found.append(e)
    return found


# --- split brain -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Violation:
    write: AuditEvent
    reason: str  # HELD_BY_OTHER, LEASE_EXPIRED, RELEASED or NO_LEADER_YET
    holder: str | None  # identity of the term valid at the write, if any
    holder_user: str | None
    writer_identity: str | None  # the writer's latest term started before the write, if any
    own_lease_expired: bool  # the writer had held the lease, and it had expired by the write

    def to_dict(self) -> dict[str, Any]:
        return {
            "write": self.write.to_dict(), "reason": self.reason, "holder": self.holder,
            "holder_user": self.holder_user, "writer_identity": self.writer_identity,
            "own_lease_expired": self.own_lease_expired,
        }


def users_by_identity(events: Iterable[AuditEvent], terms: Sequence[Term]) -> dict[str, set[str]]:
    """Every user that successfully wrote a Lease naming a term's identity as holder."""
    users: dict[str, set[str]] = {t.identity: {t.user} for t in terms}
    for e in events:
        if e.resource == "leases" and _names_holder(e):
            holder = _holder(e)
            if holder in users:
                users[holder].add(e.user)
    return users


def _robbed_and_unaware(w: AuditEvent, valid: Term, terms: Sequence[Term], users: dict[str, set[str]],
                        users_prefix: str) -> bool:
    """``valid`` was taken by someone outside the election, from the writer's own term just before
    it, less than one of that term's renewal intervals before the write (see BEFORE_SEEING_TAKEOVER)."""
    if valid.user.startswith(users_prefix):
        return False
    index = list(terms).index(valid)
    if index == 0:
        return False
    robbed = terms[index - 1]
    return (w.user in users[robbed.identity] and robbed.end == valid.start
            and _seconds(w.time - valid.start) <= robbed.renew_interval)


def split_brain(events: Iterable[AuditEvent], terms: Sequence[Term], writes: Iterable[AuditEvent],
                users_prefix: str | None = None) -> list[Violation]:
    """The writes made by a user who did not hold a valid term when the API server received them.

    With ``users_prefix`` (the operator's users), a write made just after a takeover by someone
    else, before the robbed leader could see it, has the reason :data:`BEFORE_SEEING_TAKEOVER`.
    """
    users = users_by_identity(events, terms)
    found = []
    for w in writes:
        valid = next((t for t in terms if t.valid_at(w.time)), None)
        if valid is not None and w.user in users[valid.identity]:
            continue
        started = [t for t in terms if t.start <= w.time]
        own = [t for t in started if w.user in users[t.identity]]
        if valid is not None and users_prefix is not None and _robbed_and_unaware(w, valid, terms, users,
                                                                                  users_prefix):
            reason = BEFORE_SEEING_TAKEOVER
        elif valid is not None:
            reason = HELD_BY_OTHER
        elif not started:
            reason = NO_LEADER_YET
        elif started[-1].released and started[-1].end is not None and w.time >= started[-1].end:
            reason = RELEASED
        else:
            reason = LEASE_EXPIRED
        found.append(Violation(
            write=w, reason=reason,
            holder=valid.identity if valid else None, holder_user=valid.user if valid else None,
            writer_identity=own[-1].identity if own else None,
            own_lease_expired=bool(own) and w.time > own[-1].expires,
        ))
    return found


# --- failover --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Gap:
    old: str  # identity of the previous holder
    new: str
    old_user: str
    new_user: str
    last_renewal: datetime.datetime  # the old holder's
    released: bool  # the old holder released the lease (graceful) rather than stopping renewing
    takeover: datetime.datetime  # the new holder's first write of the Lease
    first_write: datetime.datetime | None  # the new holder's first operator write; None: it never wrote

    @property
    def seconds(self) -> float | None:
        """From the old holder's last renewal to the new holder's first write."""
        return None if self.first_write is None else _seconds(self.first_write - self.last_renewal)

    @property
    def takeover_seconds(self) -> float:
        return _seconds(self.takeover - self.last_renewal)

    def to_dict(self) -> dict[str, Any]:
        return {
            "old": self.old, "new": self.new, "old_user": self.old_user, "new_user": self.new_user,
            "last_renewal": _iso(self.last_renewal), "released": self.released, "takeover": _iso(self.takeover),
            "first_write": _iso(self.first_write), "seconds": self.seconds, "takeover_seconds": self.takeover_seconds,
        }


def failover_gaps(terms: Sequence[Term], writes: Sequence[AuditEvent]) -> list[Gap]:
    """One gap per change of holder between consecutive terms."""
    gaps = []
    for old, new in itertools.pairwise(terms):
        if old.identity == new.identity:
            continue
        first = next((w.time for w in writes if w.user == new.user and w.time >= new.start), None)
        gaps.append(Gap(
            old=old.identity, new=new.identity, old_user=old.user, new_user=new.user,
            last_renewal=old.last_renewal, released=old.released, takeover=new.start, first_write=first,
        ))
    return gaps


# --- report ----------------------------------------------------------------------------------


def summary(
    terms: Sequence[Term], writes: Sequence[AuditEvent], violations: Sequence[Violation], gaps: Sequence[Gap]
) -> dict[str, Any]:
    seconds = [g.seconds for g in gaps if g.seconds is not None]
    unaware = sum(v.reason == BEFORE_SEEING_TAKEOVER for v in violations)
    return {
        "terms": len(terms),
        "transitions": len(gaps),
        "releases": sum(t.released for t in terms),
        "writes": len(writes),
        "writes_by_leaders": len(writes) - len(violations),
        "writes_by_non_leaders": len(violations) - unaware,
        # by a leader robbed by someone outside the election, before its next round could see it
        "writes_before_seeing_takeover": unaware,
        "violations_by_reason": {r: sum(v.reason == r for v in violations)
                                 for r in sorted({v.reason for v in violations})},
        "gap_seconds": seconds,
        "gaps_without_write": sum(g.first_write is None for g in gaps),
        "gap_median": statistics.median(seconds) if seconds else None,
        "gap_max": max(seconds) if seconds else None,
        # users that held the lease under several identities: a restart (fine), or replicas sharing
        # a ServiceAccount, whose writes this analysis cannot tell apart
        "users_with_several_identities": sorted(
            user for user in {t.user for t in terms} if len({t.identity for t in terms if t.user == user}) > 1
        ),
    }


def analyze_events(
    events: Sequence[AuditEvent], lease_namespace: str, lease_name: str, users_prefix: str, *,
    resources: Iterable[tuple[str, str]], lease_prefixes: Sequence[str] = (),
    since: datetime.datetime | None = None,
) -> dict[str, Any]:
    """Terms, the operator's writes (see :func:`operator_writes`), split brain and failover gaps,
    as plain JSON-ready data.

    ``since`` (aware) narrows the report to a window of a longer log (one experiment of several
    on one cluster): the terms are rebuilt from the whole log (who held the Lease when the window
    opened), but only the writes received from ``since`` on are judged and counted, and only the
    changes of holder from then on are gaps; the terms reported are those still valid then.
    """
    terms = leadership(events, lease_namespace, lease_name)
    writes = operator_writes(events, users_prefix, resources=resources, lease_prefixes=lease_prefixes,
                             lease=(lease_namespace, lease_name))
    gaps = failover_gaps(terms, writes)
    if since is not None:
        writes = [w for w in writes if w.time >= since]
        gaps = [g for g in gaps if g.takeover >= since]
    violations = split_brain(events, terms, writes, users_prefix)
    if since is not None:
        terms = [t for t in terms if t.end is None or t.end >= since]
    return {
        "lease": f"{lease_namespace}/{lease_name}",
        "users_prefix": users_prefix,
        "since": _iso(since),
        "events": len(events),
        "summary": summary(terms, writes, violations, gaps),
        "terms": [t.to_dict() for t in terms],
        "gaps": [g.to_dict() for g in gaps],
        "violations": [v.to_dict() for v in violations],
    }

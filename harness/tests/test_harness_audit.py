"""The audit-log analyzer on synthetic logs shaped like the real API server's.

Every line is built the way ``kube-apiserver`` writes it under the harness policy (stage
``ResponseComplete`` only, ``requestObject`` for Leases, empty keys left out of
``objectRef``), and two lines captured from a real ``LocalCluster`` check the shape itself.
"""

from __future__ import annotations

import datetime
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from pet_harness import audit

NS = "pet-system"
LEASE = "pet-operator-leader"
PREFIX = f"system:serviceaccount:{NS}:pet-operator"
OP0 = f"{PREFIX}-0"
OP1 = f"{PREFIX}-1"
ADMIN = "pet-harness-admin"
A = "host_aaaa1111"
B = "host_bbbb2222"
PETS_NS = "pets-1"
T0 = datetime.datetime(2026, 11, 28, 2, 0, 0, tzinfo=datetime.UTC)

REASONS = {200: "", 201: "", 404: "NotFound", 409: "Conflict", 422: "Invalid"}


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def stamp(seconds: float) -> str:
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- line builders ---------------------------------------------------------------------------


def line(
    t: float, user: str, verb: str, resource: str, name: str, *, namespace: str = NS, group: str = "",
    subresource: str = "", code: int = 200, body: dict[str, Any] | None = None, latency: float = 0.004,
) -> str:
    """One audit Event as kube-apiserver writes it at stage ResponseComplete."""
    ref: dict[str, Any] = {"resource": resource, "namespace": namespace, "name": name}
    if subresource:
        ref["subresource"] = subresource
    if group:
        ref["apiGroup"] = group
    ref["apiVersion"] = "v1"
    prefix = f"/apis/{group}/v1" if group else "/api/v1"
    uri = f"{prefix}/namespaces/{namespace}/{resource}"
    if verb != "create":
        uri += f"/{name}" + (f"/{subresource}" if subresource else "")
    status: dict[str, Any] = {"metadata": {}, "code": code}
    if code >= 400:
        status.update(status="Failure", message=f"{resource} {name!r}: failed", reason=REASONS.get(code, "Unknown"),
                      details={"name": name, "group": group, "kind": resource})
    event: dict[str, Any] = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Request" if body else "Metadata",
        "auditID": str(uuid.uuid4()), "stage": "ResponseComplete", "requestURI": uri, "verb": verb,
        "user": {"username": user, "uid": str(uuid.uuid4()),
                 "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NS}", "system:authenticated"]},
        "sourceIPs": ["127.0.0.1"], "userAgent": "kopf/1.44 (python)", "objectRef": ref, "responseStatus": status,
    }
    if body is not None:
        event["requestObject"] = body
    event["requestReceivedTimestamp"] = stamp(t)
    event["stageTimestamp"] = stamp(t + latency)
    event["annotations"] = {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""}
    return json.dumps(event, separators=(",", ":"))


def lease_write(
    t: float, user: str, holder: str, *, verb: str = "update", duration: int = 15, transitions: int = 0,
    code: int = 200, name: str = LEASE,
) -> str:
    """A write of the leader Lease as leader.py makes it (create on first acquire, else replace)."""
    spec = {"holderIdentity": holder, "leaseDurationSeconds": duration, "acquireTime": stamp(t),
            "renewTime": stamp(t), "leaseTransitions": transitions}
    metadata: dict[str, Any] = {"name": name, "namespace": NS}
    if verb == "update":
        metadata["resourceVersion"] = str(100 + int(t * 10))
    body = {"kind": "Lease", "apiVersion": "coordination.k8s.io/v1", "metadata": metadata, "spec": spec}
    return line(t, user, verb, "leases", name, group="coordination.k8s.io", code=code, body=body)


def release(t: float, user: str, transitions: int = 0, code: int = 200) -> str:
    return lease_write(t, user, "", duration=1, transitions=transitions, code=code)


def pet_patch(t: float, user: str, name: str = "rex", *, status: bool = False, code: int = 200) -> str:
    return line(t, user, "patch", "pets", name, namespace=PETS_NS, group="petstore.example.com",
                subresource="status" if status else "", code=code)


def store_status(t: float, user: str, name: str = "main") -> str:
    return line(t, user, "patch", "petstores", name, namespace=PETS_NS, group="petstore.example.com",
                subresource="status")


def claim(t: float, user: str, pet_id: int, verb: str = "create", code: int = 201) -> str:
    body = None
    if verb == "create":
        body = {"kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
                "metadata": {"name": f"pet-id-{pet_id}", "namespace": NS},
                "spec": {"holderIdentity": f"{PETS_NS}/rex"}}
    return line(t, user, verb, "leases", f"pet-id-{pet_id}", group="coordination.k8s.io", code=code, body=body)


def leader_run(user: str, identity: str, start: float, stop: float, *, every: float = 2.0, create: bool = False,
               duration: int = 15, transitions: int = 0) -> list[str]:
    """The first acquire at ``start``, then a renewal every ``every`` seconds up to ``stop``."""
    lines = [lease_write(start, user, identity, verb="create" if create else "update", duration=duration,
                         transitions=transitions)]
    t = start + every
    while t <= stop + 1e-9:
        lines.append(lease_write(t, user, identity, duration=duration, transitions=transitions))
        t += every
    return lines


def write_log(tmp_path: Path, lines: list[str], tail: str = "") -> Path:
    path = tmp_path / "audit.log"
    path.write_text("".join(f"{x}\n" for x in lines) + tail)
    return path


def analyzed(events: list[audit.AuditEvent]) -> tuple[
        list[audit.Term], list[audit.AuditEvent], list[audit.Violation], list[audit.Gap]]:
    terms = audit.leadership(events, NS, LEASE)
    writes = audit.operator_writes(events, PREFIX, lease=(NS, LEASE))
    return terms, writes, audit.split_brain(events, terms, writes), audit.failover_gaps(terms, writes)


# --- a line captured from a real LocalCluster (kube-apiserver v1.34.4) ------------------------

REAL_CREATE = (
    '{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","auditID":"ad4f15af-f669-4564-a658-857d2c658b4a",'
    '"stage":"ResponseComplete","requestURI":"/apis/coordination.k8s.io/v1/namespaces/default/leases","verb":"create",'
    '"user":{"username":"pet-harness-admin","groups":["system:masters","system:authenticated"],"extra":'
    '{"authentication.kubernetes.io/credential-id":["X509SHA256=2e51dc8bfb7ebc73d116ad9963e9c09dfd06c73959f5a8eba16aefcd0e944d79"]}},'
    '"sourceIPs":["127.0.0.1"],"userAgent":"OpenAPI-Generator/37.0.2/python","objectRef":{"resource":"leases",'
    '"namespace":"default","name":"pet-operator-leader","apiGroup":"coordination.k8s.io","apiVersion":"v1"},'
    '"responseStatus":{"metadata":{},"code":201},"requestObject":{"kind":"Lease","apiVersion":"coordination.k8s.io/v1",'
    '"metadata":{"name":"pet-operator-leader","namespace":"default"},"spec":{"holderIdentity":"host_ab12cd34",'
    '"leaseDurationSeconds":4,"acquireTime":"2026-11-28T02:02:23.955472Z","renewTime":"2026-11-28T02:02:23.955472Z",'
    '"leaseTransitions":0}},"requestReceivedTimestamp":"2026-11-28T02:02:23.992655Z",'
    '"stageTimestamp":"2026-11-28T02:02:23.996201Z","annotations":{"authorization.k8s.io/decision":"allow",'
    '"authorization.k8s.io/reason":""}}'
)
REAL_CONFLICT = (
    '{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","auditID":"5908f7f2-1d8f-4735-887d-3b4c8a3a62e2",'
    '"stage":"ResponseComplete","requestURI":"/apis/coordination.k8s.io/v1/namespaces/default/leases/pet-operator-leader",'
    '"verb":"update","user":{"username":"pet-harness-admin","groups":["system:masters","system:authenticated"]},'
    '"sourceIPs":["127.0.0.1"],"userAgent":"OpenAPI-Generator/37.0.2/python","objectRef":{"resource":"leases",'
    '"namespace":"default","name":"pet-operator-leader","apiGroup":"coordination.k8s.io","apiVersion":"v1",'
    '"resourceVersion":"199"},"responseStatus":{"metadata":{},"status":"Failure","message":"Operation cannot be '
    'fulfilled on leases.coordination.k8s.io \\"pet-operator-leader\\": the object has been modified; please apply '
    'your changes to the latest version and try again","reason":"Conflict","details":{"name":"pet-operator-leader",'
    '"group":"coordination.k8s.io","kind":"leases"},"code":409},"requestObject":{"kind":"Lease","apiVersion":'
    '"coordination.k8s.io/v1","metadata":{"name":"pet-operator-leader","namespace":"default","resourceVersion":"199"},'
    '"spec":{"holderIdentity":"host_other","leaseDurationSeconds":4,"acquireTime":"2026-11-28T02:02:23.955472Z",'
    '"renewTime":"2026-11-28T02:02:24.003053Z","leaseTransitions":0}},"requestReceivedTimestamp":'
    '"2026-11-28T02:02:24.011373Z","stageTimestamp":"2026-11-28T02:02:24.014157Z","annotations":'
    '{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":""}}'
)


def test_real_api_server_lines_parse(tmp_path: Path) -> None:
    events = audit.load(write_log(tmp_path, [REAL_CONFLICT, REAL_CREATE]))
    assert [e.code for e in events] == [201, 409]  # sorted by request time
    created = events[0]
    assert created.time == datetime.datetime(2026, 11, 28, 2, 2, 23, 992655, tzinfo=datetime.UTC)
    assert created.done == datetime.datetime(2026, 11, 28, 2, 2, 23, 996201, tzinfo=datetime.UTC)
    assert (created.user, created.verb, created.resource, created.subresource) == (ADMIN, "create", "leases", "")
    assert (created.namespace, created.name, created.api_group) == ("default", LEASE, "coordination.k8s.io")
    assert created.lease_spec() == {
        "holderIdentity": "host_ab12cd34", "leaseDurationSeconds": 4, "acquireTime": "2026-11-28T02:02:23.955472Z",
        "renewTime": "2026-11-28T02:02:23.955472Z", "leaseTransitions": 0}
    terms = audit.leadership(events, "default", LEASE)
    assert len(terms) == 1  # the 409 naming another holder changed nothing
    assert (terms[0].identity, terms[0].user, terms[0].lease_duration) == ("host_ab12cd34", ADMIN, 4.0)
    assert terms[0].last_renewal == created.time


def test_synthetic_lines_have_the_real_shape() -> None:
    real = json.loads(REAL_CREATE)
    ours = json.loads(lease_write(0, OP0, A, verb="create", code=201))
    assert list(ours) == list(real)
    assert list(ours["objectRef"]) == list(real["objectRef"])


# --- scenarios -------------------------------------------------------------------------------


def test_clean_single_leader(tmp_path: Path) -> None:
    lines = leader_run(OP0, A, 0, 30, create=True)
    lines += [claim(3.1, OP0, 7), pet_patch(3.2, OP0), pet_patch(3.3, OP0, status=True), store_status(3.4, OP0),
              pet_patch(20, OP0, status=True), claim(25, OP0, 7, verb="delete", code=200)]
    events = audit.load(write_log(tmp_path, lines))
    terms, writes, violations, gaps = analyzed(events)
    assert len(terms) == 1
    term = terms[0]
    assert (term.identity, term.user, term.start, term.last_renewal) == (A, OP0, at(0), at(30))
    assert (term.end, term.released, term.lease_duration, term.renewals) == (None, False, 15.0, 15)
    assert [(w.resource, w.subresource, w.verb) for w in writes] == [
        ("leases", "", "create"), ("pets", "", "patch"), ("pets", "status", "patch"),
        ("petstores", "status", "patch"), ("pets", "status", "patch"), ("leases", "", "delete")]
    assert violations == []
    assert gaps == []
    s = audit.summary(terms, writes, violations, gaps)
    assert (s["terms"], s["transitions"], s["writes_by_leaders"], s["writes_by_non_leaders"]) == (1, 0, 6, 0)
    assert (s["gap_seconds"], s["gap_median"], s["gap_max"]) == ([], None, None)


def test_sigkill_failover(tmp_path: Path) -> None:
    lines = leader_run(OP0, A, 0, 10, create=True)  # then SIGKILL: no more renewals
    lines += [pet_patch(4.0, OP0, "before")]
    lines += leader_run(OP1, B, 25.3, 33.3, transitions=1)  # B: the record unchanged for 15 s
    lines += [pet_patch(26.1, OP1, "after"), pet_patch(26.2, OP1, "after", status=True)]
    events = audit.load(write_log(tmp_path, lines))
    terms, writes, violations, gaps = analyzed(events)
    assert [(t.identity, t.user) for t in terms] == [(A, OP0), (B, OP1)]
    a, b = terms
    assert (a.start, a.last_renewal, a.end, a.released) == (at(0), at(10), at(25.3), False)
    assert (b.start, b.last_renewal, b.end, b.transitions) == (at(25.3), at(33.3), None, 1)
    assert violations == []
    assert len(gaps) == 1
    gap = gaps[0]
    assert (gap.old, gap.new, gap.old_user, gap.new_user, gap.released) == (A, B, OP0, OP1, False)
    assert gap.seconds == pytest.approx(16.1)
    assert gap.takeover_seconds == pytest.approx(15.3)
    s = audit.summary(terms, writes, violations, gaps)
    assert (s["terms"], s["transitions"], s["writes_by_leaders"], s["writes_by_non_leaders"]) == (2, 1, 3, 0)
    assert s["gap_seconds"] == [pytest.approx(16.1)]
    assert s["gap_max"] == pytest.approx(16.1)


def test_graceful_release(tmp_path: Path) -> None:
    lines = [*leader_run(OP0, A, 0, 10, create=True), pet_patch(9.0, OP0), release(10.5, OP0)]
    lines += [*leader_run(OP1, B, 11.0, 15.0, transitions=1), pet_patch(11.4, OP1)]
    events = audit.load(write_log(tmp_path, lines))
    terms, writes, violations, gaps = analyzed(events)
    a, b = terms
    assert (a.identity, a.last_renewal, a.end, a.released) == (A, at(10), at(10.5), True)
    assert (b.identity, b.start, b.released) == (B, at(11), False)
    assert violations == []
    assert [(g.old, g.new, g.released) for g in gaps] == [(A, B, True)]
    assert gaps[0].seconds == pytest.approx(1.4)
    s = audit.summary(terms, writes, violations, gaps)
    assert (s["releases"], s["transitions"], s["gap_median"]) == (1, 1, pytest.approx(1.4))


def test_write_after_release_before_a_successor_is_a_violation(tmp_path: Path) -> None:
    lines = [*leader_run(OP0, A, 0, 4, create=True), release(5, OP0), pet_patch(6, OP0)]
    _, _, violations, gaps = analyzed(audit.load(write_log(tmp_path, lines)))
    assert gaps == []
    assert [(v.reason, v.holder, v.writer_identity) for v in violations] == [(audit.RELEASED, None, A)]


def test_split_brain(tmp_path: Path) -> None:
    lines = leader_run(OP0, A, 0, 10, create=True)
    # B takes over early (a bug, or a clock jump): A's lease would run until 25
    lines += leader_run(OP1, B, 12, 40, transitions=1)
    lines += [
        pet_patch(11.0, OP0, "fine"),  # A still holds
        pet_patch(13.0, OP0, "while-b-holds"),  # B holds, A's own lease not yet expired
        pet_patch(27.0, OP0, "stale", status=True),  # B holds and A's lease expired at 25
        pet_patch(14.0, OP1, "b-fine"),
    ]
    events = audit.load(write_log(tmp_path, lines))
    terms, writes, violations, gaps = analyzed(events)
    assert [t.identity for t in terms] == [A, B]
    assert [(v.write.name, v.reason, v.holder, v.holder_user, v.writer_identity, v.own_lease_expired)
            for v in violations] == [
        ("while-b-holds", audit.HELD_BY_OTHER, B, OP1, A, False),
        ("stale", audit.HELD_BY_OTHER, B, OP1, A, True),
    ]
    assert gaps[0].first_write == at(14)
    s = audit.summary(terms, writes, violations, gaps)
    assert (s["writes_by_leaders"], s["writes_by_non_leaders"]) == (2, 2)
    assert s["violations_by_reason"] == {audit.HELD_BY_OTHER: 2}


def test_stale_leader_alone_is_a_violation(tmp_path: Path) -> None:
    """No successor yet, but the holder's lease has run out: its write is not fenced."""
    lines = [*leader_run(OP0, A, 0, 10, create=True), pet_patch(24.9, OP0, "ok"), pet_patch(25.1, OP0, "late")]
    lines += [pet_patch(-1, OP0, "early")]
    _, _, violations, _ = analyzed(audit.load(write_log(tmp_path, lines)))
    assert [(v.write.name, v.reason, v.holder, v.own_lease_expired) for v in violations] == [
        ("early", audit.NO_LEADER_YET, None, False), ("late", audit.LEASE_EXPIRED, None, True)]


def test_failed_lease_updates_are_ignored(tmp_path: Path) -> None:
    lines = leader_run(OP0, A, 0, 10, create=True)
    lines += [
        lease_write(0.001, OP1, B, verb="create", code=409),  # lost the create race
        lease_write(6.1, OP1, B, transitions=1, code=409),  # a takeover attempt that lost
        lease_write(12.0, OP0, A, code=409),  # A's renewal failed: it must not extend A's term
        release(12.5, OP0, code=409),  # nor a failed release end it
        pet_patch(7.0, OP0), pet_patch(8.0, OP1, "by-b"),
    ]
    terms, _writes, violations, gaps = analyzed(audit.load(write_log(tmp_path, lines)))
    assert [(t.identity, t.last_renewal, t.end, t.released) for t in terms] == [(A, at(10), None, False)]
    assert gaps == []
    assert [(v.write.name, v.reason, v.holder) for v in violations] == [("by-b", audit.HELD_BY_OTHER, A)]


def test_failed_operator_writes_do_not_count(tmp_path: Path) -> None:
    lines = [*leader_run(OP0, A, 0, 4, create=True), pet_patch(50, OP1, code=409), claim(51, OP1, 3, code=409)]
    _, writes, violations, _ = analyzed(audit.load(write_log(tmp_path, lines)))
    assert writes == []  # and the leader Lease is never one of them
    assert violations == []


def test_non_json_and_truncated_lines_are_skipped(tmp_path: Path) -> None:
    good = [*leader_run(OP0, A, 0, 4, create=True), pet_patch(1, OP0)]
    received = json.loads(pet_patch(2, OP0))
    received["stage"] = "RequestReceived"
    junk = ["not json at all", "[1, 2, 3]", json.dumps(received), '{"stage": "ResponseComplete"}', ""]
    truncated = pet_patch(3, OP1)[:150]  # the API server killed mid-line
    path = write_log(tmp_path, [good[2], junk[0], good[1], junk[1], good[0], junk[2], junk[3], junk[4], good[3]],
                     tail=truncated)
    events = audit.load(path)
    assert len(events) == 4
    assert [e.time for e in events] == [at(0), at(1), at(2), at(4)]  # sorted, whatever the file order
    assert all(e.user == OP0 for e in events)
    _, writes, violations, _ = analyzed(events)
    assert [(w.time, w.resource) for w in writes] == [(at(1), "pets")]
    assert violations == []


def test_admin_and_other_users_are_ignored(tmp_path: Path) -> None:
    lines = leader_run(OP0, A, 0, 10, create=True)
    lines += [pet_patch(3, ADMIN, "made-by-test"), claim(4, ADMIN, 9), store_status(5, "system:serviceaccount:x:y"),
              pet_patch(6, OP0)]
    events = audit.load(write_log(tmp_path, lines))
    _terms, writes, violations, _ = analyzed(events)
    assert [(w.user, w.name) for w in writes] == [(OP0, "rex")]
    assert violations == []
    # the leader Lease itself is never an operator write, even under a prefix that matches
    assert audit.operator_writes(events, PREFIX, lease=(NS, LEASE)) == writes


def test_other_resources_and_reads_are_not_operator_writes(tmp_path: Path) -> None:
    lines = [
        line(1, OP0, "create", "configmaps", "cm"),
        line(2, OP0, "get", "pets", "rex", namespace=PETS_NS, group="petstore.example.com"),
        line(3, OP0, "patch", "petstores", "main", namespace=PETS_NS, group="petstore.example.com"),  # not status
        line(4, OP0, "update", "leases", "other-lease", group="coordination.k8s.io"),
        line(5, OP0, "deletecollection", "pets", "", namespace=PETS_NS, group="petstore.example.com"),
    ]
    writes = audit.operator_writes(audit.load(write_log(tmp_path, lines)), PREFIX)
    assert [(w.verb, w.resource) for w in writes] == [("deletecollection", "pets")]


def test_the_generic_analysis_takes_another_operators_resources_and_lease_prefixes(tmp_path: Path) -> None:
    """pet_harness.audit_log knows no operator: the same log read for one that writes
    greetings/status and ``lock-*`` Leases finds those writes, and none of the pet ones."""
    from pet_harness import audit_log

    lines = [
        line(1, OP0, "patch", "greetings", "hi", namespace=PETS_NS, group="example.org", subresource="status"),
        line(2, OP0, "update", "leases", "lock-hi", group="coordination.k8s.io"),
        line(3, OP0, "update", "leases", "pet-id-7", group="coordination.k8s.io"),
        line(4, OP0, "patch", "pets", "rex", namespace=PETS_NS, group="petstore.example.com", subresource="status"),
    ]
    events = audit.load(write_log(tmp_path, lines))
    generic = audit_log.operator_writes(events, PREFIX, resources={("greetings", "status")}, lease_prefixes=("lock-",))
    assert [(w.resource, w.name) for w in generic] == [("greetings", "hi"), ("leases", "lock-hi")]
    pet = audit.operator_writes(events, PREFIX)
    assert [(w.resource, w.name) for w in pet] == [("leases", "pet-id-7"), ("pets", "rex")]


def test_a_successor_that_never_writes_has_an_open_gap(tmp_path: Path) -> None:
    lines = leader_run(OP0, A, 0, 4, create=True) + leader_run(OP1, B, 19.5, 30, transitions=1)
    lines += [pet_patch(2, OP0)]
    terms, writes, violations, gaps = analyzed(audit.load(write_log(tmp_path, lines)))
    assert [(g.first_write, g.seconds) for g in gaps] == [(None, None)]
    assert gaps[0].takeover_seconds == pytest.approx(15.5)
    s = audit.summary(terms, writes, violations, gaps)
    assert (s["transitions"], s["gaps_without_write"], s["gap_seconds"], s["gap_max"]) == (1, 1, [], None)


def test_a_reacquire_by_the_same_identity_is_one_holder(tmp_path: Path) -> None:
    """Renewals extend one term; a release and re-acquire by the same process is no change of holder."""
    lines = [*leader_run(OP0, A, 0, 4, create=True), release(5, OP0), *leader_run(OP0, A, 6, 8)]
    terms, _, _, gaps = analyzed(audit.load(write_log(tmp_path, lines)))
    assert [(t.identity, t.start, t.last_renewal, t.released) for t in terms] == [
        (A, at(0), at(4), True), (A, at(6), at(8), False)]
    assert gaps == []


def test_replicas_sharing_a_user_are_flagged(tmp_path: Path) -> None:
    lines = [*leader_run(OP0, A, 0, 4, create=True), *leader_run(OP0, B, 20, 22), *leader_run(OP1, "host_c", 40, 42)]
    terms, writes, violations, gaps = analyzed(audit.load(write_log(tmp_path, lines)))
    assert audit.summary(terms, writes, violations, gaps)["users_with_several_identities"] == [OP0]


def test_analyze_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [*leader_run(OP0, A, 0, 10, create=True), pet_patch(1, OP0)]
    lines += [*leader_run(OP1, B, 25, 30, transitions=1), pet_patch(26, OP1), pet_patch(27, OP0, "stale")]
    path = write_log(tmp_path, lines)
    result = audit.analyze(path, NS, LEASE, PREFIX)
    assert result == json.loads(json.dumps(result))  # plain JSON data
    assert result["summary"]["writes_by_non_leaders"] == 1
    assert result["summary"]["gap_seconds"] == [16.0]
    assert result["terms"][0]["start"] == "2026-11-28T02:00:00Z"
    assert result["violations"][0]["write"]["name"] == "stale"
    assert audit.analyze(path, NS) == result  # the default lease name and users prefix
    assert audit.main([str(path), "--lease-namespace", NS]) == 1  # a violation fails the run
    assert json.loads(capsys.readouterr().out) == result


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-28T02:02:23.992655Z", datetime.datetime(2026, 11, 28, 2, 2, 23, 992655, tzinfo=datetime.UTC)),
    ("2026-11-28T02:02:23Z", datetime.datetime(2026, 11, 28, 2, 2, 23, tzinfo=datetime.UTC)),
    ("2026-11-28T02:02:23.123456789Z", datetime.datetime(2026, 11, 28, 2, 2, 23, 123456, tzinfo=datetime.UTC)),
    ("2026-11-28T03:02:23.5+01:00", datetime.datetime(2026, 11, 28, 2, 2, 23, 500000, tzinfo=datetime.UTC)),
])
def test_parse_time(text: str, expected: datetime.datetime) -> None:
    assert audit.parse_time(text) == expected


def test_parse_time_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        audit.parse_time("yesterday")


def with_pod(raw_line: str, pod: str) -> str:
    """The line as a token bound to ``pod`` makes it: the pod's name in the user's extra field."""
    event = json.loads(raw_line)
    event["user"]["extra"] = {audit.audit_log.POD_NAME_EXTRA: [pod], "authentication.kubernetes.io/pod-uid": ["u"]}
    return json.dumps(event, separators=(",", ":"))


def test_pods_sharing_a_service_account_are_told_apart_by_their_bound_tokens(tmp_path: Path) -> None:
    """A Deployment's replicas share one ServiceAccount; the API server names each one's pod in the
    user's extra field, so a write by the standby pod is still a non-leader's."""
    sa = PREFIX
    lines = [with_pod(x, "pet-operator-a") for x in leader_run(sa, "pet-operator-a_1", 0, 10, create=True)]
    lines += [with_pod(pet_patch(1, sa), "pet-operator-a"), with_pod(pet_patch(2, sa, "stray"), "pet-operator-b")]
    result = audit.analyze(write_log(tmp_path, lines), NS)
    assert result["terms"][0]["user"] == f"{sa}@pet-operator-a"
    assert result["summary"]["writes_by_non_leaders"] == 1
    assert result["violations"][0]["write"]["name"] == "stray"
    assert result["violations"][0]["write"]["user"] == f"{sa}@pet-operator-b"


@pytest.mark.parametrize(("user", "expected"), [
    ({"username": "u", "extra": {audit.audit_log.POD_NAME_EXTRA: ["p"]}}, "u@p"),
    ({"username": "u", "extra": {"other": ["p"]}}, "u"),
    ({"username": "u", "extra": {audit.audit_log.POD_NAME_EXTRA: ["p", "q"]}}, "u"),
    ({"username": "u"}, "u"),
    ({"extra": {audit.audit_log.POD_NAME_EXTRA: ["p"]}}, ""),
    ("not a dict", ""),
])
def test_the_writer_of_an_event(user: Any, expected: str) -> None:
    assert audit.audit_log.writer(user) == expected


def test_a_window_judges_only_its_writes_and_changes_of_holder(tmp_path: Path) -> None:
    """One cluster, several experiments: a window from ``since`` on counts the writes and failovers
    in it, with the holder at its start known from the whole log."""
    lines = [*leader_run(OP0, A, 0, 10, create=True), pet_patch(1, OP1, "early-stray")]
    lines += [*leader_run(OP1, B, 16, 40, transitions=1), pet_patch(17, OP1), pet_patch(30, OP1)]
    lines += [*leader_run(OP0, "host_c", 46, 50, transitions=2), pet_patch(47, OP0)]
    path = write_log(tmp_path, lines)
    whole = audit.analyze(path, NS)
    assert whole["summary"]["writes_by_non_leaders"] == 1 and whole["summary"]["transitions"] == 2
    window = audit.analyze(path, NS, since=at(20))
    # the term of B, begun before the window, makes its write at 30 a leader's
    assert window["summary"]["writes"] == 2 and window["summary"]["writes_by_non_leaders"] == 0
    assert window["summary"]["gap_seconds"] == [7.0]  # B's last renewal at 40 (every 2 s) to C's write at 47
    assert [t["identity"] for t in window["terms"]] == [B, "host_c"]
    assert window["since"] == "2026-11-28T02:00:20Z"


def lease_patch(t: float, user: str, spec: dict[str, Any]) -> str:
    """A merge patch of the leader Lease, as ``kubectl patch`` or chaostoolkit's steal sends it."""
    return line(t, user, "patch", "leases", LEASE, group="coordination.k8s.io", body={"spec": spec})


def test_a_lease_stolen_with_a_patch_is_a_change_of_holder(tmp_path: Path) -> None:
    """The chaos steal patches the Lease: the thief holds it from then on and the next holder's gap
    runs from the thief's write; a patch that names no holder changes nothing. The robbed leader's
    write before its next Lease round (it renewed every 1 s) is counted apart; one after is a
    non-leader's."""
    lines = [*leader_run(OP0, A, 0, 10, every=1, create=True, duration=4)]
    lines += [lease_patch(10.5, ADMIN, {"holderIdentity": "chaos-thief", "leaseDurationSeconds": 4}),
              pet_patch(10.7, OP0, "unaware"), lease_patch(11, ADMIN, {"leaseTransitions": 9}),
              pet_patch(11.8, OP0, "too-late")]
    lines += [*leader_run(OP0, A, 15, 18, every=1, duration=4), pet_patch(15.5, OP0)]
    result = audit.analyze(write_log(tmp_path, lines), NS)
    assert [t["identity"] for t in result["terms"]] == [A, "chaos-thief", A]
    assert result["terms"][1]["lease_duration"] == 4 and result["terms"][0]["renew_interval"] == 1.0
    assert [(v["write"]["name"], v["reason"]) for v in result["violations"]] == [
        ("unaware", audit.BEFORE_SEEING_TAKEOVER), ("too-late", audit.HELD_BY_OTHER)]
    assert (result["summary"]["writes_by_non_leaders"], result["summary"]["writes_before_seeing_takeover"]) == (1, 1)
    assert [(g["old"], g["new"], g["seconds"]) for g in result["gaps"]] == [(A, "chaos-thief", None),
                                                                              ("chaos-thief", A, 5.0)]


def test_a_takeover_by_an_operator_replica_excuses_nothing(tmp_path: Path) -> None:
    """Only a takeover from outside the election (not an operator user) is one the robbed leader
    could not have seen coming; replicas take over only expired Leases."""
    lines = [*leader_run(OP0, A, 0, 10, every=1, create=True, duration=4)]
    lines += [lease_write(10.5, OP1, B, duration=4, transitions=1), pet_patch(10.7, OP0, "stray")]
    result = audit.analyze(write_log(tmp_path, lines), NS)
    assert [v["reason"] for v in result["violations"]] == [audit.HELD_BY_OTHER]
    assert result["summary"]["writes_before_seeing_takeover"] == 0

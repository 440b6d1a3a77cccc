"""The audit-log analysis (:mod:`pet_harness.audit_log`) for the pet operator.

What the pet operator writes: pets, their status and petstore status, and its id claims
(``pet-id-<N>`` Leases); its leader Lease is ``pet-operator-leader``; its users are
``system:serviceaccount:<lease namespace>:pet-operator...``. Every name of the generic module
is available here too, so ``from pet_harness import audit`` is all a test needs.

``python -m pet_harness.audit AUDIT_LOG --lease-namespace NS`` prints :func:`analyze` as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pet_harness import audit_log
from pet_harness.audit_log import (  # noqa: F401 - re-exported for the pet tests and chaos
    BEFORE_SEEING_TAKEOVER,
    HELD_BY_OTHER,
    LEASE_EXPIRED,
    LEASE_WRITE_VERBS,
    NO_LEADER_YET,
    RELEASED,
    WRITE_VERBS,
    AuditEvent,
    Gap,
    Term,
    Violation,
    failover_gaps,
    load,
    parse_time,
    split_brain,
    summary,
)
from pet_harness.kube import CLAIM_PREFIX

DEFAULT_LEASE_NAME = "pet-operator-leader"
#: (resource, subresource) pairs the operator writes, besides the claim Leases
OPERATOR_RESOURCES = frozenset({("pets", ""), ("pets", "status"), ("petstores", "status")})


def default_users_prefix(lease_namespace: str) -> str:
    return f"system:serviceaccount:{lease_namespace}:pet-operator"


def is_claim(event: AuditEvent) -> bool:
    return event.resource == "leases" and not event.subresource and event.name.startswith(CLAIM_PREFIX)


def operator_writes(
    events: Iterable[AuditEvent], users_prefix: str, *, lease: tuple[str, str] | None = None
) -> list[AuditEvent]:
    """Successful writes by users named ``users_prefix...`` to pets, pets/status,
    petstores/status and claim Leases; never the leader Lease (``lease``: its namespace, name)."""
    return audit_log.operator_writes(events, users_prefix, resources=OPERATOR_RESOURCES,
                                     lease_prefixes=(CLAIM_PREFIX,), lease=lease)


def leadership(events: Iterable[AuditEvent], lease_namespace: str, lease_name: str = DEFAULT_LEASE_NAME) -> list[Term]:
    return audit_log.leadership(events, lease_namespace, lease_name)


def analyze_events(
    events: Sequence[AuditEvent], lease_namespace: str, lease_name: str = DEFAULT_LEASE_NAME,
    users_prefix: str | None = None, since: datetime.datetime | None = None,
) -> dict[str, Any]:
    prefix = users_prefix if users_prefix is not None else default_users_prefix(lease_namespace)
    return audit_log.analyze_events(events, lease_namespace, lease_name, prefix, resources=OPERATOR_RESOURCES,
                                    lease_prefixes=(CLAIM_PREFIX,), since=since)


def analyze(
    path: str | Path, lease_namespace: str, lease_name: str = DEFAULT_LEASE_NAME, users_prefix: str | None = None,
    since: datetime.datetime | None = None,
) -> dict[str, Any]:
    """Everything :mod:`pet_harness.audit_log` finds in one audit log, as plain JSON-ready data.

    ``users_prefix`` defaults to ``system:serviceaccount:<lease_namespace>:pet-operator``;
    ``since``: only the writes and changes of holder from then on (see
    :func:`pet_harness.audit_log.analyze_events`).
    """
    return analyze_events(load(path), lease_namespace, lease_name, users_prefix, since)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pet_harness.audit", description="Leader election and split brain, proven from an audit log."
    )
    parser.add_argument("audit_log", type=Path)
    parser.add_argument("--lease-namespace", required=True, help="namespace of the leader Lease (the operator's)")
    parser.add_argument("--lease-name", default=DEFAULT_LEASE_NAME)
    parser.add_argument("--users-prefix", default=None,
                        help="operator users (default system:serviceaccount:<lease-namespace>:pet-operator)")
    args = parser.parse_args(argv)
    result = analyze(args.audit_log, args.lease_namespace, args.lease_name, args.users_prefix)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 1 if result["summary"]["writes_by_non_leaders"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""API requests counted by the API server itself (``apiserver_request_total``), before and after.

The counter is labelled by verb, group, resource, subresource, scope, component and code; the
load needs ``(verb, resource[/subresource])`` summed over the rest. The verb is the HTTP method for
writes (POST, PUT, PATCH, DELETE, APPLY) and GET, LIST or WATCH for reads.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})

_SAMPLE = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Key = tuple[str, str]  # (VERB, resource or resource/subresource)


def parse(text: str, by_code: bool = False) -> Counter[Key]:
    """``apiserver_request_total`` summed by verb and resource[/subresource] (and, with ``by_code``,
    with the HTTP code appended to the resource: ``pets 409``)."""
    counts: Counter[Key] = Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match.group("labels")))
        resource = labels.get("resource", "")
        if not resource:
            continue  # non-resource URLs (/healthz, /metrics...)
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        if by_code:
            resource += " " + labels.get("code", "")
        counts[(labels.get("verb", "").upper(), resource)] += int(float(match.group("value")))
    return counts


def delta(before: Mapping[Key, int], after: Mapping[Key, int]) -> Counter[Key]:
    out: Counter[Key] = Counter()
    for key, value in after.items():
        diff = value - before.get(key, 0)
        if diff > 0:
            out[key] = diff
    return out


def writes(counts: Mapping[Key, int]) -> Counter[Key]:
    return Counter({k: v for k, v in counts.items() if k[0] in WRITE_VERBS})


#: Locust request names of the load client (``loadtests/pet_locust/api.py``) -> the API server's key.
def client_key(locust_name: str) -> Key | None:
    verb, _, rest = locust_name.partition(" ")
    resource = rest.split(" ")[0]
    if not resource or verb not in {"POST", "PATCH", "DELETE", "PUT", "GET"}:
        return None
    return verb, resource


#: Writes no operator under test makes: what the server counts of them beyond the client's own count
#: are creates cut off in flight when the load stopped (Locust ends its users mid-request; the API
#: server records those as 504), not operator writes.
CLIENT_ONLY: frozenset[Key] = frozenset({("POST", "pets")})


def operator_writes(server: Mapping[Key, int], client_requests: Iterable[tuple[str, int]]) -> Counter[Key]:
    """The writes nobody but the operator made: the API server's count less the load client's own
    (``CLIENT_ONLY`` writes never count as the operator's)."""
    ours: Counter[Key] = Counter({k: v for k, v in writes(server).items() if k not in CLIENT_ONLY})
    for name, count in client_requests:
        key = client_key(name)
        if key is not None and key in ours:
            ours[key] -= count
    return Counter({k: v for k, v in ours.items() if v > 0})

"""The oracle: a small model of the Pet API contract (``design/pet-api.md``), written from its text.

It is deliberately NOT derived from the CRDs or from the operator's code: when the model and the
live system disagree, one of them is wrong about the contract, and that is a finding.

Where the contract is silent, the model follows what a Kubernetes user expects from any custom
resource (the contract's own rule for silence), and each such choice is named in a comment
starting with ``Kubernetes:``:

* a ``null`` field counts as absent (the API server prunes nulls of non-nullable fields);
* a field nobody defined is refused when the request asks for strict field validation
  (``fieldValidation=Strict``, what ``kubectl`` sends) and dropped otherwise;
* a JSON number is an integer when it has no fraction (``1.0`` and ``1e3`` are integers, as in
  JSON Schema); ``true`` is never a number;
* strings are measured in Unicode code points; patterns must match the whole string;
* ``status`` sent with a create or update of the main resource is ignored (status subresource);
* a store reference must be a valid object name (DNS subdomain, at most 253 characters), since
  it names a PetStore.

Rules have stable names (``spec.id.range`` ...); a verdict lists the rules an object breaks.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pet_harness.kube import GROUP_VERSION as GROUP_VERSION  # re-exported: the oracle's apiVersion

MAX_ID = 2**53 - 1
TAG = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # used with fullmatch: the whole string
DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = re.compile(rf"{DNS_LABEL}(\.{DNS_LABEL})*")
AVAILABILITY = ("available", "pending", "sold")

PET_FIELDS = ("id", "name", "category", "tags", "photoUrls", "availability", "store")
STORE_FIELDS = ("allowedTags", "displayName")
TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
PET_STATUS_FIELDS = ("phase", "reason", "message", "observedGeneration", "lastTransitionTime", "conditions")
STORE_STATUS_FIELDS = ("petCount", "activeCount", "observedGeneration", "conditions")

# Rules the API server's schema enforces, and rules the operator's webhook enforces. A body that
# breaks a schema rule never reaches the webhook, so its verdict lists schema rules only.
WEBHOOK_RULES = frozenset({"spec.tags.allowed", "spec.id.unique"})


@dataclasses.dataclass(frozen=True)
class Broken:
    """One rule an object breaks: its name, the field it is about, and words a rejection must name."""

    rule: str
    field: str
    names: tuple[str, ...] = ()  # what the rejection message must mention (default: the field)

    def mentions(self) -> tuple[str, ...]:
        return self.names or (self.field,)


@dataclasses.dataclass(frozen=True)
class Verdict:
    admitted: bool
    broken: tuple[Broken, ...] = ()

    @property
    def rules(self) -> tuple[str, ...]:
        return tuple(sorted({b.rule for b in self.broken}))


ADMIT = Verdict(True)


@dataclasses.dataclass
class World:
    """What exists when a body is judged: stores and the holders of ids, cluster-wide."""

    stores: dict[tuple[str, str], list[str] | None] = dataclasses.field(default_factory=dict)
    holders: dict[int, tuple[str, str]] = dataclasses.field(default_factory=dict)


# --- the pieces --------------------------------------------------------------------------------

def is_integer(value: Any) -> bool:
    """Kubernetes: a JSON number without a fraction is an integer; booleans are not numbers."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


def _present(spec: Mapping[str, Any], key: str) -> bool:
    return key in spec and spec[key] is not None  # Kubernetes: null is pruned, so it is absent


def _string(spec: Mapping[str, Any], key: str, low: int, high: int | None, out: list[Broken]) -> None:
    if not _present(spec, key):
        return
    value = spec[key]
    if not isinstance(value, str):
        out.append(Broken(f"spec.{key}.type", f"spec.{key}"))
    elif len(value) < low or (high is not None and len(value) > high):
        out.append(Broken(f"spec.{key}.length", f"spec.{key}"))


def _tag_list(spec: Mapping[str, Any], key: str, most: int, out: list[Broken]) -> None:
    """A set of tags: at most ``most``, no duplicates, each a lowercase DNS label."""
    if not _present(spec, key):
        return
    value = spec[key]
    field = f"spec.{key}"
    if not isinstance(value, list):
        out.append(Broken(f"{field}.type", field))
        return
    if len(value) > most:
        out.append(Broken(f"{field}.count", field))
    for i, tag in enumerate(value):
        if not isinstance(tag, str):
            out.append(Broken(f"{field}.type", f"{field}[{i}]"))
        elif not TAG.fullmatch(tag):
            out.append(Broken(f"{field}.format", f"{field}[{i}]"))
    seen: list[Any] = []
    for i, tag in enumerate(value):
        if tag in seen and not isinstance(tag, bool | int | float):  # equal JSON values, strings here
            out.append(Broken(f"{field}.unique", f"{field}[{i}]"))
        seen.append(tag)


def _unknown(body: Mapping[str, Any], spec: Any, fields: Sequence[str], out: list[Broken],
             status_fields: Sequence[str] = PET_STATUS_FIELDS) -> None:
    for key in body:
        if key not in TOP_FIELDS:
            out.append(Broken("unknown-field", key, (f'"{key}"',)))
    # Kubernetes: status sent with the object is dropped, but strict decoding reads it first
    status = body.get("status")
    if isinstance(status, Mapping):
        for key in status:
            if key not in status_fields:
                out.append(Broken("unknown-field", f"status.{key}", (f'"status.{key}"',)))
    if isinstance(spec, Mapping):
        for key in spec:
            if key not in fields:
                out.append(Broken("unknown-field", f"spec.{key}", (f'"spec.{key}"',)))


def _envelope(body: Any, kind: str, out: list[Broken]) -> Mapping[str, Any] | None:
    if not isinstance(body, Mapping):
        out.append(Broken("body.type", "body", ("",)))
        return None
    if body.get("apiVersion") != GROUP_VERSION or body.get("kind") != kind:
        out.append(Broken("body.kind", "kind", ("",)))
    return body


# --- schema rules ------------------------------------------------------------------------------

def _spec(body: Any, kind: str, fields: Sequence[str], status_fields: Sequence[str], strict: bool,
          required: bool, out: list[Broken]) -> Mapping[str, Any] | None:
    """The spec whose fields are to be checked, after the envelope, the spec's presence and type,
    and (strict) unknown fields; None when there is nothing more to check (``out`` says why)."""
    top = _envelope(body, kind, out)
    if top is None or out:
        return None
    spec = top.get("spec")
    if spec is None:
        if required:
            out.append(Broken("spec.required", "spec"))
        return None
    if not isinstance(spec, Mapping):
        out.append(Broken("spec.type", "spec"))
        return None
    if strict:
        _unknown(top, spec, fields, out, status_fields)
    return spec


def pet_schema(body: Any, strict: bool = True) -> list[Broken]:
    """The rules of the contract's Pet table that hold for every single object."""
    out: list[Broken] = []
    # the contract requires id and name, so a pet without spec breaks both
    spec = _spec(body, "Pet", PET_FIELDS, PET_STATUS_FIELDS, strict, required=True, out=out)
    if spec is None:
        return out
    if not _present(spec, "id"):
        out.append(Broken("spec.id.required", "spec.id"))
    elif not is_integer(spec["id"]):
        out.append(Broken("spec.id.type", "spec.id"))
    elif not 1 <= spec["id"] <= MAX_ID:
        out.append(Broken("spec.id.range", "spec.id"))
    if not _present(spec, "name"):
        out.append(Broken("spec.name.required", "spec.name"))
    else:
        _string(spec, "name", 1, 63, out)
    _string(spec, "category", 0, 63, out)
    _tag_list(spec, "tags", 16, out)
    if _present(spec, "photoUrls"):
        urls = spec["photoUrls"]
        if not isinstance(urls, list):
            out.append(Broken("spec.photoUrls.type", "spec.photoUrls"))
        else:
            if len(urls) > 10:
                out.append(Broken("spec.photoUrls.count", "spec.photoUrls"))
            for i, url in enumerate(urls):
                if not isinstance(url, str):
                    out.append(Broken("spec.photoUrls.type", f"spec.photoUrls[{i}]"))
                elif len(url) > 2048:
                    out.append(Broken("spec.photoUrls.length", f"spec.photoUrls[{i}]"))
    if _present(spec, "availability"):
        if not isinstance(spec["availability"], str):
            out.append(Broken("spec.availability.type", "spec.availability"))
        elif spec["availability"] not in AVAILABILITY:
            out.append(Broken("spec.availability.enum", "spec.availability"))
    if _present(spec, "store"):
        store = spec["store"]
        if not isinstance(store, str):
            out.append(Broken("spec.store.type", "spec.store"))
        elif len(store) > 253 or not DNS_SUBDOMAIN.fullmatch(store):
            out.append(Broken("spec.store.format", "spec.store"))
    return out


def store_schema(body: Any, strict: bool = True) -> list[Broken]:
    out: list[Broken] = []
    # a store needs nothing: absent allowedTags allow any tag
    spec = _spec(body, "PetStore", STORE_FIELDS, STORE_STATUS_FIELDS, strict, required=False, out=out)
    if spec is None:
        return out
    # Kubernetes: the contract gives allowedTags "the same format as Pet tags" and no count; the
    # shipped bound of 256 is a project choice the model shares (named so that it can be found).
    _tag_list(spec, "allowedTags", 256, out)
    # the contract gives displayName no bound; 253 (an object name's) is the project's choice.
    _string(spec, "displayName", 0, 253, out)
    return out


# --- what the webhook adds ---------------------------------------------------------------------

def _tags(spec: Mapping[str, Any]) -> list[str]:
    return list(spec.get("tags") or [])


def not_allowed(tags: Iterable[str], allowed: Sequence[str] | None) -> list[str]:
    """Tags outside ``allowedTags``: absent allows any tag, an empty list none (contract)."""
    if allowed is None:
        return []
    return [t for t in tags if t not in allowed]


def judge_pet(
    body: Any, namespace: str, world: World, operation: str = "CREATE", old: Mapping[str, Any] | None = None,
    strict: bool = True,
) -> Verdict:
    """Admitted or not, and by which rules, for a create or an update of a pet."""
    broken = pet_schema(body, strict)
    if operation == "UPDATE" and old is not None and not broken:
        old_id = (old.get("spec") or {}).get("id")
        if body["spec"]["id"] != old_id:  # contract: spec.id is immutable
            broken.append(Broken("spec.id.immutable", "spec.id"))
    if broken:
        return Verdict(False, tuple(broken))
    spec = body["spec"]
    name = (body.get("metadata") or {}).get("name", "")
    old_spec = (old or {}).get("spec") or {}
    store = spec.get("store")
    # contract 3: tags are judged at admission against the store's allowedTags when the tags or
    # the store change (a pet made Invalid by a narrowing store stays updatable)
    changed = operation == "CREATE" or set(_tags(spec)) != set(_tags(old_spec)) or store != old_spec.get("store")
    if store is not None and (namespace, store) in world.stores and changed:
        bad = not_allowed(_tags(spec), world.stores[(namespace, store)])
        if bad:
            broken.append(Broken("spec.tags.allowed", "spec.tags", tuple(f"'{t}'" for t in bad)))
    holder = world.holders.get(int(spec["id"]))
    if operation == "CREATE" and holder is not None and holder != (namespace, name):
        broken.append(Broken("spec.id.unique", "spec.id"))  # contract 4: rejected when the holder is seen
    return Verdict(not broken, tuple(broken))


def judge_store(body: Any, strict: bool = True) -> Verdict:
    broken = store_schema(body, strict)
    return Verdict(not broken, tuple(broken))


# --- what the operator must reach --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Expected:
    phase: str
    reason: str
    holder: tuple[str, str] | None = None  # for Conflict: who the message must name

    def conditions(self) -> dict[str, str | None]:
        """Condition statuses the contract implies (None: the contract leaves it open)."""
        return {
            "Ready": "True" if self.phase == "Active" else "False",
            "IdClaimed": "False" if self.phase == "Conflict" else ("True" if self.phase == "Active" else None),
            "TagsValid": "False" if self.reason == "TagsNotAllowed" else ("True" if self.phase == "Active" else None),
        }


def expected_pet(
    key: tuple[str, str], spec: Mapping[str, Any], stores: Mapping[tuple[str, str], list[str] | None],
    holder: tuple[str, str] | None,
) -> Expected:
    """The phase and reason an admitted pet must reach.

    The contract lists the outcomes but not their order when several apply; the model reads it as:
    an id held by another pet first (nothing else matters until the id is this pet's), then a
    missing store (which fixes itself), then tags the store does not allow.
    """
    if holder is not None and holder != key:
        return Expected("Conflict", "DuplicateId", holder)
    store = spec.get("store")
    if store is not None and (key[0], store) not in stores:
        return Expected("Pending", "StoreNotFound")
    if store is not None and not_allowed(_tags(spec), stores[(key[0], store)]):
        return Expected("Invalid", "TagsNotAllowed")
    return Expected("Active", "Reconciled")


def holders_of(pets: Mapping[tuple[str, str], tuple[Any, int]]) -> dict[int, tuple[str, str]]:
    """Who holds each id when nothing races: the oldest pet with it (contract 4: the oldest waiting
    duplicate takes over). ``pets`` maps key -> (creation order, id)."""
    out: dict[int, tuple[str, str]] = {}
    for key, (_order, pet_id) in sorted(pets.items(), key=lambda kv: (kv[1][0], kv[0])):
        out.setdefault(pet_id, key)
    return out


# --- a request's bytes, as the API server reads them -------------------------------------------

REQUEST_LIMIT = 3 * 1024 * 1024  # Kubernetes: the API server refuses bodies over 3 MiB (413)
MAX_DEPTH = 10_000  # Kubernetes: its JSON decoder refuses deeper nesting
ANNOTATIONS_LIMIT = 256 * 1024  # Kubernetes: all annotations of an object together

# the order in which the API server stops at the first kind of fault: the body itself, its
# fields (strict decoding), the schema, then the webhook
STAGES = ("body", "fields", "schema", "webhook")


def stage_of(rule: str) -> str:
    if rule.startswith("body."):
        return "body"
    if rule == "unknown-field":
        return "fields"
    if rule in WEBHOOK_RULES:
        return "webhook"
    return "schema"


def first_stage(verdict: Verdict) -> Verdict:
    """Only the rules of the earliest stage: those are what a rejection must name."""
    if verdict.admitted:
        return verdict
    first = min(STAGES.index(stage_of(b.rule)) for b in verdict.broken)
    return Verdict(False, tuple(b for b in verdict.broken if STAGES.index(stage_of(b.rule)) == first))


def nesting_depth(raw: bytes) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def decode(raw: bytes) -> tuple[Any, Broken | None]:
    """The JSON document of a body, or the body-level rule it breaks."""
    import json
    import sys

    if len(raw) > REQUEST_LIMIT:
        return None, Broken("body.size", "body", ("",))
    if nesting_depth(raw) > MAX_DEPTH:
        return None, Broken("body.json", "body", ("",))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, Broken("body.json", "body", ("",))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * MAX_DEPTH))
    try:
        return json.loads(text), None
    except ValueError:
        return None, Broken("body.json", "body", ("",))
    finally:
        sys.setrecursionlimit(limit)


def _metadata(doc: Any, out: list[Broken]) -> None:
    meta = doc.get("metadata") if isinstance(doc, Mapping) else None
    if not isinstance(meta, Mapping) or not meta.get("name"):
        out.append(Broken("metadata.name.required", "metadata.name", ("name",)))
        return
    notes = meta.get("annotations") or {}
    if isinstance(notes, Mapping):
        size = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in notes.items())
        if size > ANNOTATIONS_LIMIT:
            out.append(Broken("metadata.annotations.size", "metadata.annotations"))


def judge_request(
    raw: bytes, plural: str, namespace: str, world: World, operation: str = "CREATE",
    old: Mapping[str, Any] | None = None, strict: bool = True,
) -> Verdict:
    """The verdict on a create or update request with these bytes, reduced to the first stage that
    refuses it."""
    doc, fault = decode(raw)
    if fault is not None:
        return Verdict(False, (fault,))
    kind = "Pet" if plural == "pets" else "PetStore"
    verdict = judge_pet(doc, namespace, world, operation, old, strict) if kind == "Pet" else judge_store(doc, strict)
    extra: list[Broken] = []
    if isinstance(doc, Mapping) and doc.get("apiVersion") == GROUP_VERSION and doc.get("kind") == kind:
        _metadata(doc, extra)
    if extra:
        schema_ok = all(stage_of(b.rule) == "webhook" for b in verdict.broken)
        kept = tuple(b for b in verdict.broken if stage_of(b.rule) != "webhook") if schema_ok else verdict.broken
        verdict = Verdict(False, (*kept, *extra))
    return first_stage(verdict)


def stored_spec(spec: Mapping[str, Any], kind: str = "Pet") -> dict[str, Any]:
    """The spec as the API server keeps an admitted object: nulls pruned (Kubernetes), and for a
    pet ``availability`` defaulted to ``available`` (contract)."""
    out = {k: v for k, v in spec.items() if v is not None}
    if kind == "Pet":
        out.setdefault("availability", "available")
    return out

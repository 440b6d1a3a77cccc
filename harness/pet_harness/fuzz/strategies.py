"""Hypothesis strategies for Pet and PetStore bodies: valid ones, ones that break exactly one named
rule, and garbage.

Valid specs come from the CRDs' ``openAPIV3Schema`` as the API server serves them
(:func:`from_crd_schema`, for the subset of OpenAPI the CRDs use, with
``x-kubernetes-list-type: set`` as unique items). ``hypothesis-jsonschema`` would be the obvious
tool, but its 0.23.1 (the newest) fails inside Hypothesis 6.170 (``'many' object has no attribute
'more'``), so the few keywords are mapped here. The rule breakers are written from the contract,
each with the name of the rule it breaks (the names of :mod:`pet_harness.fuzz.contract`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hypothesis import strategies as st

from pet_harness.fuzz.contract import GROUP_VERSION, MAX_ID

KINDS = ("valid", "breaker", "garbage")
REQUEST_LIMIT = 3 * 1024 * 1024  # the API server's limit on a request body (3 MiB)


@dataclasses.dataclass(frozen=True)
class Example:
    """One request to make: what it is, which rule it is meant to break, and its bytes."""

    kind: str  # valid | breaker | garbage
    plural: str  # pets | petstores
    body: bytes
    doc: Any = None  # the decoded body, when it is JSON the model can judge
    intended: str | None = None  # breakers: the rule broken on purpose
    label: str = ""  # a short description for reports

    def describe(self, limit: int = 600) -> str:
        text = self.body[:limit].decode("utf-8", "replace")
        more = f" ... ({len(self.body)} bytes)" if len(self.body) > limit else ""
        return f"{self.kind} {self.plural} {self.label}: {text}{more}"


def encode(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# --- from the installed schema -----------------------------------------------------------------

def from_crd_schema(schema: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """Values that satisfy an OpenAPI v3 schema of the subset the CRDs use."""
    kind = schema.get("type")
    if "enum" in schema:
        return st.sampled_from(list(schema["enum"]))
    if kind == "object":
        props: Mapping[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        return st.fixed_dictionaries(
            {k: from_crd_schema(v) for k, v in props.items() if k in required},
            optional={k: from_crd_schema(v) for k, v in props.items() if k not in required},
        )
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if "pattern" in schema:
            base = st.from_regex(schema["pattern"], fullmatch=True)
        else:
            base = st.text(min_size=low, max_size=min(high or 80, 80))
        return base.filter(lambda s: low <= len(s) <= (high if high is not None else len(s)))
    if kind == "array":
        items = from_crd_schema(schema.get("items") or {})
        most = min(schema.get("maxItems", 20), 20)
        unique = schema.get("x-kubernetes-list-type") == "set"
        return st.lists(items, max_size=most, unique=unique)
    raise ValueError(f"schema keyword type={kind!r} is not in the subset the CRDs use: {dict(schema)}")


def spec_schema(crd: Mapping[str, Any], version: str = "v1") -> Mapping[str, Any]:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]["properties"]["spec"]  # type: ignore[no-any-return]
    raise ValueError(f"CRD {crd['metadata']['name']} has no version {version}")


# --- bodies ------------------------------------------------------------------------------------

names = st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True).map(lambda s: f"fz-{s}")


def body(kind: str, name: str, spec: Any, **top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": GROUP_VERSION, "kind": kind, "metadata": {"name": name}}
    if spec is not ...:
        doc["spec"] = spec
    doc.update(top)
    return doc


@st.composite
def valid_pet_specs(draw: st.DrawFn, generated: st.SearchStrategy[Any], ids: st.SearchStrategy[int],
                    stores: Sequence[str]) -> dict[str, Any]:
    """A schema-valid spec whose id and store are drawn from what the run set up (so that taken ids,
    existing, missing and narrowing stores all come up), tags mostly from a small pool."""
    spec = dict(draw(generated))
    spec["id"] = draw(ids)
    if draw(st.booleans()):
        spec["store"] = draw(st.sampled_from(list(stores)))
    if draw(st.booleans()):
        spec["tags"] = draw(st.lists(st.sampled_from(TAG_POOL), max_size=5, unique=True))
    return spec


TAG_POOL = ("dog", "cat", "bird", "fish", "small", "large", "x", "a-1", "0")

# --- exactly one rule broken -------------------------------------------------------------------

# Cyrillic o and a, full-width letters, a dotted capital I, sharp s, accents, a zero-width space,
# a trailing newline (which Python's ``$`` would accept), NUL, spaces, capitals, underscores
LOOKALIKES = ("d\u043eg", "c\u0430t", "\uff44\uff4f\uff47", "dog\n", "dog ", " dog", "Dog", "dog_", "dog.",
              "-dog", "dog-", "\uff44", "\u0130", "\u00df", "\u00e9", "d\u0301og", "\u200bdog", "dog\x00")

Mutation = Callable[[st.DrawFn, dict[str, Any]], Any]


def _set(key: str, values: st.SearchStrategy[Any] | list[Any]) -> Mutation:
    """Set ``key`` to a drawn value; a list of values is also swept one by one (:func:`boundary_cases`)."""
    strategy = st.sampled_from(values) if isinstance(values, list) else values

    def mutate(draw: st.DrawFn, spec: dict[str, Any]) -> Any:
        spec[key] = draw(strategy)
        return spec
    if isinstance(values, list):
        mutate.sweep = (key, values)  # type: ignore[attr-defined]
    return mutate


def _drop(key: str) -> Mutation:
    def mutate(draw: st.DrawFn, spec: dict[str, Any]) -> Any:
        spec.pop(key, None)
        return spec
    return mutate


def _tags(values: st.SearchStrategy[list[Any]] | list[list[Any]]) -> Mutation:
    return _set("tags", values)


def _unknown(draw: st.DrawFn, spec: dict[str, Any]) -> Any:
    key = draw(st.sampled_from(["colour", "ID", "Name", "tag", "owner", "spec", "status"]))
    spec[key] = draw(st.sampled_from([1, "x", None, [], {}]))
    if spec[key] is None:  # a null unknown field is pruned like any null, so it breaks nothing
        spec[key] = 0
    return spec


ok_tag = st.sampled_from(TAG_POOL)
wrong_types = [True, "5", [], {}, "x"]

PET_BREAKERS: dict[str, tuple[str, Mutation]] = {
    "id below 1": ("spec.id.range", _set("id", [0, -1, -(2**53), -(2**63)])),
    "id above 2^53-1": ("spec.id.range", _set("id", [MAX_ID + 1, 2**63 - 1, 2**63, 2**64, float(2**53), 1e300])),
    "id with a fraction": ("spec.id.type", _set("id", [1.5, 0.5, 1e-3, 123456.25, -0.5])),
    "id not a number": ("spec.id.type", _set("id", wrong_types)),
    "id missing": ("spec.id.required", _drop("id")),
    "id null": ("spec.id.required", _set("id", [None])),
    "name empty": ("spec.name.length", _set("name", [""])),
    "name too long": ("spec.name.length", _set("name", st.text(min_size=64, max_size=70))),
    "name not a string": ("spec.name.type", _set("name", [1, True, [], {}])),
    "name missing": ("spec.name.required", _drop("name")),
    "category too long": ("spec.category.length", _set("category", st.text(min_size=64, max_size=66))),
    "category not a string": ("spec.category.type", _set("category", [1, False, ["a"]])),
    "17 tags": ("spec.tags.count", _tags([[f"t{i}" for i in range(17)], [f"t{i}" for i in range(20)]])),
    "duplicate tag": ("spec.tags.unique", _tags([["dog", "zz", "dog"], ["a", "a"]])),
    "tag look-alike": ("spec.tags.format", _tags([["dog-x", t] for t in LOOKALIKES])),
    "tag too long": ("spec.tags.format", _tags([["a" * 64], ["a" * 70]])),
    "tag empty": ("spec.tags.format", _tags([[""]])),
    "tag not a string": ("spec.tags.type", _tags([[1], [None], [True], [["a"]]])),
    "tags not a list": ("spec.tags.type", _set("tags", ["dog", 1, {"a": 1}])),
    "11 photo urls": ("spec.photoUrls.count", _set("photoUrls", [["u"] * 11, ["u"] * 12])),
    "photo url too long": ("spec.photoUrls.length",
                           _set("photoUrls", [["h" * 2049], ["h" * 2060]])),
    "photo url not a string": ("spec.photoUrls.type", _set("photoUrls", [[5]])),
    "availability outside the enum": ("spec.availability.enum",
                                      _set("availability", ["Available", "", "gone", "sold "])),
    "availability not a string": ("spec.availability.type", _set("availability", [1, True])),
    "store not a name": ("spec.store.format",
                         _set("store", ["Shop", "shop_1", "-shop", "shop.", "\u0455hop", "a" * 254, ""])),
    "store not a string": ("spec.store.type", _set("store", [1, ["shop"]])),
    "unknown field": ("unknown-field", _unknown),
    "spec not an object": ("spec.type", lambda draw, spec: draw(st.sampled_from([[], "spec", 1, True]))),
    "spec missing": ("spec.required", lambda draw, spec: ...),
}

STORE_BREAKERS: dict[str, tuple[str, Mutation]] = {
    "257 allowed tags": ("spec.allowedTags.count", _set("allowedTags", [[f"t{i}" for i in range(257)]])),
    "duplicate allowed tag": ("spec.allowedTags.unique", _set("allowedTags", [["dog", "dog"], ["x", "y", "x"]])),
    "allowed tag look-alike": ("spec.allowedTags.format", _set("allowedTags", [[t] for t in LOOKALIKES])),
    "allowed tag not a string": ("spec.allowedTags.type", _set("allowedTags", [[7]])),
    "allowedTags not a list": ("spec.allowedTags.type", _set("allowedTags", ["dog"])),
    "display name too long": ("spec.displayName.length", _set("displayName", st.text(min_size=254, max_size=260))),
    "display name not a string": ("spec.displayName.type", _set("displayName", [3])),
    "unknown field": ("unknown-field", _unknown),
    "spec not an object": ("spec.type", lambda draw, spec: draw(st.sampled_from([[], "x", 2]))),
}


@st.composite
def pet_examples(draw: st.DrawFn, generated: st.SearchStrategy[Any], ids: st.SearchStrategy[int],
                 stores: Sequence[str]) -> Example:
    kind = draw(st.sampled_from(KINDS))
    if kind == "garbage":
        return draw(garbage("pets", "Pet"))
    spec = draw(valid_pet_specs(generated, ids, stores))
    if kind == "valid":
        doc = body("Pet", draw(names), spec)
        if draw(st.integers(0, 7)) == 0:  # a forged status: dropped by the API server, never reached
            doc["status"] = {"phase": draw(st.sampled_from(["Active", "Conflict", "Bogus"])), "reason": "Forged"}
        return Example("valid", "pets", encode(doc), doc)
    label = draw(st.sampled_from(sorted(PET_BREAKERS)))
    rule, mutate = PET_BREAKERS[label]
    doc = body("Pet", draw(names), mutate(draw, spec))
    return Example("breaker", "pets", encode(doc), doc, rule, label)


@st.composite
def store_examples(draw: st.DrawFn, generated: st.SearchStrategy[Any]) -> Example:
    kind = draw(st.sampled_from(KINDS))
    if kind == "garbage":
        return draw(garbage("petstores", "PetStore"))
    spec = dict(draw(generated))
    if kind == "valid":
        doc = body("PetStore", draw(names), spec)
        return Example("valid", "petstores", encode(doc), doc)
    label = draw(st.sampled_from(sorted(STORE_BREAKERS)))
    rule, mutate = STORE_BREAKERS[label]
    doc = body("PetStore", draw(names), mutate(draw, spec))
    return Example("breaker", "petstores", encode(doc), doc, rule, label)


# --- garbage -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def garbage(draw: st.DrawFn, plural: str, kind: str) -> Example:
    """Anything but a well-formed object: arbitrary JSON as the body or as the spec, broken JSON,
    deep nesting, and bodies near and over the API server's request limit."""
    shape = draw(st.sampled_from(["json body", "json spec", "broken json", "deep", "big annotation", "over limit",
                                  "not utf-8"]))
    name = draw(names)
    if shape == "json body":
        doc = draw(json_values)
        return Example("garbage", plural, encode(doc), doc, label=shape)
    if shape == "json spec":
        doc = body(kind, name, draw(json_values))
        return Example("garbage", plural, encode(doc), doc, label=shape)
    if shape == "broken json":
        full = encode(body(kind, name, {"id": 1, "name": "x"}))
        cut = draw(st.integers(1, len(full) - 1))
        return Example("garbage", plural, full[:cut], None, label=shape)
    if shape == "deep":
        depth = draw(st.sampled_from([100, 1000, 20_000, 100_000]))
        raw = b'{"apiVersion":"%s","kind":"%s","metadata":{"name":"%s"},"spec":' % (
            GROUP_VERSION.encode(), kind.encode(), name.encode())
        return Example("garbage", plural, raw + b"[" * depth + b"]" * depth + b"}", None, label=f"{shape} {depth}")
    if shape == "not utf-8":
        return Example("garbage", plural, b'{"apiVersion":"\xff\xfe"}', None, label=shape)
    size = draw(st.sampled_from([200_000, 262_145, 1_000_000, 2_000_000]) if shape == "big annotation"
                else st.sampled_from([REQUEST_LIMIT + 1, REQUEST_LIMIT + 100_000]))
    spec: dict[str, Any] = {"id": 1, "name": "x"} if kind == "Pet" else {}
    doc = body(kind, name, spec)
    doc["metadata"]["annotations"] = {"fuzz": "a" * size}
    return Example("garbage", plural, encode(doc), doc, label=f"{shape} {size}")


def boundary_cases(plural: str) -> list[tuple[str, str, Any]]:
    """Every listed value of every breaker, each on a valid base spec: (label, rule, spec).

    Hypothesis draws these too, but a bound is found only when its very value is drawn; this
    sweep sends each one once, so the CI profile covers every bound."""
    breakers = PET_BREAKERS if plural == "pets" else STORE_BREAKERS
    base: dict[str, Any] = {"id": 100, "name": "base"} if plural == "pets" else {}
    out: list[tuple[str, str, Any]] = []
    for label, (rule, mutate) in sorted(breakers.items()):
        key, values = getattr(mutate, "sweep", ("", []))
        for value in values:
            out.append((f"{label}: {value!r}"[:80], rule, {**base, key: value}))
    return out

"""The fuzzing oracle (pet_harness.fuzz.contract) against the contract's own examples, and the
strategies' promises (a breaker breaks the rule it names)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pet_harness.fuzz import contract
from pet_harness.fuzz.strategies import (
    PET_BREAKERS,
    boundary_cases,
    encode,
    from_crd_schema,
    pet_examples,
    spec_schema,
)
from pet_harness.kube import CRD_DIR, load_yaml_documents

NS = "ns"


def pet(spec: Any = ..., **top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": contract.GROUP_VERSION, "kind": "Pet", "metadata": {"name": "p"}}
    if spec is not ...:
        doc["spec"] = spec
    doc.update(top)
    return doc


def rules(doc: Any, world: contract.World | None = None, **kw: Any) -> tuple[str, ...]:
    return contract.judge_request(encode(doc), "pets", NS, world or contract.World(), **kw).rules


@pytest.mark.parametrize(("spec", "expected"), [
    ({"id": 1, "name": "a"}, ()),
    ({"id": contract.MAX_ID, "name": "a" * 63}, ()),
    ({"id": contract.MAX_ID + 1, "name": "a"}, ("spec.id.range",)),
    ({"id": 0, "name": "a"}, ("spec.id.range",)),
    ({"id": 1.0, "name": "a"}, ()),  # Kubernetes: an integral number is an integer
    ({"id": 1.5, "name": "a"}, ("spec.id.type",)),
    ({"id": True, "name": "a"}, ("spec.id.type",)),
    ({"id": None, "name": "a"}, ("spec.id.required",)),  # null is absent
    ({"id": 1, "name": ""}, ("spec.name.length",)),
    ({"id": 1, "name": "a" * 64}, ("spec.name.length",)),
    ({"id": 1, "name": "a", "category": None}, ()),
    ({"id": 1, "name": "a", "tags": ["dog", "dog"]}, ("spec.tags.unique",)),
    ({"id": 1, "name": "a", "tags": ["dog\n"]}, ("spec.tags.format",)),  # the whole string must match
    ({"id": 1, "name": "a", "tags": [f"t{i}" for i in range(17)]}, ("spec.tags.count",)),
    ({"id": 1, "name": "a", "photoUrls": ["u"] * 10}, ()),
    ({"id": 1, "name": "a", "photoUrls": ["x" * 2049]}, ("spec.photoUrls.length",)),
    ({"id": 1, "name": "a", "availability": "Sold"}, ("spec.availability.enum",)),
    ({"id": 1, "name": "a", "store": "Shop"}, ("spec.store.format",)),
    ({"id": 1, "name": "a", "colour": "red"}, ("unknown-field",)),
])
def test_pet_schema_rules(spec: dict[str, Any], expected: tuple[str, ...]) -> None:
    assert rules(pet(spec)) == expected


def test_the_first_stage_that_refuses_is_the_only_one_named() -> None:
    # an unknown field is refused while decoding, before the schema is checked
    assert rules(pet({"id": 0, "name": "", "colour": 1})) == ("unknown-field",)
    # schema errors are all named together
    assert rules(pet({"id": 0, "name": ""})) == ("spec.id.range", "spec.name.length")
    assert rules([1, 2]) == ("body.type",)
    assert contract.judge_request(b'{"a":', "pets", NS, contract.World()).rules == ("body.json",)
    deep = b'{"apiVersion":"petstore.example.com/v1","kind":"Pet","spec":' + b"[" * 20000 + b"]" * 20000 + b"}"
    assert contract.judge_request(deep, "pets", NS, contract.World()).rules == ("body.json",)
    assert contract.judge_request(b" " * (contract.REQUEST_LIMIT + 1), "pets", NS, contract.World()).rules == (
        "body.size",)


def test_status_sent_with_the_object_is_ignored_but_read_strictly() -> None:
    assert rules(pet({"id": 1, "name": "a"}, status={"phase": "Bogus", "reason": "Forged"})) == ()
    assert rules(pet({"id": 1, "name": "a"}, status={"bogus": 1})) == ("unknown-field",)


def test_webhook_rules_follow_the_world() -> None:
    world = contract.World(stores={(NS, "pair"): ["cat", "dog"], (NS, "closed"): [], (NS, "open"): None},
                           holders={7: ("other", "rex")})
    assert rules(pet({"id": 1, "name": "a", "store": "pair", "tags": ["cat", "fish"]}), world) == (
        "spec.tags.allowed",)
    verdict = contract.judge_request(encode(pet({"id": 1, "name": "a", "store": "pair", "tags": ["fish"]})), "pets",
                                     NS, world)
    assert verdict.broken[0].mentions() == ("'fish'",)
    assert rules(pet({"id": 1, "name": "a", "store": "closed", "tags": ["x"]}), world) == ("spec.tags.allowed",)
    assert rules(pet({"id": 1, "name": "a", "store": "open", "tags": ["x"]}), world) == ()
    assert rules(pet({"id": 1, "name": "a", "store": "gone", "tags": ["x"]}), world) == ()  # Pending later
    assert rules(pet({"id": 7, "name": "a"}), world) == ("spec.id.unique",)
    old = pet({"id": 7, "name": "a", "store": "pair", "tags": ["fish"]})
    # an update that leaves tags and store alone is not judged on tags, and the id is not re-checked
    assert rules(pet({"id": 7, "name": "b", "store": "pair", "tags": ["fish"]}), world, operation="UPDATE",
                 old=old) == ()
    assert rules(pet({"id": 8, "name": "b"}), world, operation="UPDATE", old=old) == ("spec.id.immutable",)


def test_expected_phase_precedence() -> None:
    stores = {(NS, "pair"): ["dog"]}
    key = (NS, "p")
    assert contract.expected_pet(key, {"id": 1}, stores, None).phase == "Active"
    assert contract.expected_pet(key, {"id": 1}, stores, ("x", "y")) == contract.Expected(
        "Conflict", "DuplicateId", ("x", "y"))
    assert contract.expected_pet(key, {"id": 1, "store": "gone"}, stores, key).reason == "StoreNotFound"
    assert contract.expected_pet(key, {"id": 1, "store": "pair", "tags": ["cat"]}, stores, key).reason == (
        "TagsNotAllowed")
    assert contract.holders_of({("a", "young"): (2, 5), ("b", "old"): (1, 5), ("c", "x"): (3, 6)}) == {
        5: ("b", "old"), 6: ("c", "x")}


def test_every_boundary_case_breaks_its_rule_in_the_model() -> None:
    cases = boundary_cases("pets") + boundary_cases("petstores")
    assert len(cases) > 80
    for label, rule, spec in cases:
        kind, plural = ("Pet", "pets") if "id" in spec else ("PetStore", "petstores")
        doc = {"apiVersion": contract.GROUP_VERSION, "kind": kind, "metadata": {"name": "b"}, "spec": spec}
        got = contract.judge_request(encode(doc), plural, NS, contract.World()).rules
        assert rule in got, f"{label}: {got}"


PET_CRD = next(d for d in load_yaml_documents(CRD_DIR / "pets.petstore.example.com.yaml"))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_generated_examples_keep_their_promises(data: st.DataObject) -> None:
    """Specs generated from the CRD schema are valid in the model; breakers break what they name."""
    generated = from_crd_schema(spec_schema(PET_CRD))
    ex = data.draw(pet_examples(generated, st.integers(1, contract.MAX_ID), ["open"]))
    verdict = contract.judge_request(ex.body, "pets", NS, contract.World())
    if ex.kind == "valid":
        assert verdict.admitted, (verdict.rules, json.loads(ex.body))
    elif ex.kind == "breaker":
        assert ex.intended in verdict.rules, (ex.label, verdict.rules)
    assert set(PET_BREAKERS)  # the table is not empty

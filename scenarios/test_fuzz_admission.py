"""Admission fuzzing (issue 8): Hypothesis examples of pets and stores, valid, breaking one named
rule, and garbage, sent to the real API server with dry run (the webhook runs too) and, for a
sample, for real; the model of the contract (pet_harness.fuzz.contract) is the oracle.

Sizes and randomness come from the fuzz profile (``--fuzz-profile ci|long``; ``pet-harness fuzz``).
Every disagreement found is kept below as an explicit ``@example``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import wait_phase
from hypothesis import example, given, seed
from hypothesis import strategies as st
from kubernetes import client

from pet_harness.fuzz import admission, contract
from pet_harness.fuzz.rawapi import RawApi
from pet_harness.fuzz.strategies import (
    Example,
    boundary_cases,
    encode,
    from_crd_schema,
    pet_examples,
    spec_schema,
    store_examples,
)
from pet_harness.kube import PetApi
from pet_harness.waiting import wait_for

pytestmark = pytest.mark.fuzz

STORES = {"open": None, "closed": [], "pair": ["cat", "dog"]}  # and "gone", which never exists
HELD = {"held-0": 7, "held-1": 4242, "held-2": contract.MAX_ID}
REAL_BASE = 8_000_000_000_000_000  # ids of the real samples; nothing else draws from here
REAL_EVERY = 25


def installed_spec_schema(kube_api: Any, name: str) -> dict[str, Any]:
    crd = client.ApiextensionsV1Api(kube_api).read_custom_resource_definition(name)
    return dict(spec_schema(kube_api.sanitize_for_serialization(crd)))


@pytest.fixture
def fuzz_target(request: pytest.FixtureRequest, kube_api: Any) -> Any:
    """(pets, operator): this test's namespace served by an operator it starts, or, with
    ``--fuzz-namespace NS`` (``pet-harness fuzz --target kubeconfig``), a namespace of a cluster
    whose own operator serves it (operator None); what the test creates there is deleted after."""
    served = request.config.getoption("--fuzz-namespace")
    if not served:
        yield request.getfixturevalue("pets"), request.getfixturevalue("pet_operator")
        return
    pets = PetApi(kube_api, served)
    yield pets, None
    _remove_fuzz_objects(pets)


def _remove_fuzz_objects(pets: PetApi) -> None:
    for p in pets.list_pets():
        if p["metadata"]["name"].startswith(("fz-", "held-")):
            pets.delete_pet(p["metadata"]["name"])
    for s in pets.list_stores():
        if s["metadata"]["name"] in STORES:
            pets.delete_store(s["metadata"]["name"])


@pytest.fixture
def admission_world(fuzz_target: Any) -> contract.World:
    """Stores of each kind and three pets holding ids, for real; the model sees the same."""
    pets, _ = fuzz_target
    world = contract.World()
    for name, allowed in STORES.items():
        pets.create_store(name, {} if allowed is None else {"allowedTags": allowed})
        world.stores[(pets.namespace, name)] = allowed
    for name, pet_id in HELD.items():
        pets.create_pet(name, {"id": pet_id, "name": name})
        world.holders[pet_id] = (pets.namespace, name)
    for name in HELD:
        wait_phase(pets, name, "Active")
    if fuzz_target[1] is None:  # a shared cluster: ids its pets hold are taken too
        listing = client.CustomObjectsApi(pets.api).list_cluster_custom_object(contract.GROUP_VERSION.split("/")[0],
                                                                               "v1", "pets")
        for item in listing["items"]:
            if (item.get("status") or {}).get("phase") == "Active":
                meta = item["metadata"]
                world.holders.setdefault(item["spec"]["id"], (meta["namespace"], meta["name"]))
    return world


def _ids() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(sorted(HELD.values())), st.integers(1, REAL_BASE - 1),
                     st.integers(REAL_BASE + 10**9, contract.MAX_ID))


@st.composite
def _requests(draw: st.DrawFn, pet_spec: Any, store_spec: Any, held: dict[str, dict[str, Any]]) -> Any:
    """An example and what it is sent as: a create, or (pets) an update of a held pet."""
    if draw(st.integers(0, 4)) == 0:
        return draw(store_examples(store_spec)), admission.Target()
    ex: Example = draw(pet_examples(pet_spec, _ids(), [*STORES, "gone"]))
    if not isinstance(ex.doc, dict) or not isinstance(ex.doc.get("metadata"), dict) or draw(st.integers(0, 3)) != 0:
        return ex, admission.Target()
    name = draw(st.sampled_from(sorted(held)))
    old = held[name]
    doc = json.loads(json.dumps(ex.doc))
    doc["metadata"] = {"name": name, "resourceVersion": old["metadata"]["resourceVersion"]}
    if ex.kind == "valid" and draw(st.booleans()):
        doc["spec"]["id"] = old["spec"]["id"]  # keep the id: a valid update; else the id changes
    return Example(ex.kind, ex.plural, encode(doc), doc, ex.intended, ex.label), admission.Target("UPDATE", name, old)


def test_admission_agrees_with_the_contract(
    kube_api: Any, pet_cluster: Any, fuzz_target: Any, admission_world: contract.World,
    fuzz_config: Any, fuzz_tally: Any,
) -> None:
    pets, pet_operator = fuzz_target
    raw = RawApi(pet_cluster.kubeconfig_path)
    ns = pets.namespace
    held = {name: pets.get_pet(name) for name in HELD}
    pet_spec = from_crd_schema(installed_spec_schema(kube_api, "pets.petstore.example.com"))
    store_spec = from_crd_schema(installed_spec_schema(kube_api, "petstores.petstore.example.com"))
    counter = {"n": 0, "real": 0}

    def real_sample(ex: Example) -> None:
        """Create an admitted valid pet for real under a reserved id, wait for the phase the model
        expects, delete it and wait until it is gone (claim released, finalizer removed)."""
        counter["real"] += 1
        doc = json.loads(json.dumps(ex.doc))
        name = f"fz-real-{counter['real']}"
        doc["metadata"] = {"name": name}
        doc["spec"]["id"] = REAL_BASE + counter["real"]
        real = Example(ex.kind, ex.plural, encode(doc), doc, label="real sample")
        verdict, _reply, found = admission.check(raw, real, ns, admission_world, admission.Target(), fuzz_tally,
                                                dry_run=False)
        assert not found, found
        if not verdict.admitted:
            return
        if ex.plural == "pets":
            want = contract.expected_pet((ns, name), doc["spec"], admission_world.stores, None)
            got = wait_phase(pets, name, want.phase, want.reason)
            fuzz_tally.phases[got["status"]["phase"]] += 1
            conditions = {c["type"]: c["status"] for c in got["status"].get("conditions", [])}
            for ctype, status in want.conditions().items():
                if status is not None and conditions.get(ctype) != status:
                    fuzz_tally.disagree("admission", f"{ctype} is {conditions.get(ctype)}, the model expects {status}",
                                        real.describe())
            pets.delete_pet(name)
            wait_for(lambda: [p for p in pets.list_pets() if p["metadata"]["name"] == name], lambda left: not left,
                     30, f"real sample {name} to be deleted")
        else:
            pets.delete_store(name)

    @fuzz_config.settings(fuzz_config.examples)
    @given(_requests(pet_spec, store_spec, held))
    # regressions found by fuzzing are kept here as explicit examples
    @example((Example("breaker", "pets", encode({"apiVersion": "petstore.example.com/v1", "kind": "Pet",
                                                 "metadata": {"name": "fz-x"}, "spec": {"id": 1.0, "name": "a"}}),
                      label="integral float id"), admission.Target()))
    def run(request: Any) -> None:
        ex, target = request
        verdict, _reply, found = admission.check(raw, ex, ns, admission_world, target, fuzz_tally)
        assert not found, found
        counter["n"] += 1
        if (verdict.admitted and ex.kind == "valid" and target.operation == "CREATE"
                and counter["n"] % REAL_EVERY == 0):
            real_sample(ex)

    if fuzz_config.seed is not None:
        run = seed(fuzz_config.seed)(run)
    try:
        run()
    finally:
        raw.close()
    if pet_operator is not None:  # a cluster's own operator (--fuzz-namespace) is watched by its owners
        assert pet_operator.running, "the operator died during admission fuzzing:\n" + pet_operator.log_tail()
        tracebacks = [line for line in pet_operator.log_text().splitlines() if "Traceback" in line]
        assert not tracebacks, pet_operator.log_tail(80)


def test_every_listed_bound_is_refused_by_its_rule(
    pet_cluster: Any, fuzz_target: Any, admission_world: contract.World, fuzz_tally: Any,
) -> None:
    """Each value a breaker lists (each bound ±1, wrong types, nulls, look-alikes ...) once, on a
    valid base: the model names the intended rule and the API server refuses it naming the field."""
    raw = RawApi(pet_cluster.kubeconfig_path)
    failures = []
    try:
        for plural, kind in (("pets", "Pet"), ("petstores", "PetStore")):
            for label, rule, spec in boundary_cases(plural):
                doc = {"apiVersion": contract.GROUP_VERSION, "kind": kind, "metadata": {"name": "fz-bound"},
                       "spec": spec}
                ex = Example("breaker", plural, encode(doc), doc, rule, label)
                _, _, found = admission.check(raw, ex, fuzz_target[0].namespace, admission_world, admission.Target(),
                                              fuzz_tally)
                failures += [f"{label}: {problem}" for problem in found]
    finally:
        raw.close()
    assert sum(fuzz_tally.examples.values()) > 80
    assert not failures, "\n".join(failures)

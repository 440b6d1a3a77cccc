"""The pure parts of the fuzz runners: the convergence model and its comparison with a cluster,
the judging of webhook answers and API replies, the summary, and the CLI's pytest command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pet_harness.fuzz import admission, contract, webhook
from pet_harness.fuzz.cli import pytest_command, summarize
from pet_harness.fuzz.convergence import Live, Model, claims_of, differences
from pet_harness.fuzz.rawapi import Reply
from pet_harness.fuzz.strategies import Example
from pet_harness.fuzz.tally import Tally

A, B = "ns-a", "ns-b"


def live_pet(ns: str, name: str, pet_id: int, phase: str, reason: str, message: str = "",
             conditions: dict[str, str] | None = None, **spec: Any) -> tuple[tuple[str, str], dict[str, Any]]:
    conds = conditions if conditions is not None else {
        "Ready": "True" if phase == "Active" else "False",
        "IdClaimed": "False" if phase == "Conflict" else "True",
        "TagsValid": "False" if reason == "TagsNotAllowed" else "True"}
    return (ns, name), {
        "metadata": {"name": name, "namespace": ns, "generation": 1},
        "spec": {"id": pet_id, "name": name, **spec},
        "status": {"phase": phase, "reason": reason, "message": message, "observedGeneration": 1,
                   "conditions": [{"type": t, "status": s} for t, s in conds.items()]},
    }


def test_the_oldest_waiting_duplicate_takes_a_released_id() -> None:
    model = Model()
    model.add_pet((A, "old"), {"id": 1})
    model.add_pet((B, "young"), {"id": 1}, holder=False)
    model.add_pet((B, "younger"), {"id": 1}, holder=False)
    assert model.holders == {1: (A, "old")}
    assert model.expected((B, "young")) == contract.Expected("Conflict", "DuplicateId", (A, "old"))
    model.remove_pet((A, "old"))
    assert model.holders == {1: (B, "young")}
    assert model.expected((B, "younger")).holder == (B, "young")


def test_a_converged_cluster_shows_no_differences_and_each_departure_is_named() -> None:
    model = Model(stores={(A, "s1"): ["dog"]})
    model.add_pet((A, "rex"), {"id": 1, "store": "s1", "tags": ["dog"]})
    model.add_pet((A, "tom"), {"id": 2, "store": "gone"})
    pets = dict([live_pet(A, "rex", 1, "Active", "Reconciled", store="s1", tags=["dog"]),
                 live_pet(A, "tom", 2, "Pending", "StoreNotFound", store="gone")])
    stores = {(A, "s1"): {"status": {"petCount": 1, "activeCount": 1}}}
    claims = {1: f"{A}/rex", 2: f"{A}/tom"}
    assert differences(model, Live(pets, stores, claims)) == []

    wrong = dict(pets)
    wrong[(A, "tom")] = live_pet(A, "tom", 2, "Active", "Reconciled", store="gone")[1]
    assert differences(model, Live(wrong, stores, claims)) == [
        f"pet {A}/tom is Active/Reconciled, the model expects Pending/StoreNotFound"]
    assert "id claims" in differences(model, Live(pets, stores, {1: f"{A}/rex"}))[0]
    assert "counts (2, 1)" in differences(model, Live(pets, {(A, "s1"): {"status": {"petCount": 2,
                                                                                    "activeCount": 1}}}, claims))[0]
    leftover = {**pets, (B, "ghost"): live_pet(B, "ghost", 9, "Active", "Reconciled")[1]}
    assert "the model deleted it" in differences(model, Live(leftover, stores, claims))[0]


def test_two_active_holders_of_one_id_are_a_difference_even_if_the_model_agrees_with_neither() -> None:
    model = Model()
    model.add_pet((A, "x"), {"id": 3})
    pets = dict([live_pet(A, "x", 3, "Active", "Reconciled"), live_pet(B, "y", 3, "Active", "Reconciled")])
    found = differences(model, Live(pets, {}, {3: f"{A}/x"}))
    assert any("has 2 Active pets" in line for line in found)


def test_claims_of_a_lease_listing() -> None:
    listing = {"items": [{"metadata": {"name": "pet-id-7"}, "spec": {"holderIdentity": "a/b"}},
                         {"metadata": {"name": "pet-operator-leader"}, "spec": {"holderIdentity": "pod"}}]}
    assert claims_of(listing) == {7: "a/b"}


def test_admission_problems() -> None:
    admitted = contract.ADMIT
    refused = contract.Verdict(False, (contract.Broken("spec.name.length", "spec.name"),))
    ok = Reply(201, b"{}", 0.01)
    bad = Reply(422, json.dumps({"message": "spec.name: Invalid value"}).encode(), 0.01)
    vague = Reply(422, json.dumps({"message": "no"}).encode(), 0.01)
    assert admission.problems(admitted, ok) == []
    assert admission.problems(refused, bad) == []
    assert "does not name" in admission.problems(refused, vague)[0]
    assert "cluster refused" in admission.problems(admitted, bad)[0]
    assert "cluster admitted" in admission.problems(refused, ok)[0]
    assert "answered 500" in admission.problems(refused, Reply(500, b"{}", 0.01))[0]
    assert admission.problems(admitted, Reply(0, b"", 15.0, "ReadTimeoutError"))[0].startswith("no answer")


def test_webhook_answers() -> None:
    doc = webhook.review("ns", {"metadata": {"name": "p"}, "spec": {"id": 1, "name": "p"}}, uid="u-9")
    valid = Example("valid", "reviews", json.dumps(doc).encode(), doc)
    good = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "response": {"uid": "u-9", "allowed": True}}).encode()
    assert webhook.answer_problems(valid, 200, good) == []
    assert "uid" in webhook.answer_problems(valid, 200, good.replace(b"u-9", b"u-8"))[0]
    assert "got 400" in webhook.answer_problems(valid, 400, b"{}")[0]
    garbage = Example("garbage", "reviews", b"{", None, label="truncated")
    assert webhook.answer_problems(garbage, 400, b"{}") == []
    assert "not a 4xx" in webhook.answer_problems(garbage, 200, good)[0]
    assert "answered 503" in webhook.answer_problems(garbage, 503, b"")[0]


def test_the_cli_runs_the_parts_with_the_profile_and_writes_one_summary(tmp_path: Path) -> None:
    args = argparse.Namespace(profile="long", examples=50, steps=None, machines=None, seed=3, part=["webhook"],
                              target="local", namespace=None)
    cmd = pytest_command(args, tmp_path)
    assert cmd[-1] == "--fuzz-seed=3" and "--fuzz-examples=50" in cmd and "--fuzz-profile=long" in cmd
    assert next(a for a in cmd if a.endswith(".py")).endswith("scenarios/test_fuzz_webhook.py")
    staging = argparse.Namespace(**{**vars(args), "target": "kubeconfig", "namespace": "team", "part": []})
    cmd = pytest_command(staging, tmp_path)
    assert next(a for a in cmd if a.endswith(".py")).endswith("test_fuzz_admission.py")
    assert "--fuzz-namespace=team" in cmd and "--pet-cluster=kubeconfig" in cmd

    parts = tmp_path / "parts"
    parts.mkdir()
    one, two = Tally(), Tally()
    one.examples["valid create"] = 3
    one.rejections["spec.id.range"] = 2
    two.examples["webhook valid"] = 4
    two.server_errors = 1
    two.disagree("webhook", "answered 500", "body")
    (parts / "a.json").write_text(json.dumps(one.as_dict()))
    (parts / "b.json").write_text(json.dumps(two.as_dict()))
    total = summarize(tmp_path, "pet-harness fuzz", "t").as_dict()
    assert total["examples_total"] == 7 and total["server_errors_5xx"] == 1
    assert len(total["disagreements"]) == 1
    text = (tmp_path / "summary.md").read_text()
    assert "`spec.id.range` | 2" in text and "## Disagreement (webhook)" in text

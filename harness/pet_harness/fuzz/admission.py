"""Admission fuzzing: send an example to the API server (dry run, or for real) and hold the answer
against the model's verdict."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pet_harness.fuzz import contract
from pet_harness.fuzz.rawapi import RawApi, Reply
from pet_harness.fuzz.strategies import Example
from pet_harness.fuzz.tally import Tally


@dataclasses.dataclass(frozen=True)
class Target:
    """Where an example goes: a pet to update (UPDATE) or nothing (CREATE)."""

    operation: str = "CREATE"
    name: str = ""  # UPDATE: the existing object
    old: Mapping[str, Any] | None = None  # UPDATE: its current body


def send(raw: RawApi, example: Example, namespace: str, target: Target, dry_run: bool = True) -> Reply:
    if target.operation == "UPDATE":
        return raw.replace(example.plural, namespace, target.name, example.body, dry_run=dry_run)
    return raw.create(example.plural, namespace, example.body, dry_run=dry_run)


def problems(verdict: contract.Verdict, reply: Reply) -> list[str]:
    """How the answer departs from the verdict and from the properties every answer must have."""
    out: list[str] = []
    if reply.status == 0:
        return [f"no answer: {reply.error}"]
    if reply.status >= 500:
        out.append(f"the API server answered {reply.status}: {reply.message[:300]}")
    admitted = 200 <= reply.status < 300
    if verdict.admitted and not admitted:
        out.append(f"the model admits it, the cluster refused it ({reply.status}): {reply.message[:400]}")
    elif not verdict.admitted and admitted:
        out.append(f"the model refuses it by {', '.join(verdict.rules)}, the cluster admitted it")
    elif not verdict.admitted:
        if not 400 <= reply.status < 500:
            out.append(f"a refusal must be a 4xx, it was {reply.status}")
        missing = [b for b in verdict.broken if not any(word in reply.message for word in b.mentions())]
        if missing and len(missing) == len(verdict.broken):
            # at least one of the first stage's faults must be named: the API server lists schema
            # errors all together, but a webhook or the decoder may name only the first
            wanted = "; ".join(f"{b.rule} ({' or '.join(b.mentions())})" for b in missing)
            out.append(f"the refusal does not name {wanted}: {reply.message[:400]}")
    return out


def stored_problems(example: Example, target: Target, reply: Reply) -> list[str]:
    """An admitted object comes back as it is (or would be) stored: its spec with nulls pruned and
    defaults applied, and, for a create, without the status it was sent with."""
    kind = "Pet" if example.plural == "pets" else "PetStore"
    doc = example.doc
    got = reply.json()
    if not isinstance(got, dict):
        return [f"an admitted {kind} came back as {reply.body[:200]!r}"]
    out = []
    sent = doc.get("spec")
    want = contract.stored_spec(sent if isinstance(sent, Mapping) else {}, kind)
    if (got.get("spec") or {}) != want:
        out.append(f"the {kind} is kept as spec {got.get('spec')!r}, the model expects {want!r}")
    if target.operation == "CREATE" and got.get("status"):
        out.append(f"a created {kind} kept the status it was sent with: {got.get('status')!r}")
    return out


def check(raw: RawApi, example: Example, namespace: str, world: contract.World, target: Target,
          tally: Tally, dry_run: bool = True) -> tuple[contract.Verdict, Reply, list[str]]:
    verdict = contract.judge_request(example.body, example.plural, namespace, world, target.operation, target.old)
    reply = send(raw, example, namespace, target, dry_run)
    tally.examples[f"{example.kind} {target.operation.lower()}{'' if dry_run else ' (real)'}"] += 1
    tally.status_codes[str(reply.status)] += 1
    if reply.status == 0:
        tally.no_answer += 1
    elif reply.status >= 500:
        tally.server_errors += 1
    if not verdict.admitted:
        for rule in verdict.rules:
            tally.rejections[rule] += 1
    found = problems(verdict, reply)
    if verdict.admitted and 200 <= reply.status < 300 and isinstance(example.doc, Mapping):
        found += stored_problems(example, target, reply)
    if example.intended is not None and verdict.rules and example.intended not in verdict.rules:
        found.append(f"the model names {verdict.rules} for a body made to break {example.intended} "
                     "(the model or the breaker is wrong)")
    for problem in found:
        tally.disagree("admission", problem, f"{target.operation} {example.describe()}")
    return verdict, reply, found

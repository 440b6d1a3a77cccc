"""Webhook fuzzing (issue 8, part 5): AdmissionReviews straight at the operator's TLS port: valid,
odd, garbage, huge, many at once, and a client trickling a byte a second."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

import pytest
from hypothesis import example, given, seed

from pet_harness.fuzz import webhook
from pet_harness.fuzz.strategies import Example, encode, from_crd_schema, spec_schema
from pet_harness.kube import CRD_DIR, PetApi, load_yaml_documents

pytestmark = [pytest.mark.fuzz, pytest.mark.usefixtures("needs_own_operator")]


def _pet_specs() -> Any:
    crd = load_yaml_documents(CRD_DIR / "pets.petstore.example.com.yaml")[0]
    return from_crd_schema(spec_schema(crd))


def test_the_webhook_answers_every_review_well_and_never_fails(
    pets: PetApi, pet_operator: Any, fuzz_config: Any, fuzz_tally: Any,
) -> None:
    port = pet_operator.webhook_port
    pets.create_store("pair", {"allowedTags": ["cat", "dog"]})

    @fuzz_config.settings(fuzz_config.webhook_examples)
    @given(webhook.reviews(pets.namespace, _pet_specs()))
    # found by this test: a body with only a request uid (20 MB of it) was answered 200 allowed
    @example(Example("garbage", "reviews", b'{"request":{"uid":"' + b"a" * 1000 + b'"}}', label="bare uid"))
    @example(Example("odd", "reviews", b'{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview",'
                     b'"request":{"uid":"u","operation":"CREATE"}}', label="v1beta1"))
    def run(example: Any) -> None:
        path = webhook.PATHS[len(example.body) % 2]
        status, body = webhook.post(port, path, example.body)
        fuzz_tally.examples[f"webhook {example.kind}"] += 1
        fuzz_tally.status_codes[str(status)] += 1
        fuzz_tally.server_errors += status >= 500
        fuzz_tally.no_answer += status == 0
        found = webhook.answer_problems(example, status, body)
        for problem in found:
            fuzz_tally.disagree("webhook", problem, f"{path} {example.describe()}")
        assert not found, found

    if fuzz_config.seed is not None:
        run = seed(fuzz_config.seed)(run)
    run()
    assert pet_operator.running, pet_operator.log_tail()


def test_the_webhook_keeps_answering_under_garbage_and_a_trickling_client(
    pets: PetApi, pet_operator: Any, fuzz_tally: Any,
) -> None:
    """While one client trickles a byte a second and eight threads send garbage, well-formed
    reviews are answered; the trickler is cut off by the webhook's first-request deadline."""
    port = pet_operator.webhook_port
    stop = threading.Event()
    closed_after: dict[str, float | None] = {}

    def trickler() -> None:
        closed_after["t"] = webhook.trickle(port, seconds=25)

    def garbage() -> int:
        sent = 0
        while not stop.is_set() and sent < 200:  # bounded in count and (by the stop flag) in time
            status, _ = webhook.post(port, "/validate-pets", b'{"request": [' * 50, timeout=10)
            assert status == 400 or 400 <= status < 500, status
            sent += 1
        return sent

    good = encode(webhook.review(pets.namespace, {
        "apiVersion": "petstore.example.com/v1", "kind": "Pet",
        "metadata": {"name": "ok", "namespace": pets.namespace}, "spec": {"id": 5, "name": "ok"}}, uid="u-1"))
    slow = threading.Thread(target=trickler)
    slow.start()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        noise = [pool.submit(garbage) for _ in range(8)]
        answers = []
        try:
            for _ in range(20):
                status, body = webhook.post(port, "/validate-pets", good, timeout=10)
                answers.append(status)
                fuzz_tally.examples["webhook valid under garbage"] += 1
                assert status == 200 and b'"uid":"u-1"' in body.replace(b" ", b""), (status, body[:200])
        finally:
            stop.set()
            sent = sum(f.result() for f in noise)
    slow.join(40)
    fuzz_tally.examples["webhook garbage (threads)"] += sent
    assert answers == [200] * 20
    assert closed_after["t"] is not None, "a client trickling one byte a second kept its connection for 25 s"
    fuzz_tally.notes.append(f"a trickling client was disconnected after {closed_after['t']:.1f} s")
    assert pet_operator.running, pet_operator.log_tail()

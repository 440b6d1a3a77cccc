"""Convergence fuzzing (issue 8, part 4): Hypothesis's stateful testing over real operations on the
real API server, with the operator SIGKILLed and restarted (one replica) or its replicas killed in
turn under leader election (two replicas); after every step the cluster must settle to what the
model of the contract says."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis.stateful import run_state_machine_as_test
from kubernetes import client

from pet_harness.fuzz.convergence import Env, claims_of, machine
from pet_harness.kube import PetApi

pytestmark = [pytest.mark.fuzz, pytest.mark.usefixtures("needs_own_operator")]

FAST_LEADER = ("--leader-elect", "--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5")


@pytest.mark.parametrize("replicas", [1, 2], ids=["one-replica", "two-replicas-leader-election"])
def test_the_cluster_converges_to_the_model_after_every_step(
    replicas: int, kube_api: Any, make_namespace: Any, claims_namespace: str, operator_factory: Any,
    fuzz_config: Any, fuzz_tally: Any,
) -> None:
    namespaces = (make_namespace("fz-a"), make_namespace("fz-b"))
    extra = FAST_LEADER if replicas == 2 else ()
    operators = [operator_factory(list(namespaces), extra_args=extra) for _ in range(replicas)]
    coordination = client.CoordinationV1Api(kube_api)
    turn = {"n": 0}

    def restart() -> None:
        op = operators[turn["n"] % replicas]  # with two replicas, each in turn: the leader among them
        turn["n"] += 1
        op.kill()
        op.start(wait_ready=True)

    def list_claims() -> dict[int, str]:
        listing = coordination.list_namespaced_lease(claims_namespace)
        return claims_of(kube_api.sanitize_for_serialization(listing))

    env = Env(namespaces=namespaces, pet_api=lambda ns: PetApi(kube_api, ns), list_claims=list_claims,
              restart=restart, settle_timeout=30.0 if replicas == 1 else 45.0, tally=fuzz_tally)
    machines = fuzz_config.machines if replicas == 1 else max(1, fuzz_config.machines // 2)
    settings = fuzz_config.settings(machines, stateful_step_count=fuzz_config.steps)
    Machine = machine(env)
    Machine.TestCase.settings = settings
    # every run makes (nearly) the profile's number of steps: left alone, Hypothesis ends many runs
    # after one or two (``_min_steps`` is its own, underscored, parameter for this; Hypothesis < 7)
    # --fuzz-seed applies to the admission and webhook parts only
    run_state_machine_as_test(Machine, settings=settings, _min_steps=max(0, fuzz_config.steps - 1))
    for op in operators:
        assert op.running, op.log_tail()
        text = op.log_text()
        assert "Traceback" not in text, op.log_tail(80)
        assert not op.inconsistency_lines(), op.inconsistency_lines()[:3]

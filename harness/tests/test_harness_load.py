"""Unit tests of pet-harness load's parts that need no cluster: metrics, checks, summaries, options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pet_harness.load import apimetrics, report
from pet_harness.load.locust_run import LocustPlan
from pet_harness.load.runner import LoadOptions
from pet_harness.load.sampler import Sample, peak, rss_at
from pet_harness.load.verify import check


def sample(verb: str, group: str, resource: str, subresource: str, code: str, value: int) -> str:
    """One line of the API server's /metrics, as it prints them."""
    return (f'apiserver_request_total{{code="{code}",component="apiserver",dry_run="",group="{group}",'
            f'resource="{resource}",scope="resource",subresource="{subresource}",verb="{verb}",version="v1"}} {value}')


METRICS = "\n".join([
    "# HELP apiserver_request_total [STABLE] Counter of apiserver requests",
    "# TYPE apiserver_request_total counter",
    sample("POST", "petstore.example.com", "pets", "", "201", 10),
    sample("POST", "petstore.example.com", "pets", "", "422", 2),
    sample("PATCH", "petstore.example.com", "pets", "status", "200", 9),
    sample("GET", "", "", "/healthz", "200", 99),
    sample("GET", "coordination.k8s.io", "leases", "", "200", 4),
])


def test_request_counts_are_summed_by_verb_and_resource_and_non_resource_urls_left_out() -> None:
    counts = apimetrics.parse(METRICS)
    assert counts == {("POST", "pets"): 12, ("PATCH", "pets/status"): 9, ("GET", "leases"): 4}
    assert apimetrics.parse(METRICS, by_code=True)[("POST", "pets 422")] == 2


def test_operator_writes_are_the_servers_writes_less_the_load_clients_own() -> None:
    before = apimetrics.parse(METRICS)
    after = dict(before)
    after[("POST", "pets")] += 100
    after[("PATCH", "pets/status")] += 100
    after[("POST", "events")] = 100
    after[("GET", "leases")] += 50
    total = apimetrics.delta(before, after)
    ours = apimetrics.operator_writes(total, [("POST pets", 98), ("POST pets (duplicate id, refused)", 2)])
    assert ours == {("PATCH", "pets/status"): 100, ("POST", "events"): 100}
    assert apimetrics.writes(total) == {("POST", "pets"): 100, ("PATCH", "pets/status"): 100, ("POST", "events"): 100}


def test_creates_the_client_never_counted_are_not_the_operators() -> None:
    # Locust ends its users mid-request when the load stops: the API server still counts those creates
    before = apimetrics.parse(METRICS)
    after = dict(before)
    after[("POST", "pets")] += 105
    after[("POST", "leases")] = 100
    ours = apimetrics.operator_writes(apimetrics.delta(before, after), [("POST pets", 100)])
    assert ours == {("POST", "leases"): 100}


def pet(name: str, pet_id: int, phase: str | None, generation: int = 1, observed: int | None = 1,
        deleting: bool = False, where: str = "status") -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "ns", "name": name, "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        meta["finalizers"] = ["x"]
    status = {"phase": phase, "observedGeneration": observed} if phase else {}
    body: dict[str, Any] = {"metadata": meta, "spec": {"id": pet_id}}
    if where == "status":
        body["status"] = status
    else:
        body["status"] = {where: status}
    return body


def test_a_population_as_the_contract_says_has_no_problems() -> None:
    pets = [pet("a", 1, "Active"), pet("b", 1, "Conflict"), pet("c", 2, "Active", generation=3, observed=3)]
    by_phase, problems = check(pets, ["status"], claims={1, 2})
    assert problems == []
    assert by_phase == {"Active": 2, "Conflict": 1}


@pytest.mark.parametrize(("pets", "claims", "needle"), [
    ([pet("a", 1, "Active"), pet("b", 1, "Active")], None, "id 1: 2 Active pets"),
    ([pet("a", 1, "Conflict")], None, "id 1: 0 Active pets"),
    ([pet("a", 1, "Active", generation=2, observed=1)], None, "observedGeneration 1 != generation 2"),
    ([pet("a", 1, None)], None, "phase None"),
    ([pet("a", 1, "Pending")], None, "phase Pending"),
    ([pet("a", 1, "Active", deleting=True)], None, "still being deleted"),
    ([pet("a", 1, "Active")], {1, 7}, "1 claims without an Active holder [7]"),
    ([pet("a", 1, "Active")], set(), "1 held ids without a claim [1]"),
])
def test_each_departure_from_the_contract_is_named(pets: list[dict[str, Any]], claims: set[int] | None,
                                                  needle: str) -> None:
    _, problems = check(pets, ["status"], claims)
    assert any(needle in p for p in problems), problems


def test_the_status_path_of_the_naive_peer_is_honoured() -> None:
    _, problems = check([pet("a", 1, "Active", where="reconcile")], ["status", "reconcile"], None)
    assert problems == []
    _, problems = check([pet("a", 1, "Active", where="reconcile")], ["status"], None)
    assert problems


def test_sustainable_is_the_fastest_step_under_the_limit_without_failures() -> None:
    steps = [
        {"target_rate": 10, "achieved_rate": 9.8, "p99": 0.5, "failures": 0},
        {"target_rate": 20, "achieved_rate": 19.5, "p99": 1.9, "failures": 0},
        {"target_rate": 30, "achieved_rate": 28.0, "p99": 1.5, "failures": 3},
        {"target_rate": 40, "achieved_rate": 31.0, "p99": 4.0, "failures": 0},
    ]
    best = report.sustainable(steps, 2.0)
    assert best is not None and best["target_rate"] == 20
    assert report.sustainable(steps[3:], 2.0) is None


def test_ratios_compare_ours_with_the_others_from_the_same_run() -> None:
    def summary(kind: str, rate: float, limit: bool = True) -> dict[str, Any]:
        return {"operator": kind, "sustainable": {"achieved_rate": rate}, "create_rate": rate,
                "reconcile": {"p50": 0.1, "p95": 0.2, "p99": 0.3}, "api": {"writes_per_pet": 3.0},
                "rss": {"peak_mb": 80.0}, "verify": {"ok": True},
                "stop_reason": f"step at {rate + 10}/s: p99 4 s, 0 failures" if limit else "all 100 creates made"}
    comp = report.comparison([summary("ours", 80), summary("naive-kopf", 20), summary("raw", 100)])
    assert comp["ratios"] == {"ours/raw": 0.8, "ours/naive-kopf": 4.0}
    text = report.comparison_markdown(comp, {"rate": ">= 70 %"})
    assert "ours/raw = 0.8" in text and "| ours | 80 |" in text


def test_a_ramp_that_ran_out_of_pets_gives_only_a_bound() -> None:
    def summary(kind: str, rate: float, limit: bool) -> dict[str, Any]:
        return {"operator": kind, "sustainable": {"achieved_rate": rate}, "create_rate": rate,
                "reconcile": {"p50": 0.1, "p95": 0.2, "p99": 0.3}, "api": {"writes_per_pet": 3.0},
                "rss": {"peak_mb": 80.0}, "verify": {"ok": True},
                "stop_reason": "step at 90/s: p99 4 s, 0 failures" if limit else "all 100 creates made"}
    comp = report.comparison([summary("ours", 90, False), summary("naive-kopf", 45, True), summary("raw", 90, False)])
    assert comp["ratios"]["ours/naive-kopf"].startswith(">= 2.0")
    assert comp["ratios"]["ours/raw"].startswith("1.0 (undecided")
    comp = report.comparison([summary("ours", 60, True), summary("raw", 90, False)])
    assert comp["ratios"]["ours/raw"].startswith("<= 0.67")
    assert "| ours | 60 |" in report.comparison_markdown(comp, {})
    assert "| raw | ≥ 90 |" in report.comparison_markdown(comp, {})


def test_rss_at_a_population_is_the_first_sample_at_or_past_it() -> None:
    samples = [Sample(0, 50.0, 1.0, 0), Sample(1, 60.0, 1.0, 900), Sample(2, None, None, 1000),
               Sample(3, 70.0, 1.0, 1200), Sample(4, 65.0, 1.0, 5000)]
    assert rss_at(samples, 1000) == 70.0
    assert rss_at(samples, 10_000) is None
    assert peak(samples) == 70.0


def test_options_refuse_bad_values_naming_them() -> None:
    with pytest.raises(ValueError, match="--operator 'fast'"):
        LoadOptions(operators=("fast",)).validate()
    with pytest.raises(ValueError, match="--pets 0"):
        LoadOptions(pets=0).validate()
    with pytest.raises(ValueError, match="needs --kubeconfig"):
        LoadOptions(target="kubeconfig").validate()
    with pytest.raises(ValueError, match="--rate -1"):
        LoadOptions(rate=-1).validate()
    LoadOptions().validate()


def test_the_locust_command_line_carries_the_plan(tmp_path: Path) -> None:
    plan = LocustPlan(kubeconfig=tmp_path / "k", namespaces=["a", "b"], stores=3, pets=500, shape="ramp",
                      processes=2, extra=["--pet-writer", "client"])
    argv = plan.argv(tmp_path)
    assert argv[-1] == "PetCreator"
    assert "--headless" in argv
    assert argv[argv.index("--processes") + 1] == "2"
    assert argv[argv.index("--pet-namespaces") + 1] == "a,b"
    assert argv[argv.index("--stop-timeout") + 1] == "30"  # users finish the request they are in
    files = argv[argv.index("-f") + 1].split(",")
    assert files[0].endswith("locustfile.py") and files[1].endswith("shapes.py")
    web = LocustPlan(kubeconfig=tmp_path / "k", namespaces=["a"], stores=1, pets=10, shape="", web_port=8089)
    web_argv = web.argv(tmp_path)
    assert "--headless" not in web_argv and "--autostart" not in web_argv
    assert web_argv[web_argv.index("--web-host") + 1] == "127.0.0.1"
    assert "shapes.py" not in web_argv[web_argv.index("-f") + 1]
    assert web.longest_seconds() > 3600 and plan.longest_seconds() < 3600

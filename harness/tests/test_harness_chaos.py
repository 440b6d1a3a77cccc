"""The pure parts of the chaos harness: the steady-state check, summaries, derived (multi-round)
experiments, the provider functions (against a fake control server) and the ``pet-harness chaos``
argument handling."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pet_harness import chaos_cluster, chaos_env, chaos_runner, cli
from petchaos import actions, probes, staging


def pet(name: str, pet_id: int, phase: str = "Active", generation: int = 1, observed: int = 1,
        deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"id": pet_id}, "status": {"phase": phase, "observedGeneration": observed}}


def claim(pet_id: int, holder: str) -> dict[str, Any]:
    return {"metadata": {"name": f"pet-id-{pet_id}"}, "spec": {"holderIdentity": holder}}


# --- steady state ------------------------------------------------------------------------------


def test_steady_state_holds_with_one_non_conflict_pet_per_id_and_exact_claims() -> None:
    pets = [pet("a", 1), pet("b", 1, "Conflict"), pet("c", 2)]
    claims = [claim(1, "ns/a"), claim(2, "ns/c"), {"metadata": {"name": "pet-operator-leader"}, "spec": {}}]
    result = chaos_env.check_pets(pets, claims, "ns")
    assert result["ok"], result
    assert result["duplicate_ids"] == 0
    assert result["orphaned_claims"] == 0


@pytest.mark.parametrize(("pets", "claims", "problem"), [
    ([pet("a", 1), pet("b", 1)], [claim(1, "ns/a")], "id 1: 2 non-Conflict pets"),
    ([pet("a", 1)], [claim(1, "ns/a"), claim(9, "ns/gone")], "orphaned claims: [9]"),
    ([pet("a", 1)], [], "ids without a claim: [1]"),
    ([pet("a", 1, generation=2)], [claim(1, "ns/a")], "observedGeneration 1 != generation 2"),
    ([pet("a", 1, "Pending")], [claim(1, "ns/a")], "phase Pending"),
    ([pet("a", 1, deleting=True)], [], "being deleted"),
    ([pet("a", 1)], [claim(1, "ns/other")], "held by ns/other"),
])
def test_steady_state_problems(pets: list[dict[str, Any]], claims: list[dict[str, Any]], problem: str) -> None:
    result = chaos_env.check_pets(pets, claims, "ns")
    assert not result["ok"]
    assert any(problem in p for p in result["problems"]), result["problems"]


def test_duplicate_ids_are_counted() -> None:
    result = chaos_env.check_pets([pet("a", 1), pet("b", 1), pet("c", 1, "Conflict")], [claim(1, "ns/a")], "ns")
    assert result["duplicate_ids"] == 1


# --- summaries ---------------------------------------------------------------------------------


def analysis(gaps: list[float], non_leader: int = 0) -> dict[str, Any]:
    return {"summary": {"gap_seconds": gaps, "transitions": len(gaps), "writes_by_leaders": 10,
                        "writes_by_non_leaders": non_leader}, "violations": []}


def test_summary_of_a_clean_run_passes() -> None:
    s = chaos_runner.build_summary("kill-leader", {"status": "completed", "deviated": False}, analysis([4.0, 5.0, 9.0]),
                                [], {"ok": True, "duplicate_ids": 0}, 12.34, 0)
    assert s["passed"]
    assert s["failover_gap_median"] == 5.0
    assert s["failover_gap_max"] == 9.0
    assert s["seconds"] == 12.3
    assert s["pets_lost"] == 0


@pytest.mark.parametrize(("journal", "audit_result", "lost", "dups"), [
    ({"status": "completed", "deviated": True}, analysis([]), [], 0),
    ({"status": "failed", "deviated": False}, analysis([]), [], 0),
    ({"status": "completed", "deviated": False}, analysis([], non_leader=1), [], 0),
    ({"status": "completed", "deviated": False}, analysis([]), ["load-3"], 0),
    ({"status": "completed", "deviated": False}, analysis([]), [], 1),
    (None, analysis([]), [], 0),
])
def test_summary_fails_on_any_bad_figure(journal: Any, audit_result: Any, lost: list[str], dups: int) -> None:
    s = chaos_runner.build_summary("x", journal, audit_result, lost, {"duplicate_ids": dups}, 1.0)
    assert not s["passed"]
    assert s["failover_gap_median"] is None
    if journal is None:
        assert s["deviated"] is True


def run_entry(name: str, status: str | None = "succeeded") -> dict[str, Any]:
    """One entry of a journal's ``run`` list, as chaoslib writes it."""
    entry: dict[str, Any] = {"activity": {"type": "action", "name": name, "provider": {"type": "python"}},
                             "output": None, "start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T00:00:01+00:00",
                             "duration": 1.0}
    if status is not None:  # an interrupted activity has no status
        entry["status"] = status
    if status == "failed":
        entry["exception"] = ["RuntimeError: boom\n"]
    return entry


def test_summary_fails_on_a_failed_method_activity_although_the_run_completed() -> None:
    journal = {"status": "completed", "deviated": False,
               "run": [run_entry("kill-leader#1"), run_entry("steady-state-between-rounds", "failed"),
                       run_entry("kill-leader#2"), run_entry("restart-dead-replicas#2", None)]}
    s = chaos_runner.build_summary("kill-leader", journal, analysis([4.0]), [], {"duplicate_ids": 0}, 1.0, 0, rounds=2)
    assert s["failed_activities"] == 2
    assert s["failed_activity_names"] == ["steady-state-between-rounds", "restart-dead-replicas#2"]
    assert s["status"] == "completed"
    assert not s["passed"]
    assert s["rounds"] == 2


def test_summary_passes_when_every_method_activity_succeeded() -> None:
    journal = {"status": "completed", "deviated": False, "run": [run_entry("a#1"), run_entry("a#2")]}
    s = chaos_runner.build_summary("x", journal, analysis([4.0]), [], {"duplicate_ids": 0}, 1.0, 0)
    assert s["failed_activities"] == 0
    assert s["failed_activity_names"] == []
    assert s["rounds"] == 1
    assert s["passed"]


def test_summary_markdown_has_a_row_per_experiment() -> None:
    rows = [chaos_runner.build_summary(n, {"status": "completed", "deviated": False}, analysis([4.2]), [],
                                    {"duplicate_ids": 0}, 3.0, rounds=r) for n, r in (("a", 1), ("b", 3))]
    text = chaos_runner.summary_markdown(rows)
    assert "| a | 1 | completed | False | 0 | 4.2 | 4.2 | 1 | 0 | 0 | 0 | 3.0 | True |" in text
    assert "| b | 3 | completed |" in text


def test_summary_markdown_names_the_failed_activities() -> None:
    journal = {"status": "completed", "deviated": False, "run": [run_entry("heal#2", "failed")]}
    row = chaos_runner.build_summary("c", journal, analysis([]), [], {"duplicate_ids": 0}, 3.0, rounds=2)
    assert "| c | 2 | completed | False | 1 (heal#2) |" in chaos_runner.summary_markdown([row])


# --- derived experiments (rounds) ---------------------------------------------------------------


def experiment(timeout: Any = 40) -> dict[str, Any]:
    arguments = {} if timeout is None else {"timeout": timeout}
    return {
        "title": "Kill it",
        "steady-state-hypothesis": {"title": "ok", "probes": [
            {"type": "probe", "name": "steady-state", "tolerance": True,
             "provider": {"type": "python", "module": "petchaos.probes", "func": "steady_state",
                          "arguments": arguments}}]},
        "method": [
            {"type": "action", "name": "kill", "provider": {"type": "python", "module": "petchaos.actions",
                                                            "func": "kill_leader", "arguments": {}},
             "pauses": {"after": 6}},
            {"type": "action", "name": "restart", "provider": {"type": "python", "module": "petchaos.actions",
                                                               "func": "restart_dead_replicas", "arguments": {}}},
        ],
        "rollbacks": [{"type": "action", "name": "restart", "provider": {"type": "python"}}],
    }


def test_one_round_is_the_experiment_itself() -> None:
    source = experiment()
    derived = chaos_runner.derive_experiment(source, 1)
    assert derived == source
    assert derived is not source


def test_three_rounds_repeat_the_method_with_a_steady_state_check_between_rounds() -> None:
    source = experiment(timeout=40)
    before = copy.deepcopy(source)
    derived = chaos_runner.derive_experiment(source, 3)
    assert source == before  # not mutated
    method = derived["method"]
    assert len(method) == 3 * 2 + 2
    assert [a["name"] for a in method] == [
        "kill#1", "restart#1", "steady-state-between-rounds", "kill#2", "restart#2", "steady-state-between-rounds",
        "kill#3", "restart#3"]
    check = {"type": "action", "name": "steady-state-between-rounds",
             "provider": {"type": "python", "module": "petchaos.probes", "func": "require_steady_state",
                          "arguments": {"timeout": 40}}}
    assert method[2] == check
    assert method[5] == check
    assert method[3]["provider"] == source["method"][0]["provider"]
    assert method[3]["pauses"] == {"after": 6}
    assert derived["title"] == "Kill it (3 rounds)"
    assert derived["rollbacks"] == source["rollbacks"]
    assert derived["steady-state-hypothesis"] == source["steady-state-hypothesis"]
    method[0]["provider"]["arguments"]["x"] = 1  # the copies share nothing with the source
    assert source["method"][0]["provider"]["arguments"] == {}
    assert method[3]["provider"]["arguments"] == {}


def test_the_check_between_rounds_takes_the_hypothesis_timeout() -> None:
    assert chaos_runner.derive_experiment(experiment(timeout=7), 2)["method"][2]["provider"]["arguments"] == {
        "timeout": 7}
    default = chaos_runner.derive_experiment(experiment(timeout=None), 2)["method"][2]
    assert default["provider"]["arguments"] == {"timeout": 30}


def test_references_to_method_activities_follow_the_round() -> None:
    source = experiment()
    source["method"].append({"ref": "kill"})
    source["method"].append({"ref": "steady-state"})
    method = chaos_runner.derive_experiment(source, 2)["method"]
    assert [a.get("ref") for a in method if "ref" in a] == ["kill#1", "steady-state", "kill#2", "steady-state"]


@pytest.mark.parametrize("rounds", [0, -2])
def test_rounds_below_one_are_refused(rounds: int) -> None:
    with pytest.raises(ValueError, match=rf"rounds must be an integer >= 1, got {rounds}"):
        chaos_runner.derive_experiment(experiment(), rounds)


def test_every_real_experiment_derives_to_activities_that_exist() -> None:
    for name in chaos_runner.experiment_names():
        source = json.loads(chaos_runner.experiment_path(name).read_text())
        derived = chaos_runner.derive_experiment(source, 3)
        assert len(derived["method"]) == 3 * len(source["method"]) + 2, name
        timeout = source["steady-state-hypothesis"]["probes"][0]["provider"]["arguments"]["timeout"]
        for activity in derived["method"]:
            provider = activity["provider"]
            module = actions if provider["module"] == "petchaos.actions" else probes
            assert callable(getattr(module, provider["func"])), activity
            if activity["name"] == "steady-state-between-rounds":
                assert provider["arguments"] == {"timeout": timeout}


def test_an_environment_that_does_not_start_is_a_failed_experiment(tmp_path: Path) -> None:
    class Broken:
        def __enter__(self) -> Any:
            raise RuntimeError("no cluster today")

        def __exit__(self, *exc: object) -> None:
            pass

    (tmp_path / "kill-leader-journal.json").write_text('{"status": "completed", "deviated": false}')
    s = chaos_runner.run_experiment("kill-leader", tmp_path, env_factory=Broken)
    assert not s["passed"]
    assert s["deviated"] is True  # no journal of this run
    assert "no cluster today" in s["error"]
    assert json.loads((tmp_path / "kill-leader-summary.json").read_text())["error"] == s["error"]


class Unstartable:
    """An environment factory that records how it was made and fails to start."""

    made: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        Unstartable.made.append(kwargs)

    def __enter__(self) -> Any:
        raise RuntimeError("no cluster today")

    def __exit__(self, *exc: object) -> None:
        pass


def test_rounds_run_a_derived_copy_written_to_the_results(tmp_path: Path) -> None:
    source_path = chaos_runner.experiment_path("kill-leader")
    source_text = source_path.read_text()
    s = chaos_runner.run_experiment("kill-leader", tmp_path, env_factory=Unstartable, rounds=3)
    assert source_path.read_text() == source_text  # the source is never modified
    derived = json.loads((tmp_path / "kill-leader-experiment.json").read_text())
    assert derived == chaos_runner.derive_experiment(json.loads(source_text), 3)
    assert s["rounds"] == 3
    assert json.loads((tmp_path / "kill-leader-summary.json").read_text())["rounds"] == 3


def test_one_round_runs_the_source_and_leaves_no_derived_copy(tmp_path: Path) -> None:
    (tmp_path / "kill-leader-experiment.json").write_text("{}")  # from an earlier run with rounds
    s = chaos_runner.run_experiment("kill-leader", tmp_path, env_factory=Unstartable)
    assert s["rounds"] == 1
    assert not (tmp_path / "kill-leader-experiment.json").exists()


def test_the_default_environment_gets_max_pets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Unstartable.made.clear()
    monkeypatch.setattr(chaos_env, "ChaosEnvironment", Unstartable)
    s = chaos_runner.run_experiment("kill-leader", tmp_path, max_pets=77)
    assert Unstartable.made == [{"max_pets": 77}]
    assert "no cluster today" in s["error"]
    chaos_runner.run_experiment("kill-leader", tmp_path, env_factory=Unstartable, max_pets=5)
    assert Unstartable.made[-1] == {}  # an injected factory is called as it is


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rounds": 0}, "rounds must be an integer >= 1, got 0"),
    ({"max_pets": 0}, "max_pets must be an integer >= 1, got 0"),
    ({"max_pets": -5}, "max_pets must be an integer >= 1, got -5"),
])
def test_run_experiment_refuses_bad_sizes(tmp_path: Path, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chaos_runner.run_experiment("kill-leader", tmp_path, env_factory=Unstartable, **kwargs)
    assert not (tmp_path / "kill-leader-summary.json").exists()


def test_run_all_passes_rounds_and_max_pets_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[str, int, int]] = []

    def fake_run(name: str, results: Path, *, rounds: int = 1,
                 max_pets: int = 30, **kwargs: Any) -> dict[str, Any]:
        calls.append((name, rounds, max_pets))
        return chaos_runner.build_summary(name, {"status": "completed", "deviated": False}, analysis([4.0]), [],
                                       {"duplicate_ids": 0}, 1.0, rounds=rounds)

    monkeypatch.setattr(chaos_runner, "run_experiment", fake_run)
    chaos_runner.run_all(["kill-leader", "cut-leader"], tmp_path, rounds=4, max_pets=60)
    assert calls == [("kill-leader", 4, 60), ("cut-leader", 4, 60)]
    err = capsys.readouterr().err
    assert "running kill-leader (4 rounds, at most 60 pets)" in err
    assert "cut-leader: status completed, deviated False, failed activities 0, passed True" in err
    assert "| cut-leader | 4 |" in (tmp_path / "summary.md").read_text()


def test_chaos_command_passes_the_control_url_and_journal(tmp_path: Path) -> None:
    cmd = chaos_runner.chaos_command(Path("e.json"), tmp_path / "j.json", tmp_path / "l.log",
                                  {"control_url": "http://127.0.0.1:1", "target": "local"})
    assert cmd[cmd.index("--journal-path") + 1] == str(tmp_path / "j.json")
    assert "control_url=http://127.0.0.1:1" in cmd
    assert "target=local" in cmd
    assert cmd[-1] == "e.json"
    assert cmd.index("--log-file") < cmd.index("run")


def test_every_experiment_is_valid_json_with_the_probe_and_rollbacks() -> None:
    names = chaos_runner.experiment_names()
    assert set(names) >= {"kill-leader", "freeze-leader", "cut-leader", "delete-lease", "restart-apiserver",
                          "restart-etcd"}
    for name in names:
        doc = json.loads(chaos_runner.experiment_path(name).read_text())
        probe = doc["steady-state-hypothesis"]["probes"][0]
        assert probe["tolerance"] is True
        assert probe["provider"]["module"] == "petchaos.probes"
        assert doc["rollbacks"], name
        assert {"control_url", "target", "operator_namespace", "pets_namespaces", "load_namespace"} <= set(
            doc["configuration"])
        # chaos run's --var sets only keys the experiment declares: an undeclared --set would be dropped
        missing = set(chaos_cluster.KNOWN_KEYS) - set(doc["configuration"])
        assert not missing, f"{name} does not declare {sorted(missing)}"
        assert doc["controls"] == [{"name": "pet-load", "provider": {"type": "python", "module": "petchaos.load"}}]
        for activity in doc["method"] + doc["rollbacks"]:
            module = actions if activity["provider"]["module"] == "petchaos.actions" else probes
            assert callable(getattr(module, activity["provider"]["func"])), activity


@pytest.mark.parametrize("name", chaos_runner.experiment_names())
def test_chaos_toolkit_accepts_every_experiment(name: str) -> None:
    """chaoslib's own validation: schema, and every python activity's module, function and arguments."""
    from chaoslib.experiment import ensure_experiment_is_valid
    from chaoslib.loader import load_experiment

    ensure_experiment_is_valid(load_experiment(str(chaos_runner.experiment_path(name))))


# --- provider against a fake control server -----------------------------------------------------


class FakeControl:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.ok = True
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                fake.calls.append(("GET", self.path, None))
                self._send(200, {"ok": fake.ok, "details": {"problems": [] if fake.ok else ["x"]}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.calls.append(("POST", self.path, body))
                if self.path.endswith("/boom"):
                    self._send(500, {"error": "boom"})
                else:
                    self._send(200, {"ok": True, "result": {"done": self.path}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def configuration(self) -> dict[str, Any]:
        return {"control_url": f"http://127.0.0.1:{self.server.server_address[1]}", "target": "local"}


@pytest.fixture
def control() -> Iterator[FakeControl]:
    fake = FakeControl()
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


@pytest.mark.parametrize(("func", "path"), [
    ("kill_leader", "/actions/kill-leader"), ("thaw", "/actions/thaw"), ("cut_leader", "/actions/cut-leader"),
    ("heal", "/actions/heal"), ("delete_lease", "/actions/delete-lease"),
    ("restart_apiserver", "/actions/restart-apiserver"),
])
def test_actions_post_to_the_control_server(control: FakeControl, func: str, path: str) -> None:
    result = getattr(actions, func)(configuration=control.configuration)
    assert result == {"done": path}
    assert control.calls == [("POST", path, {})]


def test_restart_etcd_passes_how_long_etcd_stays_down(control: FakeControl) -> None:
    actions.restart_etcd(configuration=control.configuration)
    actions.restart_etcd(down_seconds=5, configuration=control.configuration)
    assert control.calls == [("POST", "/actions/restart-etcd", {"down_seconds": 0}),
                             ("POST", "/actions/restart-etcd", {"down_seconds": 5})]


def test_restart_dead_replicas_passes_its_timeout(control: FakeControl) -> None:
    actions.restart_dead_replicas(configuration=control.configuration)
    actions.restart_dead_replicas(timeout=30, configuration=control.configuration)
    assert control.calls == [("POST", "/actions/restart-dead-replicas", {"timeout": 120}),
                             ("POST", "/actions/restart-dead-replicas", {"timeout": 30})]


def test_actions_with_arguments(control: FakeControl) -> None:
    actions.freeze_leader(7, configuration=control.configuration)
    actions.steal_lease("thief", 5, configuration=control.configuration)
    assert control.calls == [("POST", "/actions/freeze-leader", {"seconds": 7}),
                             ("POST", "/actions/steal-lease", {"holder": "thief", "duration": 5})]


def test_require_steady_state_returns_the_details_or_raises_naming_the_problems(control: FakeControl) -> None:
    assert probes.require_steady_state(5, configuration=control.configuration) == {"problems": []}
    control.ok = False
    with pytest.raises(RuntimeError, match=r"steady state not reached within 5 s: x"):
        probes.require_steady_state(5, configuration=control.configuration)
    assert control.calls == [("GET", "/probes/steady-state?timeout=5.0", None)] * 2


def test_probe_is_true_only_when_the_server_says_ok(control: FakeControl) -> None:
    assert probes.steady_state(3, configuration=control.configuration) is True
    control.ok = False
    assert probes.steady_state(3, configuration=control.configuration) is False
    assert control.calls[0] == ("GET", "/probes/steady-state?timeout=3.0", None)


def test_an_error_answer_fails_the_activity(control: FakeControl) -> None:
    from petchaos import call

    with pytest.raises(RuntimeError, match="500"):
        call(control.configuration, "kill_leader", "POST", "/actions/boom")


def test_target_kubernetes_never_calls_the_control_server(control: FakeControl) -> None:
    config = {**control.configuration, "target": "kubernetes"}
    with pytest.raises(staging.NotAvailableOnTarget, match="target=local"):
        actions.restart_etcd(configuration=config)
    from petchaos import call

    with pytest.raises(ValueError, match="control server exists on target=local only"):
        call(config, "kill_leader", "POST", "/actions/kill-leader")
    assert control.calls == []


def test_unknown_target_and_missing_url_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown target"):
        actions.heal(configuration={"target": "mars", "control_url": "http://x"})
    with pytest.raises(ValueError, match="control_url is missing"):
        actions.heal(configuration={"target": "local"})


# --- cli -------------------------------------------------------------------------------------------


def test_cli_refuses_unknown_experiments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["chaos", "--experiment", "no-such-thing"]) == 2
    assert "no such experiment" in capsys.readouterr().err


def test_cli_on_a_cluster_skips_the_control_plane_restarts_and_passes_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_build(build: bool = True) -> None:
        raise AssertionError("target kubernetes builds no binaries")

    monkeypatch.setattr(cli.binaries, "ensure_binaries", no_build)
    seen: dict[str, Any] = {}

    def fake_run_all(names: list[str], results: Path, rounds: int = 1,
                     max_pets: int = 30, env_factory: Any = None, audited: bool = True) -> list[dict[str, Any]]:
        seen.update(names=names, audited=audited, env=env_factory())
        results.mkdir(parents=True, exist_ok=True)
        (results / "summary.md").write_text("")
        return [chaos_runner.build_summary(n, {"status": "completed", "deviated": False}, None, [],
                                        {"duplicate_ids": 0}, 1.0, audited=audited) for n in names]

    monkeypatch.setattr(chaos_runner, "run_all", fake_run_all)
    assert cli.main(["chaos", "--target", "kubernetes", "--set", "operator_namespace=ops", "--max-pets", "12",
                     "--results", str(tmp_path)]) == 0
    assert "restart-apiserver" not in seen["names"]
    assert "restart-etcd" not in seen["names"]
    assert "kill-leader" in seen["names"]
    assert seen["audited"] is False
    env = seen["env"]
    assert env.chaos_variables() == {"target": "kubernetes", "operator_namespace": "ops", "load_max_pets": "12"}
    env.__exit__()
    assert "skipping restart-apiserver, restart-etcd" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "kubernetes", "--set", "operator_ns=x"], "unknown key 'operator_ns' (known: operator_namespace"),
    (["--target", "kubernetes", "--set", "novalue"], "--set 'novalue': expected KEY=VALUE"),
    (["--target", "kubernetes", "--audit-log", "/nonexistent/audit.log"], "--audit-log /nonexistent/audit.log"),
    (["--set", "operator_namespace=x"], "--set and --audit-log are for --target kubernetes"),
])
def test_cli_refuses_bad_cluster_settings(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["chaos", "-e", "kill-leader", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_summary_without_an_audit_log_passes_on_the_rest() -> None:
    journal = {"status": "completed", "deviated": False}
    unaudited = chaos_runner.build_summary("k", journal, None, [], {"duplicate_ids": 0}, 1.0, audited=False)
    assert (unaudited["passed"], unaudited["audited"], unaudited["writes_by_non_leaders"]) == (True, False, None)
    assert chaos_runner.build_summary("k", journal, None, [], {"duplicate_ids": 0}, 1.0)["passed"] is False
    lost = chaos_runner.build_summary("k", journal, None, ["p"], {"duplicate_ids": 0}, 1.0, audited=False)
    assert lost["passed"] is False


def test_the_cluster_target_reads_lost_pets_from_the_load_report(tmp_path: Path) -> None:
    from pet_harness.chaos_cluster import ClusterTarget
    from petchaos import load

    with ClusterTarget({"operator_namespace": "ops"}) as target:
        assert target.pets_lost() == []  # no report: the load never ran
        report = Path(target.chaos_environ()[load.REPORT_ENV])
        report.write_text(json.dumps({"lost": ["chaos-load-1-b", "chaos-load-1-a"], "created": 5}))
        assert target.pets_lost() == ["chaos-load-1-a", "chaos-load-1-b"]
        assert target.audit_analysis() is None
        target.write_artifacts(tmp_path, "kill-leader")
        assert json.loads((tmp_path / "kill-leader-load.json").read_text())["created"] == 5
    assert not target.workdir.exists()


def test_the_cluster_target_judges_only_its_own_window_of_the_audit_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pet_harness import audit
    from pet_harness.chaos_cluster import ClusterTarget

    seen: dict[str, Any] = {}
    monkeypatch.setattr(audit, "analyze", lambda path, ns, since=None: seen.update(path=path, ns=ns, since=since)
                        or {"summary": {}})
    log = tmp_path / "audit.log"
    with ClusterTarget({"operator_namespace": "ops"}, log) as target:
        target.audit_analysis()
    assert seen["path"] == log and seen["ns"] == "ops"
    assert seen["since"] == target.since and seen["since"] is not None


def test_the_cluster_target_refuses_a_bad_cut_mode_before_any_chaos() -> None:
    from pet_harness.chaos_cluster import ClusterTarget

    with pytest.raises(ValueError, match="cut_mode 'nft' must be one of"), ClusterTarget({"cut_mode": "nft"}):
        pass


@pytest.mark.parametrize(("mode", "healed"), [("pod-netns", True), ("network-policy", False)])
def test_leaving_the_cluster_target_heals_a_node_cut_whatever_the_rollbacks_did(
    mode: str, healed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pet_harness.chaos_cluster import ClusterTarget

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(staging, "heal", lambda configuration: calls.append(configuration) or {"healed": {}})
    with pytest.raises(KeyboardInterrupt), ClusterTarget({"cut_mode": mode}) as target:
        raise KeyboardInterrupt  # Ctrl-C in the middle of the experiment
    assert bool(calls) is healed
    if healed:
        assert calls[0]["cut_mode"] == "pod-netns" and target.cleanup == {"healed": {}}
    assert not target.workdir.exists()


def test_a_failing_heal_at_the_end_still_removes_the_targets_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    from pet_harness.chaos_cluster import ClusterTarget

    def broken(configuration: Any) -> dict[str, Any]:
        raise RuntimeError("API server gone")

    monkeypatch.setattr(staging, "heal", broken)
    with ClusterTarget({"cut_mode": "pod-netns"}) as target:
        pass
    assert target.cleanup is None and not target.workdir.exists()


def test_cli_runs_the_experiments_and_fails_on_a_deviation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli.binaries, "ensure_binaries", lambda build=True: None)
    outcomes = {"kill-leader": False, "cut-leader": True}

    def fake_run(name: str, results: Path, *, rounds: int = 1,
                 max_pets: int = 30, **kwargs: Any) -> dict[str, Any]:
        return chaos_runner.build_summary(name, {"status": "completed", "deviated": outcomes[name]}, analysis([4.0]),
                                       [], {"duplicate_ids": 0}, 1.0, rounds=rounds)

    monkeypatch.setattr(chaos_runner, "run_experiment", fake_run)
    assert cli.main(["chaos", "-e", "kill-leader", "--results", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())[0]["experiment"] == "kill-leader"
    assert "| kill-leader |" in (tmp_path / "summary.md").read_text()
    assert cli.main(["chaos", "-e", "kill-leader", "-e", "cut-leader", "--results", str(tmp_path)]) == 1
    capsys.readouterr()


def test_cli_fails_on_a_failed_method_activity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli.binaries, "ensure_binaries", lambda build=True: None)

    def fake_run(name: str, results: Path, *, rounds: int = 1,
                 max_pets: int = 30, **kwargs: Any) -> dict[str, Any]:
        journal = {"status": "completed", "deviated": False, "run": [run_entry("steady-state-between-rounds",
                                                                               "failed")]}
        return chaos_runner.build_summary(name, journal, analysis([4.0]), [], {"duplicate_ids": 0}, 1.0, rounds=rounds)

    monkeypatch.setattr(chaos_runner, "run_experiment", fake_run)
    assert cli.main(["chaos", "-e", "kill-leader", "--results", str(tmp_path)]) == 1
    assert "1 (steady-state-between-rounds)" in capsys.readouterr().out


def test_cli_runs_longer_by_default_and_takes_rounds_and_max_pets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli.binaries, "ensure_binaries", lambda build=True: None)
    seen: list[tuple[int, int]] = []

    def fake_run_all(names: list[str], results: Path, rounds: int = 1,
                     max_pets: int = 30, **kwargs: Any) -> list[dict[str, Any]]:
        seen.append((rounds, max_pets))
        results.mkdir(parents=True, exist_ok=True)
        (results / "summary.md").write_text("")
        return []

    monkeypatch.setattr(chaos_runner, "run_all", fake_run_all)
    assert cli.main(["chaos", "-e", "kill-leader", "--results", str(tmp_path)]) == 0
    assert cli.main(["chaos", "-e", "kill-leader", "--results", str(tmp_path), "--rounds", "1",
                     "--max-pets", "30"]) == 0
    assert seen == [(3, 100), (1, 30)]
    capsys.readouterr()


@pytest.mark.parametrize(("args", "message"), [
    (["--rounds", "0"], "argument --rounds: must be >= 1, got 0"),
    (["--rounds", "-3"], "argument --rounds: must be >= 1, got -3"),
    (["--rounds", "two"], "argument --rounds: expected an integer >= 1, got 'two'"),
    (["--max-pets", "0"], "argument --max-pets: must be >= 1, got 0"),
    (["--max-pets", "1.5"], "argument --max-pets: expected an integer >= 1, got '1.5'"),
])
def test_cli_refuses_bad_rounds_and_max_pets(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def must_not_run(*a: Any, **k: Any) -> list[dict[str, Any]]:
        raise AssertionError("ran despite a bad argument")

    monkeypatch.setattr(cli.binaries, "ensure_binaries", must_not_run)
    monkeypatch.setattr(chaos_runner, "run_all", must_not_run)
    with pytest.raises(SystemExit) as exc:
        cli.main(["chaos", "-e", "kill-leader", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err

"""The pure parts of the chaos harness: the steady-state check, summaries, the provider functions
(against a fake control server) and the ``pet-harness chaos`` argument handling."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pet_harness import chaos_env, cli

sys.path.insert(0, str(chaos_env.CHAOS_DIR))

from petchaos import TargetNotImplemented, actions, probes


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
    s = chaos_env.build_summary("kill-leader", {"status": "completed", "deviated": False}, analysis([4.0, 5.0, 9.0]),
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
    s = chaos_env.build_summary("x", journal, audit_result, lost, {"duplicate_ids": dups}, 1.0)
    assert not s["passed"]
    assert s["failover_gap_median"] is None
    if journal is None:
        assert s["deviated"] is True


def test_summary_markdown_has_a_row_per_experiment() -> None:
    rows = [chaos_env.build_summary(n, {"status": "completed", "deviated": False}, analysis([4.2]), [],
                                    {"duplicate_ids": 0}, 3.0) for n in ("a", "b")]
    text = chaos_env.summary_markdown(rows)
    assert "| a | completed | False | 4.2 | 4.2 | 0 | 0 | 0 | 3.0 | True |" in text
    assert "| b |" in text


def test_an_environment_that_does_not_start_is_a_failed_experiment(tmp_path: Path) -> None:
    class Broken:
        def __enter__(self) -> Any:
            raise RuntimeError("no cluster today")

        def __exit__(self, *exc: object) -> None:
            pass

    (tmp_path / "kill-leader-journal.json").write_text('{"status": "completed", "deviated": false}')
    s = chaos_env.run_experiment("kill-leader", tmp_path, env_factory=Broken)
    assert not s["passed"]
    assert s["deviated"] is True  # no journal of this run
    assert "no cluster today" in s["error"]
    assert json.loads((tmp_path / "kill-leader-summary.json").read_text())["error"] == s["error"]


def test_chaos_command_passes_the_control_url_and_journal(tmp_path: Path) -> None:
    cmd = chaos_env.chaos_command(Path("e.json"), tmp_path / "j.json", tmp_path / "l.log", "http://127.0.0.1:1")
    assert cmd[cmd.index("--journal-path") + 1] == str(tmp_path / "j.json")
    assert "control_url=http://127.0.0.1:1" in cmd
    assert "target=local" in cmd
    assert cmd[-1] == "e.json"
    assert cmd.index("--log-file") < cmd.index("run")


def test_every_experiment_is_valid_json_with_the_probe_and_rollbacks() -> None:
    names = chaos_env.experiment_names()
    assert set(names) >= {"kill-leader", "freeze-leader", "cut-leader", "delete-lease", "restart-apiserver",
                          "restart-etcd"}
    for name in names:
        doc = json.loads(chaos_env.experiment_path(name).read_text())
        probe = doc["steady-state-hypothesis"]["probes"][0]
        assert probe["tolerance"] is True
        assert probe["provider"]["module"] == "petchaos.probes"
        assert doc["rollbacks"], name
        assert {"control_url", "target"} <= set(doc["configuration"])
        for activity in doc["method"] + doc["rollbacks"]:
            module = actions if activity["provider"]["module"] == "petchaos.actions" else probes
            assert callable(getattr(module, activity["provider"]["func"])), activity


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
    ("restart_apiserver", "/actions/restart-apiserver"), ("restart_etcd", "/actions/restart-etcd"),
    ("restart_dead_replicas", "/actions/restart-dead-replicas"),
])
def test_actions_post_to_the_control_server(control: FakeControl, func: str, path: str) -> None:
    result = getattr(actions, func)(configuration=control.configuration)
    assert result == {"done": path}
    assert control.calls == [("POST", path, {})]


def test_actions_with_arguments(control: FakeControl) -> None:
    actions.freeze_leader(7, configuration=control.configuration)
    actions.steal_lease("thief", 5, configuration=control.configuration)
    assert control.calls == [("POST", "/actions/freeze-leader", {"seconds": 7}),
                             ("POST", "/actions/steal-lease", {"holder": "thief", "duration": 5})]


def test_probe_is_true_only_when_the_server_says_ok(control: FakeControl) -> None:
    assert probes.steady_state(3, configuration=control.configuration) is True
    control.ok = False
    assert probes.steady_state(3, configuration=control.configuration) is False
    assert control.calls[0] == ("GET", "/probes/steady-state?timeout=3.0", None)


def test_an_error_answer_fails_the_activity(control: FakeControl) -> None:
    from petchaos import call

    with pytest.raises(RuntimeError, match="500"):
        call(control.configuration, "kill_leader", "POST", "/actions/boom")


def test_target_kubernetes_names_the_chaostoolkit_kubernetes_action(control: FakeControl) -> None:
    config = {**control.configuration, "target": "kubernetes"}
    with pytest.raises(TargetNotImplemented, match=r"chaosk8s\.pod\.actions\.terminate_pods"):
        actions.kill_leader(configuration=config)
    with pytest.raises(NotImplementedError, match=r"app\.kubernetes\.io/name=pet-operator"):
        actions.restart_dead_replicas(configuration=config)
    with pytest.raises(NotImplementedError, match="pods_in_phase"):
        probes.steady_state(configuration=config)
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


def test_cli_refuses_target_kubernetes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["chaos", "--target", "kubernetes", "-e", "kill-leader"]) == 2
    assert "docs/chaos.md" in capsys.readouterr().err


def test_cli_runs_the_experiments_and_fails_on_a_deviation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli.binaries, "ensure_binaries", lambda build=True: None)
    outcomes = {"kill-leader": False, "cut-leader": True}

    def fake_run(name: str, results: Path, target: str = "local") -> dict[str, Any]:
        return chaos_env.build_summary(name, {"status": "completed", "deviated": outcomes[name]}, analysis([4.0]),
                                       [], {"duplicate_ids": 0}, 1.0)

    monkeypatch.setattr(chaos_env, "run_experiment", fake_run)
    assert cli.main(["chaos", "-e", "kill-leader", "--results", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())[0]["experiment"] == "kill-leader"
    assert "| kill-leader |" in (tmp_path / "summary.md").read_text()
    assert cli.main(["chaos", "-e", "kill-leader", "-e", "cut-leader", "--results", str(tmp_path)]) == 1
    capsys.readouterr()

"""The fault registry: each fault declared once, the Chaos Toolkit actions and the control server
derived from it."""

from __future__ import annotations

import inspect
import json
import urllib.request
from typing import Any

import pytest

from petchaos import actions, faults, staging


def test_every_fault_is_an_action_with_the_declared_signature() -> None:
    assert sorted(actions.__all__) == sorted(f.name for f in faults.FAULTS)
    for fault in faults.FAULTS:
        func = getattr(actions, fault.name)
        sig = inspect.signature(func)
        assert list(sig.parameters) == [*(p.name for p in fault.params), "configuration"]
        assert [sig.parameters[p.name].default for p in fault.params] == [p.default for p in fault.params]
        assert func.__doc__ == fault.summary


def test_every_fault_says_what_it_does_on_a_cluster_or_why_it_cannot() -> None:
    for fault in faults.FAULTS:
        assert (fault.on_cluster is None) == bool(fault.why_not), fault.name
    assert faults.BY_NAME["restart_etcd"].on_cluster is None


def test_arguments_are_checked_named_and_converted() -> None:
    steal = faults.BY_NAME["steal_lease"]
    assert steal.arguments({}) == {"holder": "chaos-thief", "duration": 4}
    assert steal.arguments({"duration": "7"}, ["x"]) == {"holder": "x", "duration": 7}
    with pytest.raises(ValueError, match=r"has no argument 'secs' \(it takes: duration, holder\)"):
        steal.arguments({"secs": 1})
    with pytest.raises(ValueError, match="duration='soon' is not an integer"):
        steal.arguments({"duration": "soon"})
    with pytest.raises(ValueError, match="'holder' given twice"):
        steal.arguments({"holder": "a"}, ["b"])
    with pytest.raises(ValueError, match="takes 0 argument"):
        faults.BY_NAME["heal"].arguments({}, [1])


def test_on_kubernetes_a_fault_without_a_cluster_form_is_refused_with_the_reason() -> None:
    with pytest.raises(staging.NotAvailableOnTarget, match="restart_apiserver: not available on target=kubernetes: "
                                                           "restarting the control plane needs access to its nodes"):
        actions.restart_apiserver(configuration={"target": "kubernetes"})


def test_on_kubernetes_the_registry_s_cluster_function_gets_the_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    fault = faults.BY_NAME["freeze_leader"]
    monkeypatch.setattr(faults, "BY_NAME", dict(faults.BY_NAME))
    patched = faults.Fault(fault.name, fault.summary, fault.embedded,
                           lambda seconds, configuration: seen.append((seconds, configuration)) or {"ok": 1},
                           fault.params)
    func = actions._activity(patched)
    assert func(12, configuration={"target": "kubernetes"}) == {"ok": 1}
    assert seen == [(12.0, {"target": "kubernetes"})]


class Recorder:
    """An embedded target that records the faults it is asked for (the control server's view)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def act(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        fault = faults.by_path(name)
        arguments = fault.arguments(body)
        self.calls.append((fault.name, arguments))
        return {"done": fault.name}

    def steady_state(self, timeout: float = 30, pause_load: bool = True) -> dict[str, Any]:
        return {"ok": True}


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from pet_harness.chaos_control import control_request

    answer = control_request(url, "POST", body, timeout=10)
    return int(answer.get("status", 200)), answer


def test_the_control_server_runs_registry_faults_and_refuses_others() -> None:
    from pet_harness.chaos_control import ControlServer

    target = Recorder()
    server = ControlServer(target)
    try:
        assert post(server.url + "/actions/steal-lease", {"holder": "x"}) == (200, {"ok": True,
                                                                                    "result": {"done": "steal_lease"}})
        assert target.calls == [("steal_lease", {"holder": "x", "duration": 4})]
        status, answer = post(server.url + "/actions/steal-lease", {"who": "x"})
        assert status == 400 and "has no argument 'who'" in answer["error"]
        status, answer = post(server.url + "/actions/explode", {})
        assert status == 404
        with urllib.request.urlopen(server.url + "/probes/steady-state", timeout=10) as resp:  # noqa: S310
            assert json.loads(resp.read())["ok"] is True
    finally:
        server.close()

"""waiting.py: poll until a condition holds; on timeout, show what was last seen."""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from pet_harness import waiting
from pet_harness.waiting import WaitTimeout, wait_for


def _sequence(values: Iterable[Any]) -> tuple[Callable[[], Any], list[int]]:
    """A fetch returning (or raising) each value in turn, then the last one forever."""
    items = list(values)
    calls = [0]

    def fetch() -> Any:
        value = items[min(calls[0], len(items) - 1)]
        calls[0] += 1
        if isinstance(value, BaseException):
            raise value
        return value

    return fetch, calls


def test_returns_the_first_value_that_satisfies_the_predicate() -> None:
    fetch, calls = _sequence([1, 2, 3, 4])
    assert wait_for(fetch, lambda v: v >= 3, timeout=5, what="three", interval=0.001) == 3
    assert calls[0] == 3


def test_returns_at_once_without_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sleep(seconds: float) -> None:
        raise AssertionError("must not sleep when the condition already holds")

    monkeypatch.setattr(waiting, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=no_sleep))
    assert wait_for(lambda: {"ready": True}, lambda v: v["ready"], timeout=5, what="ready") == {"ready": True}


def test_ignored_errors_count_as_not_yet() -> None:
    fetch, calls = _sequence([ConnectionError("refused"), ConnectionError("refused"), "up"])
    assert wait_for(fetch, lambda v: v == "up", timeout=5, what="server", interval=0.001) == "up"
    assert calls[0] == 3


def test_timeout_shows_the_last_value_as_yaml() -> None:
    pet = {"metadata": {"name": "rex"}, "status": {"phase": "Pending", "conditions": [{"type": "Ready"}]}}
    with pytest.raises(WaitTimeout) as info:
        wait_for(lambda: pet, lambda v: v["status"]["phase"] == "Ready", timeout=0.1, what="pet rex Ready",
                 interval=0.02)
    message = str(info.value)
    assert message.startswith("timed out after 0.1s waiting for pet rex Ready; last seen:\n")
    assert (
        "  metadata:\n"
        "    name: rex\n"
        "  status:\n"
        "    phase: Pending\n"
        "    conditions:\n"
        "    - type: Ready"
    ) in message
    assert "last error" not in message
    assert info.value.last == pet
    assert info.value.error is None
    assert info.value.what == "pet rex Ready"
    assert info.value.timeout == 0.1
    assert isinstance(info.value, AssertionError)


def test_timeout_shows_the_last_error_and_the_last_value_before_it() -> None:
    fetch, _ = _sequence([{"phase": "Pending"}, TimeoutError("read timed out")])
    with pytest.raises(WaitTimeout) as info:
        wait_for(fetch, lambda v: False, timeout=0.05, what="x", interval=0.01)
    message = str(info.value)
    assert "  phase: Pending" in message
    assert message.endswith("\nlast error: TimeoutError('read timed out')")
    assert isinstance(info.value.error, TimeoutError)
    assert info.value.last == {"phase": "Pending"}


def test_a_later_success_clears_the_error() -> None:
    fetch, _ = _sequence([OSError("boom"), "value"])
    with pytest.raises(WaitTimeout) as info:
        wait_for(fetch, lambda v: False, timeout=0.05, what="x", interval=0.01)
    assert info.value.error is None
    assert "boom" not in str(info.value)
    assert "value" in str(info.value)


def test_timeout_when_nothing_was_ever_seen() -> None:
    def fetch() -> Any:
        raise KeyError("pets")

    with pytest.raises(WaitTimeout) as info:
        wait_for(fetch, lambda v: True, timeout=0.02, what="pets", interval=0.01)
    assert "last seen:\n  (nothing)" in str(info.value)
    assert "last error: KeyError('pets')" in str(info.value)


def test_errors_not_ignored_propagate_at_once() -> None:
    fetch, calls = _sequence([ValueError("bad spec"), "never"])
    with pytest.raises(ValueError, match="bad spec"):
        wait_for(fetch, lambda v: True, timeout=5, what="x", ignore=(ConnectionError,))
    assert calls[0] == 1


def test_errors_from_the_predicate_propagate() -> None:
    def predicate(value: Any) -> bool:
        raise RuntimeError("predicate bug")

    with pytest.raises(RuntimeError, match="predicate bug"):
        wait_for(lambda: 1, predicate, timeout=5, what="x")


def test_it_gives_up_close_to_the_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeout):
        wait_for(lambda: 0, lambda v: False, timeout=0.3, what="x", interval=0.05)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.5


def test_interval_grows_to_one_second(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(waiting, "time", types.SimpleNamespace(monotonic=lambda: clock[0], sleep=fake_sleep))
    with pytest.raises(WaitTimeout):
        wait_for(lambda: 0, lambda v: False, timeout=10, what="x", interval=0.1)
    assert sleeps[0] == pytest.approx(0.1)
    assert sleeps[1] == pytest.approx(0.15)
    assert max(sleeps) == pytest.approx(1.0)
    assert sleeps[:-1] == sorted(sleeps[:-1])
    assert sum(sleeps) == pytest.approx(10)  # the last sleep stops at the deadline


def test_long_values_are_cut() -> None:
    value = {f"key{i}": i for i in range(200)}
    with pytest.raises(WaitTimeout) as info:
        wait_for(lambda: value, lambda v: False, timeout=0.01, what="x", interval=0.01)
    message = str(info.value)
    assert "  key79: 79" in message
    assert "key80" not in message
    assert "... (120 more lines)" in message


def test_values_yaml_cannot_show_are_shown_with_repr() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque thing>"

    with pytest.raises(WaitTimeout) as info:
        wait_for(lambda: Opaque(), lambda v: False, timeout=0.01, what="x", interval=0.01)
    assert "last seen:\n  <Opaque thing>" in str(info.value)

"""Phase-change Events (contract behaviour 7): one Event per change, repeats aggregated by count."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from claim_fakes import FakeEventApi, api_error
from operator_fakes import NS, Clock, FakeWriter, IdsNotEnforced, index_of, pet, store, uid_of

from pet_operator import events, model
from pet_operator.events import COMPONENT, EventRecorder, event_name
from pet_operator.reconciler import Reconciler
from pet_operator.rest import ApiError

REF = {"apiVersion": "petstore.example.com/v1", "kind": "Pet", "name": "rex", "namespace": NS, "uid": "u-1"}
NAME_RE = re.compile(r"^rex\.[0-9a-f]{16}$")


@pytest.fixture
def api() -> FakeEventApi:
    return FakeEventApi()


@pytest.fixture
def fixed_time(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(events, "_now", clock)
    return clock


def verdict(phase: model.Phase, reason: str = "Reconciled", message: str = "It is so.") -> model.Verdict:
    return model.Verdict(phase, reason, message, ())


def stored(api: FakeEventApi) -> dict[str, Any]:
    [event] = api.events.values()
    return event


# --- event_name --------------------------------------------------------------------------------


def test_event_name_is_stable() -> None:
    first = event_name("rex", "u-1", "Warning", "DuplicateId", "Id 7 is held by pet a/b.")
    assert first == event_name("rex", "u-1", "Warning", "DuplicateId", "Id 7 is held by pet a/b.")
    assert NAME_RE.match(first)


@pytest.mark.parametrize(
    ("uid", "type_", "reason", "message"),
    [
        ("u-2", "Warning", "DuplicateId", "Id 7 is held by pet a/b."),  # another object (recreated)
        ("u-1", "Normal", "DuplicateId", "Id 7 is held by pet a/b."),
        ("u-1", "Warning", "StoreNotFound", "Id 7 is held by pet a/b."),
        ("u-1", "Warning", "DuplicateId", "Id 7 is held by pet c/d."),
    ],
)
def test_event_name_differs_when_anything_but_the_object_name_differs(
    uid: str, type_: str, reason: str, message: str
) -> None:
    base = event_name("rex", "u-1", "Warning", "DuplicateId", "Id 7 is held by pet a/b.")
    assert event_name("rex", uid, type_, reason, message) != base


def test_event_name_fields_cannot_run_into_each_other() -> None:
    assert event_name("rex", "u", "Warning", "AB", "C") != event_name("rex", "u", "Warning", "A", "BC")


def test_event_name_keeps_long_object_names_short() -> None:
    name = event_name("p" * 253, "u-1", "Normal", "Reconciled", "ok")
    assert name.startswith("p" * 200 + ".")
    assert len(name) == 200 + 1 + 16


# --- post: create, then aggregate ---------------------------------------------------------------


async def test_first_post_creates_an_event_with_count_one(api: FakeEventApi, fixed_time: Clock) -> None:
    recorder = EventRecorder(api, instance="pod-a")
    await recorder.post(REF, "Warning", "DuplicateId", "Id 7 is held by pet a/b.")

    assert api.ops() == ["create"]
    event = stored(api)
    name = event_name("rex", "u-1", "Warning", "DuplicateId", "Id 7 is held by pet a/b.")
    assert event["metadata"] == {"name": name, "namespace": NS, "resourceVersion": "1"}  # the version set by the store
    assert api.calls[0][3]["metadata"] == {"name": name, "namespace": NS}  # what the recorder sent
    assert event["involvedObject"] == REF
    assert (event["type"], event["reason"], event["message"]) == ("Warning", "DuplicateId", "Id 7 is held by pet a/b.")
    assert event["count"] == 1
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2024-01-01T00:00:01Z"
    assert event["source"] == {"component": COMPONENT}
    assert event["reportingComponent"] == f"{model.GROUP}/{COMPONENT}"
    assert event["reportingInstance"] == "pod-a"
    assert recorder.posted == 1


@pytest.mark.parametrize("n", [2, 5])
async def test_identical_posts_create_once_then_patch_growing_counts(
    api: FakeEventApi, fixed_time: Clock, n: int
) -> None:
    recorder = EventRecorder(api)
    for _ in range(n):
        await recorder.post(REF, "Warning", "DuplicateId", "Id 7 is held by pet a/b.")

    assert api.ops() == ["create"] + ["patch"] * (n - 1)  # no reads: the count is cached
    assert [p["count"] for p in api.patches()] == list(range(2, n + 1))
    assert len(api.events) == 1
    event = stored(api)
    assert event["count"] == n
    assert event["firstTimestamp"] == "2024-01-01T00:00:01Z"
    assert event["lastTimestamp"] == f"2024-01-01T00:00:{n:02d}Z"
    assert recorder.posted == n


async def test_restarted_recorder_continues_the_count_from_the_stored_event(api: FakeEventApi) -> None:
    before = EventRecorder(api)
    for _ in range(3):
        await before.post(REF, "Warning", "DuplicateId", "Id 7 is held by pet a/b.")
    api.calls.clear()

    after = EventRecorder(api)  # a new process: empty cache
    await after.post(REF, "Warning", "DuplicateId", "Id 7 is held by pet a/b.")
    await after.post(REF, "Warning", "DuplicateId", "Id 7 is held by pet a/b.")

    assert api.ops() == ["create", "read", "patch", "patch"]
    assert [p["count"] for p in api.patches()] == [4, 5]
    assert stored(api)["count"] == 5
    assert after.posted == 2


async def test_the_count_cache_is_bounded_and_a_forgotten_count_is_read_again(api: FakeEventApi) -> None:
    recorder = EventRecorder(api, max_cached=2)
    messages = [f"Id {i} is held by pet a/b." for i in range(3)]
    for message in messages:
        await recorder.post(REF, "Warning", "DuplicateId", message)
    assert len(recorder._counts) == 2  # the oldest went out
    api.calls.clear()
    await recorder.post(REF, "Warning", "DuplicateId", messages[0])  # forgotten: found again
    await recorder.post(REF, "Warning", "DuplicateId", messages[2])  # still cached
    assert api.ops() == ["create", "read", "patch", "patch"]
    assert [p["count"] for p in api.patches()] == [2, 2]


async def test_two_recorders_never_lose_each_others_increments(api: FakeEventApi) -> None:
    """After a leader change two recorders (old and new leader) each cached a count: the patch
    carries the resourceVersion it was based on, so a stale one is refused (409), re-read and
    applied on top, never written over the other's."""
    a, b = EventRecorder(api), EventRecorder(api)
    await a.post(REF, "Warning", "DuplicateId", "m")  # count 1, cached by a
    await b.post(REF, "Warning", "DuplicateId", "m")  # create refused, read 1, patch -> 2
    await a.post(REF, "Warning", "DuplicateId", "m")  # a's cache says 1: 409, read 2, patch -> 3
    assert stored(api)["count"] == 3
    assert api.ops() == ["create", "create", "read", "patch", "patch", "read", "patch"]
    await b.post(REF, "Warning", "DuplicateId", "m")
    assert stored(api)["count"] == 4
    assert (a.posted, b.posted) == (2, 2)


async def test_an_event_gone_between_a_conflict_and_the_read_is_created_again(api: FakeEventApi) -> None:
    a, b = EventRecorder(api), EventRecorder(api)
    await a.post(REF, "Warning", "DuplicateId", "m")
    await b.post(REF, "Warning", "DuplicateId", "m")

    original_read = api.read_event

    async def read_after_expiry(namespace: str, name: str) -> dict[str, Any] | None:
        api.events.clear()  # expired (--event-ttl) right after the conflict
        return await original_read(namespace, name)

    api.read_event = read_after_expiry  # type: ignore[method-assign]
    await a.post(REF, "Warning", "DuplicateId", "m")  # 409 on its stale version, then gone
    assert stored(api)["count"] == 1  # a fresh Event
    assert a.posted == 2


async def test_different_messages_are_different_events(api: FakeEventApi) -> None:
    recorder = EventRecorder(api)
    await recorder.post(REF, "Warning", "DuplicateId", "Id 7 is held by pet a/b.")
    await recorder.post(REF, "Warning", "DuplicateId", "Id 7 is held by pet c/d.")
    assert api.ops() == ["create", "create"]
    assert sorted(e["count"] for e in api.events.values()) == [1, 1]


async def test_same_event_on_another_object_is_another_event(api: FakeEventApi) -> None:
    recorder = EventRecorder(api)
    await recorder.post(REF, "Normal", "Reconciled", "ok")
    await recorder.post({**REF, "name": "max", "uid": "u-2"}, "Normal", "Reconciled", "ok")
    assert api.ops() == ["create", "create"]
    assert len(api.events) == 2


async def test_post_lets_api_errors_through(api: FakeEventApi) -> None:
    api.errors["create"] = [api_error(500)]
    recorder = EventRecorder(api)
    with pytest.raises(ApiError):
        await recorder.post(REF, "Warning", "DuplicateId", "m")
    assert recorder.posted == 0


async def test_repeat_after_the_event_expired_creates_it_again(api: FakeEventApi) -> None:
    recorder = EventRecorder(api)
    await recorder.post(REF, "Warning", "DuplicateId", "m")
    api.events.clear()  # the API server dropped it after its TTL
    await recorder.post(REF, "Warning", "DuplicateId", "m")
    assert len(api.events) == 1


# --- levels --------------------------------------------------------------------------------------


async def test_warning_level_drops_normal_events(api: FakeEventApi) -> None:
    recorder = EventRecorder(api, min_level="Warning")
    await recorder.post(REF, "Normal", "Reconciled", "ok")
    assert api.calls == []
    await recorder.post(REF, "Warning", "DuplicateId", "m")
    assert api.ops() == ["create"]
    assert recorder.posted == 1


async def test_none_level_drops_every_event(api: FakeEventApi) -> None:
    recorder = EventRecorder(api, min_level="None")
    await recorder.post(REF, "Normal", "Reconciled", "ok")
    await recorder.post(REF, "Warning", "DuplicateId", "m")
    await recorder.phase_changed(pet("rex"), "Active", verdict(model.Phase.CONFLICT, "DuplicateId"))
    assert api.calls == []
    assert recorder.posted == 0


async def test_normal_level_posts_both(api: FakeEventApi) -> None:
    recorder = EventRecorder(api)
    assert (recorder.wants("Normal"), recorder.wants("Warning")) == (True, True)
    assert (EventRecorder(api, "Warning").wants("Normal"), EventRecorder(api, "Warning").wants("Warning")) == (
        False, True,
    )


def test_unknown_level_is_refused(api: FakeEventApi) -> None:
    with pytest.raises(ValueError, match="'Info'"):
        EventRecorder(api, min_level="Info")


def test_instance_defaults_to_the_pod_name(api: FakeEventApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "pet-operator-0")
    assert EventRecorder(api).instance == "pet-operator-0"
    assert EventRecorder(api, instance="explicit").instance == "explicit"


# --- phase_changed -------------------------------------------------------------------------------


async def test_phase_changed_to_active_is_a_normal_event_on_the_pet(api: FakeEventApi) -> None:
    snap = pet("rex")
    await EventRecorder(api).phase_changed(snap, "Pending", verdict(model.Phase.ACTIVE, "Reconciled", "fine"))
    event = stored(api)
    assert (event["type"], event["reason"], event["message"]) == ("Normal", "Reconciled", "fine")
    assert event["involvedObject"] == {
        "apiVersion": f"{model.GROUP}/{model.VERSION}", "kind": "Pet", "name": "rex", "namespace": NS,
        "uid": uid_of(NS, "rex"),
    }
    assert event["metadata"]["namespace"] == NS


@pytest.mark.parametrize(
    ("phase", "reason"),
    [
        (model.Phase.CONFLICT, "DuplicateId"),
        (model.Phase.PENDING, "StoreNotFound"),
        (model.Phase.INVALID, "TagsNotAllowed"),
    ],
)
async def test_phase_changed_to_anything_else_is_a_warning(api: FakeEventApi, phase: model.Phase, reason: str) -> None:
    await EventRecorder(api).phase_changed(pet("rex"), "Active", verdict(phase, reason))
    assert (stored(api)["type"], stored(api)["reason"]) == ("Warning", reason)


async def test_phase_changed_swallows_an_api_error_and_logs_it(
    api: FakeEventApi, caplog: pytest.LogCaptureFixture
) -> None:
    api.errors["create"] = [api_error(403, "Forbidden")]
    recorder = EventRecorder(api)
    with caplog.at_level(logging.ERROR, logger="pet_operator.events"):
        await recorder.phase_changed(pet("rex"), "Active", verdict(model.Phase.CONFLICT, "DuplicateId"))
    assert recorder.posted == 0
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "could not post event Warning/DuplicateId on pet default/rex"
    assert record.exc_info is not None
    assert "Forbidden" in str(record.exc_info[1])


async def test_phase_changed_swallows_a_failed_patch_too(
    api: FakeEventApi, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = EventRecorder(api)
    conflict = verdict(model.Phase.CONFLICT, "DuplicateId")
    await recorder.phase_changed(pet("rex"), "Active", conflict)
    api.errors["patch"] = [api_error(500)]
    with caplog.at_level(logging.ERROR, logger="pet_operator.events"):
        await recorder.phase_changed(pet("rex"), "Active", conflict)
    assert len(caplog.records) == 1
    assert recorder.posted == 1
    # the failed repeat did not advance the cached count: the next one writes 2
    await recorder.phase_changed(pet("rex"), "Active", conflict)
    assert [p["count"] for p in api.patches()] == [2, 2]
    assert stored(api)["count"] == 2


# --- with the reconciler -------------------------------------------------------------------------


async def test_reconciler_posts_one_event_per_phase_change(api: FakeEventApi) -> None:
    """Pending, then Active once the store exists; a resync in between posts nothing."""
    recorder = EventRecorder(api)
    rec = Reconciler(FakeWriter(), IdsNotEnforced(), clock=Clock(), on_phase_change=recorder.phase_changed)
    snap = pet("rex", store="shop")
    await rec.sync_pet((NS, "rex"), index_of(snap), index_of())
    await rec.sync_pet((NS, "rex"), index_of(snap), index_of())
    await rec.sync_pet((NS, "rex"), index_of(snap), index_of(store("shop")))
    assert [(e["type"], e["reason"]) for e in api.events.values()] == [
        ("Warning", "StoreNotFound"), ("Normal", "Reconciled"),
    ]
    assert api.ops() == ["create", "create"]

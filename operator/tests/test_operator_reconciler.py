"""The Reconciler against a fake status writer: idempotence, write cache, locks, coalescing."""

from __future__ import annotations

import asyncio
import copy
import logging
import re
from typing import Any

import pytest
from operator_fakes import (
    NS,
    Clock,
    CountingIndex,
    FakeWriter,
    IdsNotEnforced,
    by_store_of,
    index_of,
    pet,
    pet_body,
    store,
    uid_of,
)

from pet_operator import model
from pet_operator.id_claims import IdClaims
from pet_operator.kube import NotFound
from pet_operator.model import PetSnapshot, StoreSnapshot
from pet_operator.reconciler import Reconciler, utc_now

KEY = (NS, "rex")
SHOP = (NS, "shop")
WAIT = 2.0  # upper bound for awaited conditions; never reached when the code is right


@pytest.fixture
def writer() -> FakeWriter:
    return FakeWriter()


@pytest.fixture
def rec(writer: FakeWriter) -> Reconciler:
    return Reconciler(writer, IdsNotEnforced(), clock=Clock())


def as_watched(snap: PetSnapshot, written: dict[str, Any]) -> PetSnapshot:
    """The pet as the watch delivers it after our write: status and resourceVersion from the server."""
    body = pet_body(
        snap.name,
        namespace=snap.namespace,
        store=snap.store,
        generation=snap.generation,
        rv=written["metadata"]["resourceVersion"],
        status=written["status"],
        uid=snap.uid,
    )
    body["spec"] = copy.deepcopy(snap.spec)
    return PetSnapshot.from_body(body)


def last_written(writer: FakeWriter) -> dict[str, Any]:
    """The body the fake server answered to the last write."""
    last = writer.calls[-1]
    return {
        "metadata": {
            "resourceVersion": str(writer.resource_version),
            "uid": uid_of(last.namespace, last.name),
        },
        "status": last.status,
    }


# --- snapshots ---------------------------------------------------------------------------------


def test_pet_snapshot_from_body_is_a_deep_copy() -> None:
    body = pet_body("rex", store="shop", tags=["a"], generation=3, rv="42", status={"phase": "Active"})
    snap = PetSnapshot.from_body(body)
    body["spec"]["tags"].append("b")
    body["status"]["phase"] = "Invalid"
    assert snap.spec["tags"] == ["a"]
    assert snap.status == {"phase": "Active"}
    assert (snap.namespace, snap.name, snap.uid) == (NS, "rex", uid_of(NS, "rex"))
    assert (snap.generation, snap.resource_version, snap.store) == (3, "42", "shop")


def test_pet_snapshot_store_is_none_when_empty_or_absent() -> None:
    assert pet("rex").store is None
    assert pet("rex", store="").store is None


def test_store_snapshot_view() -> None:
    assert store("shop", allowed=["a"]).view() == model.StoreView("shop", ("a",))
    assert store("shop").view() == model.StoreView("shop", None)
    assert store("shop", allowed=[]).view() == model.StoreView("shop", ())


def test_utc_now_is_rfc3339_utc() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_now())


# --- sync_pet: writes, idempotence ---------------------------------------------------------


async def test_sync_pet_writes_status_once(writer: FakeWriter, rec: Reconciler) -> None:
    pets, stores = index_of(pet("rex", store="shop", generation=2)), index_of(store("shop"))
    verdict = await rec.sync_pet(KEY, pets, stores)
    assert verdict is not None
    assert verdict.phase is model.Phase.ACTIVE
    [call] = writer.calls
    assert (call.plural, call.namespace, call.name) == ("pets", NS, "rex")
    assert call.status["phase"] == "Active"
    assert call.status["reason"] == "Reconciled"
    assert call.status["observedGeneration"] == 2
    assert rec.writes == 1


async def test_second_sync_with_same_state_writes_nothing(writer: FakeWriter, rec: Reconciler) -> None:
    pets, stores = index_of(pet("rex")), index_of()
    await rec.sync_pet(KEY, pets, stores)
    again = await rec.sync_pet(KEY, pets, stores)  # the index still shows no status: cache answers
    assert again is not None
    assert again.phase is model.Phase.ACTIVE
    assert len(writer.calls) == 1
    assert rec.writes == 1


async def test_no_write_once_the_watch_shows_our_status(writer: FakeWriter, rec: Reconciler) -> None:
    """After the watch caught up the index alone decides, and it agrees: no write (clock moved)."""
    snap = pet("rex")
    await rec.sync_pet(KEY, index_of(snap), index_of())
    back = as_watched(snap, last_written(writer))
    rec.observe_pet(back)
    assert rec.effective_status(back) is back.status  # cache released
    assert await rec.sync_pet(KEY, index_of(back), index_of()) is not None
    assert len(writer.calls) == 1


async def test_spec_change_writes_again_with_kept_transition_time(
    writer: FakeWriter, rec: Reconciler
) -> None:
    snap = pet("rex", store="shop")
    await rec.sync_pet(KEY, index_of(snap), index_of(store("shop")))
    first = writer.calls[0].status
    back = as_watched(snap, last_written(writer))
    rec.observe_pet(back)
    # a new generation (say, a new tag) that keeps the pet Active
    newer_body = pet_body(
        "rex", store="shop", tags=["a"], generation=2, rv=str(writer.resource_version + 1), status=back.status
    )
    newer = PetSnapshot.from_body(newer_body)
    rec.observe_pet(newer)
    await rec.sync_pet(KEY, index_of(newer), index_of(store("shop")))
    assert len(writer.calls) == 2
    second = writer.calls[1].status
    assert second["observedGeneration"] == 2
    assert second["phase"] == "Active"
    assert second["lastTransitionTime"] == first["lastTransitionTime"]


async def test_phase_change_moves_transition_time(writer: FakeWriter, rec: Reconciler) -> None:
    snap = pet("rex", store="shop")
    await rec.sync_pet(KEY, index_of(snap), index_of())  # no store yet: Pending
    await rec.sync_pet(KEY, index_of(snap), index_of(store("shop")))  # store created: Active
    pending, active = (c.status for c in writer.calls)
    assert (pending["phase"], active["phase"]) == ("Pending", "Active")
    assert active["lastTransitionTime"] != pending["lastTransitionTime"]


async def test_pet_gone_from_index_returns_none_without_write(writer: FakeWriter, rec: Reconciler) -> None:
    assert await rec.sync_pet(KEY, index_of(), index_of()) is None
    assert await rec.sync_pet(KEY, CountingIndex({KEY: []}), index_of()) is None
    assert writer.calls == []
    assert rec.writes == 0


async def test_not_found_from_writer_is_swallowed(writer: FakeWriter, rec: Reconciler) -> None:
    writer.errors.append(NotFound("pets default/rex"))
    pets = index_of(pet("rex"))
    assert await rec.sync_pet(KEY, pets, index_of()) is None
    assert rec.writes == 0
    # nothing cached: the next sync tries to write again
    await rec.sync_pet(KEY, pets, index_of())
    assert len(writer.calls) == 2
    assert rec.writes == 1


async def test_other_writer_errors_propagate_for_the_retry_wrapper(
    writer: FakeWriter, rec: Reconciler
) -> None:
    writer.errors.append(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        await rec.sync_pet(KEY, index_of(pet("rex")), index_of())
    assert rec.writes == 0


async def test_write_to_a_recreated_object_is_not_cached(writer: FakeWriter, rec: Reconciler) -> None:
    """The server answered with another uid (the pet was recreated): our status is not its truth."""
    writer.uids[("pets", NS, "rex")] = "someone-else"
    pets = index_of(pet("rex"))
    await rec.sync_pet(KEY, pets, index_of())
    await rec.sync_pet(KEY, pets, index_of())
    assert len(writer.calls) == 2


async def test_phase_listener_called_only_on_phase_change(writer: FakeWriter) -> None:
    seen: list[tuple[str, str | None, str]] = []
    rec = Reconciler(
        writer, IdsNotEnforced(), clock=Clock(),
        on_phase_change=lambda s, prev, v: seen.append((s.name, prev, v.phase.value)),
    )
    snap = pet("rex", store="shop")
    await rec.sync_pet(KEY, index_of(snap), index_of())
    await rec.sync_pet(KEY, index_of(snap), index_of())
    newer = PetSnapshot.from_body(pet_body("rex", store="shop", generation=2, rv="1"))
    await rec.sync_pet(KEY, index_of(newer), index_of())  # same phase, new generation: write, no event
    await rec.sync_pet(KEY, index_of(newer), index_of(store("shop")))
    assert len(writer.calls) == 3
    assert seen == [("rex", None, "Pending"), ("rex", "Pending", "Active")]


async def test_phase_change_is_logged(
    writer: FakeWriter, rec: Reconciler, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pet_operator.reconciler"):
        await rec.sync_pet(KEY, index_of(pet("rex", store="gone")), index_of())
    assert "pet default/rex: - -> Pending (StoreNotFound)" in caplog.messages


# --- write cache and the watch ------------------------------------------------------------------


async def test_write_cache_held_until_watch_catches_up(writer: FakeWriter, rec: Reconciler) -> None:
    stale = pet("rex", rv="5")  # the index still shows the pet without status
    await rec.sync_pet(KEY, index_of(stale), index_of())
    written_rv = writer.resource_version  # 101
    assert rec.effective_status(stale)["phase"] == "Active"

    # an older event (lower resourceVersion) does not release the cache
    rec.observe_pet(pet("rex", rv=str(written_rv - 1)))
    assert rec.effective_status(stale)["phase"] == "Active"
    await rec.sync_pet(KEY, index_of(stale), index_of())
    assert len(writer.calls) == 1

    # the watch delivers our own write: released; the stale index now decides again
    rec.observe_pet(pet("rex", rv=str(written_rv)))
    assert rec.effective_status(stale) == {}
    await rec.sync_pet(KEY, index_of(stale), index_of())
    assert len(writer.calls) == 2


async def test_higher_numeric_resource_version_releases_the_cache(
    writer: FakeWriter, rec: Reconciler
) -> None:
    stale = pet("rex", rv="5")
    await rec.sync_pet(KEY, index_of(stale), index_of())
    # numerically higher although shorter/longer as text: "1000" > "101"
    rec.observe_pet(pet("rex", rv="1000"))
    assert rec.effective_status(stale) == {}


async def test_numeric_comparison_not_text_comparison(writer: FakeWriter, rec: Reconciler) -> None:
    writer.resource_version = 99  # the write returns "100"
    stale = pet("rex", rv="5")
    await rec.sync_pet(KEY, index_of(stale), index_of())
    rec.observe_pet(pet("rex", rv="99"))  # "99" > "100" as text, but older as a number
    assert rec.effective_status(stale)["phase"] == "Active"


async def test_opaque_resource_versions_release_only_when_equal(writer: FakeWriter) -> None:
    class OpaqueWriter(FakeWriter):
        async def patch_status(
            self, plural: str, namespace: str, name: str, status: Any, resource_version: str | None = None
        ) -> dict[str, Any]:
            body = await super().patch_status(plural, namespace, name, status)
            body["metadata"]["resourceVersion"] = "abc"
            return body

    rec = Reconciler(OpaqueWriter(), IdsNotEnforced(), clock=Clock())
    stale = pet("rex", rv="x0")
    await rec.sync_pet(KEY, index_of(stale), index_of())
    rec.observe_pet(pet("rex", rv="zzz"))
    assert rec.effective_status(stale)["phase"] == "Active"
    rec.observe_pet(pet("rex", rv="abc"))
    assert rec.effective_status(stale) == {}


async def test_observe_pet_records_uid_and_forget_pet_clears_it(writer: FakeWriter, rec: Reconciler) -> None:
    snap = pet("rex", store="shop")
    rec.observe_pet(snap)
    assert snap.uid in rec.observed
    await rec.sync_pet(KEY, index_of(snap), index_of(store("shop")))
    assert rec.forget_pet(NS, "rex", snap.uid) == "shop"
    assert snap.uid not in rec.observed
    assert rec.effective_status(snap) == {}  # write cache dropped with the pet
    assert rec.forget_pet(NS, "rex", snap.uid) is None


# --- moved_from ----------------------------------------------------------------------------------


def test_moved_from_reports_a_store_change_once(rec: Reconciler) -> None:
    rec.observe_pet(pet("rex", store="a"))
    assert rec.moved_from(KEY) is None  # first sight is not a move
    rec.observe_pet(pet("rex", store="a", rv="2"))
    assert rec.moved_from(KEY) is None  # same store
    rec.observe_pet(pet("rex", store="b", rv="3"))
    assert rec.moved_from(KEY) == "a"
    assert rec.moved_from(KEY) is None  # reported once


def test_moved_from_store_to_no_store_and_back(rec: Reconciler) -> None:
    rec.observe_pet(pet("rex", store="a"))
    rec.observe_pet(pet("rex", rv="2"))
    assert rec.moved_from(KEY) == "a"
    rec.observe_pet(pet("rex", store="b", rv="3"))
    assert rec.moved_from(KEY) is None  # from no store: nothing to recount


def test_moved_from_is_forgotten_with_the_pet(rec: Reconciler) -> None:
    rec.observe_pet(pet("rex", store="a"))
    rec.observe_pet(pet("rex", store="b", rv="2"))
    assert rec.forget_pet(NS, "rex", uid_of(NS, "rex")) == "b"
    assert rec.moved_from(KEY) is None
    rec.observe_pet(pet("rex", store="c", rv="3"))  # recreated: first sight again
    assert rec.moved_from(KEY) is None


# --- store_changed -------------------------------------------------------------------------------


def test_store_changed(rec: Reconciler) -> None:
    first = store("shop", generation=1)
    assert rec.store_changed(first, SHOP) is True  # new store
    assert rec.store_changed(first, SHOP) is False  # same (uid, generation), e.g. a status update
    assert rec.store_changed(store("shop", generation=1, status={"petCount": 3}), SHOP) is False
    assert rec.store_changed(store("shop", generation=2), SHOP) is True  # new spec
    assert rec.store_changed(store("shop", generation=2), SHOP) is False
    assert rec.store_changed(None, SHOP) is True  # deleted
    assert rec.store_changed(store("shop", generation=2), SHOP) is True  # recreated, same generation
    assert rec.store_changed(store("shop", generation=2, uid="new-uid"), SHOP) is True  # new uid
    assert rec.store_changed(store("other"), (NS, "other")) is True  # keys are independent


# --- concurrency: per-pet lock ---------------------------------------------------------------


async def test_concurrent_syncs_leave_the_newest_decision_last(writer: FakeWriter, rec: Reconciler) -> None:
    pets = index_of(pet("rex", store="shop"))
    stores = index_of()  # the store does not exist yet: Pending
    writer.gate = asyncio.Event()

    first = asyncio.create_task(rec.sync_pet(KEY, pets, stores))
    await asyncio.wait_for(writer.entered.wait(), WAIT)  # first write (Pending) in flight
    second = asyncio.create_task(rec.sync_pet(KEY, pets, stores))
    await asyncio.sleep(0)  # one loop turn: the second sync runs up to the lock
    assert pets.gets == 1  # ...and has not read the index yet
    assert not second.done()

    stores.data[SHOP] = [store("shop")]  # the store appears while the first write is in flight
    writer.gate.set()
    v1, v2 = await asyncio.wait_for(asyncio.gather(first, second), WAIT)

    assert v1 is not None
    assert v2 is not None
    assert (v1.phase, v2.phase) == (model.Phase.PENDING, model.Phase.ACTIVE)
    assert [c.status["phase"] for c in writer.calls] == ["Pending", "Active"]


async def test_concurrent_syncs_with_pet_change_in_between(writer: FakeWriter, rec: Reconciler) -> None:
    """The pet itself changes (new tags the store forbids) while an older decision is being written."""
    pets = index_of(pet("rex", store="shop"))
    stores = index_of(store("shop", allowed=["ok"]))
    writer.gate = asyncio.Event()
    tasks = [asyncio.create_task(rec.sync_pet(KEY, pets, stores))]
    await asyncio.wait_for(writer.entered.wait(), WAIT)
    tasks.append(asyncio.create_task(rec.sync_pet(KEY, pets, stores)))
    await asyncio.sleep(0)
    pets.data[KEY] = [pet("rex", store="shop", tags=["bad"], generation=2, rv="7")]
    tasks.append(asyncio.create_task(rec.sync_pet(KEY, pets, stores)))
    writer.gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert [c.status["phase"] for c in writer.calls] == ["Active", "Invalid"]
    assert writer.calls[-1].status["observedGeneration"] == 2


async def test_different_pets_do_not_wait_for_each_other(writer: FakeWriter, rec: Reconciler) -> None:
    class GatedForRex(FakeWriter):
        async def patch_status(
            self, plural: str, namespace: str, name: str, status: Any, resource_version: str | None = None
        ) -> dict[str, Any]:
            if name == "rex":
                self.entered.set()
                await gate.wait()
            return await FakeWriter.patch_status(self, plural, namespace, name, status)

    gate = asyncio.Event()
    gated = GatedForRex()
    rec = Reconciler(gated, IdsNotEnforced(), clock=Clock())
    pets = index_of(pet("rex"), pet("fido"))
    slow = asyncio.create_task(rec.sync_pet(KEY, pets, index_of()))
    await asyncio.wait_for(gated.entered.wait(), WAIT)
    fido = await asyncio.wait_for(rec.sync_pet((NS, "fido"), pets, index_of()), WAIT)
    assert fido is not None
    assert not slow.done()
    gate.set()
    await asyncio.wait_for(slow, WAIT)
    assert [c.name for c in gated.calls] == ["fido", "rex"]


# --- stores ----------------------------------------------------------------------------------


async def test_sync_store_counts_pets_naming_it(writer: FakeWriter, rec: Reconciler) -> None:
    p1 = pet("a", store="shop", status={"phase": "Active"})
    p2 = pet("b", store="shop", status={"phase": "Pending"})
    p3 = pet("c", store="other", status={"phase": "Active"})
    pets = index_of(p1, p2, p3)
    await rec.sync_store(SHOP, pets, index_of(store("shop", generation=3)), by_store_of(p1, p2, p3))
    [call] = writer.calls
    assert (call.plural, call.name) == ("petstores", "shop")
    assert (call.status["petCount"], call.status["activeCount"]) == (2, 1)
    assert call.status["observedGeneration"] == 3


async def test_sync_store_ignores_stale_by_store_entries(writer: FakeWriter, rec: Reconciler) -> None:
    moved = pet("a", store="elsewhere", status={"phase": "Active"})
    by_store = CountingIndex({SHOP: [(NS, "a"), (NS, "deleted")]})
    await rec.sync_store(SHOP, index_of(moved), index_of(store("shop")), by_store)
    assert (writer.calls[0].status["petCount"], writer.calls[0].status["activeCount"]) == (0, 0)


async def test_sync_store_sees_pet_phases_from_the_write_cache(writer: FakeWriter, rec: Reconciler) -> None:
    p = pet("a", store="shop")  # the index still shows no status
    pets, stores = index_of(p), index_of(store("shop"))
    await rec.sync_pet((NS, "a"), pets, stores)
    await rec.sync_store(SHOP, pets, stores, by_store_of(p))
    assert writer.of("petstores")[0].status["activeCount"] == 1


async def test_sync_store_is_idempotent_and_uses_its_write_cache(writer: FakeWriter, rec: Reconciler) -> None:
    p = pet("a", store="shop", status={"phase": "Active"})
    stale_store = store("shop", rv="3")
    args = (index_of(p), index_of(stale_store), by_store_of(p))
    await rec.sync_store(SHOP, *args)
    await rec.sync_store(SHOP, *args)
    assert len(writer.calls) == 1
    rec.observe_store(SHOP, stale_store.uid, "2")  # older event: cache kept
    await rec.sync_store(SHOP, *args)
    assert len(writer.calls) == 1
    rec.observe_store(SHOP, stale_store.uid, str(writer.resource_version))  # caught up: index decides
    await rec.sync_store(SHOP, *args)
    assert len(writer.calls) == 2
    assert stale_store.uid in rec.observed


async def test_sync_store_of_missing_store_writes_nothing(writer: FakeWriter, rec: Reconciler) -> None:
    p = pet("a", store="shop")
    await rec.sync_store(SHOP, index_of(p), index_of(), by_store_of(p))
    assert writer.calls == []


async def test_sync_store_swallows_not_found(writer: FakeWriter, rec: Reconciler) -> None:
    writer.errors.append(NotFound("petstores default/shop"))
    await rec.sync_store(SHOP, index_of(), index_of(store("shop")), by_store_of())
    assert rec.writes == 0
    await rec.sync_store(SHOP, index_of(), index_of(store("shop")), by_store_of())
    assert rec.writes == 1


async def test_store_deletion_drops_its_write_cache(writer: FakeWriter, rec: Reconciler) -> None:
    s = store("shop", rv="3")
    await rec.sync_store(SHOP, index_of(), index_of(s), by_store_of())
    rec.store_changed(None, SHOP)
    await rec.sync_store(SHOP, index_of(), index_of(s), by_store_of())
    assert len(writer.calls) == 2  # the stale store status is no longer masked by the cache


async def test_store_recounts_are_coalesced(writer: FakeWriter, rec: Reconciler) -> None:
    p1 = pet("a", store="shop", status={"phase": "Active"})
    pets = index_of(p1)
    stores = index_of(store("shop"))
    by_store = by_store_of(p1)
    writer.gate = asyncio.Event()

    running = asyncio.create_task(rec.sync_store(SHOP, pets, stores, by_store))
    await asyncio.wait_for(writer.entered.wait(), WAIT)  # first pass is writing
    assert stores.gets == 1

    # a second pet arrives; three more recount requests come in while the first runs
    p2 = pet("b", store="shop", status={"phase": "Active"})
    pets.data[(NS, "b")] = [p2]
    by_store.data[SHOP].append((NS, "b"))
    await asyncio.wait_for(
        asyncio.gather(*(rec.sync_store(SHOP, pets, stores, by_store) for _ in range(3))), WAIT
    )  # they return at once: they only mark the store dirty
    assert not running.done()
    assert stores.gets == 1

    writer.gate.set()
    await asyncio.wait_for(running, WAIT)
    assert stores.gets == 2  # exactly one extra pass for the three requests
    counts = [(c.status["petCount"], c.status["activeCount"]) for c in writer.calls]
    assert counts == [(1, 1), (2, 2)]  # the extra pass saw the newest state


async def test_store_recount_without_overlap_is_one_pass(writer: FakeWriter, rec: Reconciler) -> None:
    stores = index_of(store("shop"))
    await rec.sync_store(SHOP, index_of(), stores, by_store_of())
    assert stores.gets == 1
    await rec.sync_store(SHOP, index_of(), stores, by_store_of())
    assert stores.gets == 2
    assert len(writer.calls) == 1


async def test_store_recounts_of_different_stores_are_not_coalesced(
    writer: FakeWriter, rec: Reconciler
) -> None:
    writer.gate = asyncio.Event()
    stores = index_of(store("shop"), store("mall"))
    first = asyncio.create_task(rec.sync_store(SHOP, index_of(), stores, by_store_of()))
    await asyncio.wait_for(writer.entered.wait(), WAIT)
    second = asyncio.create_task(rec.sync_store((NS, "mall"), index_of(), stores, by_store_of()))
    writer.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), WAIT)
    assert sorted(c.name for c in writer.calls) == ["mall", "shop"]


async def test_failed_recount_raises_to_its_caller_and_frees_the_store(
    writer: FakeWriter, rec: Reconciler
) -> None:
    """A failing pass reaches the caller (with_retries retries it) and does not wedge the store's lock."""
    stores = index_of(store("shop"))
    writer.gate = asyncio.Event()
    writer.errors.append(RuntimeError("API down"))
    running = asyncio.create_task(rec.sync_store(SHOP, index_of(), stores, by_store_of()))
    await asyncio.wait_for(writer.entered.wait(), WAIT)
    await asyncio.wait_for(rec.sync_store(SHOP, index_of(), stores, by_store_of()), WAIT)  # marks dirty
    writer.gate.set()
    with pytest.raises(RuntimeError, match="API down"):
        await asyncio.wait_for(running, WAIT)
    assert rec.writes == 0
    await rec.sync_store(SHOP, index_of(), stores, by_store_of())
    assert rec.writes == 1


def test_store_snapshot_from_body_defaults() -> None:
    snap = StoreSnapshot.from_body({"metadata": {"namespace": NS, "name": "shop"}})
    assert (snap.uid, snap.generation, snap.spec, snap.status) == ("", 0, {}, {})


# --- memory: nothing kept per pet once the watch caught up -----------------------------------------


async def test_a_write_the_watch_showed_before_its_answer_is_not_remembered(
    writer: FakeWriter, rec: Reconciler
) -> None:
    # the watch event of our own status write can arrive before the PATCH's answer: then the index
    # already shows it, and remembering the written status would keep it until the pet's next event
    snap = pet("rex")
    pets = index_of(snap)
    writer.gate = asyncio.Event()
    sync = asyncio.create_task(rec.sync_pet(KEY, pets, index_of()))
    await writer.entered.wait()
    shown = PetSnapshot.from_body(pet_body("rex", rv=str(writer.resource_version + 1),
                                           status=writer.calls[0].status))
    rec.observe_pet(shown)
    pets.data[KEY] = [shown]
    writer.gate.set()
    await sync
    assert rec.written == {}
    assert rec.effective_status(shown) is shown.status


async def test_the_finalizer_write_version_is_forgotten_once_the_watch_shows_it() -> None:
    from claim_fakes import FakeClaimStore, FakeFinalizers, Journal

    journal = Journal()
    ids = IdClaims(FakeClaimStore(journal), FakeFinalizers(journal))
    rec = Reconciler(FakeWriter(), ids)
    snap = pet("rex")
    await rec.sync_pet(KEY, index_of(snap), index_of())
    assert set(ids.versions) == {snap.uid}
    written = ids.versions[snap.uid]
    rec.observe_pet(PetSnapshot.from_body(pet_body("rex", rv=str(int(written) + 5), uid=snap.uid)))
    assert ids.versions == {}


async def test_pet_locks_are_kept_only_while_held_or_awaited(writer: FakeWriter, rec: Reconciler) -> None:
    pets = index_of(pet("rex"))
    writer.gate = asyncio.Event()
    first = asyncio.create_task(rec.sync_pet(KEY, pets, index_of()))
    await writer.entered.wait()
    second = asyncio.create_task(rec.sync_pet(KEY, pets, index_of()))
    await asyncio.sleep(0)
    assert len(rec._pet_locks) == 1
    assert len(writer.calls) == 1  # the second waits for the first: still one lock, mutual exclusion kept
    writer.gate.set()
    await asyncio.gather(first, second)
    assert len(rec._pet_locks) == 0


def test_snapshots_share_their_short_strings_and_do_not_alias_the_watched_body() -> None:
    import json

    status = {"phase": "Active", "reason": "Reconciled",
              "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-05T20:00:00Z"}]}
    first_body = json.loads(json.dumps(pet_body("rex", status=status)))  # as two watch events decode them
    second_body = json.loads(json.dumps(pet_body("fido", status=status)))
    first, second = PetSnapshot.from_body(first_body), PetSnapshot.from_body(second_body)
    assert first.status == second.status == status
    assert first.status["phase"] is second.status["phase"]
    assert first.status["conditions"][0]["lastTransitionTime"] is second.status["conditions"][0]["lastTransitionTime"]
    first_body["status"]["conditions"][0]["status"] = "False"
    first_body["spec"]["name"] = "changed"
    assert first.status["conditions"][0]["status"] == "True"
    assert first.spec["name"] == "rex"

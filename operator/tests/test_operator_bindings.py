"""bindings.BindingGuard: the finalizer on the operator's RoleBinding in each served namespace."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import pytest
from claim_fakes import FakeClaimStore, FakeFinalizers
from operator_fakes import NS, Clock, FakeWriter, IdsNotEnforced, index_of, pet, pet_body

from pet_operator import bindings, handlers
from pet_operator.bindings import BINDING_FINALIZER, BindingGuard, terminating
from pet_operator.claims import FINALIZER
from pet_operator.id_claims import IdClaims
from pet_operator.model import PetSnapshot
from pet_operator.reconciler import Reconciler
from pet_operator.rest import ApiError
from pet_operator.store_counts import StoreCounts


class FakeBindings:
    """RoleBindings by (namespace, name), pets with the operator's finalizer by namespace; records writes."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.waiting: dict[str, list[str]] = {}
        self.writes: list[tuple[str, str, list[str], str]] = []
        self.listed: list[str] = []
        self.read_error: ApiError | None = None
        self.version = 10
        self.deleting: set[str] = set()  # namespaces being deleted, as a read of them says

    def add(self, namespace: str, name: str = "pet-operator", finalizers: tuple[str, ...] = (),
            deleting: bool = False) -> None:
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "resourceVersion": str(self.version),
                                "finalizers": list(finalizers)}
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        self.objects[(namespace, name)] = {"metadata": meta}

    async def read_role_binding(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.read_error is not None:
            raise self.read_error
        return self.objects.get((namespace, name))

    async def set_role_binding_finalizers(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> dict[str, Any]:
        self.writes.append((namespace, name, finalizers, resource_version))
        self.version += 1
        obj = self.objects[(namespace, name)]
        obj["metadata"].update(finalizers=finalizers, resourceVersion=str(self.version))
        return obj

    async def namespace_terminating(self, name: str) -> bool:
        return name in self.deleting

    async def pets_with_finalizer(self, namespace: str, finalizer: str) -> list[dict[str, Any]]:
        assert finalizer == FINALIZER
        self.listed.append(namespace)
        return [_held_pet(name, namespace=namespace) for name in self.waiting.get(namespace, [])]


def ns(name: str, deleting: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": name}, "status": {"phase": "Active"}}
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        body["status"]["phase"] = "Terminating"
    return body


def nobody(namespace: str) -> bool:
    return False


def test_terminating() -> None:
    assert terminating(ns("a", deleting=True))
    assert terminating({"metadata": {"name": "a"}, "status": {"phase": "Terminating"}})
    assert not terminating(ns("a"))
    assert not terminating({})


async def test_a_served_namespace_gets_the_finalizer_once_keeping_others() -> None:
    api = FakeBindings()
    api.add("shop", finalizers=("someone.else/keep",))
    guard = BindingGuard(api, ["shop"])
    await guard.namespace_changed(ns("shop"), nobody)
    await guard.namespace_changed(ns("shop"), nobody)
    await guard.sweep(nobody)
    assert api.writes == [("shop", "pet-operator", ["someone.else/keep", BINDING_FINALIZER], "10")]
    assert guard.guarded == {"shop"}


async def test_a_binding_that_already_carries_it_is_not_written() -> None:
    api = FakeBindings()
    api.add("shop", finalizers=(BINDING_FINALIZER,))
    guard = BindingGuard(api, ["shop"])
    await guard.guard("shop")
    assert api.writes == []
    assert guard.guarded == {"shop"}


async def test_namespaces_not_served_are_ignored() -> None:
    api = FakeBindings()
    api.add("elsewhere")
    guard = BindingGuard(api, ["shop"])
    await guard.namespace_changed(ns("elsewhere"), nobody)
    await guard.namespace_changed(ns("elsewhere", deleting=True), nobody)
    assert api.writes == [] and api.listed == []


async def test_a_binding_being_deleted_gets_no_new_finalizer() -> None:
    api = FakeBindings()
    api.add("shop", deleting=True)
    guard = BindingGuard(api, ["shop"])
    await guard.guard("shop")
    assert api.writes == []
    assert guard.guarded == set()


async def test_a_replica_that_does_not_lead_writes_nothing() -> None:
    api = FakeBindings()
    api.add("shop")
    leading = [False]
    guard = BindingGuard(api, ["shop"], may_write=lambda: leading[0])
    await guard.namespace_changed(ns("shop"), nobody)
    assert api.writes == []
    leading[0] = True
    await guard.sweep(nobody)  # the catch-up pass of a new leader
    assert [w[2] for w in api.writes] == [[BINDING_FINALIZER]]


async def test_released_only_when_the_namespace_is_deleted_and_no_pet_waits() -> None:
    api = FakeBindings()
    api.add("shop", finalizers=("someone.else/keep", BINDING_FINALIZER))
    guard = BindingGuard(api, ["shop"])
    await guard.release_when_done("shop", nobody)  # not being deleted: kept
    assert api.writes == [] and api.listed == []

    indexed = {"shop": True}
    await guard.namespace_changed(ns("shop", deleting=True), lambda n: indexed[n])
    assert api.writes == [] and api.listed == [], "a pet in the index still carries the finalizer"
    indexed["shop"] = False
    api.waiting["shop"] = ["rex"]
    await guard.release_when_done("shop", lambda n: indexed[n])
    assert api.writes == [] and api.listed == ["shop"], "the listing (the index may lag) still shows one"
    api.waiting["shop"] = []
    await guard.release_when_done("shop", lambda n: indexed[n])
    assert api.writes == [("shop", "pet-operator", ["someone.else/keep"], "10")]
    assert guard.released == {"shop"}
    await guard.release_when_done("shop", nobody)
    await guard.sweep(nobody)
    assert len(api.writes) == 1, "released once"


async def test_an_empty_namespace_being_deleted_is_released_by_its_namespace_event() -> None:
    api = FakeBindings()
    api.add("shop", finalizers=(BINDING_FINALIZER,))
    guard = BindingGuard(api, ["shop"])
    await guard.namespace_changed(ns("shop", deleting=True), nobody)
    assert api.writes == [("shop", "pet-operator", [], "10")]


async def test_a_namespace_being_deleted_is_never_guarded_again() -> None:
    api = FakeBindings()
    api.add("shop")
    guard = BindingGuard(api, ["shop"])
    await guard.namespace_changed(ns("shop", deleting=True), nobody)
    await guard.guard("shop")
    await guard.sweep(nobody)
    assert api.writes == []


async def test_a_recreated_namespace_is_guarded_again() -> None:
    api = FakeBindings()
    api.add("shop", finalizers=(BINDING_FINALIZER,))
    guard = BindingGuard(api, ["shop"])
    await guard.namespace_changed(ns("shop", deleting=True), nobody)
    api.add("shop")  # the namespace was deleted and made again, with a fresh binding
    await guard.namespace_changed(ns("shop"), nobody)
    assert [w[2] for w in api.writes] == [[], [BINDING_FINALIZER]]


async def test_a_missing_binding_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeBindings()
    guard = BindingGuard(api, ["shop"], binding="mine")
    with caplog.at_level(logging.WARNING, logger=bindings.__name__):
        await guard.guard("shop")
        await guard.sweep(nobody)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "no RoleBinding mine in served namespace shop" in warnings[0]
    assert api.writes == []


async def test_no_right_to_read_the_binding_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeBindings()
    api.read_error = ApiError(403, "Forbidden")
    guard = BindingGuard(api, ["shop"])
    with caplog.at_level(logging.WARNING, logger=bindings.__name__):
        await guard.guard("shop")
        await guard.guard("shop")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "pet-operator-served-namespace" in warnings[0]


async def test_other_read_errors_propagate_for_the_retry() -> None:
    api = FakeBindings()
    api.read_error = ApiError(503, "Service Unavailable")
    guard = BindingGuard(api, ["shop"])
    with pytest.raises(ApiError):
        await guard.guard("shop")


# --- wired into the handlers and the reconciler ------------------------------------------------


def _wired(served: list[str]) -> tuple[FakeBindings, Reconciler, handlers.Indexes, kopf.OperatorRegistry]:
    api = FakeBindings()
    rec = Reconciler(FakeWriter(), IdsNotEnforced(), clock=Clock())
    rec.bindings = BindingGuard(api, served)
    indexes = handlers.Indexes()
    registry = kopf.OperatorRegistry()
    handlers.register(registry, rec, indexes, StoreCounts(rec.recount, handlers.with_retries, window=0))
    return api, rec, indexes, registry


def _handler(registry: kopf.OperatorRegistry, handler_id: str) -> Any:
    return next(h for h in registry._watching.get_all_handlers() if h.id == handler_id)


def _held_pet(name: str, **kwargs: Any) -> dict[str, Any]:
    body = pet_body(name, **kwargs)
    body["metadata"]["finalizers"] = [FINALIZER]
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return body


def test_namespace_mode_watches_namespaces_and_all_namespaces_mode_does_not() -> None:
    _, _, _, registry = _wired([NS])
    handler = _handler(registry, "namespace_event")
    assert (handler.selector.group, handler.selector.version, handler.selector.any_name) == ("", "v1", "namespaces")
    plain = kopf.OperatorRegistry()
    handlers.register(plain, Reconciler(FakeWriter(), IdsNotEnforced(), clock=Clock()), handlers.Indexes())
    assert {h.id for h in plain._watching.get_all_handlers()} == {"pet_event", "store_event"}


async def test_the_last_pet_of_a_namespace_being_deleted_lets_the_binding_go() -> None:
    api, _rec, _indexes, registry = _wired([NS])
    api.add(NS)
    namespace_event, pet_event = _handler(registry, "namespace_event").fn, _handler(registry, "pet_event").fn
    await namespace_event(type="ADDED", body=ns(NS))
    assert [w[2] for w in api.writes] == [[BINDING_FINALIZER]]
    await pet_event(type="MODIFIED", body=_held_pet("rex"))  # deleted, still waits on the operator
    api.writes.clear()
    await namespace_event(type="MODIFIED", body=ns(NS, deleting=True))
    assert api.writes == [] and api.listed == []
    await pet_event(type="DELETED", body=_held_pet("rex"))
    assert [w[2] for w in api.writes] == [[]]


async def test_the_resync_guards_and_releases() -> None:
    api, rec, indexes, _ = _wired([NS, "other"])
    api.add(NS)
    api.add("other", finalizers=(BINDING_FINALIZER,))
    assert rec.bindings is not None
    rec.bindings.terminating.add("other")
    await handlers.resync_once(rec, indexes.pets, indexes.stores, indexes.by_store)
    assert sorted((w[0], tuple(w[2])) for w in api.writes) == [(NS, (BINDING_FINALIZER,)), ("other", ())]


async def test_a_live_pet_in_a_namespace_being_deleted_gets_no_claim_or_finalizer() -> None:
    writer = FakeWriter()
    rec = Reconciler(writer, IdsNotEnforced(), clock=Clock())
    rec.bindings = BindingGuard(FakeBindings(), [NS])
    rec.bindings.terminating.add(NS)
    snap = pet("rex")
    assert await rec.sync_pet((NS, "rex"), index_of(snap), index_of()) is None
    assert writer.calls == []
    rec.bindings.terminating.clear()  # the same pet elsewhere is reconciled
    assert await rec.sync_pet((NS, "rex"), index_of(snap), index_of()) is not None
    assert len(writer.calls) == 1


async def test_before_the_start_up_is_indexed_namespaces_are_only_noted_then_the_catch_up_acts() -> None:
    api = FakeBindings()
    api.add(NS, finalizers=(BINDING_FINALIZER,))
    rec = Reconciler(FakeWriter(), IdsNotEnforced(), clock=Clock())
    rec.bindings = BindingGuard(api, [NS])
    indexes = handlers.Indexes(complete=asyncio.Event())
    registry = kopf.OperatorRegistry()
    handlers.register(registry, rec, indexes, StoreCounts(rec.recount, handlers.with_retries, window=0))
    await _handler(registry, "namespace_event").fn(type=None, body=ns(NS, deleting=True))  # a restart mid-deletion
    assert api.writes == [] and rec.bindings.terminating == {NS}
    assert indexes.complete is not None
    indexes.complete.set()
    await handlers.resync_once(rec, indexes.pets, indexes.stores, indexes.by_store)
    assert [w[2] for w in api.writes] == [[]]


async def test_pets_no_watch_delivers_are_finalized_from_the_listing_then_the_binding_goes() -> None:
    api = FakeBindings()
    api.add(NS, finalizers=(BINDING_FINALIZER,))
    api.waiting[NS] = ["rex", "tom"]
    guard = BindingGuard(api, [NS])
    finalized: list[str] = []

    async def finalize(body: dict[str, Any]) -> None:
        finalized.append(body["metadata"]["name"])
        api.waiting[NS].remove(body["metadata"]["name"])

    guard.finalize = finalize
    await guard.namespace_changed(ns(NS, deleting=True), nobody)
    assert finalized == ["rex", "tom"]
    assert api.listed == [NS, NS], "listed again after finalizing"
    assert [w[2] for w in api.writes] == [[]]


async def test_a_pet_still_waiting_after_finalizing_keeps_the_binding() -> None:
    api = FakeBindings()
    api.add(NS, finalizers=(BINDING_FINALIZER,))
    api.waiting[NS] = ["rex"]
    guard = BindingGuard(api, [NS])

    async def finalize(body: dict[str, Any]) -> None:
        return None  # a 409, or a pet the watch index holds: it still carries the finalizer

    guard.finalize = finalize
    await guard.namespace_changed(ns(NS, deleting=True), nobody)
    assert api.writes == []
    assert guard.released == set()


async def test_the_reconciler_finalizes_an_unwatched_pet_and_leaves_watched_ones_to_sync_pet() -> None:
    claims, finalizers = FakeClaimStore(), FakeFinalizers()
    rec = Reconciler(FakeWriter(), IdClaims(claims, finalizers), clock=Clock())
    body = _held_pet("rex")
    body["spec"]["id"] = 7
    snap = PetSnapshot.from_body(body)
    claims.put(7, NS, "rex", snap.uid)
    await rec.finalize_unwatched(body, index_of(snap), index_of())  # the index holds it: not this path
    assert finalizers.calls == []
    await rec.finalize_unwatched(body, index_of(), index_of())
    assert claims.holder(7) is None
    assert [(c.name, c.finalizers) for c in finalizers.calls] == [("rex", [])]
    await rec.finalize_unwatched(pet_body("tom"), index_of(), index_of())  # not being deleted: nothing
    assert len(finalizers.calls) == 1


async def test_the_sweep_reads_whether_a_namespace_is_being_deleted() -> None:
    """With no Namespace event at all (Kopf watches no served namespace, so no Namespace either)."""
    api = FakeBindings()
    api.add(NS, finalizers=(BINDING_FINALIZER,))
    api.deleting.add(NS)
    guard = BindingGuard(api, [NS])
    await guard.sweep(nobody)
    assert guard.terminating == {NS}
    assert [w[2] for w in api.writes] == [[]]


def test_the_guard_knows_which_pets_hold_the_finalizer_per_namespace() -> None:
    guard = BindingGuard(FakeBindings(), [NS, "other"])
    guard.pet_seen(NS, "rex", [FINALIZER])
    guard.pet_seen(NS, "tom", [FINALIZER, "other/one"])
    guard.pet_seen("unserved", "kit", [FINALIZER])
    assert guard.holding(NS) and not guard.holding("other") and not guard.holding("unserved")
    guard.pet_seen(NS, "rex", [])  # its finalizer removed
    assert guard.holding(NS)
    guard.pet_gone(NS, "tom")
    assert not guard.holding(NS)
    guard.pet_gone(NS, "never-seen")

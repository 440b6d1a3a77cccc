"""Cluster-wide unique ids (contract behaviours 4 and 5): claims, finalizers, orphans, replicas.

The reconciler runs against :class:`claim_fakes.FakeClaimStore`, which answers like the API
server (create-if-absent, delete with a resourceVersion precondition), and
:class:`claim_fakes.FakeFinalizers`; both record into one journal, so the order of
calls across them (finalizer before claim, claim before finalizer removal) is checked.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from claim_fakes import FakeClaimStore, FakeFinalizers, FinalizerCall, Journal, api_error, claim_pet, not_found
from operator_fakes import NS, Clock, CountingIndex, FakeWriter, index_of, seen, uid_of

from pet_operator import model
from pet_operator.claims import (
    CLAIM_LABEL,
    FINALIZER,
    UID_ANNOTATION,
    Claim,
    claim_body,
    claim_from_body,
    claim_name,
    claim_outcome,
)
from pet_operator.id_claims import IdClaims
from pet_operator.model import PetSnapshot
from pet_operator.reconciler import Reconciler
from pet_operator.rest import ApiError

OTHER = "other"
UNSERVED = "elsewhere"
SERVED = frozenset({NS, OTHER})
KEY = (NS, "rex")
KEEP = "example.com/keep"
ID = 7


@dataclasses.dataclass
class World:
    """One fake cluster: claims, finalizers and status writes, shared by every replica.

    ``pets`` are the pets the API server has (``(namespace, name) -> uid``), which a replica
    reads to confirm that a claim's holder is gone; a test registers the pets it means to
    exist when a replica's watch index may not show them."""

    journal: Journal
    store: FakeClaimStore
    finalizers: FakeFinalizers
    writer: FakeWriter
    pets: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    forbidden: set[str] = dataclasses.field(default_factory=set)  # namespaces whose pets it may not read
    deleted_namespaces: set[str] = dataclasses.field(default_factory=set)
    gone: set[tuple[str, str]] = dataclasses.field(default_factory=set)  # deleted, the index not told yet
    after_can_inherit: Any = None  # called after a can_inherit answer (to delete that pet just then)

    async def read_uid(self, namespace: str, name: str) -> str | None:
        self.journal.append(("read_uid", f"{namespace}/{name}"))
        if namespace in self.forbidden:
            raise api_error(403, "Forbidden")
        return self.pets.get((namespace, name))

    async def namespace_exists(self, namespace: str) -> bool:
        self.journal.append(("namespace_exists", namespace))
        return namespace not in self.deleted_namespaces

    async def can_inherit(self, namespace: str, name: str, uid: str) -> bool:
        """Alive, not deleting, with our finalizer: true unless the test says the pet is gone
        (``gone``) or registered it under another UID."""
        self.journal.append(("can_inherit", f"{namespace}/{name}"))
        answer = (namespace, name) not in self.gone and self.pets.get((namespace, name), uid) == uid
        if self.after_can_inherit is not None:
            self.after_can_inherit(namespace, name)
        return answer

    def replica(self, served: frozenset[str] | None = SERVED, writer: FakeWriter | None = None) -> Reconciler:
        """A fresh operator process: its own instance, empty caches, the same cluster."""
        ids = IdClaims(self.store, self.finalizers, pet_reader=self, served=served)
        return Reconciler(writer or self.writer, ids, clock=Clock())


@pytest.fixture
def world() -> World:
    journal = Journal()
    return World(journal, FakeClaimStore(journal), FakeFinalizers(journal), FakeWriter())


def status_of(writer: FakeWriter, namespace: str, name: str) -> dict[str, Any]:
    """The last status written for a pet."""
    calls = [c for c in writer.of("pets") if (c.namespace, c.name) == (namespace, name)]
    assert calls, f"no status written for {namespace}/{name}"
    return calls[-1].status


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in status["conditions"] if c["type"] == type_]
    assert len(found) == 1, f"{len(found)} {type_} conditions"
    return found[0]


def deleting(snap: PetSnapshot, rv: str = "9") -> PetSnapshot:
    """The same pet once its deletion started (deletionTimestamp set, finalizers kept)."""
    return dataclasses.replace(snap, deleting=True, resource_version=rv)


# --- claims.py helpers --------------------------------------------------------------------------


def test_claim_name_is_derived_from_the_id() -> None:
    assert claim_name(7) == "pet-id-7"
    assert claim_name(9007199254740991) == "pet-id-9007199254740991"


def test_claim_body_is_a_lease_naming_holder_and_uid() -> None:
    body = claim_body(7, "ns", "rex", "u-1")
    assert (body["apiVersion"], body["kind"]) == ("coordination.k8s.io/v1", "Lease")
    assert body["metadata"] == {
        "name": "pet-id-7",
        "labels": {CLAIM_LABEL: "true"},
        "annotations": {UID_ANNOTATION: "u-1"},
    }
    assert body["spec"] == {"holderIdentity": "ns/rex"}
    assert FINALIZER.startswith(f"{model.GROUP}/")


def test_claim_from_body_round_trips_claim_body() -> None:
    body = claim_body(7, "ns", "rex", "u-1")
    body["metadata"]["resourceVersion"] = "42"
    claim = claim_from_body(body)
    assert claim == Claim(pet_id=7, holder="ns/rex", holder_uid="u-1", resource_version="42")
    assert claim.holder_key == ("ns", "rex")


@pytest.mark.parametrize("name", ["kopf-leader", "pet-id-", "pet-id-x7", "pet-id--7", "pet-id-7a", "xpet-id-7", ""])
def test_claim_from_body_ignores_leases_that_are_not_claims(name: str) -> None:
    assert claim_from_body({"metadata": {"name": name}, "spec": {"holderIdentity": "ns/rex"}}) is None


def test_claim_from_body_tolerates_missing_fields() -> None:
    assert claim_from_body({}) is None
    claim = claim_from_body({"metadata": {"name": "pet-id-3", "annotations": None}, "spec": None})
    assert claim == Claim(pet_id=3, holder="", holder_uid="", resource_version="")
    assert claim.holder_key == ("", "")


def test_claim_outcome_held_by_this_pet() -> None:
    claim = Claim(7, "ns/rex", "u-1", "1")
    assert claim_outcome(7, "ns", "rex", "u-1", claim) == model.IdClaim("True", "Claimed", "Id 7 is held by this pet.")


def test_claim_outcome_without_claim_is_unknown() -> None:
    outcome = claim_outcome(7, "ns", "rex", "u-1", None)
    assert (outcome.status, outcome.reason, outcome.holder) == ("Unknown", "Claiming", None)


def test_claim_outcome_held_by_another_pet_names_it() -> None:
    outcome = claim_outcome(7, "ns", "rex", "u-1", Claim(7, "other/rex", "u-2", "1"))
    assert (outcome.status, outcome.reason, outcome.holder) == ("False", "DuplicateId", "other/rex")
    assert "other/rex" in outcome.message


def test_claim_outcome_compares_uids_not_names() -> None:
    """A pet recreated under the same name is not the holder of its predecessor's claim."""
    outcome = claim_outcome(7, "ns", "rex", "u-new", Claim(7, "ns/rex", "u-old", "1"))
    assert outcome.status == "False"


# --- first claim -------------------------------------------------------------------------------


async def test_first_sync_adds_finalizer_then_claims_and_is_active(world: World) -> None:
    rec = world.replica()
    verdict = await rec.sync_pet(KEY, index_of(claim_pet("rex", rv="5")), index_of())

    assert verdict is not None
    assert (verdict.phase, verdict.reason) == (model.Phase.ACTIVE, "Reconciled")
    assert world.journal.ops() == ["set_finalizers", "create_claim"]
    assert world.finalizers.calls == [FinalizerCall("pets", NS, "rex", [FINALIZER], "5")]
    assert world.store.claims[ID].holder == "default/rex"
    assert world.store.claims[ID].holder_uid == uid_of(NS, "rex")

    status = status_of(world.writer, NS, "rex")
    assert (status["phase"], status["reason"]) == ("Active", "Reconciled")
    id_claimed = condition(status, "IdClaimed")
    assert (id_claimed["status"], id_claimed["reason"]) == ("True", "Claimed")
    assert id_claimed["message"] == "Id 7 is held by this pet."
    assert condition(status, "Ready")["status"] == "True"


async def test_finalizer_is_appended_to_the_pets_other_finalizers(world: World) -> None:
    await world.replica().sync_pet(KEY, index_of(claim_pet("rex", finalizers=(KEEP,), rv="5")), index_of())
    assert world.finalizers.calls == [FinalizerCall("pets", NS, "rex", [KEEP, FINALIZER], "5")]


async def test_pet_that_shows_our_finalizer_gets_no_finalizer_write(world: World) -> None:
    verdict = await world.replica().sync_pet(KEY, index_of(claim_pet("rex", finalizers=(FINALIZER,))), index_of())
    assert verdict is not None
    assert verdict.phase is model.Phase.ACTIVE
    assert world.journal.ops() == ["create_claim"]


async def test_finalizer_added_once_while_the_watch_lags_and_again_once_removed(world: World) -> None:
    rec = world.replica()
    bare = claim_pet("rex", rv="5")
    await rec.sync_pet(KEY, index_of(bare), index_of())
    await rec.sync_pet(KEY, index_of(bare), index_of())  # the index does not show the finalizer yet
    assert len(world.finalizers.calls) == 1

    rec.observe_pet(claim_pet("rex", rv="6", finalizers=(FINALIZER,)))  # the watch shows it: forgotten
    removed = claim_pet("rex", rv="7")  # then someone removed it
    rec.observe_pet(removed)
    await rec.sync_pet(KEY, index_of(removed), index_of())
    assert [c.resource_version for c in world.finalizers.calls] == ["5", "7"]


async def test_held_id_is_answered_from_the_cache(world: World) -> None:
    rec = world.replica()
    pets = index_of(claim_pet("rex"))
    await rec.sync_pet(KEY, pets, index_of())
    await rec.sync_pet(KEY, pets, index_of())
    assert (world.store.creates, world.store.reads) == (1, 0)


async def test_pet_gone_while_adding_the_finalizer_claims_nothing(world: World) -> None:
    world.finalizers.errors.append(not_found(NS, "rex"))
    assert await world.replica().sync_pet(KEY, index_of(claim_pet("rex")), index_of()) is None
    assert world.store.creates == 0
    assert world.store.claims == {}
    assert world.writer.calls == []


async def test_finalizer_conflict_propagates_before_any_claim(world: World) -> None:
    """A 409 (the pet moved) goes to the retry wrapper; no claim exists without the finalizer."""
    world.finalizers.errors.append(api_error(409))
    with pytest.raises(ApiError):
        await world.replica().sync_pet(KEY, index_of(claim_pet("rex")), index_of())
    assert world.store.creates == 0
    assert world.writer.calls == []


async def test_pet_without_an_integer_id_claims_nothing(world: World) -> None:
    snap = dataclasses.replace(claim_pet("rex"), spec={"id": "7", "name": "rex"})
    await world.replica().sync_pet(KEY, index_of(snap), index_of())
    assert world.journal == []
    status = status_of(world.writer, NS, "rex")
    assert (status["phase"], status["reason"]) == ("Invalid", "InvalidId")  # never Active without an id
    assert condition(status, "IdClaimed")["reason"] == "InvalidId"


@pytest.mark.parametrize("bad", [0, -1, 9007199254740992], ids=["zero", "negative", "too-large"])
async def test_pet_with_an_integer_id_out_of_range_claims_nothing(world: World, bad: int) -> None:
    snap = dataclasses.replace(claim_pet("rex"), spec={"id": bad, "name": "rex"})
    assert snap.pet_id is None
    await world.replica().sync_pet(KEY, index_of(snap), index_of())
    assert world.journal == []
    assert status_of(world.writer, NS, "rex")["phase"] == "Invalid"


# --- duplicates ----------------------------------------------------------------------------------


async def test_duplicate_in_another_namespace_is_conflict_naming_the_holder(world: World) -> None:
    rec = world.replica()
    holder, twin = claim_pet("rex"), claim_pet("rex", namespace=OTHER)  # same name, other namespace
    pets = index_of(holder, twin)
    await rec.sync_pet(KEY, pets, index_of())
    verdict = await rec.sync_pet((OTHER, "rex"), pets, index_of())

    assert verdict is not None
    assert (verdict.phase, verdict.reason) == (model.Phase.CONFLICT, "DuplicateId")
    status = status_of(world.writer, OTHER, "rex")
    assert (status["phase"], status["reason"]) == ("Conflict", "DuplicateId")
    assert "default/rex" in status["message"]
    id_claimed = condition(status, "IdClaimed")
    assert (id_claimed["status"], id_claimed["reason"]) == ("False", "DuplicateId")
    assert "default/rex" in id_claimed["message"]
    assert condition(status, "Ready")["status"] == "False"
    # the holder keeps its claim; the twin still got the finalizer (its delete is handled too)
    assert world.store.holder(ID) == "default/rex"
    assert world.store.deletes == []
    assert [c.namespace for c in world.finalizers.calls] == [NS, OTHER]


async def test_conflict_is_not_rewritten_on_resync(world: World) -> None:
    rec = world.replica()
    pets = index_of(claim_pet("rex"), claim_pet("rex", namespace=OTHER))
    await rec.sync_pet(KEY, pets, index_of())
    await rec.sync_pet((OTHER, "rex"), pets, index_of())
    writes = len(world.writer.calls)
    again = await rec.sync_pet((OTHER, "rex"), pets, index_of())
    assert again is not None
    assert again.phase is model.Phase.CONFLICT
    assert len(world.writer.calls) == writes


# --- restart -------------------------------------------------------------------------------------


async def test_restarted_reconciler_recognises_its_own_claim_by_uid(world: World) -> None:
    existing = world.store.put(ID, NS, "rex", uid_of(NS, "rex"))
    rec = world.replica()  # new process: empty caches
    verdict = await rec.sync_pet(KEY, index_of(claim_pet("rex", finalizers=(FINALIZER,))), index_of())

    assert verdict is not None
    assert verdict.phase is model.Phase.ACTIVE
    assert condition(status_of(world.writer, NS, "rex"), "IdClaimed")["status"] == "True"
    assert world.store.claims[ID] is existing  # same object, same resourceVersion: untouched
    assert world.journal.ops() == ["create_claim", "read_claim"]


async def test_restarted_reconciler_primed_with_a_listing_makes_no_claim_calls(world: World) -> None:
    world.store.put(ID, NS, "rex", uid_of(NS, "rex"))
    rec = world.replica()
    rec.ids.prime_claims(await world.store.list_claims())
    verdict = await rec.sync_pet(KEY, index_of(claim_pet("rex", finalizers=(FINALIZER,))), index_of())
    assert verdict is not None
    assert verdict.phase is model.Phase.ACTIVE
    assert world.journal.ops() == ["list_claims"]


async def test_primed_claim_of_another_pet_still_conflicts(world: World) -> None:
    world.store.put(ID, OTHER, "holder", uid_of(OTHER, "holder"))
    rec = world.replica()
    rec.ids.prime_claims(await world.store.list_claims())
    pets = index_of(claim_pet("holder", namespace=OTHER, finalizers=(FINALIZER,)), claim_pet("rex"))
    verdict = await rec.sync_pet(KEY, pets, index_of())
    assert verdict is not None
    assert verdict.phase is model.Phase.CONFLICT
    assert "other/holder" in verdict.message


async def test_forgotten_claims_are_read_again(world: World) -> None:
    """A replica that lost the leadership forgets its claims: another leader may move them meanwhile."""
    world.store.put(ID, NS, "rex", uid_of(NS, "rex"))
    rec = world.replica()
    rec.ids.prime_claims(await world.store.list_claims())
    rec.ids.forget_claims()
    await rec.sync_pet(KEY, index_of(claim_pet("rex", finalizers=(FINALIZER,))), index_of())
    assert world.journal.ops() == ["list_claims", "create_claim", "read_claim"]


# --- orphans met while claiming -------------------------------------------------------------------


async def test_orphan_in_a_served_namespace_is_deleted_and_taken_over(world: World) -> None:
    orphan = world.store.put(ID, OTHER, "ghost", "uid-ghost")  # its pet is not in the index
    verdict = await world.replica().sync_pet(KEY, index_of(claim_pet("rex")), index_of())

    assert verdict is not None
    assert verdict.phase is model.Phase.ACTIVE
    assert world.store.deletes == [orphan]
    assert world.store.holder(ID) == "default/rex"
    assert world.journal.ops("create_claim", "read_claim", "delete_claim") == [
        "create_claim", "read_claim", "delete_claim", "create_claim",
    ]


async def test_claim_of_a_holder_recreated_under_the_same_name_is_an_orphan(world: World) -> None:
    orphan = world.store.put(ID, OTHER, "phoenix", "uid-first-life")
    reborn = claim_pet("phoenix", namespace=OTHER, uid="uid-second-life", pet_id=8, finalizers=(FINALIZER,))
    verdict = await world.replica().sync_pet(KEY, index_of(reborn, claim_pet("rex")), index_of())
    assert verdict is not None
    assert verdict.phase is model.Phase.ACTIVE
    assert world.store.deletes == [orphan]


async def test_claim_of_a_holder_in_an_unserved_namespace_is_left_alone(world: World) -> None:
    """Its pet is invisible to this operator's watch, not gone: the claim stands and the pet conflicts."""
    foreign = world.store.put(ID, UNSERVED, "ghost", "uid-ghost")
    world.pets[(UNSERVED, "ghost")] = "uid-ghost"  # the API server still has it
    verdict = await world.replica(served=SERVED).sync_pet(KEY, index_of(claim_pet("rex")), index_of())

    assert verdict is not None
    assert (verdict.phase, verdict.reason) == (model.Phase.CONFLICT, "DuplicateId")
    assert "elsewhere/ghost" in status_of(world.writer, NS, "rex")["message"]
    assert world.store.claims[ID] is foreign
    assert "delete_claim" not in world.journal.ops()


async def test_claim_of_a_gone_holder_in_an_unserved_namespace_is_collected(world: World) -> None:
    """Finding 9: the API server says the holder's UID is gone (a namespace no longer served, its pet
    deleted meanwhile): that is true whoever serves it, so the claim is an orphan and the id is
    taken (before: left for ever, since an unserved holder was never looked up)."""
    orphan = world.store.put(ID, UNSERVED, "ghost", "uid-ghost")
    verdict = await world.replica(served=SERVED).sync_pet(KEY, index_of(claim_pet("rex")), index_of())
    assert verdict is not None
    assert verdict.phase is model.Phase.ACTIVE
    assert world.store.deletes == [orphan]
    assert ("read_uid", "elsewhere/ghost") in world.journal


@pytest.mark.parametrize("namespace", [OTHER, UNSERVED], ids=["served", "unserved"])
async def test_a_forbidden_holder_lookup_leaves_the_claim_and_the_pet_conflicts(
    world: World, namespace: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """Finding 9: no right to read the holder's namespace (its RoleBinding gone, or served by another
    instance): whether the holder lives cannot be told, so the claim stands and the pet still gets
    its status, Conflict naming the holder; the 403 is logged once, not at every sync (before: the
    403 ended the reconciliation and the pet never got a status)."""
    held = world.store.put(ID, namespace, "holder", "uid-holder")
    world.forbidden.add(namespace)
    rec = world.replica(served=SERVED)
    for _ in range(3):
        verdict = await rec.sync_pet(KEY, index_of(claim_pet("rex")), index_of())
        assert verdict is not None
        assert (verdict.phase, verdict.reason) == (model.Phase.CONFLICT, "DuplicateId")
    assert f"{namespace}/holder" in status_of(world.writer, NS, "rex")["message"]
    assert world.store.claims[ID] is held
    assert "delete_claim" not in world.journal.ops()
    assert caplog.text.count(f"cannot read pets in namespace {namespace}") == 1


@pytest.mark.parametrize("namespace", [OTHER, UNSERVED], ids=["served", "unserved"])
async def test_a_forbidden_holder_lookup_in_a_namespace_that_is_gone_is_an_orphan(world: World, namespace: str) -> None:
    """Finding 9: the pet cannot be read (403: the namespace's RoleBinding went with it), but the
    namespace itself is gone, and with it every pet it had: the claim is collected."""
    orphan = world.store.put(ID, namespace, "holder", "uid-holder")
    world.forbidden.add(namespace)
    world.deleted_namespaces.add(namespace)
    verdict = await world.replica(served=SERVED).sync_pet(KEY, index_of(claim_pet("rex")), index_of())
    assert verdict is not None
    assert verdict.phase is model.Phase.ACTIVE
    assert world.store.deletes == [orphan]


async def test_collect_orphans_asks_a_forbidden_namespace_once_per_pass(
    world: World, caplog: pytest.LogCaptureFixture,
) -> None:
    """A namespace served by another instance may hold thousands of claims: one 403 per pass, then
    its claims are left alone without asking again; nothing aborts the pass."""
    for pet_id in (1, 2, 3):
        world.store.put(pet_id, UNSERVED, f"pet-{pet_id}", f"uid-{pet_id}")
    orphan = world.store.put(4, NS, "ghost", "uid-ghost")
    world.forbidden.add(UNSERVED)
    rec = world.replica(served=SERVED)
    assert await rec.collect_orphans(index_of(), index_of()) == 1
    assert await rec.collect_orphans(index_of(), index_of()) == 0
    assert world.store.deletes == [orphan]
    assert [e for e in world.journal if e[0] == "read_uid" and e[1].startswith(UNSERVED)] == [
        ("read_uid", "elsewhere/pet-1"), ("read_uid", "elsewhere/pet-1"),
    ]
    assert caplog.text.count(f"cannot read pets in namespace {UNSERVED}") == 1


async def test_all_namespaces_operator_collects_an_orphan_in_any_namespace(world: World) -> None:
    orphan = world.store.put(ID, UNSERVED, "ghost", "uid-ghost")
    verdict = await world.replica(served=None).sync_pet(KEY, index_of(claim_pet("rex")), index_of())
    assert verdict is not None
    assert verdict.phase is model.Phase.ACTIVE
    assert world.store.deletes == [orphan]


async def test_claim_that_keeps_vanishing_is_tried_three_times(world: World) -> None:
    """Created and deleted by others between our create and read: bounded retries, unknown claim."""
    world.store.scripted_creates = [None, None, None]
    world.store.scripted_reads = [None, None, None]
    await world.replica().sync_pet(KEY, index_of(claim_pet("rex")), index_of())
    assert world.store.creates == 3
    id_claimed = condition(status_of(world.writer, NS, "rex"), "IdClaimed")
    assert (id_claimed["status"], id_claimed["reason"]) == ("Unknown", "Claiming")


async def test_pet_whose_claim_is_unknown_is_not_reported_active(world: World) -> None:
    world.store.scripted_creates = [None, None, None]
    world.store.scripted_reads = [None, None, None]
    verdict = await world.replica().sync_pet(KEY, index_of(claim_pet("rex")), index_of())
    assert verdict is not None
    assert verdict.phase is not model.Phase.ACTIVE


# --- deletion and the finalizer ------------------------------------------------------------------


async def test_delete_releases_the_claim_then_removes_only_our_finalizer(world: World) -> None:
    rec = world.replica()
    live = claim_pet("rex", finalizers=(KEEP, FINALIZER))
    await rec.sync_pet(KEY, index_of(live), index_of())
    writes = len(world.writer.calls)
    world.journal.clear()

    assert await rec.sync_pet(KEY, index_of(deleting(live, rv="9")), index_of()) is None

    assert world.store.claims == {}
    assert world.journal.ops() == ["delete_claim", "set_finalizers"]
    assert world.finalizers.calls == [FinalizerCall("pets", NS, "rex", [KEEP], "9")]
    assert len(world.writer.calls) == writes  # no status for a pet on its way out


async def test_restarted_reconciler_releases_the_claim_on_delete(world: World) -> None:
    world.store.put(ID, NS, "rex", uid_of(NS, "rex"))
    gone = deleting(claim_pet("rex", finalizers=(FINALIZER,)))
    await world.replica().sync_pet(KEY, index_of(gone), index_of())
    assert world.store.claims == {}
    assert world.journal.ops() == ["read_claim", "delete_claim", "set_finalizers"]
    assert world.finalizers.calls[-1].finalizers == []


async def test_delete_promotes_the_oldest_waiting_duplicate(world: World) -> None:
    rec = world.replica()
    holder = claim_pet("holder", created="2024-01-01T00:00:00Z", finalizers=(FINALIZER,))
    # neither the index order nor the keys put the oldest first: only creationTimestamp does
    younger = claim_pet("a-young", namespace=OTHER, created="2024-01-03T00:00:00Z", finalizers=(FINALIZER,))
    older = claim_pet("z-old", namespace=OTHER, created="2024-01-02T00:00:00Z", finalizers=(FINALIZER,))
    pets = seen(rec, holder, younger, older)
    for snap in (holder, younger, older):
        await rec.sync_pet((snap.namespace, snap.name), pets, index_of())
    assert status_of(world.writer, OTHER, "z-old")["phase"] == "Conflict"
    assert status_of(world.writer, OTHER, "a-young")["phase"] == "Conflict"

    pets.data[(NS, "holder")] = [deleting(holder)]
    await rec.sync_pet((NS, "holder"), pets, index_of())

    assert world.store.holder(ID) == "other/z-old"
    old_status = status_of(world.writer, OTHER, "z-old")
    assert (old_status["phase"], old_status["reason"]) == ("Active", "Reconciled")
    assert condition(old_status, "IdClaimed")["status"] == "True"
    young_status = status_of(world.writer, OTHER, "a-young")
    assert (young_status["phase"], young_status["reason"]) == ("Conflict", "DuplicateId")
    assert "other/z-old" in young_status["message"]
    assert "default/holder" not in young_status["message"]
    assert world.finalizers.calls[-1] == FinalizerCall("pets", NS, "holder", [], "9")


async def holder_and_twin(world: World, twin: str = "twin") -> tuple[Reconciler, PetSnapshot, PetSnapshot, Any]:
    """A replica, a pet holding id ``ID`` and an older-than-others twin waiting for it in ``OTHER``,
    both reconciled (the twin Conflict): (replica, holder, twin, their index)."""
    rec = world.replica()
    holder = claim_pet("holder", created="2024-01-01T00:00:00Z", finalizers=(FINALIZER,))
    waiting = claim_pet(twin, namespace=OTHER, created="2024-01-02T00:00:00Z", finalizers=(FINALIZER,))
    pets = seen(rec, holder, waiting)
    for snap in (holder, waiting):
        await rec.sync_pet((snap.namespace, snap.name), pets, index_of())
    return rec, holder, waiting, pets


async def test_a_deleted_holder_hands_its_claim_over_in_place_to_the_oldest_waiting_pet(world: World) -> None:
    """Finding 8: the claim is moved to the heir on the same Lease (resourceVersion precondition),
    never deleted first, so the id is not free for a moment (a create by anyone else in between
    would have taken it)."""
    rec, holder, _, pets = await holder_and_twin(world, "z-old")
    before = world.store.claims[ID].resource_version
    world.journal.clear()

    pets.data[(NS, "holder")] = [deleting(holder)]
    await rec.sync_pet((NS, "holder"), pets, index_of())

    assert "delete_claim" not in world.journal.ops()
    assert world.journal.ops("move_claim", "delete_claim", "create_claim") == ["move_claim"]
    assert world.store.holder(ID) == "other/z-old"
    assert world.store.claims[ID].resource_version != before
    assert status_of(world.writer, OTHER, "z-old")["phase"] == "Active"
    assert world.finalizers.calls[-1] == FinalizerCall("pets", NS, "holder", [], "9")


async def test_a_claim_is_not_handed_to_a_waiting_pet_that_is_already_gone(world: World) -> None:
    """A mass delete: the index still shows the older twin waiting, but it is deleted and its
    finalizer gone; the claim goes to the next live one (or is deleted), never to a pet that no
    longer exists (an orphan until the next pass: seen in the e2e race test)."""
    rec = world.replica()
    holder = claim_pet("holder", created="2024-01-01T00:00:00Z", finalizers=(FINALIZER,))
    ghost = claim_pet("b-ghost", namespace=OTHER, created="2024-01-02T00:00:00Z", finalizers=(FINALIZER,))
    live = claim_pet("c-live", namespace=OTHER, created="2024-01-03T00:00:00Z", finalizers=(FINALIZER,))
    pets = seen(rec, holder, ghost, live)
    for snap in (holder, ghost, live):
        await rec.sync_pet((snap.namespace, snap.name), pets, index_of())
    world.gone.add((OTHER, "b-ghost"))

    pets.data[(NS, "holder")] = [deleting(holder)]
    await rec.sync_pet((NS, "holder"), pets, index_of())
    assert world.store.holder(ID) == "other/c-live"

    # and with nobody left alive to inherit it, the claim is deleted
    world.gone.add((OTHER, "c-live"))
    for key in ((OTHER, "b-ghost"), (OTHER, "c-live")):
        del pets.data[key]
    pets.data[(OTHER, "c-live")] = [deleting(live)]
    await rec.sync_pet((OTHER, "c-live"), pets, index_of())
    assert world.store.claims == {}


async def test_a_heir_deleted_right_after_it_was_confirmed_still_releases_the_claim(world: World) -> None:
    """A mass delete: the holder's fresh read confirms the twin as heir, and the twin is deleted
    just then, its finalize running while the hand-over is under way. Releases of one id run one
    at a time, so the twin's finalize sees the claim handed to it and releases it in turn (seen in
    the e2e race test before: the twin read the claim before the hand-over landed, removed its
    finalizer, and the claim went to a pet that was gone, an orphan until the next pass)."""
    rec, holder, twin, pets = await holder_and_twin(world)
    twin_finalize: list[asyncio.Task[Any]] = []

    def delete_the_twin(namespace: str, name: str) -> None:
        pets.data[(OTHER, "twin")] = [deleting(twin)]
        twin_finalize.append(asyncio.ensure_future(rec.sync_pet((OTHER, "twin"), pets, index_of())))

    world.after_can_inherit = delete_the_twin
    world.store.move_latency = 5  # the twin's finalize reads the claim while the hand-over is in flight
    pets.data[(NS, "holder")] = [deleting(holder)]
    await rec.sync_pet((NS, "holder"), pets, index_of())
    world.after_can_inherit = None
    await asyncio.gather(*twin_finalize)

    assert world.store.claims == {}
    assert world.journal.ops("move_claim", "delete_claim") == ["move_claim", "delete_claim"]


async def test_a_hand_over_refused_because_the_claim_changed_is_tried_again_on_a_fresh_read(world: World) -> None:
    rec, holder, _, pets = await holder_and_twin(world, "z-old")
    # someone labels the Lease after the operator cached it: the first move is refused (409)
    current = world.store.claims[ID]
    world.store.put(ID, *current.holder_key, current.holder_uid)
    world.journal.clear()

    pets.data[(NS, "holder")] = [deleting(holder)]
    await rec.sync_pet((NS, "holder"), pets, index_of())

    assert world.journal.ops("move_claim", "read_claim") == ["move_claim", "read_claim", "move_claim"]
    assert world.store.holder(ID) == "other/z-old"


async def test_delete_of_a_pet_whose_claim_is_someone_elses_keeps_that_claim(world: World) -> None:
    held = world.store.put(ID, OTHER, "holder", uid_of(OTHER, "holder"))
    rec = world.replica()
    twin = claim_pet("rex", finalizers=(FINALIZER,))
    pets = index_of(claim_pet("holder", namespace=OTHER, finalizers=(FINALIZER,)), twin)
    await rec.sync_pet(KEY, pets, index_of())
    writes = len(world.writer.calls)

    pets.data[KEY] = [deleting(twin)]
    await rec.sync_pet(KEY, pets, index_of())

    assert world.store.claims[ID] is held
    assert "delete_claim" not in world.journal.ops()
    assert world.finalizers.calls[-1] == FinalizerCall("pets", NS, "rex", [], "9")
    assert len(world.writer.calls) == writes  # nothing released, nobody promoted


async def test_stale_cached_claim_does_not_delete_the_claim_of_the_next_holder(world: World) -> None:
    """Our claim was collected and the id taken meanwhile: the resourceVersion precondition protects it."""
    rec = world.replica()
    live = claim_pet("rex", finalizers=(FINALIZER,))
    await rec.sync_pet(KEY, index_of(live), index_of())
    del world.store.claims[ID]
    newer = world.store.put(ID, OTHER, "next", uid_of(OTHER, "next"))

    await rec.sync_pet(KEY, index_of(deleting(live)), index_of())

    assert world.store.claims[ID] is newer
    assert world.store.deletes == []
    assert world.finalizers.calls[-1].finalizers == []


async def test_cached_claim_of_the_old_holder_does_not_keep_ours_from_being_released(world: World) -> None:
    """This replica saw the pet conflict; another promoted it meanwhile: its delete still releases."""
    world.store.put(ID, OTHER, "holder", uid_of(OTHER, "holder"))
    rec = world.replica()
    twin = claim_pet("rex", finalizers=(FINALIZER,))
    await rec.sync_pet(KEY, index_of(claim_pet("holder", namespace=OTHER), twin), index_of())
    del world.store.claims[ID]
    ours = world.store.put(ID, NS, "rex", uid_of(NS, "rex"))

    await rec.sync_pet(KEY, index_of(deleting(twin)), index_of())

    assert world.store.deletes == [ours]
    assert world.store.claims == {}


async def test_a_claim_changed_since_it_was_cached_is_still_released_before_the_finalizer(world: World) -> None:
    """Finding 7: the claim Lease was labelled after the pet took it, so the cached resourceVersion
    is stale and the preconditioned delete gets a 409. The claim is read again and deleted; the
    finalizer goes only after, and the waiting twin takes the id at once (before: the finalizer was
    removed, the claim stayed, and the twin stayed Conflict until the next orphan pass). With the twin
    waiting, the write is the in-place hand-over (finding 8), refused and retried the same way."""
    rec = world.replica()
    holder = claim_pet("holder", created="2024-01-01T00:00:00Z", finalizers=(FINALIZER,))
    twin = claim_pet("twin", namespace=OTHER, created="2024-01-02T00:00:00Z", finalizers=(FINALIZER,))
    pets = seen(rec, holder, twin)
    for snap in (holder, twin):
        await rec.sync_pet((snap.namespace, snap.name), pets, index_of())
    assert status_of(world.writer, OTHER, "twin")["phase"] == "Conflict"
    cached = world.store.claims[ID]
    world.store.put(ID, NS, "holder", uid_of(NS, "holder"))  # a label added: same holder, new resourceVersion
    assert world.store.claims[ID].resource_version != cached.resource_version
    world.journal.clear()

    pets.data[(NS, "holder")] = [deleting(holder)]
    await rec.sync_pet((NS, "holder"), pets, index_of())

    ops = world.journal.ops("delete_claim", "move_claim", "read_claim", "set_finalizers")
    assert ops[:4] == ["move_claim", "read_claim", "move_claim", "set_finalizers"]
    assert world.store.holder(ID) == "other/twin"
    assert status_of(world.writer, OTHER, "twin")["phase"] == "Active"


async def test_a_claim_that_keeps_changing_keeps_the_finalizer(world: World) -> None:
    """Every delete refused (409) and every fresh read still ours: the finalizer stays, so the id is
    never left held by a pet that is gone; the next event or resync tries again."""
    world.store.put(ID, NS, "rex", uid_of(NS, "rex"))
    world.store.before_delete = lambda claim: world.store.put(ID, NS, "rex", uid_of(NS, "rex"))
    gone = deleting(claim_pet("rex", finalizers=(FINALIZER,)))
    await world.replica().sync_pet(KEY, index_of(gone), index_of())
    assert "set_finalizers" not in world.journal.ops()
    assert world.store.holder(ID) == "default/rex"

    world.store.before_delete = None  # it settles: the next try releases it
    await world.replica().sync_pet(KEY, index_of(gone), index_of())
    assert world.store.claims == {}
    assert world.finalizers.calls[-1].finalizers == []


async def test_a_claim_deleted_by_someone_else_meanwhile_still_promotes_the_waiting_pet(world: World) -> None:
    """Our hand-over finds the claim gone (404, as None): the id is free, the twin is promoted."""
    rec = world.replica()
    holder = claim_pet("holder", created="2024-01-01T00:00:00Z", finalizers=(FINALIZER,))
    twin = claim_pet("twin", namespace=OTHER, created="2024-01-02T00:00:00Z", finalizers=(FINALIZER,))
    pets = seen(rec, holder, twin)
    for snap in (holder, twin):
        await rec.sync_pet((snap.namespace, snap.name), pets, index_of())
    world.store.before_delete = lambda claim: world.store.claims.pop(ID, None)  # type: ignore[func-returns-value]

    pets.data[(NS, "holder")] = [deleting(holder)]
    await rec.sync_pet((NS, "holder"), pets, index_of())

    world.store.before_delete = None
    assert world.store.holder(ID) == "other/twin"
    assert status_of(world.writer, OTHER, "twin")["phase"] == "Active"
    assert world.finalizers.calls[-1] == FinalizerCall("pets", NS, "holder", [], "9")


async def test_deleting_pet_without_our_finalizer_is_left_alone(world: World) -> None:
    world.store.put(ID, NS, "rex", uid_of(NS, "rex"))
    gone = deleting(claim_pet("rex", finalizers=(KEEP,)))
    assert await world.replica().sync_pet(KEY, index_of(gone), index_of()) is None
    assert world.journal == []
    assert world.writer.calls == []


async def test_finalizer_removal_on_a_pet_already_gone_is_ignored(world: World) -> None:
    rec = world.replica()
    live = claim_pet("rex", finalizers=(FINALIZER,))
    await rec.sync_pet(KEY, index_of(live), index_of())
    world.finalizers.errors.append(not_found(NS, "rex"))
    assert await rec.sync_pet(KEY, index_of(deleting(live)), index_of()) is None
    assert world.store.claims == {}


async def test_a_free_id_found_by_a_younger_twin_goes_to_the_oldest_waiting_pet(world: World) -> None:
    # the holder was released; the younger twin's sync runs before the promotion does
    rec = world.replica()
    older = claim_pet("z-old", namespace=OTHER, created="2024-01-02T00:00:00Z", finalizers=(FINALIZER,))
    younger = claim_pet("a-young", namespace=OTHER, created="2024-01-03T00:00:00Z", finalizers=(FINALIZER,))
    pets = seen(rec, younger, older)

    await rec.sync_pet((OTHER, "a-young"), pets, index_of())

    assert world.store.holder(ID) == "other/z-old"
    assert status_of(world.writer, OTHER, "z-old")["phase"] == "Active"
    young_status = status_of(world.writer, OTHER, "a-young")
    assert young_status["phase"] == "Conflict"
    assert "other/z-old" in young_status["message"]


async def test_an_older_pet_without_our_finalizer_yet_is_not_given_the_id(world: World) -> None:
    # a delete of it would not release the id: it takes its turn when its own sync runs
    rec = world.replica()
    older = claim_pet("z-old", namespace=OTHER, created="2024-01-02T00:00:00Z")
    younger = claim_pet("a-young", namespace=OTHER, created="2024-01-03T00:00:00Z", finalizers=(FINALIZER,))
    pets = seen(rec, younger, older)

    await rec.sync_pet((OTHER, "a-young"), pets, index_of())

    assert world.store.holder(ID) == "other/a-young"


async def test_a_forgotten_pet_is_no_longer_waiting_for_its_id(world: World) -> None:
    rec = world.replica()
    waiter = claim_pet("waiter", namespace=OTHER, finalizers=(FINALIZER,))
    pets = seen(rec, waiter)
    assert [s.name for s in rec.pets_with_id(ID, pets)] == ["waiter"]
    rec.observe_pet(dataclasses.replace(waiter, spec={**waiter.spec, "id": ID + 1}))
    assert rec.pets_with_id(ID, pets) == []
    rec.forget_pet(OTHER, "waiter", waiter.uid)
    assert rec.pets_with_id(ID + 1, index_of(dataclasses.replace(waiter, spec={**waiter.spec, "id": ID + 1}))) == []


async def test_waiting_pet_is_promoted_even_if_the_finalizer_removal_is_retried(world: World) -> None:
    rec = world.replica()
    holder = claim_pet("holder", finalizers=(FINALIZER,))
    waiter = claim_pet("waiter", namespace=OTHER, finalizers=(FINALIZER,))
    pets = seen(rec, holder, waiter)
    await rec.sync_pet((NS, "holder"), pets, index_of())
    await rec.sync_pet((OTHER, "waiter"), pets, index_of())
    pets.data[(NS, "holder")] = [deleting(holder)]

    world.finalizers.errors.append(api_error(409))  # the pet moved: handlers.with_retries calls again
    with pytest.raises(ApiError):
        await rec.sync_pet((NS, "holder"), pets, index_of())
    await rec.sync_pet((NS, "holder"), pets, index_of())

    assert world.store.holder(ID) == "other/waiter"


async def test_deleting_pet_without_an_id_only_loses_its_finalizer(world: World) -> None:
    gone = dataclasses.replace(deleting(claim_pet("rex", finalizers=(FINALIZER,))), spec={"name": "rex"})
    await world.replica().sync_pet(KEY, index_of(gone), index_of())
    assert world.journal.ops() == ["set_finalizers"]


# --- promote_waiting -----------------------------------------------------------------------------


async def test_promote_waiting_goes_oldest_first_and_skips_other_ids_and_deleting_pets(world: World) -> None:
    rec = world.replica()
    pets = seen(
        rec,
        claim_pet("leaving", created="2023-01-01T00:00:00Z", deleting=True, finalizers=(FINALIZER,)),
        claim_pet("other-id", pet_id=8, created="2023-01-01T00:00:00Z"),
        claim_pet("newest", created="2024-03-01T00:00:00Z"),
        claim_pet("oldest", created="2024-01-01T00:00:00Z"),
        claim_pet("middle", created="2024-02-01T00:00:00Z"),
    )
    await rec.promote_waiting(ID, pets, index_of())

    assert world.store.holder(ID) == "default/oldest"
    # the younger ones ask on the oldest's behalf (it carries our finalizer by then): refused, it holds
    assert [entry[2] for entry in world.journal if entry[0] == "create_claim"] == ["default/oldest"] * 3
    assert {c.name for c in world.writer.calls} == {"oldest", "middle", "newest"}
    assert status_of(world.writer, NS, "oldest")["phase"] == "Active"
    assert status_of(world.writer, NS, "middle")["phase"] == "Conflict"
    assert status_of(world.writer, NS, "newest")["phase"] == "Conflict"


# --- collect_orphans -----------------------------------------------------------------------------


async def test_collect_orphans_counts_and_deletes_only_orphans(world: World) -> None:
    rec = world.replica(served=SERVED)
    world.store.put(1, NS, "keeper", uid_of(NS, "keeper"))  # live holder
    world.store.put(2, NS, "ghost", "uid-ghost")  # holder gone
    world.store.put(3, OTHER, "phoenix", "uid-first-life")  # holder recreated: another uid
    world.store.put(4, UNSERVED, "stranger", "uid-stranger")  # cannot tell: not served, not readable
    world.forbidden.add(UNSERVED)
    pets = seen(
        rec,
        claim_pet("keeper", pet_id=1, finalizers=(FINALIZER,)),
        claim_pet("phoenix", namespace=OTHER, pet_id=30, uid="uid-second-life", finalizers=(FINALIZER,)),
        claim_pet("waiter", pet_id=2, finalizers=(FINALIZER,)),  # waiting for id 2
    )

    assert await rec.collect_orphans(pets, index_of()) == 2

    assert sorted(c.pet_id for c in world.store.deletes) == [2, 3]
    assert world.store.holder(1) == "default/keeper"
    assert world.store.holder(2) == "default/waiter"  # promoted
    assert 3 not in world.store.claims
    assert world.store.holder(4) == "elsewhere/stranger"
    assert status_of(world.writer, NS, "waiter")["phase"] == "Active"


async def test_collect_orphans_with_nothing_to_collect(world: World) -> None:
    world.store.put(1, NS, "keeper", uid_of(NS, "keeper"))
    pets = index_of(claim_pet("keeper", pet_id=1, finalizers=(FINALIZER,)))
    assert await world.replica().collect_orphans(pets, index_of()) == 0
    assert world.journal.ops() == ["list_claims"]


async def test_collect_orphans_does_not_count_a_claim_that_changed_meanwhile(world: World) -> None:
    world.store.put(2, NS, "ghost", "uid-ghost")

    def taken_over(claim: Claim) -> None:  # released and claimed again by a pet we cannot see yet
        world.store.put(claim.pet_id, NS, "newcomer", uid_of(NS, "newcomer"))

    world.store.before_delete = taken_over
    assert await world.replica().collect_orphans(index_of(), index_of()) == 0
    assert world.store.holder(2) == "default/newcomer"
    assert world.writer.calls == []


async def test_a_claim_deleted_from_outside_is_taken_again_at_the_next_resync(world: World) -> None:
    """The claim cache is refreshed from the listing collect_orphans makes, so a claim deleted by
    hand (or lost) is not believed held forever: the next sync of its pet claims the id again."""
    rec = world.replica(served=SERVED)
    pets = index_of(claim_pet("rex", finalizers=(FINALIZER,)))
    verdict = await rec.sync_pet(KEY, pets, index_of())
    assert verdict is not None
    assert verdict.phase is model.Phase.ACTIVE
    del world.store.claims[ID]  # kubectl delete lease pet-id-<ID>

    assert await rec.collect_orphans(pets, index_of()) == 0
    await rec.sync_pet(KEY, pets, index_of())
    assert world.store.holder(ID) == "default/rex"


# --- concurrency: replicas -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 8])
async def test_replicas_racing_for_one_id_leave_exactly_one_active(world: World, n: int) -> None:
    """N operator processes (separate instances, one cluster) reconcile N twins at once."""
    snaps = [claim_pet("twin", namespace=f"ns{i}") for i in range(n)]
    pets = index_of(*snaps)
    served = frozenset(s.namespace for s in snaps)
    writers = [FakeWriter() for _ in range(n)]
    replicas = [world.replica(served=served, writer=w) for w in writers]

    verdicts = await asyncio.gather(
        *(rec.sync_pet((s.namespace, s.name), pets, index_of()) for rec, s in zip(replicas, snaps, strict=True))
    )

    phases = [v.phase if v is not None else None for v in verdicts]
    assert phases.count(model.Phase.ACTIVE) == 1, phases
    assert phases.count(model.Phase.CONFLICT) == n - 1, phases
    winner = snaps[phases.index(model.Phase.ACTIVE)]
    holder = f"{winner.namespace}/twin"
    assert list(world.store.claims) == [ID]
    assert world.store.holder(ID) == holder
    assert world.store.deletes == []
    for verdict in verdicts:
        assert verdict is not None
        if verdict.phase is model.Phase.CONFLICT:
            assert holder in verdict.message
    assert len(world.finalizers.calls) == n

    # and it holds: every replica resyncing its pet changes nothing
    again = await asyncio.gather(
        *(rec.sync_pet((s.namespace, s.name), pets, index_of()) for rec, s in zip(replicas, snaps, strict=True))
    )
    assert [v.phase if v is not None else None for v in again] == phases
    assert world.store.holder(ID) == holder


async def test_one_reconciler_racing_pets_for_one_id_leaves_exactly_one_active(world: World) -> None:
    snaps = [claim_pet(f"twin-{i}", namespace=NS if i % 2 else OTHER) for i in range(6)]
    pets = index_of(*snaps)
    rec = world.replica()
    verdicts = await asyncio.gather(*(rec.sync_pet((s.namespace, s.name), pets, index_of()) for s in snaps))
    phases = [v.phase if v is not None else None for v in verdicts]
    assert phases.count(model.Phase.ACTIVE) == 1, phases
    assert phases.count(model.Phase.CONFLICT) == len(snaps) - 1, phases
    assert len(world.store.claims) == 1


async def test_replica_whose_watch_lags_does_not_steal_a_live_claim(world: World) -> None:
    holder, twin = claim_pet("holder"), claim_pet("twin", namespace=OTHER)
    world.pets[(NS, "holder")] = holder.uid  # the API server has it; the second replica's watch not yet
    first = await world.replica().sync_pet((NS, "holder"), index_of(holder, twin), index_of())
    lagging: CountingIndex = index_of(twin)  # this replica has not seen the holder yet
    second = await world.replica().sync_pet((OTHER, "twin"), lagging, index_of())
    assert first is not None
    assert second is not None
    assert [first.phase, second.phase].count(model.Phase.ACTIVE) == 1
    assert world.store.holder(7) == "default/holder"
    assert ("read_uid", "default/holder") in world.journal


async def test_without_a_pet_reader_the_watch_index_is_trusted(world: World) -> None:
    """The old behaviour, kept for callers without API access: a lagging index loses the claim."""
    holder, twin = claim_pet("holder"), claim_pet("twin", namespace=OTHER)
    world.pets[(NS, "holder")] = holder.uid
    await world.replica().sync_pet((NS, "holder"), index_of(holder, twin), index_of())
    blind = Reconciler(world.writer, IdClaims(world.store, world.finalizers, served=SERVED), clock=Clock())
    await blind.sync_pet((OTHER, "twin"), index_of(twin), index_of())
    assert world.store.holder(7) == "other/twin"

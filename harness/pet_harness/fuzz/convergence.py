"""Convergence fuzzing: a Hypothesis state machine over real operations (pets and stores created,
changed, moved and deleted in two namespaces, ids reused across them, creates racing for one id,
the operator SIGKILLed and restarted, or its leader killed), and after each step the live cluster
held against the model of the contract.

:class:`Model` is pure (what must be true); :func:`differences` compares it with what the cluster
shows; :func:`machine` builds the state machine around an :class:`Env` of real API handles.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from kubernetes.client.exceptions import ApiException

from pet_harness.fuzz import contract
from pet_harness.fuzz.tally import Tally
from pet_harness.kube import claim_id

Key = tuple[str, str]
IDS = (1, 2, 3, 4, 5, 6)
PET_NAMES = ("rex", "tom", "kit", "bo")
STORE_NAMES = ("s1", "s2", "s3")
TAGS = ("dog", "cat", "fish")
RESTART_EVERY = 5


@dataclasses.dataclass
class PetState:
    spec: dict[str, Any]
    order: int  # creation order: the oldest waiting duplicate takes a released id


@dataclasses.dataclass
class Model:
    stores: dict[Key, list[str] | None] = dataclasses.field(default_factory=dict)
    pets: dict[Key, PetState] = dataclasses.field(default_factory=dict)
    holders: dict[int, Key] = dataclasses.field(default_factory=dict)  # who holds each id now
    created: int = 0

    def world(self) -> contract.World:
        return contract.World(stores=dict(self.stores), holders=dict(self.holders))

    def add_pet(self, key: Key, spec: dict[str, Any], holder: bool | None = None) -> None:
        self.created += 1
        self.pets[key] = PetState(spec, self.created)
        if holder or (holder is None and spec["id"] not in self.holders):
            self.holders[spec["id"]] = key

    def remove_pet(self, key: Key) -> None:
        state = self.pets.pop(key)
        pet_id = state.spec["id"]
        if self.holders.get(pet_id) == key:
            del self.holders[pet_id]
            waiting = sorted((s.order, k) for k, s in self.pets.items() if s.spec["id"] == pet_id)
            if waiting:  # contract 4: the oldest waiting duplicate takes the id
                self.holders[pet_id] = waiting[0][1]

    def expected(self, key: Key) -> contract.Expected:
        spec = self.pets[key].spec
        return contract.expected_pet(key, spec, self.stores, self.holders.get(spec["id"]))

    def store_counts(self, key: Key) -> tuple[int, int]:
        members = [k for k, s in self.pets.items() if k[0] == key[0] and s.spec.get("store") == key[1]]
        return len(members), sum(1 for k in members if self.expected(k).phase == "Active")


@dataclasses.dataclass
class Live:
    pets: dict[Key, dict[str, Any]]
    stores: dict[Key, dict[str, Any]]
    claims: dict[int, str]  # id -> holderIdentity


def differences(model: Model, live: Live) -> list[str]:
    """Every way the cluster departs from the model, one line each (empty: converged)."""
    out: list[str] = []
    for key in sorted(set(live.pets) - set(model.pets)):
        out.append(f"pet {key[0]}/{key[1]} exists (finalizers {live.pets[key]['metadata'].get('finalizers')}), "
                   "the model deleted it")
    for key in sorted(model.pets):
        obj = live.pets.get(key)
        if obj is None:
            out.append(f"pet {key[0]}/{key[1]} is missing")
            continue
        want = model.expected(key)
        status = obj.get("status") or {}
        got = (status.get("phase"), status.get("reason"))
        if got != (want.phase, want.reason):
            out.append(f"pet {key[0]}/{key[1]} is {got[0]}/{got[1]}, the model expects {want.phase}/{want.reason}")
            continue
        if status.get("observedGeneration") != obj["metadata"].get("generation"):
            out.append(f"pet {key[0]}/{key[1]}: observedGeneration {status.get('observedGeneration')} "
                       f"!= generation {obj['metadata'].get('generation')}")
        if want.holder is not None and f"{want.holder[0]}/{want.holder[1]}" not in str(status.get("message")):
            out.append(f"pet {key[0]}/{key[1]}: Conflict message does not name {want.holder[0]}/{want.holder[1]}: "
                       f"{status.get('message')!r}")
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        for ctype, cstatus in want.conditions().items():
            if cstatus is not None and conditions.get(ctype) != cstatus:
                out.append(f"pet {key[0]}/{key[1]}: condition {ctype} is {conditions.get(ctype)}, "
                           f"the model expects {cstatus}")
    active: dict[int, list[Key]] = {}
    for key, obj in live.pets.items():
        if (obj.get("status") or {}).get("phase") == "Active":
            active.setdefault(obj["spec"]["id"], []).append(key)
    for pet_id, keys in sorted(active.items()):
        if len(keys) > 1:
            out.append(f"id {pet_id} has {len(keys)} Active pets: {sorted(keys)}")
    want_claims = {pet_id: f"{k[0]}/{k[1]}" for pet_id, k in model.holders.items()}
    if live.claims != want_claims:
        out.append(f"id claims {dict(sorted(live.claims.items()))} != holders {dict(sorted(want_claims.items()))}")
    for key in sorted(model.stores):
        obj = live.stores.get(key)
        if obj is None:
            out.append(f"store {key[0]}/{key[1]} is missing")
            continue
        status = obj.get("status") or {}
        got_counts = (status.get("petCount"), status.get("activeCount"))
        if got_counts != model.store_counts(key):
            out.append(f"store {key[0]}/{key[1]} counts {got_counts} != model {model.store_counts(key)}")
    for key in sorted(set(live.stores) - set(model.stores)):
        out.append(f"store {key[0]}/{key[1]} exists, the model deleted it")
    return out


@dataclasses.dataclass
class Env:
    """The real handles a machine drives."""

    namespaces: tuple[str, str]
    pet_api: Callable[[str], Any]  # namespace -> PetApi
    list_claims: Callable[[], dict[int, str]]
    restart: Callable[[], None]  # SIGKILL the operator (or its leader) and bring it back
    settle_timeout: float
    tally: Tally
    restarts_allowed: bool = True


def _api_error(call: Callable[[], Any]) -> ApiException | None:
    try:
        call()
    except ApiException as exc:
        return exc
    return None


def machine(env: Env) -> type[RuleBasedStateMachine]:
    """A state machine class bound to ``env``; each run starts from empty namespaces."""

    class PetMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.model = Model()
            self.steps: list[str] = []
            self.since_restart = 0

        # --- helpers ---------------------------------------------------------------------
        def live(self) -> Live:
            pets: dict[Key, dict[str, Any]] = {}
            stores: dict[Key, dict[str, Any]] = {}
            for ns in env.namespaces:
                api = env.pet_api(ns)
                pets.update({(ns, p["metadata"]["name"]): p for p in api.list_pets()})
                stores.update({(ns, s["metadata"]["name"]): s for s in api.list_stores()})
            return Live(pets, stores, env.list_claims())

        def step(self, text: str) -> None:
            self.steps.append(text)
            self.since_restart += 1
            env.tally.steps += 1

        def refused(self, what: str, verdict: contract.Verdict, exc: ApiException | None) -> None:
            """Hold the outcome of a write against the model's verdict."""
            if verdict.admitted and exc is not None:
                self.disagree(f"{what}: the model admits it, the cluster refused it ({exc.status}): "
                              f"{str(exc.body)[:300]}")
            elif not verdict.admitted and exc is None:
                self.disagree(f"{what}: the model refuses it by {', '.join(verdict.rules)}, the cluster admitted it")
            elif exc is not None and exc.status >= 500:
                self.disagree(f"{what}: answered {exc.status}")
            if not verdict.admitted:
                for r in verdict.rules:
                    env.tally.rejections[r] += 1

        def disagree(self, what: str) -> None:
            env.tally.disagree("convergence", what, "\n".join(self.steps[-30:]))
            raise AssertionError(what + "\nsteps:\n" + "\n".join(self.steps))

        # --- rules -----------------------------------------------------------------------
        @initialize()
        def empty_namespaces(self) -> None:
            for ns in env.namespaces:
                api = env.pet_api(ns)
                for p in api.list_pets():
                    api.delete_pet(p["metadata"]["name"])
                for s in api.list_stores():
                    api.delete_store(s["metadata"]["name"])
            deadline = time.monotonic() + env.settle_timeout
            while True:
                live = self.live()
                if not live.pets and not live.stores and not live.claims:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"the namespaces did not empty: {sorted(live.pets)} {live.claims}")
                time.sleep(0.2)
            self.step("start from empty namespaces")

        @rule(ns=st.integers(0, 1), name=st.sampled_from(PET_NAMES), pet_id=st.sampled_from(IDS),
              store=st.none() | st.sampled_from(STORE_NAMES), tags=st.lists(st.sampled_from(TAGS), unique=True))
        def create_pet(self, ns: int, name: str, pet_id: int, store: str | None, tags: list[str]) -> None:
            key = (env.namespaces[ns], name)
            if key in self.model.pets:
                return
            spec: dict[str, Any] = {"id": pet_id, "name": name, "tags": tags}
            if store:
                spec["store"] = store
            doc = {"apiVersion": contract.GROUP_VERSION, "kind": "Pet", "metadata": {"name": name}, "spec": spec}
            verdict = contract.judge_pet(doc, key[0], self.model.world())
            self.step(f"create pet {key[0]}/{name} {spec}")
            exc = _api_error(lambda: env.pet_api(key[0]).create_pet(name, spec))
            self.refused(f"create pet {key[0]}/{name}", verdict, exc)
            if exc is None:
                self.model.add_pet(key, spec)
                env.tally.examples["convergence create pet"] += 1

        @precondition(lambda self: bool(self.model.pets))
        @rule(data=st.data(), tags=st.lists(st.sampled_from(TAGS), unique=True),
              store=st.none() | st.sampled_from(STORE_NAMES))
        def update_pet(self, data: st.DataObject, tags: list[str], store: str | None) -> None:
            key = data.draw(st.sampled_from(sorted(self.model.pets)))
            old = self.model.pets[key].spec
            spec = {**old, "tags": tags}
            spec.pop("store", None)
            if store:
                spec["store"] = store
            doc = {"apiVersion": contract.GROUP_VERSION, "kind": "Pet", "metadata": {"name": key[1]}, "spec": spec}
            old_doc = {"spec": old}
            verdict = contract.judge_pet(doc, key[0], self.model.world(), "UPDATE", old_doc)
            self.step(f"update pet {key[0]}/{key[1]} tags={tags} store={store}")
            patch = {"spec": {"tags": tags, "store": store}}
            exc = _api_error(lambda: env.pet_api(key[0]).patch_pet(key[1], patch))
            self.refused(f"update pet {key[0]}/{key[1]}", verdict, exc)
            if exc is None:
                self.model.pets[key].spec = spec
                env.tally.examples["convergence update pet"] += 1

        @precondition(lambda self: bool(self.model.pets))
        @rule(data=st.data())
        def change_id(self, data: st.DataObject) -> None:
            key = data.draw(st.sampled_from(sorted(self.model.pets)))
            new_id = data.draw(st.sampled_from(IDS))
            if new_id == self.model.pets[key].spec["id"]:
                return
            self.step(f"change the id of {key[0]}/{key[1]} to {new_id}")
            exc = _api_error(lambda: env.pet_api(key[0]).patch_pet(key[1], {"spec": {"id": new_id}}))
            verdict = contract.Verdict(False, (contract.Broken("spec.id.immutable", "spec.id"),))
            self.refused(f"change the id of {key[0]}/{key[1]}", verdict, exc)
            env.tally.examples["convergence change id"] += 1

        @precondition(lambda self: bool(self.model.pets))
        @rule(data=st.data())
        def delete_pet(self, data: st.DataObject) -> None:
            key = data.draw(st.sampled_from(sorted(self.model.pets)))
            self.step(f"delete pet {key[0]}/{key[1]}")
            env.pet_api(key[0]).delete_pet(key[1])
            self.model.remove_pet(key)
            env.tally.examples["convergence delete pet"] += 1

        @rule(ns=st.integers(0, 1), name=st.sampled_from(STORE_NAMES),
              allowed=st.none() | st.lists(st.sampled_from(TAGS), unique=True))
        def create_store(self, ns: int, name: str, allowed: list[str] | None) -> None:
            key = (env.namespaces[ns], name)
            if key in self.model.stores:
                return
            self.step(f"create store {key[0]}/{name} allowedTags={allowed}")
            env.pet_api(key[0]).create_store(name, {} if allowed is None else {"allowedTags": allowed})
            self.model.stores[key] = allowed
            env.tally.examples["convergence create store"] += 1

        @precondition(lambda self: bool(self.model.stores))
        @rule(data=st.data(), allowed=st.none() | st.lists(st.sampled_from(TAGS), unique=True))
        def narrow_or_widen_store(self, data: st.DataObject, allowed: list[str] | None) -> None:
            key = data.draw(st.sampled_from(sorted(self.model.stores)))
            self.step(f"set allowedTags of store {key[0]}/{key[1]} to {allowed}")
            env.pet_api(key[0]).patch_store(key[1], {"spec": {"allowedTags": allowed}})
            self.model.stores[key] = allowed
            env.tally.examples["convergence change store"] += 1

        def tagged_members(self) -> list[tuple[Key, Key]]:
            """(store, pet) pairs of existing stores and their pets that carry tags."""
            return sorted(((k[0], s.spec["store"]), k) for k, s in self.model.pets.items()
                          if s.spec.get("tags") and (k[0], s.spec.get("store")) in self.model.stores)

        @precondition(lambda self: bool(self.tagged_members()))
        @rule(data=st.data())
        def narrow_store_below_a_member(self, data: st.DataObject) -> None:
            """A store narrows so that one of its pets no longer fits (contract 3: that pet turns
            Invalid and comes back when the store widens); random narrowing rarely hits one."""
            store, pet = data.draw(st.sampled_from(self.tagged_members()))
            dropped = data.draw(st.sampled_from(sorted(self.model.pets[pet].spec["tags"])))
            allowed = [t for t in TAGS if t != dropped]
            self.step(f"narrow store {store[0]}/{store[1]} to {allowed} (drops {dropped!r} of {pet[1]})")
            env.pet_api(store[0]).patch_store(store[1], {"spec": {"allowedTags": allowed}})
            self.model.stores[store] = allowed
            env.tally.examples["convergence change store"] += 1

        @precondition(lambda self: bool(self.model.stores))
        @rule(data=st.data())
        def delete_store(self, data: st.DataObject) -> None:
            key = data.draw(st.sampled_from(sorted(self.model.stores)))
            self.step(f"delete store {key[0]}/{key[1]}")
            env.pet_api(key[0]).delete_store(key[1])
            del self.model.stores[key]
            env.tally.examples["convergence delete store"] += 1

        @rule(pet_id=st.sampled_from(IDS), names=st.sampled_from(PET_NAMES),
              store=st.none() | st.sampled_from(STORE_NAMES))
        def race_for_one_id(self, pet_id: int, names: str, store: str | None) -> None:
            """Two creates of one id at once, one in each namespace: both may pass admission;
            exactly one may hold the id (the live system says which; the model adopts it)."""
            keys = [(ns, f"{names}-r") for ns in env.namespaces]
            if any(k in self.model.pets for k in keys) or pet_id in self.model.holders:
                return
            spec: dict[str, Any] = {"id": pet_id, "name": names}
            if store:
                spec["store"] = store  # tags are left out: the race is about the id
            self.step(f"race: create {keys[0]} and {keys[1]} with id {pet_id} at once")
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                errors = list(pool.map(lambda k: _api_error(lambda: env.pet_api(k[0]).create_pet(k[1], spec)), keys))
            made = [k for k, e in zip(keys, errors, strict=True) if e is None]
            for k, e in zip(keys, errors, strict=True):
                if e is not None and (e.status >= 500 or "already held" not in str(e.body)):
                    self.disagree(f"race create {k}: {e.status} {str(e.body)[:300]}")
            if not made:
                self.disagree(f"race for id {pet_id}: neither create got in")
            # who holds it is the cluster's choice: wait for a claim, then the model adopts it
            deadline = time.monotonic() + env.settle_timeout
            while (holder := env.list_claims().get(pet_id)) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            winner = tuple(holder.split("/", 1)) if holder is not None else None
            if winner not in made:
                self.disagree(f"race for id {pet_id}: the claim names {holder!r}, the pets made are {made}")
            for k in sorted(made, key=lambda k: k != winner):  # the winner first: it is the older holder
                self.model.add_pet(k, dict(spec), holder=k == winner)
            env.tally.examples["convergence race"] += 1

        # a restart costs seconds, and Hypothesis favours rules without arguments: at most one
        # restart in every RESTART_EVERY steps, and only once there is something to restart with
        @precondition(lambda self: env.restarts_allowed and self.since_restart >= RESTART_EVERY
                      and bool(self.model.pets))
        @rule()
        def kill_and_restart_operator(self) -> None:
            self.step("SIGKILL the operator (or its leader) and start it again")
            self.since_restart = 0
            env.restart()
            env.tally.restarts += 1

        @invariant()
        def converged(self) -> None:
            if not self.steps:
                return
            deadline = time.monotonic() + env.settle_timeout
            while True:
                found = differences(self.model, self.live())
                if not found:
                    for key in self.model.pets:
                        env.tally.phases[self.model.expected(key).phase] += 1
                    return
                if time.monotonic() > deadline:
                    self.disagree(f"not converged after {env.settle_timeout:.0f} s: " + "; ".join(found[:6]))
                time.sleep(0.2)

    return PetMachine


def claims_of(listing: Mapping[str, Any]) -> dict[int, str]:
    """Id -> holder of a Lease listing of the claims namespace (``pet-id-<id>`` Leases)."""
    out: dict[int, str] = {}
    for item in listing.get("items", []):
        pet_id = claim_id(item["metadata"]["name"])
        if pet_id is not None:
            out[pet_id] = str((item.get("spec") or {}).get("holderIdentity") or "")
    return out

"""The operator's in-memory view of the watch streams: pets, stores, and the pets of each store.

Kopf's own indexes (``@kopf.index``) hold every handler back until each object seen at start-up
has been indexed, which is what a level-based operator needs; but Kopf does it with one toggle
per object in a set whose every change wakes every waiting worker to look at every toggle: the
start-up of a replica costs O(N²) or worse in the number of objects (measured here: 45 s of one
core to become ready at 4,000 pets, the issue's 99 s before other fixes; minutes at 25,000).

These indexes are plain dicts, filled by the ``on.event`` handlers themselves before they
reconcile; the hold-back is one :class:`asyncio.Event` that the initial sync sets once every
object listed at start-up has been seen (``app.initial_sync``): O(N) in all. They answer like
Kopf's (``get(key)`` is a collection of values), so the reconciler reads either.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from pet_operator.model import PetSnapshot, StoreSnapshot

Key = tuple[str, str]
V = TypeVar("V")
G = TypeVar("G")


class OneEach(Mapping[Key, Collection[V]], Generic[V]):
    """One value per key (a pet's or a store's newest snapshot)."""

    def __init__(self) -> None:
        self._items: dict[Key, V] = {}

    def put(self, key: Key, value: V) -> None:
        self._items[key] = value

    def remove(self, key: Key) -> None:
        self._items.pop(key, None)

    def __getitem__(self, key: Key) -> Collection[V]:
        return (self._items[key],)

    def get(self, key: Key, default: Collection[V] | None = None) -> Collection[V] | None:  # type: ignore[override]
        value = self._items.get(key)
        return (value,) if value is not None else default

    def __iter__(self) -> Iterator[Key]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items


class Members(Mapping[G, Collection[Key]], Generic[G]):
    """The pets (keys) of each group (a store, an id); a pet is in at most one group."""

    def __init__(self) -> None:
        self._members: dict[G, set[Key]] = {}
        self._group_of: dict[Key, G] = {}

    def place(self, pet: Key, group: G | None) -> None:
        """``pet`` now belongs to ``group`` (None: to none); it leaves the group it was in before."""
        before = self._group_of.get(pet)
        if before == group:
            return
        if before is not None:
            members = self._members.get(before)
            if members is not None:
                members.discard(pet)
                if not members:
                    del self._members[before]
            del self._group_of[pet]
        if group is not None:
            self._members.setdefault(group, set()).add(pet)
            self._group_of[pet] = group

    def __getitem__(self, group: G) -> Collection[Key]:
        return self._members[group]

    def get(self, group: G, default: Collection[Key] | None = None) -> Collection[Key] | None:  # type: ignore[override]
        return self._members.get(group, default)

    def __iter__(self) -> Iterator[G]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)


@dataclasses.dataclass
class Indexes:
    """What the handlers, the resync and the webhook read; ``complete`` is set once every object that
    existed at start-up is in them (until then handlers index but do not reconcile)."""

    pets: OneEach[PetSnapshot] = dataclasses.field(default_factory=OneEach)
    stores: OneEach[StoreSnapshot] = dataclasses.field(default_factory=OneEach)
    by_store: Members[Key] = dataclasses.field(default_factory=Members)
    complete: asyncio.Event | None = None  # None: nothing to wait for (tests)

"""Pets that moved from one store to another: the store they left must be recounted too.

A pet's event names only its new store; the one it named before is known only from what
the watch showed earlier. :class:`StoreMoves` keeps the store each pet named when last seen
and hands out, once, the store a pet left.
"""

from __future__ import annotations

from pet_operator.model import Key


class StoreMoves:
    def __init__(self) -> None:
        self._store: dict[Key, str | None] = {}  # the store each pet named when last seen
        self._left: dict[Key, str] = {}  # the store a pet named before its latest change

    def observe(self, key: Key, store: str | None) -> None:
        """A pet seen on the watch naming ``store`` (None: no store)."""
        if key in self._store and self._store[key] != store:
            previous = self._store[key]
            if previous:
                self._left[key] = previous
        self._store[key] = store

    def moved_from(self, key: Key) -> str | None:
        """The store a pet named before its latest change, once, if it changed stores."""
        return self._left.pop(key, None)

    def forget(self, key: Key) -> str | None:
        """A deleted pet: forget it; returns the store it named last."""
        self._left.pop(key, None)
        return self._store.pop(key, None)

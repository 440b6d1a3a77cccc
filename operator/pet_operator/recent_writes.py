"""The statuses this replica wrote, remembered until the watch shows them back.

The watch index may lag a write by a moment: a decision made on the index alone would
see the status as it was before the write, and write it again (or write an older one).
So the body a status write returned is kept, per object, and used in place of the
watched status until a watch event at least as new as that write arrives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from typing import Any, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)


class StatusWriter(Protocol):
    """Writes a status (``kube.Kube``): a merge patch of the status subresource, answering the object."""

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]: ...


def caught_up(written: str, seen: str) -> bool:
    """Whether a watched object is at least as new as the one our write returned.

    resourceVersions are opaque to clients, but every API server backed by etcd hands out
    etcd revisions, which grow; when both look numeric they are compared as numbers, so a
    watch that resumed past our write (after a relist) still releases the cache.
    """
    if written == seen:
        return True
    if written.isdigit() and seen.isdigit():
        return int(seen) >= int(written)
    return False


def newer(a: str, b: str) -> str:
    """The newer of two resourceVersions (``a`` when they cannot be told apart); "" counts as none."""
    return b if b and caught_up(a, b) else a


@dataclasses.dataclass
class Written:
    resource_version: str
    status: dict[str, Any]


class RecentWrites(dict[K, Written]):
    """Our last status write per object (keyed by pet UID, or by store key), until the watch caught up."""

    def remember(self, key: K, resource_version: str, status: dict[str, Any]) -> None:
        self[key] = Written(resource_version, status)

    def seen(self, key: K, resource_version: str) -> None:
        """The watch shows the object at ``resource_version``: forget our write if that is as new."""
        written = self.get(key)
        if written is not None and caught_up(written.resource_version, resource_version):
            del self[key]

    def status(self, key: K, watched: dict[str, Any]) -> dict[str, Any]:
        """The status the object has now: our write's while the watch lags it, else the watched one."""
        written = self.get(key)
        return written.status if written is not None else watched

    def version(self, key: K) -> str:
        written = self.get(key)
        return written.resource_version if written is not None else ""

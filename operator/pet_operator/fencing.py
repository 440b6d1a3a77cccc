"""Fencing: a replica that does not lead writes nothing.

Every write of the reconciler, the id claims and the RoleBinding guard checks one :class:`Fence`
first. Without leader election every replica may write; with it, only while
:meth:`leader.LeaderElector.is_leader` says so (its last renewal is younger than the renew
deadline, so it stops before any other replica could see the Lease expire).
"""

from __future__ import annotations

from collections.abc import Callable


class NotLeader(Exception):
    """A write was about to happen on a replica that does not (or no longer) lead."""


def always() -> bool:
    return True


class Fence:
    def __init__(self, may_write: Callable[[], bool] = always) -> None:
        self._may_write = may_write
        self.refused = 0  # writes refused because this replica did not lead

    def may_write(self) -> bool:
        return self._may_write()

    def check(self) -> None:
        """Raise :class:`NotLeader` (and count it) unless this replica may write now."""
        if not self._may_write():
            self.refused += 1
            raise NotLeader

"""Whether this replica reaches its API server, as its own requests tell.

A replica cut off from the API server (a network partition, a broken route, rules in its pod's
network namespace) still answers the kubelet's probes, so it stays behind the webhook Service and
fails every admission review that needs a read (each CREATE reads the id's claim): half of all
pet writes with two replicas, for as long as the cut lasts (seen in the chaos experiment
cut-leader on real pods). Readiness therefore also says whether the API server answers: every
request through :class:`~pet_operator.rest.RestClient` reports here, an answer of any status
clears the failure, a request that got none (refused, reset, timed out) starts it, and once it has
lasted ``grace`` seconds ``/readyz`` says 503 and the kubelet takes the pod out of the Service.

An unready replica gets no webhook calls, and a standby may make no other request for a while, so
:func:`probe_while_failing` asks the API server something cheap (``GET /version``, readable by
every client) while requests fail: its answer brings readiness back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

#: seconds of requests without an answer before the replica calls itself unready
DEFAULT_GRACE = 3.0
#: seconds between the probes while requests fail
PROBE_INTERVAL = 2.0


class ApiReachability:
    def __init__(self, grace: float = DEFAULT_GRACE, clock: Callable[[], float] = time.monotonic) -> None:
        if not grace >= 0:  # also refuses nan
            raise ValueError(f"grace={grace!r}: expected seconds >= 0")
        self.grace = grace
        self._clock = clock
        self.failing_since: float | None = None
        self.last_error = ""

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def answered(self) -> None:
        """The API server answered a request (whatever its status)."""
        self.failing_since = None
        self.last_error = ""

    def failed(self, error: str) -> None:
        """A request got no answer: refused, reset, or timed out."""
        if self.failing_since is None:
            self.failing_since = self._clock()
        self.last_error = error

    def problem(self) -> str | None:
        """Why this replica is not ready, once requests have had no answer for ``grace`` seconds."""
        if self.failing_since is None:
            return None
        seconds = self._clock() - self.failing_since
        if seconds < self.grace:
            return None
        return f"no answer from the API server for {seconds:.1f}s (last: {self.last_error})"


async def probe_while_failing(reach: ApiReachability, probe: Callable[[], Awaitable[object]],
                              interval: float = PROBE_INTERVAL) -> None:
    """Forever: every ``interval`` seconds, while requests fail, call ``probe`` (a request through
    the client that reports to ``reach``; its own failure is already recorded there)."""
    while True:
        await asyncio.sleep(interval)
        if reach.failing:
            with contextlib.suppress(Exception):
                await probe()

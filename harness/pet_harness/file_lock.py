"""An exclusive ``flock`` on a file, waited for within a bound.

The kernel releases an ``flock`` when the last descriptor of its holder closes, so a holder that
is SIGKILLed never leaves the lock taken. Used for what one machine can run only once at a time:
a node cluster (``clusters.node_teardown.node_lock``) and a buildkitd on BuildKit's state folder
(``clusters.node_buildkit.state_lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(path: Path, timeout: float, on_wait: Callable[[], None] | None = None,
                   on_timeout: Callable[[], Exception] | None = None, poll: float = 0.5) -> Iterator[int]:
    """Hold the lock on ``path`` (made if missing) for the block; yields the descriptor. While
    another process holds it, ``on_wait`` is called once and the lock is asked again every ``poll``
    seconds; after ``timeout`` seconds the exception ``on_timeout`` makes is raised (by default a
    TimeoutError naming the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    error = on_timeout() if on_timeout else TimeoutError(
                        f"{path} is held by another process; waited {timeout:.0f}s")
                    raise error from None
                if not told and on_wait is not None:
                    on_wait()
                    told = True
                time.sleep(poll)
        yield fd
    finally:
        os.close(fd)  # closing the last descriptor releases the flock

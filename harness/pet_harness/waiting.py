"""Wait for a condition by polling, and say what was last seen when it never holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold in time; the message shows the last value seen."""

    def __init__(self, what: str, timeout: float, last: Any, error: BaseException | None) -> None:
        self.what, self.timeout, self.last, self.error = what, timeout, last, error
        shown = _render(last)
        detail = f"\nlast error: {error!r}" if error is not None else ""
        super().__init__(f"timed out after {timeout:.1f}s waiting for {what}; last seen:\n{shown}{detail}")


def _render(value: Any) -> str:
    if value is None:
        return "  (nothing)"
    try:
        text = yaml.safe_dump(value, sort_keys=False, default_flow_style=False)
    except yaml.YAMLError:
        text = repr(value)
    lines = text.rstrip().splitlines()
    if len(lines) > 80:
        lines = [*lines[:80], f"... ({len(lines) - 80} more lines)"]
    return "\n".join("  " + line for line in lines)


def wait_for(
    fetch: Callable[[], T],
    predicate: Callable[[T], bool],
    timeout: float,
    what: str,
    interval: float = 0.1,
    ignore: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """Call ``fetch`` until ``predicate`` holds for its result; return that result.

    Errors of the types in ``ignore`` count as "not yet" and are shown on timeout.
    The interval grows from ``interval`` to one second so long waits stay cheap.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    delay = interval
    while True:
        try:
            value = fetch()
        except ignore as exc:
            error = exc
        else:
            last, error = value, None
            if predicate(value):
                return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(what, timeout, last, error)
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 1.0)

"""Load shapes for the pet load: constant, step and ramp, each ending with a drain.

Add this file to Locust's ``-f`` (``-f loadtests/locustfile.py,loadtests/shapes.py``); without
it the web UI's form decides the users. Users run ``--pet-user-rate`` operations per second each,
so a rate is turned into a user count. Every shape ends with a drain: no users, until every
write of the run has settled (or failed at ``--pet-reconcile-timeout``), at most
``--pet-drain-seconds``; then the run stops.

``ramp`` raises the rate by ``--pet-rate-step`` every ``--pet-step-seconds`` and stops raising at
the first step whose p99 ``create → Active`` latency passes ``--pet-p99-limit`` or that had a
failure: the highest step under the limit is the sustainable creation rate. ``step`` does the
same steps without stopping early. Each step's figures go to ``--pet-steps-file`` (JSON).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from locust import LoadTestShape

from pet_locust.process import PENDING
from pet_locust.steps import StepWindow

LATENCY = ("RECONCILE", "create → Active")


class PetShape(LoadTestShape):
    def __init__(self) -> None:
        super().__init__()
        self.step_started: float | None = None
        self.rate = 0.0
        self.window: StepWindow | None = None
        self.steps: list[dict[str, Any]] = []
        self.draining_since: float | None = None
        self.stop_reason = ""

    # --- helpers -------------------------------------------------------------------------------

    @property
    def _runner(self) -> Any:
        """Locust's runner, which it sets on the shape before the first tick."""
        if self.runner is None:
            raise RuntimeError("PetShape used before Locust gave it its runner")
        return self.runner

    @property
    def options(self) -> Any:
        return self._runner.environment.parsed_options

    def _users(self, rate: float) -> int:
        return max(1, math.ceil(rate / float(self.options.pet_user_rate)))

    def _creates_done(self) -> int:
        stats = self._runner.stats
        return sum(e.num_requests for (name, method), e in stats.entries.items()
                   if method == "POST" and name.startswith("POST pets"))

    def _drain(self) -> tuple[int, float] | None:
        now = time.monotonic()
        if self.draining_since is None:
            self.draining_since = now
            PENDING.clear()  # count only reports made after the users stopped
        waited = now - self.draining_since
        settled = waited > 3 and PENDING and sum(PENDING.values()) == 0
        if settled or waited > float(self.options.pet_drain_seconds):
            self._write_steps()
            return None
        return 0, 100

    def _write_steps(self) -> None:
        path = str(self.options.pet_steps_file or "")
        if path:
            with open(path, "w") as f:
                json.dump({"shape": self.options.pet_shape, "stop_reason": self.stop_reason,
                           "steps": self.steps}, f, indent=2)

    # --- the shapes ------------------------------------------------------------------------------

    def tick(self) -> tuple[int, float] | None:
        if self.draining_since is not None:
            return self._drain()
        if self._creates_done() >= int(self.options.pet_max):
            self.stop_reason = self.stop_reason or f"all {self.options.pet_max} creates made"
            self._close_step()
            return self._drain()
        shape = self.options.pet_shape
        if shape == "constant":
            if self.get_run_time() > float(self.options.pet_seconds):
                self.stop_reason = f"{self.options.pet_seconds:.0f} s elapsed"
                return self._drain()
            self.rate = float(self.options.pet_rate)
            users = self._users(self.rate)
            return users, users
        return self._stepped(shape == "ramp")

    def _stepped(self, stop_at_limit: bool) -> tuple[int, float] | None:
        now = time.monotonic()
        if self.step_started is None:
            self._open_step(float(self.options.pet_start_rate), now)
        elif now - self.step_started >= float(self.options.pet_step_seconds):
            figures = self._close_step()
            over = figures["failures"] > 0 or (figures["p99"] is not None and figures["p99"] > float(
                self.options.pet_p99_limit))
            next_rate = self.rate + float(self.options.pet_rate_step)
            if stop_at_limit and over:
                self.stop_reason = (f"step at {self.rate:g}/s: p99 {figures['p99']} s, "
                                    f"{figures['failures']} failures (limit {self.options.pet_p99_limit} s)")
                return self._drain()
            if next_rate > float(self.options.pet_max_rate):
                self.stop_reason = f"highest rate {self.rate:g}/s reached"
                return self._drain()
            self._open_step(next_rate, now)
        users = self._users(self.rate)
        return users, users

    def _open_step(self, rate: float, now: float) -> None:
        self.rate = rate
        self.step_started = now
        self.window = StepWindow(self._runner.stats, LATENCY, self._creates_done())

    def _close_step(self) -> dict[str, Any]:
        if self.window is None or self.step_started is None:
            return {"failures": 0, "p99": None}
        figures = self.window.close(self._creates_done(), time.monotonic() - self.step_started)
        figures["target_rate"] = self.rate
        self.steps.append(figures)
        self.window = None
        return figures

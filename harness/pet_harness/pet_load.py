"""A load of pets for chaos experiments: creates, updates and deletes pets in a thread.

Used by the embedded chaos environment (:mod:`pet_harness.chaos_env`) and by the staging
load control (``petchaos.load``).
"""

from __future__ import annotations

import collections
import json
import threading

from kubernetes.client.exceptions import ApiException

from pet_harness.kube import PetApi

__all__ = ["PetLoad", "error_kind"]


def error_kind(exc: BaseException) -> str:
    """A failed request in a few words: the API's status and reason, and the start of its message
    (a webhook's refusal names the webhook), or the exception's type."""
    if isinstance(exc, ApiException):
        message = ""
        try:
            message = str(json.loads(exc.body or "{}").get("message") or "")
        except (ValueError, AttributeError):
            message = str(exc.body or "")
        return f"{exc.status} {exc.reason}: {message[:80]}".rstrip(": ")
    return type(exc).__name__


class PetLoad:
    """Creates, updates and deletes pets in a background thread, bounded to ``max_pets`` creates.

    Every ``duplicate_every``-th pet reuses the id of an earlier one (it must end ``Conflict``
    while the first lives). It remembers what it created and deleted successfully, so that
    pets lost can be counted: created, never deleted, and missing.
    """

    def __init__(self, pets: PetApi, max_pets: int = 30, interval: float = 0.3, duplicate_every: int = 7,
                 id_base: int = 5000, prefix: str = "load-") -> None:
        self.pets = pets
        self.prefix = prefix
        self.max_pets = max_pets
        self.interval = interval
        self.duplicate_every = duplicate_every
        self.id_base = id_base
        self.created: dict[str, int] = {}  # name -> id, acknowledged by the API server
        self.deleted: set[str] = set()
        self.attempted = 0
        self.errors = 0
        self.error_kinds: collections.Counter[str] = collections.Counter()  # what failed, by status and reason
        self.ops = 0
        self._stop = threading.Event()
        self._running = threading.Event()  # set: the load works; clear: paused
        self._idle = threading.Event()  # set while no operation is in flight
        self._idle.set()
        self._thread = threading.Thread(target=self._loop, name="pet-load", daemon=True)

    def start(self) -> PetLoad:
        self._running.set()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def pause(self, timeout: float = 30) -> None:
        self._running.clear()
        self._idle.wait(timeout)

    def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def _loop(self) -> None:
        step = 0
        while not self._stop.is_set():
            self._running.wait()
            if self._stop.is_set():
                return
            self._idle.clear()
            try:
                self._one(step)
            except Exception as exc:  # noqa: BLE001 - faults make requests fail; the load goes on
                self.errors += 1
                self.error_kinds[error_kind(exc)] += 1
            finally:
                self._idle.set()
            step += 1
            self._stop.wait(self.interval)

    def _one(self, step: int) -> None:
        live = [n for n in self.created if n not in self.deleted]
        kind = step % 5
        if self.attempted < self.max_pets and (kind in (0, 2) or not live):
            index = self.attempted
            self.attempted += 1
            name = f"{self.prefix}{index}"
            duplicate = bool(index and index % self.duplicate_every == 0)  # the previous pet's id
            pet_id = self.id_base + index - int(duplicate)
            self.pets.create_pet(name, {"id": pet_id, "name": name, "tags": ["chaos"]})
            self.created[name] = pet_id
        elif kind == 4 and len(live) > 5 and step % 15 == 4:
            name = live[0]
            try:
                self.pets.delete_pet(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
            self.deleted.add(name)
        elif live:
            name = live[step % len(live)]
            self.pets.patch_pet(name, {"spec": {"tags": ["chaos", f"v{step}"]}})
        self.ops += 1

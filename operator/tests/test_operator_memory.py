"""memory: freed heap pages go back to the system (glibc), nothing happens elsewhere."""

from __future__ import annotations

import asyncio

import pytest

from pet_operator import memory


def test_release_free_memory_trims_the_heap_where_glibc_is() -> None:
    assert memory.release_free_memory() is (memory._LIBC is not None)


def test_release_free_memory_is_a_no_op_without_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_LIBC", None)
    assert memory.release_free_memory() is False


async def test_release_forever_trims_every_period(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    slept: list[float] = []

    class Stop(Exception):
        pass

    async def sleep(delay: float) -> None:
        slept.append(delay)
        if len(slept) > 3:
            raise Stop

    monkeypatch.setattr(memory, "release_free_memory", lambda: trims.append(1) or True)
    monkeypatch.setattr(asyncio, "sleep", sleep)
    with pytest.raises(Stop):
        await memory.release_forever(60.0)
    assert slept == [60.0] * 4
    assert len(trims) == 3

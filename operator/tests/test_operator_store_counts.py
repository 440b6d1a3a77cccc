"""Store counts are amortized: one count per window however many pets asked, and never lost."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from operator_fakes import NS, Clock, FakeWriter, IdsNotEnforced, by_store_of, index_of, pet, store

from pet_operator import handlers
from pet_operator.reconciler import Reconciler
from pet_operator.store_counts import StoreCounts

SHOP = (NS, "shop")


@pytest.fixture
def writer() -> FakeWriter:
    return FakeWriter()


@pytest.fixture
def rec(writer: FakeWriter) -> Reconciler:
    return Reconciler(writer, IdsNotEnforced(), clock=Clock())


async def test_a_burst_of_requests_is_one_count_and_one_write(rec: Reconciler, writer: FakeWriter) -> None:
    counts = StoreCounts(rec.recount, handlers.with_retries, window=0)
    pets = [pet(f"p{i}", store="shop", status={"phase": "Active"}) for i in range(50)]
    args = (index_of(*pets), index_of(store("shop")), by_store_of(*pets))
    for _ in pets:  # fifty pet events, before the window ends
        counts.request(SHOP, *args)
    assert counts.pending == 1
    await counts.idle()
    assert counts.counts == 1
    [call] = writer.of("petstores")
    assert (call.status["petCount"], call.status["activeCount"]) == (50, 50)


async def test_a_request_while_counting_gets_another_round(rec: Reconciler, writer: FakeWriter) -> None:
    counts = StoreCounts(rec.recount, handlers.with_retries, window=0)
    first = pet("a", store="shop", status={"phase": "Active"})
    pets_index, by_store = index_of(first), by_store_of(first)  # live, as Kopf's indexes are
    args = (pets_index, index_of(store("shop")), by_store)
    writer.gate = asyncio.Event()
    counts.request(SHOP, *args)
    await writer.entered.wait()  # the first count is writing
    second = pet("b", store="shop", status={"phase": "Active"})
    pets_index.data[(NS, "b")] = [second]
    by_store.data[SHOP].append((NS, "b"))
    counts.request(SHOP, *args)  # a pet arrived meanwhile
    writer.gate.set()
    await counts.idle()
    assert counts.counts == 2
    assert writer.of("petstores")[-1].status["petCount"] == 2


async def test_a_failed_count_is_retried_then_given_up_without_killing_the_counter(
    rec: Reconciler, writer: FakeWriter
) -> None:
    attempts: list[str] = []

    async def retry(what: str, call: Callable[[], Awaitable[Any]]) -> None:
        attempts.append(what)
        raise RuntimeError("boom")

    counts = StoreCounts(rec.recount, retry, window=0)
    p = pet("a", store="shop")
    counts.request(SHOP, index_of(p), index_of(store("shop")), by_store_of(p))
    await counts.idle()
    assert attempts == [f"count pets of store {NS}/shop"]
    assert counts.pending == 0
    counts.request(SHOP, index_of(p), index_of(store("shop")), by_store_of(p))  # asking again works
    await counts.idle()
    assert len(attempts) == 2


async def test_close_cancels_pending_counts(rec: Reconciler, writer: FakeWriter) -> None:
    counts = StoreCounts(rec.recount, handlers.with_retries, window=3600)
    p = pet("a", store="shop")
    counts.request(SHOP, index_of(p), index_of(store("shop")), by_store_of(p))
    await counts.close()
    assert counts.pending == 0 and writer.calls == []


async def test_bounded_gather_never_runs_more_than_its_limit() -> None:
    running = peak = 0
    release, full = asyncio.Event(), asyncio.Event()

    async def call() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 16:
            full.set()
        await release.wait()
        running -= 1

    async def open_when_full() -> None:
        await full.wait()
        release.set()

    await asyncio.gather(handlers.bounded_gather([call() for _ in range(40)], 16), open_when_full())
    assert peak == 16 and running == 0

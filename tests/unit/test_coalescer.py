"""shared/coalescer.py: calls that arrive together share one flush, each gets its own answer, and a lone call
is flushed without waiting for company."""

from __future__ import annotations

import asyncio

import pytest

from shared.coalescer import Coalescer


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.groups: list[list[int]] = []
        self.delay = delay
        self.running = 0
        self.most_running = 0

    async def flush(self, items: list[int]) -> list[int | Exception]:
        self.groups.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay)
            return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]
        finally:
            self.running -= 1


async def test_callers_of_one_turn_share_a_flush_and_get_their_own_answers() -> None:
    rec = Recorder()
    c = Coalescer(rec.flush)
    results = await asyncio.gather(*(c.submit(i) for i in range(6)), return_exceptions=True)
    assert rec.groups == [[0, 1, 2, 3, 4, 5]]
    assert results[0::2] == [0, 20, 40]
    assert [str(e) for e in results[1::2]] == ["odd 1", "odd 3", "odd 5"]


async def test_callers_that_arrive_during_a_flush_go_together_in_the_next() -> None:
    rec = Recorder(delay=0.05)
    c = Coalescer(rec.flush)
    first = asyncio.ensure_future(c.submit(0))
    await asyncio.sleep(0.01)  # the first flush is running now
    later = [asyncio.ensure_future(c.submit(i)) for i in (2, 4, 6)]
    await asyncio.gather(first, *later)
    assert rec.groups == [[0], [2, 4, 6]]
    assert rec.most_running == 1


async def test_max_batch_and_max_concurrent() -> None:
    rec = Recorder(delay=0.02)
    c = Coalescer(rec.flush, max_batch=2, max_concurrent=2)
    await asyncio.gather(*(c.submit(i * 2) for i in range(5)))
    assert sorted(len(g) for g in rec.groups) == [1, 2, 2]
    assert rec.most_running == 2


async def test_a_failed_flush_fails_every_caller_of_its_group_and_not_the_next() -> None:
    calls: list[list[int]] = []

    async def flush(items: list[int]) -> list[int | Exception]:
        calls.append(items)
        if len(calls) == 1:
            raise ConnectionError("database went away")
        return list[int | Exception](items)

    c = Coalescer(flush)
    results = await asyncio.gather(c.submit(1), c.submit(2), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await c.submit(3) == 3


async def test_a_flush_that_answers_too_few_items_is_an_error_for_all() -> None:
    async def flush(items: list[int]) -> list[int | Exception]:
        return list[int | Exception](items[:1])

    c = Coalescer(flush)
    results = await asyncio.gather(c.submit(1), c.submit(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_a_cancelled_caller_does_not_break_its_group() -> None:
    rec = Recorder(delay=0.05)
    c = Coalescer(rec.flush)
    doomed = asyncio.ensure_future(c.submit(0))
    kept = asyncio.ensure_future(c.submit(2))
    await asyncio.sleep(0.01)
    doomed.cancel()
    assert await kept == 20
    assert rec.groups == [[0, 2]]  # the flush still ran for both: its effects stand


def test_rejects_nonsense_limits() -> None:
    async def flush(items: list[int]) -> list[int | Exception]:
        return list(items)

    with pytest.raises(ValueError):
        Coalescer(flush, max_batch=0)
    with pytest.raises(ValueError):
        Coalescer(flush, max_concurrent=0)

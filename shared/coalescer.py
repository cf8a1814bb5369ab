"""Group commit for asyncio: calls that arrive while a flush is running wait and go together in the next
flush, so under load one database transaction (or one broadcast round) serves many callers, while a lone
caller waits for no timer: its flush starts on the next turn of the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# A flush answers every item in order: its result, or the exception that item alone should raise.
Flush = Callable[[list[T]], Awaitable[Sequence[R | Exception]]]


class Coalescer(Generic[T, R]):
    def __init__(self, flush: Flush[T, R], *, max_batch: int = 100, max_concurrent: int = 1) -> None:
        if max_batch < 1 or max_concurrent < 1:
            raise ValueError("max_batch and max_concurrent must be at least 1")
        self._flush = flush
        self._max_batch = max_batch
        self._max_concurrent = max_concurrent
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._running = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        self._kick()
        return await fut

    def _kick(self) -> None:
        if self._scheduled or not self._pending or self._running >= self._max_concurrent:
            return
        self._scheduled = True
        # Next loop turn: every caller that is ready now joins the same group.
        asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        while self._pending and self._running < self._max_concurrent:
            group, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            self._running += 1
            task = asyncio.create_task(self._run(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, group: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush([item for item, _ in group])
            if len(results) != len(group):
                raise RuntimeError(f"flush answered {len(results)} of {len(group)} items")
            for (_, fut), result in zip(group, results, strict=True):
                if fut.done():  # the caller was cancelled; the flush's effects stand regardless
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
        except Exception as exc:
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
        except BaseException:
            for _, fut in group:
                fut.cancel()
            raise
        finally:
            self._running -= 1
            self._kick()

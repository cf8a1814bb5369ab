"""Following a job's events as they happen: LISTEN/NOTIFY wakes followers, short polling backs it up.

One hub per process holds one listening connection and fans wake-ups out to every follower, so a thousand
SSE streams cost one database connection, not a thousand. Notifications are only hints: followers always
read the events table, so a missed or duplicated NOTIFY changes latency, never content."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from .listener import ChannelListener
from .records import JobEvent
from .store import NOTIFY_CHANNEL, JobNotFound, JobStore

_BATCH = 500


class JobEventHub:
    def __init__(self, store: JobStore, *, poll_seconds: float = 1.0) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self._waiters: dict[UUID, set[asyncio.Event]] = defaultdict(set)
        self._listener: ChannelListener | None = None

    async def start(self) -> None:
        """Begin listening. Optional: without it followers simply poll every ``poll_seconds``."""
        if self._listener is None:  # the store's pool exists once the store is open
            self._listener = ChannelListener(self.store.pool, NOTIFY_CHANNEL, self._on_notify)
        await self._listener.start()

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            job_id = UUID(str(payload))
        except ValueError:
            return
        for waiter in self._waiters.get(job_id, ()):
            waiter.set()

    async def follow(self, job_id: UUID, after_id: int = 0) -> AsyncIterator[JobEvent]:
        """Yield the job's events after ``after_id`` (SSE Last-Event-ID), live, until the job is final and
        every event up to that point has been yielded. A retried job starts a new follow."""
        if await self.store.status(job_id) is None:
            raise JobNotFound(str(job_id))
        waiter = asyncio.Event()
        self._waiters[job_id].add(waiter)
        cursor = after_id
        try:
            while True:
                waiter.clear()
                # Status first, events second: the final status and its event commit together, so when
                # the status read is final the event read that follows includes its event.
                status = await self.store.status(job_id)
                batch = await self.store.events(job_id, cursor, _BATCH)
                for event in batch:
                    cursor = event.id
                    yield event
                if status is None or status.final:
                    if len(batch) < _BATCH:
                        return
                    continue
                if not batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waiter.wait(), self.poll_seconds)
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[job_id]

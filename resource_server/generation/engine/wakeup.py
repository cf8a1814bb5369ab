"""Waking idle workers when a job becomes claimable, instead of at their next poll.

The store NOTIFYs QUEUE_CHANNEL when it queues a job (a submission, a retry, a released hold); one
listening connection per process sets every idle slot's event. Polling stays as the fallback for what
sends no notification (a backoff or a lease running out) and for a lost listener, so a missed NOTIFY
costs latency, never a job."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from .listener import ChannelListener

QUEUE_CHANNEL = "generation_jobs_queued"


class QueueWaker:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._listener = ChannelListener(pool, QUEUE_CHANNEL, self._on_notify)
        self._slots: set[asyncio.Event] = set()

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    def slot(self) -> asyncio.Event:
        """An event set whenever a job is queued; the slot clears it before each claim attempt, so a
        notification that arrives between a fruitless claim and the wait is not lost."""
        event = asyncio.Event()
        self._slots.add(event)
        return event

    def leave(self, event: asyncio.Event) -> None:
        self._slots.discard(event)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, _payload: object) -> None:
        for event in self._slots:
            event.set()


async def notify_queued(conn: Any) -> None:
    """Call inside the transaction that made a job claimable: delivered at commit."""
    await conn.execute("SELECT pg_notify($1, '')", QUEUE_CHANNEL)

"""Server-Sent Events of a job's progress: one `data:` line per job event, its id as the SSE id (so a
reconnecting EventSource resumes with Last-Event-ID), ending after the job's final event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from uuid import UUID

import orjson

from ..generation.engine.records import JobEvent
from ..generation.engine.service import GenerationEngine

KEEPALIVE_SECONDS = 15.0
RECONNECT_MILLISECONDS = 2000
_END = object()


def format_event(event: JobEvent) -> bytes:
    data = orjson.dumps(event.to_json()).decode()
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n".encode()


def parse_last_event_id(value: str | None) -> int | None:
    """0 for none; None when present but not an event id (the request is then refused, not restarted)."""
    if value is None or value == "":
        return 0
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


async def event_stream(
    engine: GenerationEngine, job_id: UUID, after_id: int, *, keepalive: float = KEEPALIVE_SECONDS
) -> AsyncIterator[bytes]:
    """The SSE body. Followed in a task of its own so that a keep-alive comment can go out while no event
    arrives: cancelling a wait on the follower itself would close it."""
    # Unbounded: one job's events are few, and the end marker must never wait for room.
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in engine.follow_job(job_id, after_id):
                queue.put_nowait(event)
        finally:
            queue.put_nowait(_END)

    task = asyncio.create_task(pump())
    try:
        yield f"retry: {RECONNECT_MILLISECONDS}\n\n".encode()
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), keepalive)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if item is _END:
                break
            assert isinstance(item, JobEvent)
            yield format_event(item)
        await task  # surfaces a follower error (the stream then ends without its last events)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

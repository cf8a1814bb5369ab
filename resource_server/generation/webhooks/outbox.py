"""Webhook deliveries written inside the caller's transaction: an event and its delivery commit together."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from .throttle import PROGRESS_INTERVAL, progress_webhook_due

PROGRESS_EVENT = "job.progress"


def final_event_type(status: str) -> str:
    return f"job.{status}"


def event_payload(event_id: UUID, event_type: str, job_view: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(event_id),
        "type": event_type,
        "created_at": datetime.now(UTC).isoformat(),
        "data": {"job": job_view},
    }


async def enqueue(conn: Any, job_id: UUID, event_type: str, job_view: dict[str, Any]) -> UUID:
    event_id = uuid4()
    await conn.execute(
        """INSERT INTO generation_webhook_deliveries (event_id, job_id, event_type, payload)
           VALUES ($1, $2, $3, $4)""",
        event_id,
        job_id,
        event_type,
        event_payload(event_id, event_type, job_view),
    )
    return event_id


async def enqueue_progress(
    conn: Any, job_id: UUID, job_view: dict[str, Any], interval: timedelta = PROGRESS_INTERVAL
) -> UUID | None:
    """A progress delivery if the throttle allows one. The caller holds the job row locked (FOR UPDATE),
    so two workers cannot both pass the check for one job."""
    row = await conn.fetchrow(
        "SELECT last_progress_webhook_at, now() AS now FROM generation_jobs WHERE id=$1", job_id
    )
    if row is None or not progress_webhook_due(row["last_progress_webhook_at"], row["now"], interval):
        return None
    await conn.execute("UPDATE generation_jobs SET last_progress_webhook_at=now() WHERE id=$1", job_id)
    return await enqueue(conn, job_id, PROGRESS_EVENT, job_view)

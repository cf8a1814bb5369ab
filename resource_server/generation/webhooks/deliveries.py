"""The durable delivery rows: claiming due ones (SKIP LOCKED), recording outcomes, replaying finals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from .outbox import PROGRESS_EVENT


@dataclass(frozen=True, slots=True)
class Delivery:
    event_id: UUID
    job_id: UUID
    event_type: str
    payload: dict[str, Any]
    attempts: int  # including the attempt being made now, once claimed
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    gave_up_at: datetime | None
    created_at: datetime
    url: str | None
    secret: str | None

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> Delivery:
        return cls(
            event_id=r["event_id"],
            job_id=r["job_id"],
            event_type=r["event_type"],
            payload=r["payload"],
            attempts=r["attempts"],
            next_attempt_at=r["next_attempt_at"],
            last_status=r["last_status"],
            last_error=r["last_error"],
            delivered_at=r["delivered_at"],
            gave_up_at=r["gave_up_at"],
            created_at=r["created_at"],
            url=r["webhook_url"],
            secret=r["webhook_secret"],
        )


class DeliveryStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim_due(self, owner: str, lease_seconds: float, limit: int) -> list[Delivery]:
        """Lease due deliveries and count the attempt now: an attempt cut short by a crash still counts,
        so a delivery that crashes its sender cannot be retried forever."""
        rows = await self.pool.fetch(
            """WITH due AS (
                   SELECT event_id FROM generation_webhook_deliveries
                   WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= now()
                     AND (lease_until IS NULL OR lease_until < now())
                   ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
               UPDATE generation_webhook_deliveries d
                  SET lease_owner=$1, lease_until=now() + make_interval(secs => $2), attempts=d.attempts+1
                 FROM due, generation_jobs j
                WHERE d.event_id = due.event_id AND j.id = d.job_id
            RETURNING d.*, j.webhook_url, j.webhook_secret""",
            owner,
            lease_seconds,
            limit,
        )
        return [Delivery.from_record(r) for r in rows]

    async def mark_delivered(self, event_id: UUID, owner: str, status: int) -> None:
        await self.pool.execute(
            """UPDATE generation_webhook_deliveries SET delivered_at=now(), last_status=$3, last_error=NULL,
                   lease_owner=NULL, lease_until=NULL
               WHERE event_id=$1 AND lease_owner=$2""",
            event_id,
            owner,
            status,
        )

    async def mark_failed(
        self, event_id: UUID, owner: str, *, status: int | None, error: str, retry_in: float | None
    ) -> None:
        """``retry_in`` None gives up on the delivery."""
        await self.pool.execute(
            """UPDATE generation_webhook_deliveries SET last_status=$3, last_error=$4,
                   next_attempt_at = CASE WHEN $5::float8 IS NULL THEN next_attempt_at
                                          ELSE now() + make_interval(secs => $5::float8) END,
                   gave_up_at = CASE WHEN $5::float8 IS NULL THEN now() END,
                   lease_owner=NULL, lease_until=NULL
               WHERE event_id=$1 AND lease_owner=$2""",
            event_id,
            owner,
            status,
            error[:1000],
            retry_in,
        )

    async def redeliver_final(self, job_id: UUID) -> UUID | None:
        """Queue the job's latest final event again under the SAME event id, so a receiver that already
        processed it can recognise the replay. None when the job has no final event to replay."""
        return await self.pool.fetchval(  # type: ignore[no-any-return]
            """UPDATE generation_webhook_deliveries SET delivered_at=NULL, gave_up_at=NULL, attempts=0,
                   next_attempt_at=now(), lease_owner=NULL, lease_until=NULL, last_error=NULL
               WHERE event_id = (SELECT event_id FROM generation_webhook_deliveries
                                 WHERE job_id=$1 AND event_type <> $2
                                 ORDER BY created_at DESC LIMIT 1)
               RETURNING event_id""",
            job_id,
            PROGRESS_EVENT,
        )

    async def for_job(self, job_id: UUID) -> list[Delivery]:
        rows = await self.pool.fetch(
            """SELECT d.*, j.webhook_url, j.webhook_secret FROM generation_webhook_deliveries d
               JOIN generation_jobs j ON j.id = d.job_id WHERE d.job_id=$1 ORDER BY d.created_at""",
            job_id,
        )
        return [Delivery.from_record(r) for r in rows]

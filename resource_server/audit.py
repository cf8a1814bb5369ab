"""The audit trail: every payment attempt, refusal, facilitator answer and state change, with the payer and
transaction, queryable by challenge, payer or transaction. Rows are written inside the transaction of the
state change they describe, so the trail never disagrees with the state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

MAX_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    challenge_id: str | None
    event: str
    from_status: str | None
    to_status: str | None
    payer: str | None
    tx_hash: str | None
    detail: dict[str, Any]
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "challengeId": self.challenge_id,
            "event": self.event,
            "fromStatus": self.from_status,
            "toStatus": self.to_status,
            "payer": self.payer,
            "transaction": self.tx_hash,
            "detail": self.detail,
            "at": self.at.isoformat(),
        }


async def write_event(
    conn: asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy,
    *,
    challenge_id: str | None,
    event: str,
    from_status: str | None = None,
    to_status: str | None = None,
    payer: str | None = None,
    tx_hash: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO rs_audit (challenge_id, event, from_status, to_status, payer, tx_hash, detail)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        challenge_id,
        event,
        from_status,
        to_status,
        payer.lower() if payer else None,
        tx_hash.lower() if tx_hash else None,
        detail or {},
    )


async def query_events(
    pool: asyncpg.Pool,
    *,
    challenge_id: str | None = None,
    payer: str | None = None,
    tx_hash: str | None = None,
    limit: int = 200,
) -> list[AuditEvent]:
    """Events matching every given filter, oldest first. A payer or transaction also brings in the events of
    the challenges it touched, so one lookup shows a payment's whole story."""
    if challenge_id is None and payer is None and tx_hash is None:
        raise ValueError("give at least one of challenge, payer, tx")
    rows = await pool.fetch(
        """
        WITH hits AS (
            SELECT DISTINCT challenge_id FROM rs_audit
            WHERE challenge_id IS NOT NULL
              AND ($1::text IS NULL OR challenge_id = $1)
              AND ($2::text IS NULL OR payer = $2)
              AND ($3::text IS NULL OR tx_hash = $3)
        )
        SELECT a.* FROM rs_audit a
        WHERE a.challenge_id IN (SELECT challenge_id FROM hits)
           OR (a.challenge_id IS NULL AND ($2::text IS NULL OR a.payer = $2)
               AND ($3::text IS NULL OR a.tx_hash = $3) AND $1::text IS NULL)
        ORDER BY a.id
        LIMIT $4
        """,
        challenge_id,
        payer.lower() if payer else None,
        tx_hash.lower() if tx_hash else None,
        max(1, min(limit, MAX_LIMIT)),
    )
    return [
        AuditEvent(
            id=r["id"],
            challenge_id=r["challenge_id"],
            event=r["event"],
            from_status=r["from_status"],
            to_status=r["to_status"],
            payer=r["payer"],
            tx_hash=r["tx_hash"],
            detail=r["detail"],
            at=r["at"],
        )
        for r in rows
    ]

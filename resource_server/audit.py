"""The audit trail: every payment attempt, refusal, facilitator answer and state change, with the payer and
transaction, queryable by challenge, payer or transaction. Rows are written by the same statement as the
state change they describe (a data-modifying CTE, see `insert_sql`), so the trail never disagrees with the
state and costs no round trip of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row to write, usually together with the change it describes."""

    event: str
    challenge_id: str | None
    payer: str | None = None
    tx_hash: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    from_status: str | None = None
    to_status: str | None = None

    @property
    def payer_key(self) -> str | None:
        """The payer as stored for lookups: lower case."""
        return self.payer.lower() if self.payer else None

    @property
    def tx_hash_key(self) -> str | None:
        """The transaction as stored for lookups: lower case."""
        return self.tx_hash.lower() if self.tx_hash else None

    def params(self) -> tuple[Any, ...]:
        """The values for `insert_sql`'s seven placeholders, in order."""
        return (
            self.challenge_id,
            self.event,
            self.from_status,
            self.to_status,
            self.payer_key,
            self.tx_hash_key,
            self.detail,
        )


AUDIT_PARAMS = 7  # placeholders per entry


AUDIT_COLUMNS = "INSERT INTO rs_audit (challenge_id, event, from_status, to_status, payer, tx_hash, detail) "


def select_sql(first: int, *, source: str | None = None, payer: str | None = None) -> str:
    """The SELECT that yields one AuditEntry's row from its `params()` starting at placeholder $first (see
    `insert_sql`); several joined with UNION ALL write several entries in one INSERT, in order."""
    p = [f"${first + i}" for i in range(AUDIT_PARAMS)]
    payer_sql = f"COALESCE({p[4]}::text, lower({payer}))" if payer else f"{p[4]}::text"
    return (
        f"SELECT {p[0]}::text, {p[1]}::text, {p[2]}::text, {p[3]}::text, {payer_sql}, {p[5]}::text, "
        f"{p[6]}::jsonb" + (f" FROM {source}" if source else "")
    )


def insert_sql(first: int, *, source: str | None = None, payer: str | None = None) -> str:
    """An INSERT of one AuditEntry whose `params()` start at placeholder $first: a statement of its own, or
    a data-modifying CTE of the statement that makes the change (PostgreSQL runs those even unread). With
    `source` (a CTE's name) it writes one row per row of that CTE, so none when nothing changed; `payer` is
    SQL for the payer when the entry names none (e.g. the changed row's own)."""
    return AUDIT_COLUMNS + select_sql(first, source=source, payer=payer)


async def write_event(
    conn: asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy, entry: AuditEntry
) -> None:
    await conn.execute(insert_sql(1), *entry.params())


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

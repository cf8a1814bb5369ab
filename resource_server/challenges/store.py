"""Challenges and claimed payments in PostgreSQL. Every state change is a conditional UPDATE on the current
status, written with its audit row by the same statement (a data-modifying CTE), so two replicas racing on
one challenge cannot both move it and a crash never leaves a change without its record.

Each step of a paid request is one statement, one round trip and one transaction: `issue` (the 402),
`receive` (the attempt's audit row, the replay check and the challenge(s) to match, before verifying; a
challenge this process issued needs none, see paywall), `claim` (after verifying), `transition` (after
settling or releasing). Issues and transitions that arrive together share their statement (a group commit:
`shared.coalescer`), so under load one round trip serves many requests.

The pool must come from shared.storage.database.connect_pool (JSONB decoded to Python values)."""

from __future__ import annotations

import importlib.resources
import secrets
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import asyncpg

from shared.coalescer import Coalescer
from shared.storage.database import connect_pool, encode_json, migrate
from shared.telemetry.tracing import span

from ..audit import (
    AUDIT_COLUMNS,
    AUDIT_PARAMS,
    AuditEntry,
    AuditEvent,
    insert_sql,
    query_events,
    select_sql,
    write_event,
)
from .issued import IssuedChallenges
from .matching import Match
from .records import Challenge, PendingSettlement, StoredPayment
from .states import ChallengeStatus, check_transition

if TYPE_CHECKING:
    from ..metrics import ResourceServerMetrics

# (challenge id, expiry as unix seconds) -> (v2 requirements, v1 requirements)
RequirementsBuilder = Callable[[str, int], tuple[list[dict[str, Any]], list[dict[str, Any]]]]


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"
    PAYMENT_USED = "payment_used"  # this authorization already unlocked a request
    CHALLENGE_TAKEN = "challenge_taken"  # another payment claimed the challenge first
    EXPIRED = "expired"


class StoreNotReady(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Received:
    """What a payment attempt needs before it is verified."""

    used_by: str | None  # the challenge this authorization already unlocked, if any
    challenges: list[Challenge]  # v2: the challenge it names (0 or 1); v1: open candidates, newest first


@dataclass(frozen=True, slots=True)
class StuckPayment:
    """A payment whose challenge was left `verified` by an abandoned request, leased for resolving."""

    payment: PendingSettlement
    route: str  # Route.key: its settlement policy tells whether a settle may have been sent
    verified_at: datetime


@dataclass(frozen=True, slots=True)
class _NewChallenge:
    """A challenge's row, its JSON already encoded: a value that cannot be fails its own request only."""

    id: str
    route: str
    resource: str
    params_json: str
    params_hash: str
    price_json: str
    requirements_json: str
    requirements_v1_json: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class _Move:
    current: ChallengeStatus
    new: ChallengeStatus
    error_reason: str | None
    settle_attempt: bool
    entry: AuditEntry  # its challenge_id names the challenge; its tx_hash goes on the row too
    detail_json: str  # the entry's detail, encoded before it joins a group

    @property
    def challenge_id(self) -> str:
        assert self.entry.challenge_id is not None
        return self.entry.challenge_id


_AUTH_KEY_CONSTRAINT = "rs_payments_authorization_key"


# The unpaid challenges a v1 payment may answer; expired ones included (a late payment should hear that
# its challenge expired, not that none matched).
def _candidates_sql(first: int) -> str:
    """Route, params hash and limit are parameters `first`, `first` + 1 and `first` + 2."""
    return f"""SELECT * FROM rs_challenges
               WHERE route = ${first} AND params_hash = ${first + 1} AND status IN ('issued', 'expired')
               ORDER BY issued_at DESC LIMIT ${first + 2}"""


def _challenge(r: asyncpg.Record) -> Challenge:
    return Challenge(
        id=r["id"],
        route=r["route"],
        resource=r["resource"],
        params=r["params"],
        params_hash=r["params_hash"],
        price=r["price"],
        requirements=r["requirements"],
        requirements_v1=r["requirements_v1"],
        status=ChallengeStatus(r["status"]),
        issued_at=r["issued_at"],
        expires_at=r["expires_at"],
        now=r["db_now"],
        payer=r["payer"],
        x402_version=r["x402_version"],
        tx_hash=r["tx_hash"],
        error_reason=r["error_reason"],
    )


class ChallengeStore:
    def __init__(
        self, pool: asyncpg.Pool | None = None, *, metrics: ResourceServerMetrics | None = None
    ) -> None:
        self._pool = pool
        self.metrics = metrics  # counts what the audit entries record, once they are written
        self._owns_pool = False
        # The database's clock minus ours (seconds), as last seen. Expiries are judged by the database's
        # clock; with this a challenge's expiry is computed before its INSERT, which saves a round trip.
        self._clock_offset: float | None = None
        self.issued = IssuedChallenges()  # what `take_issued` hands out
        self._issues: Coalescer[_NewChallenge, datetime] = Coalescer(self._insert_group)
        # A group locks its rows in id order, so groups (this process's, one at a time, or replicas') never
        # deadlock on each other.
        self._moves: Coalescer[_Move, bool] = Coalescer(self._move_group)

    # -- lifecycle ----------------------------------------------------------------------------------------

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreNotReady("the challenge store is not connected (call open() or bind())")
        return self._pool

    def bind(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def open(self, dsn: str, *, min_size: int = 2, max_size: int = 20) -> None:
        """Connects and applies the migrations (idempotent, safe with replicas starting together)."""
        pool = await connect_pool(dsn, min_size=min_size, max_size=max_size)
        try:
            await migrate(
                pool, importlib.resources.files("resource_server.migrations"), namespace="resource_server"
            )
        except BaseException:
            await pool.close()
            raise
        self._pool, self._owns_pool = pool, True

    async def close(self) -> None:
        if self._pool is not None and self._owns_pool:
            await self._pool.close()
        self._pool = None

    # -- challenges ---------------------------------------------------------------------------------------

    async def issue(
        self,
        *,
        route: str,
        resource: str,
        params: dict[str, Any],
        params_hash: str,
        price: dict[str, Any],
        ttl_seconds: float,
        build: RequirementsBuilder,
        note: AuditEntry | None = None,
    ) -> Challenge:
        """A new payable challenge, and `note` (e.g. the refusal it answers) in the same statement. Its
        expiry is on the database's clock, which also judges it: the clock offset last observed (off by at
        most one round trip, early rather than late) puts it there."""
        challenge_id = secrets.token_hex(16)
        if self._clock_offset is None:
            self._observe_clock(await self.pool.fetchval("SELECT now()"))
        expires_at = datetime.fromtimestamp(self.estimated_now() + ttl_seconds, UTC)
        v2, v1 = build(challenge_id, int(expires_at.timestamp()))
        async with span("db.challenge.issue"):
            if note is None:
                db_now = await self._issues.submit(
                    _NewChallenge(
                        challenge_id,
                        route,
                        resource,
                        encode_json(params),
                        params_hash,
                        encode_json(price),
                        encode_json(v2),
                        encode_json(v1),
                        expires_at,
                    )
                )
            else:
                db_now = await self.pool.fetchval(
                    f"WITH noted AS ({insert_sql(10)}) "
                    """INSERT INTO rs_challenges (id, route, resource, params, params_hash, price,
                           requirements, requirements_v1, issued_at, expires_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), $9)
                       RETURNING issued_at""",
                    challenge_id,
                    route,
                    resource,
                    params,
                    params_hash,
                    price,
                    v2,
                    v1,
                    expires_at,
                    *note.params(),
                )
        self._observe_clock(db_now)
        if self.metrics is not None:
            self.metrics.issued(note)
        # Built from what was sent rather than read back: the requirements are JSON values already.
        challenge = Challenge(
            id=challenge_id,
            route=route,
            resource=resource,
            params=params,
            params_hash=params_hash,
            price=price,
            requirements=v2,
            requirements_v1=v1,
            status=ChallengeStatus.ISSUED,
            issued_at=db_now,
            expires_at=expires_at,
            now=db_now,
        )
        self.issued.add(challenge)
        return challenge

    def take_issued(self, challenge_id: str) -> Challenge | None:
        """The challenge, if this process issued it and no payment has named it yet; removed (see
        challenges/issued.py). Its `now` is the database's clock as estimated here."""
        if self._clock_offset is None:
            return None
        return self.issued.take(challenge_id, now=datetime.fromtimestamp(self.estimated_now(), UTC))

    async def _insert_group(self, group: list[_NewChallenge]) -> list[datetime]:
        issued_at = await self.pool.fetchval(
            """WITH ins AS (
                   INSERT INTO rs_challenges (id, route, resource, params, params_hash, price, requirements,
                       requirements_v1, issued_at, expires_at)
                   SELECT id, route, resource, params::jsonb, params_hash, price::jsonb, requirements::jsonb,
                          requirements_v1::jsonb, now(), expires_at
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                               $7::text[], $8::text[], $9::timestamptz[])
                       AS t(id, route, resource, params, params_hash, price, requirements, requirements_v1,
                            expires_at)
                   RETURNING issued_at)
               SELECT max(issued_at) FROM ins""",
            [c.id for c in group],
            [c.route for c in group],
            [c.resource for c in group],
            [c.params_json for c in group],
            [c.params_hash for c in group],
            [c.price_json for c in group],
            [c.requirements_json for c in group],
            [c.requirements_v1_json for c in group],
            [c.expires_at for c in group],
        )
        return [issued_at] * len(group)  # now() is the transaction's start: one value for every row

    def estimated_now(self) -> float:
        """The database's clock (unix seconds) as last observed, never ahead of it: see `_observe_clock`."""
        if self._clock_offset is None:
            raise StoreNotReady("the database's clock has not been read yet")
        return time.time() + self._clock_offset

    def _observe_clock(self, db_now: datetime) -> None:
        # Read after the answer arrived: the offset errs low by the answer's travel time, so an expiry
        # computed from it comes early, never late.
        self._clock_offset = db_now.timestamp() - time.time()

    async def get(self, challenge_id: str) -> Challenge | None:
        row = await self.pool.fetchrow(
            "SELECT *, now() AS db_now FROM rs_challenges WHERE id = $1", challenge_id
        )
        return _challenge(row) if row else None

    async def get_with_payment(self, challenge_id: str) -> tuple[Challenge, StoredPayment | None] | None:
        """A challenge and the payment claimed for it, if any, in one read."""
        row = await self.pool.fetchrow(
            """SELECT c.*, now() AS db_now, p.payer AS paid_by, p.payload AS paid_payload,
                      p.requirements AS paid_requirements
               FROM rs_challenges c LEFT JOIN rs_payments p ON p.challenge_id = c.id
               WHERE c.id = $1""",
            challenge_id,
        )
        if row is None:
            return None
        paid = (
            StoredPayment(row["paid_by"], row["paid_payload"], row["paid_requirements"])
            if row["paid_by"] is not None
            else None
        )
        return _challenge(row), paid

    async def open_candidates(self, route: str, params_hash: str, *, limit: int = 50) -> list[Challenge]:
        """Unpaid challenges of a route and parameters, newest first, expired ones included (a late payment
        should hear that its challenge expired, not that none matched)."""
        rows = await self.pool.fetch(
            f"SELECT c.*, now() AS db_now FROM ({_candidates_sql(1)}) c ORDER BY c.issued_at DESC",
            route,
            params_hash,
            limit,
        )
        return [_challenge(r) for r in rows]

    async def receive(
        self,
        note: AuditEntry,
        *,
        payer: str,
        nonce: str,
        challenge_id: str | None = None,
        candidates_of: tuple[str, str] | None = None,
        limit: int = 50,
    ) -> Received:
        """Records an attempt (`note`) and reads what deciding it needs, in one statement: the challenge the
        authorization (payer + EIP-3009 nonce) already unlocked, if any, and either the challenge with
        `challenge_id` (v2) or the open candidates of `candidates_of` = (route, params hash) (v1)."""
        used = "(SELECT p.challenge_id FROM rs_payments p WHERE p.payer = $1 AND p.auth_nonce = $2 LIMIT 1)"
        if candidates_of is None:
            # (VALUES (1)) LEFT JOIN: one row even when no challenge has that id, for the replay answer.
            sql = f"""WITH received AS ({insert_sql(4)})
                      SELECT {used} AS used_by, now() AS db_now, c.*
                      FROM (VALUES (1)) AS one (x) LEFT JOIN rs_challenges c ON c.id = $3"""
            args: tuple[Any, ...] = (payer, nonce, challenge_id)
        else:
            sql = f"""WITH received AS ({insert_sql(6)})
                      SELECT {used} AS used_by, now() AS db_now, c.*
                      FROM (VALUES (1)) AS one (x) LEFT JOIN LATERAL ({_candidates_sql(3)}) c ON true
                      ORDER BY c.issued_at DESC"""
            args = (payer, nonce, *candidates_of, limit)
        async with span("db.challenge.receive"):
            rows = await self.pool.fetch(sql, *args, *note.params())
        self._observe_clock(rows[0]["db_now"])
        used_by = rows[0]["used_by"]
        return Received(
            str(used_by) if used_by is not None else None,
            [_challenge(r) for r in rows if r["id"] is not None],
        )

    async def claim(
        self,
        match: Match,
        *,
        version: int,
        payload: dict[str, Any],
        verify_answer: dict[str, Any],
        received: AuditEntry | None = None,
    ) -> ClaimOutcome:
        """Binds a verified payment to its challenge in one statement: moves the challenge issued ->
        verified (a conditional UPDATE: one winner among racing replicas), records the authorization under
        its unique key, and writes the `verified` audit row. A used authorization makes the INSERT fail,
        which aborts the whole statement: both or neither. `received`, the attempt's audit row when no
        `receive` wrote it, goes first in the same INSERT, and is written on its own when a unique key
        aborts the statement: whatever the outcome, once.

        A payment is used when its payer and nonce are stored, whatever the chain and token: the rule
        `receive` applies. The unique key also holds chain and token, so the statement checks payer and
        nonce itself; a challenge matched from memory (no `receive`) is refused exactly as one read back."""
        key, challenge = match.key, match.challenge
        entry = AuditEntry(
            "verified",
            challenge.id,
            payer=key.payer,
            from_status=ChallengeStatus.ISSUED,
            to_status=ChallengeStatus.VERIFIED,
            detail={
                "x402Version": version,
                "nonce": key.nonce,
                "chainId": key.chain_id,
                "asset": key.asset,
                "requirement": match.requirement,
                "facilitator": verify_answer,
            },
        )
        first_row = f"{select_sql(9 + AUDIT_PARAMS)} UNION ALL " if received else ""
        try:
            async with span("db.challenge.claim"):
                row = await self.pool.fetchrow(
                    f"""WITH spent AS (
                            SELECT EXISTS (SELECT 1 FROM rs_payments WHERE payer = $3 AND auth_nonce = $4)
                                AS used),
                        moved AS (
                            UPDATE rs_challenges
                            SET status = 'verified', payer = $3, x402_version = $6, updated_at = now()
                            WHERE id = $5 AND status = 'issued' AND expires_at > now()
                              AND NOT (SELECT used FROM spent)
                            RETURNING id),
                        paid AS (
                            INSERT INTO rs_payments (chain_id, asset, payer, auth_nonce, challenge_id,
                                x402_version, payload, requirements)
                            SELECT $1, $2, $3, $4, id, $6, $7, $8 FROM moved RETURNING challenge_id),
                        logged AS ({AUDIT_COLUMNS}{first_row}{select_sql(9, source="paid")})
                        SELECT (SELECT count(*) FROM paid) AS claimed, (SELECT used FROM spent) AS used,
                               c.status = 'expired' OR c.expires_at <= now() AS expired
                        FROM rs_challenges c WHERE c.id = $5""",
                    key.chain_id,
                    key.asset,
                    key.payer,
                    key.nonce,
                    challenge.id,
                    version,
                    payload,
                    match.requirement,
                    *entry.params(),
                    *(received.params() if received else ()),
                )
        except asyncpg.UniqueViolationError as exc:
            if received is not None:
                await self.record_entry(received)  # the aborted statement took it with it
            if exc.constraint_name == _AUTH_KEY_CONSTRAINT:
                return ClaimOutcome.PAYMENT_USED
            return ClaimOutcome.CHALLENGE_TAKEN  # a payment row for this challenge already exists
        if received is not None and self.metrics is not None:
            self.metrics.recorded(received)
        if row is not None and row["claimed"]:
            if self.metrics is not None:
                self.metrics.recorded(entry)
            return ClaimOutcome.CLAIMED
        # Used before expired, as `receive` answers a used payment before its challenge is even looked at.
        if row is not None and row["used"]:
            return ClaimOutcome.PAYMENT_USED
        if row is not None and row["expired"]:
            return ClaimOutcome.EXPIRED
        # Someone moved the challenge first. If it was this very payment (raced on another replica), that
        # committed after this statement's snapshot was taken: a fresh read tells which answer is right.
        used = await self.pool.fetchval(
            "SELECT 1 FROM rs_payments WHERE payer = $1 AND auth_nonce = $2", key.payer, key.nonce
        )
        return ClaimOutcome.PAYMENT_USED if used else ClaimOutcome.CHALLENGE_TAKEN

    async def transition(
        self,
        challenge_id: str,
        current: ChallengeStatus,
        new: ChallengeStatus,
        *,
        event: str,
        detail: dict[str, Any] | None = None,
        tx_hash: str | None = None,
        error_reason: str | None = None,
        settle_attempt: bool = False,
    ) -> bool:
        """Moves the challenge from `current` to `new`; False, and nothing written, if it was elsewhere."""
        check_transition(current, new)
        entry = AuditEntry(
            event,
            challenge_id,
            tx_hash=tx_hash or None,
            detail=detail or {},
            from_status=current,
            to_status=new,
        )
        async with span("db.challenge.transition"):
            move = _Move(current, new, error_reason, settle_attempt, entry, encode_json(entry.detail))
            moved = await self._moves.submit(move)
        if moved and self.metrics is not None:
            self.metrics.recorded(entry, error_reason)
        return moved

    async def _move_group(self, group: list[_Move]) -> list[bool | Exception]:
        # A challenge twice in one group would be updated once: repeats go in a statement of their own.
        # Each statement answers for its own moves only: one that failed says nothing of one committed.
        answers: dict[int, bool | Exception] = {}
        pending = list(enumerate(group))
        while pending:
            seen: set[str] = set()
            now: list[tuple[int, _Move]] = []
            later: list[tuple[int, _Move]] = []
            for i, move in pending:
                (later if move.challenge_id in seen else now).append((i, move))
                seen.add(move.challenge_id)
            try:
                moved = await self._move_rows([move for _, move in now])
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                answers.update((i, exc) for i, _ in now)
            else:
                answers.update((i, move.challenge_id in moved) for i, move in now)
            pending = later
        return [answers[i] for i in range(len(group))]

    async def _move_rows(self, moves: Sequence[_Move]) -> set[str]:
        rows = await self.pool.fetch(
            f"""WITH v AS (
                    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                         $6::int[], $7::text[], $8::text[], $9::text[], $10::int[],
                                         $11::text[])
                        AS v(id, cur, new, tx_hash, error_reason, attempts, event, payer, detail, ord,
                             audit_tx_hash)),
                locked AS (
                    SELECT c.id FROM rs_challenges c JOIN v ON v.id = c.id AND c.status = v.cur
                    ORDER BY c.id FOR NO KEY UPDATE OF c),
                moved AS (
                    UPDATE rs_challenges c SET status = v.new, tx_hash = COALESCE(v.tx_hash, c.tx_hash),
                        error_reason = COALESCE(v.error_reason, c.error_reason), updated_at = now(),
                        settle_attempts = c.settle_attempts + v.attempts, lease_owner = NULL,
                        lease_until = NULL
                    FROM v WHERE c.id = v.id AND c.status = v.cur AND c.id IN (SELECT id FROM locked)
                    RETURNING c.id, c.payer),
                logged AS (
                    {AUDIT_COLUMNS}
                    SELECT v.id, v.event, v.cur, v.new, COALESCE(v.payer, lower(moved.payer)),
                           v.audit_tx_hash, v.detail::jsonb
                    FROM v JOIN moved ON moved.id = v.id ORDER BY v.ord)
                SELECT id FROM moved""",
            [m.challenge_id for m in moves],
            [m.current.value for m in moves],
            [m.new.value for m in moves],
            [m.entry.tx_hash for m in moves],
            [m.error_reason for m in moves],
            [1 if m.settle_attempt else 0 for m in moves],
            [m.entry.event for m in moves],
            [m.entry.payer_key for m in moves],
            [m.detail_json for m in moves],
            list(range(len(moves))),
            [m.entry.tx_hash_key for m in moves],
        )
        return {r["id"] for r in rows}

    async def expire(self, challenge_id: str) -> bool:
        return await self.transition(
            challenge_id, ChallengeStatus.ISSUED, ChallengeStatus.EXPIRED, event="expired"
        )

    async def sweep_expired(self, *, limit: int = 1000) -> int:
        """Marks issued challenges past their expiry as expired, a batch at a time (one statement: the
        changes and their audit rows commit together)."""
        count = await self.pool.fetchval(
            """WITH gone AS (
                   UPDATE rs_challenges SET status = 'expired', updated_at = now()
                   WHERE id IN (SELECT id FROM rs_challenges
                                WHERE status = 'issued' AND expires_at <= now()
                                ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
                   RETURNING id),
               logged AS (
                   INSERT INTO rs_audit (challenge_id, event, from_status, to_status)
                   SELECT id, 'expired', 'issued', 'expired' FROM gone RETURNING 1)
               SELECT count(*) FROM logged""",
            limit,
        )
        return int(count)

    # -- pending settlements ----------------------------------------------------------------------------

    async def claim_pending(
        self, owner: str, *, lease_seconds: float, limit: int = 50
    ) -> list[PendingSettlement]:
        """Leases settlement_pending challenges whose lease is free to `owner` (one reconciler per row)."""
        rows = await self.pool.fetch(
            """WITH claimed AS (
                   UPDATE rs_challenges SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)
                   WHERE id IN (SELECT id FROM rs_challenges
                                WHERE status = 'settlement_pending'
                                  AND (lease_until IS NULL OR lease_until < now())
                                ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED)
                   RETURNING id, settle_attempts)
               SELECT p.*, c.settle_attempts FROM claimed c JOIN rs_payments p ON p.challenge_id = c.id""",
            owner,
            lease_seconds,
            limit,
        )
        return [PendingSettlement.from_record(r) for r in rows]

    async def release_lease(
        self,
        challenge_id: str,
        owner: str,
        *,
        retry_after_seconds: float = 0.0,
        note: AuditEntry | None = None,
    ) -> None:
        """Hands a pending settlement back for a later attempt, with `note` in the same statement."""
        noted = f"WITH noted AS ({insert_sql(4)}) " if note else ""
        await self.pool.execute(
            noted
            + """UPDATE rs_challenges
                 SET lease_owner = NULL, lease_until = now() + make_interval(secs => $3),
                     settle_attempts = settle_attempts + 1
                 WHERE id = $1 AND lease_owner = $2""",
            challenge_id,
            owner,
            retry_after_seconds,
            *(note.params() if note else ()),
        )

    # -- audit --------------------------------------------------------------------------------------------

    async def record(
        self,
        event: str,
        *,
        challenge_id: str | None,
        payer: str | None = None,
        tx_hash: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """An audit row that goes with no state change (an attempt, a refusal, a facilitator answer)."""
        await self.record_entry(AuditEntry(event, challenge_id, payer, tx_hash, detail or {}))

    async def record_entry(self, entry: AuditEntry) -> None:
        await write_event(self.pool, entry)
        if self.metrics is not None:
            self.metrics.recorded(entry)

    async def audit(
        self,
        *,
        challenge_id: str | None = None,
        payer: str | None = None,
        tx_hash: str | None = None,
        limit: int = 200,
    ) -> list[AuditEvent]:
        return await query_events(
            self.pool, challenge_id=challenge_id, payer=payer, tx_hash=tx_hash, limit=limit
        )

    # -- replays --------------------------------------------------------------------------------------------

    async def payments_of_authorization(
        self, payer: str, nonce: str
    ) -> list[tuple[Challenge, StoredPayment]]:
        """The payments stored under an authorization's payer and EIP-3009 nonce, each with the challenge it
        unlocked (one read): the replay of a deferred route's payment is answered from these. Several only
        when claims of one payer's nonce on different chains or tokens raced: `claim` checks payer and
        nonce on its statement's snapshot, the unique key holds chain and token too."""
        rows = await self.pool.fetch(
            """SELECT c.*, now() AS db_now, p.payer AS paid_by, p.payload AS paid_payload,
                      p.requirements AS paid_requirements
               FROM rs_payments p JOIN rs_challenges c ON c.id = p.challenge_id
               WHERE p.payer = $1 AND p.auth_nonce = $2""",
            payer,
            nonce,
        )
        return [
            (_challenge(r), StoredPayment(r["paid_by"], r["paid_payload"], r["paid_requirements"]))
            for r in rows
        ]

    # -- reconciler: abandoned claims, the unsettled gauge, retention -----------------------------------

    async def claim_stuck(
        self,
        owner: str,
        *,
        lease_seconds: float,
        stuck_after_seconds: float,
        settle_first: Collection[str],
        settle_after: Collection[str],
        expiry_margin_seconds: float,
        limit: int = 50,
    ) -> list[StuckPayment]:
        """Leases to `owner` (one reconciler per row) the challenges left `verified` longer than
        `stuck_after_seconds` that may be resolved now: those of `settle_first` routes (a settle may have
        been sent right after the claim) unless a `settlement_deferred` note names an owner, and those of
        `settle_after` routes once their authorization has expired (`expiry_margin_seconds` past
        validBefore no settlement can charge it any more, so asking the facilitator tells whether one did,
        without the risk of charging an unserved request), a job's payment included: its owner settles
        only within the authorization's window. Other routes are left to their owner."""
        rows = await self.pool.fetch(
            """WITH claimed AS (
                   UPDATE rs_challenges SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)
                   WHERE id IN (
                       SELECT c.id FROM rs_challenges c JOIN rs_payments p ON p.challenge_id = c.id
                       WHERE c.status = 'verified'
                         AND c.updated_at < now() - make_interval(secs => $3)
                         AND (c.lease_until IS NULL OR c.lease_until < now())
                         AND ((c.route = ANY($4::text[])
                               AND NOT EXISTS (
                                   SELECT 1 FROM rs_audit a
                                   WHERE a.challenge_id = c.id AND a.event = 'settlement_deferred'))
                              OR (c.route = ANY($5::text[])
                                  AND CASE WHEN p.payload #>> $8 ~ '^[0-9]{1,30}$'
                                      THEN (p.payload #>> $8)::float8
                                           < extract(epoch FROM now())::float8 - $6::float8
                                      ELSE false END))
                       ORDER BY c.updated_at LIMIT $7 FOR UPDATE OF c SKIP LOCKED)
                   RETURNING id, route, settle_attempts, updated_at)
               SELECT p.*, c.route, c.settle_attempts, c.updated_at AS verified_at
               FROM claimed c JOIN rs_payments p ON p.challenge_id = c.id""",
            owner,
            lease_seconds,
            stuck_after_seconds,
            list(settle_first),
            list(settle_after),
            expiry_margin_seconds,
            limit,
            ["payload", "authorization", "validBefore"],
        )
        return [
            StuckPayment(
                PendingSettlement.from_record(r),
                route=r["route"],
                verified_at=r["verified_at"],
            )
            for r in rows
        ]

    async def unsettled_counts(self) -> dict[ChallengeStatus, int]:
        """How many challenges are paid and not settled yet, by status (each count on its partial index)."""
        row = await self.pool.fetchrow(
            """SELECT (SELECT count(*) FROM rs_challenges WHERE status = 'verified') AS verified,
                      (SELECT count(*) FROM rs_challenges WHERE status = 'settlement_pending') AS pending"""
        )
        assert row is not None
        return {
            ChallengeStatus.VERIFIED: int(row["verified"]),
            ChallengeStatus.SETTLEMENT_PENDING: int(row["pending"]),
        }

    async def purge_expired(self, older_than_seconds: float, *, limit: int = 1000) -> int:
        """Deletes up to `limit` challenges that expired unpaid more than `older_than_seconds` ago, with their
        audit rows, in one statement (both or neither); returns how many. A challenge with a payment row is
        never one of them (an expired challenge cannot have one; checked anyway)."""
        count = await self.pool.fetchval(
            """WITH doomed AS (
                   SELECT c.id FROM rs_challenges c
                   WHERE c.status = 'expired' AND c.expires_at < now() - make_interval(secs => $1)
                     AND NOT EXISTS (SELECT 1 FROM rs_payments p WHERE p.challenge_id = c.id)
                   ORDER BY c.expires_at LIMIT $2 FOR UPDATE SKIP LOCKED),
               trail AS (DELETE FROM rs_audit a USING doomed d WHERE a.challenge_id = d.id),
               gone AS (DELETE FROM rs_challenges c USING doomed d WHERE c.id = d.id RETURNING 1)
               SELECT count(*) FROM gone""",
            older_than_seconds,
            limit,
        )
        return int(count)

"""Challenges and claimed payments in PostgreSQL. Every state change is a conditional UPDATE on the current
status, written with its audit row in one transaction, so two replicas racing on one challenge cannot both
move it and a crash never leaves a change without its record.

The pool must come from shared.storage.database.connect_pool (JSONB decoded to Python values)."""

from __future__ import annotations

import importlib.resources
import secrets
from collections.abc import Callable
from datetime import timedelta
from enum import StrEnum
from typing import Any

import asyncpg

from shared.storage.database import connect_pool, migrate
from shared.telemetry.tracing import span

from ..audit import AuditEvent, query_events, write_event
from .matching import Match
from .records import Challenge, PaymentKey, PendingSettlement
from .states import ChallengeStatus, check_transition

# (challenge id, expiry as unix seconds) -> (v2 requirements, v1 requirements)
RequirementsBuilder = Callable[[str, int], tuple[list[dict[str, Any]], list[dict[str, Any]]]]


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"
    PAYMENT_USED = "payment_used"  # this authorization already unlocked a request
    CHALLENGE_TAKEN = "challenge_taken"  # another payment claimed the challenge first
    EXPIRED = "expired"


class StoreNotReady(RuntimeError):
    pass


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
    def __init__(self, pool: asyncpg.Pool | None = None) -> None:
        self._pool = pool
        self._owns_pool = False

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
    ) -> Challenge:
        """A new payable challenge. Its expiry comes from the database clock, which also judges it."""
        challenge_id = secrets.token_hex(16)
        async with span("db.challenge.issue"), self.pool.acquire() as conn:
            now = await conn.fetchval("SELECT now()")
            expires_at = now + timedelta(seconds=ttl_seconds)
            v2, v1 = build(challenge_id, int(expires_at.timestamp()))
            row = await conn.fetchrow(
                """INSERT INTO rs_challenges (id, route, resource, params, params_hash, price, requirements,
                       requirements_v1, issued_at, expires_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                   RETURNING *, now() AS db_now""",
                challenge_id,
                route,
                resource,
                params,
                params_hash,
                price,
                v2,
                v1,
                now,
                expires_at,
            )
            assert row is not None
            return _challenge(row)

    async def get(self, challenge_id: str) -> Challenge | None:
        row = await self.pool.fetchrow(
            "SELECT *, now() AS db_now FROM rs_challenges WHERE id = $1", challenge_id
        )
        return _challenge(row) if row else None

    async def open_candidates(self, route: str, params_hash: str, *, limit: int = 50) -> list[Challenge]:
        """Unpaid challenges of a route and parameters, newest first, expired ones included (a late payment
        should hear that its challenge expired, not that none matched)."""
        rows = await self.pool.fetch(
            """SELECT *, now() AS db_now FROM rs_challenges
               WHERE route = $1 AND params_hash = $2 AND status IN ('issued', 'expired')
               ORDER BY issued_at DESC LIMIT $3""",
            route,
            params_hash,
            limit,
        )
        return [_challenge(r) for r in rows]

    async def used_by(self, payer: str, nonce: str) -> str | None:
        """The challenge an authorization (payer + EIP-3009 nonce) already unlocked, if any."""
        value = await self.pool.fetchval(
            "SELECT challenge_id FROM rs_payments WHERE payer = $1 AND auth_nonce = $2 LIMIT 1", payer, nonce
        )
        return str(value) if value is not None else None

    async def claim(
        self, match: Match, *, version: int, payload: dict[str, Any], verify_answer: dict[str, Any]
    ) -> ClaimOutcome:
        """Binds a verified payment to its challenge: records the authorization (unique) and moves the
        challenge issued -> verified, both or neither."""
        try:
            return await self._claim(match, version=version, payload=payload, verify_answer=verify_answer)
        except _Undo as undo:
            return undo.outcome

    async def _claim(
        self, match: Match, *, version: int, payload: dict[str, Any], verify_answer: dict[str, Any]
    ) -> ClaimOutcome:
        key, challenge = match.key, match.challenge
        async with span("db.challenge.claim"), self.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                """INSERT INTO rs_payments (chain_id, asset, payer, auth_nonce, challenge_id, x402_version,
                       payload, requirements)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                   ON CONFLICT DO NOTHING RETURNING challenge_id""",
                key.chain_id,
                key.asset,
                key.payer,
                key.nonce,
                challenge.id,
                version,
                payload,
                match.requirement,
            )
            if inserted is None:
                used = await conn.fetchval(
                    """SELECT 1 FROM rs_payments
                       WHERE chain_id = $1 AND asset = $2 AND payer = $3 AND auth_nonce = $4""",
                    key.chain_id,
                    key.asset,
                    key.payer,
                    key.nonce,
                )
                return ClaimOutcome.PAYMENT_USED if used else ClaimOutcome.CHALLENGE_TAKEN
            moved = await conn.fetchval(
                """UPDATE rs_challenges
                   SET status = 'verified', payer = $2, x402_version = $3, updated_at = now()
                   WHERE id = $1 AND status = 'issued' AND expires_at > now() RETURNING id""",
                challenge.id,
                key.payer,
                version,
            )
            if moved is None:
                expired = await conn.fetchval(
                    "SELECT status = 'expired' OR expires_at <= now() FROM rs_challenges WHERE id = $1",
                    challenge.id,
                )
                # Undo the payment row: the transaction must not commit half of the claim.
                raise _Undo(ClaimOutcome.EXPIRED if expired else ClaimOutcome.CHALLENGE_TAKEN)
            await write_event(
                conn,
                challenge_id=challenge.id,
                event="verified",
                from_status=ChallengeStatus.ISSUED,
                to_status=ChallengeStatus.VERIFIED,
                payer=key.payer,
                detail={
                    "x402Version": version,
                    "nonce": key.nonce,
                    "chainId": key.chain_id,
                    "asset": key.asset,
                    "requirement": match.requirement,
                    "facilitator": verify_answer,
                },
            )
            return ClaimOutcome.CLAIMED

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
        async with span("db.challenge.transition"), self.pool.acquire() as conn, conn.transaction():
            payer = await conn.fetchval(
                """UPDATE rs_challenges SET status = $3, tx_hash = COALESCE($4, tx_hash),
                       error_reason = COALESCE($5, error_reason), updated_at = now(),
                       settle_attempts = settle_attempts + $6, lease_owner = NULL, lease_until = NULL
                   WHERE id = $1 AND status = $2 RETURNING COALESCE(payer, '')""",
                challenge_id,
                current.value,
                new.value,
                tx_hash or None,
                error_reason,
                1 if settle_attempt else 0,
            )
            if payer is None:
                return False
            await write_event(
                conn,
                challenge_id=challenge_id,
                event=event,
                from_status=current,
                to_status=new,
                payer=payer or None,
                tx_hash=tx_hash or None,
                detail=detail,
            )
            return True

    async def expire(self, challenge_id: str) -> bool:
        return await self.transition(
            challenge_id, ChallengeStatus.ISSUED, ChallengeStatus.EXPIRED, event="expired"
        )

    async def sweep_expired(self, *, limit: int = 1000) -> int:
        """Marks issued challenges past their expiry as expired, a batch at a time."""
        async with self.pool.acquire() as conn, conn.transaction():
            count = await conn.fetchval(
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
        return [
            PendingSettlement(
                challenge_id=r["challenge_id"],
                key=PaymentKey(r["chain_id"], r["asset"], r["payer"], r["auth_nonce"]),
                x402_version=r["x402_version"],
                payload=r["payload"],
                requirements=r["requirements"],
                attempts=r["settle_attempts"],
            )
            for r in rows
        ]

    async def release_lease(self, challenge_id: str, owner: str, *, retry_after_seconds: float = 0.0) -> None:
        await self.pool.execute(
            """UPDATE rs_challenges
               SET lease_owner = NULL, lease_until = now() + make_interval(secs => $3),
                   settle_attempts = settle_attempts + 1
               WHERE id = $1 AND lease_owner = $2""",
            challenge_id,
            owner,
            retry_after_seconds,
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
        await write_event(
            self.pool, challenge_id=challenge_id, event=event, payer=payer, tx_hash=tx_hash, detail=detail
        )

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


class _Undo(Exception):
    def __init__(self, outcome: ClaimOutcome) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome

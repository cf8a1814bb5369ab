"""The payment flow for one priced request, independent of ASGI: issue a challenge, authorize a payment
against it (match, verify, claim), settle or release it. The middleware and the gateway call this and only
render its answers.

Order matters for safety: nothing is claimed before the facilitator says the payment is valid (a bad
payment cannot burn a client's challenge), and the claim (unique authorization + issued -> verified) is one
statement, so a payment unlocks one request even across replicas racing on the same database.

A paid request costs at most three database round trips (each one statement and one transaction):
`receive` before verifying, `claim` after, and the settle (or release) transition. A v2 payment for a
challenge this process issued skips `receive`: the challenge is matched from memory and the attempt's audit
row goes with the claim, which decides as before (see challenges/issued.py); only a refusal then reads the
database, to tell a used payment apart. Matching stays pure, between the read and the claim.

A used payment is refused, except on a `deferred` route when it is the very payment that unlocked a request
there (same stored payload, route and priced parameters): a client whose answer was lost resends the same
signed payment, and is answered as the first time (`Replayed`) with nothing claimed or charged again. Only
that path reads more (the stored payment); the first payment costs nothing extra."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg
import structlog

from shared.x402 import reasons as fac_reasons
from shared.x402.models import SettleResponse, VerifyResponse

from . import reasons
from .audit import AuditEntry
from .challenges.matching import Match, Refusal, match_v1, match_v2
from .challenges.records import Challenge
from .challenges.requirements import requirements_v1, requirements_v2
from .challenges.states import ChallengeStatus, move_for
from .challenges.store import ChallengeStore, ClaimOutcome, StoreNotReady
from .facilitator_client import (
    FacilitatorBadResponse,
    FacilitatorClient,
    FacilitatorRefused,
    FacilitatorUnavailable,
)
from .payment_headers import PaymentAttempt
from .pricing.engine import Quote
from .pricing.model import Route, SettlementPolicy
from .pricing.params import json_value

log = structlog.get_logger(__name__)

_V1_CLAIM_RETRIES = 3


class StorageUnavailable(Exception):
    """The database could not be used: HTTP 503, nothing decided."""


class SettleUnrecorded(StorageUnavailable):
    """The facilitator settled the payment (or may have: pending) and the database did not take the outcome.
    The request is to be served with `outcome`: the payer is charged. The challenge stays `verified`, so the
    reconciler settles it again (a repeat gets the first settlement's outcome) and records that."""

    def __init__(self, outcome: SettleOutcome, error: str) -> None:
        super().__init__(error)
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class PricedRequest:
    route: Route
    quote: Quote
    resource_url: str


@dataclass(frozen=True, slots=True)
class Denied:
    """Answer 402 with `challenge` (fresh, or the still-payable one the payment failed against)."""

    reason: str
    message: str
    challenge: Challenge


@dataclass(frozen=True, slots=True)
class HeldPayment:
    """A claimed payment as stored: what settling or releasing it needs, without the request that brought
    it. The `deferred` policy settles it when the work it paid for ends, maybe in another process."""

    challenge_id: str
    payer: str
    network: str  # as the client wrote it
    payload: dict[str, Any]  # the payment payload, as sent
    requirement: dict[str, Any]  # the requirement it was verified against
    valid_before: int  # unix seconds: the authorization cannot be settled after this


@dataclass(frozen=True, slots=True)
class Authorized:
    priced: PricedRequest
    attempt: PaymentAttempt
    match: Match

    @property
    def challenge_id(self) -> str:
        return self.match.challenge.id

    def held(self) -> HeldPayment:
        a = self.attempt
        return HeldPayment(
            self.challenge_id, a.payer, a.network, a.payload, self.match.requirement, a.valid_before
        )


@dataclass(frozen=True, slots=True)
class Replayed:
    """A deferred route's payment presented again, identical to the one that unlocked `prior` (same payload,
    route and priced parameters): answer as the first time, claiming and charging nothing. Only the route's
    owner (a job) knows that answer; when it has none, `Paywall.refuse_replay` refuses it as used."""

    priced: PricedRequest
    attempt: PaymentAttempt
    prior: Challenge  # the challenge the payment was claimed for; its status says where the payment stands

    @property
    def challenge_id(self) -> str:
        return self.prior.id

    @property
    def payer(self) -> str:
        return self.attempt.payer


class Settlement(StrEnum):
    SETTLED = "settled"
    PENDING = "pending"  # served now, reconciled later
    FAILED = "failed"


_OUTCOMES = {
    ChallengeStatus.SETTLED: Settlement.SETTLED,
    ChallengeStatus.SETTLEMENT_PENDING: Settlement.PENDING,
    ChallengeStatus.FAILED: Settlement.FAILED,
}


@dataclass(frozen=True, slots=True)
class SettleOutcome:
    result: Settlement
    answer: SettleResponse


@contextlib.asynccontextmanager
async def _storage() -> AsyncIterator[None]:
    try:
        yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, StoreNotReady) as exc:
        log.error("storage_unavailable", error=str(exc))
        raise StorageUnavailable(str(exc)) from exc


class Paywall:
    def __init__(
        self, store: ChallengeStore, facilitator: FacilitatorClient, *, challenge_ttl_seconds: float
    ) -> None:
        self.store = store
        self.facilitator = facilitator
        self.challenge_ttl_seconds = challenge_ttl_seconds

    async def issue(self, priced: PricedRequest, *, note: AuditEntry | None = None) -> Challenge:
        """A fresh challenge for the request; `note` is written with it (the refusal it answers)."""
        quote = priced.quote

        def build(
            challenge_id: str, expires_at: int
        ) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
            return (
                requirements_v2(quote, challenge_id=challenge_id, expires_at=expires_at),
                requirements_v1(
                    quote, resource=priced.resource_url, challenge_id=challenge_id, expires_at=expires_at
                ),
            )

        async with _storage():
            return await self.store.issue(
                route=priced.route.key,
                resource=priced.resource_url,
                params={k: json_value(v) for k, v in quote.params.items()},
                params_hash=quote.params_hash,
                price=quote.breakdown(),
                ttl_seconds=self.challenge_ttl_seconds,
                build=build,
                note=note,
            )

    async def authorize(
        self, priced: PricedRequest, attempt: PaymentAttempt
    ) -> Authorized | Denied | Replayed:
        """Raises FacilitatorUnavailable / FacilitatorBadResponse (nothing claimed) and StorageUnavailable.
        `Replayed` only on a deferred route (see the module's docstring)."""
        received_note = _received_note(priced, attempt)
        issued = (
            self.store.take_issued(attempt.challenge_id)
            if attempt.version == 2 and attempt.challenge_id is not None
            else None
        )
        if issued is not None:
            found = _match(priced, attempt, [issued], exclude=())
            if isinstance(found, Match):
                # Issued here and matched from memory: the attempt's audit row goes with the claim.
                try:
                    answer = await self.facilitator.verify(attempt.payload, found.requirement)
                except (FacilitatorUnavailable, FacilitatorBadResponse):
                    await self._record_quietly(received_note)
                    raise
                if answer.is_valid:
                    return await self._claim(priced, attempt, found, answer.to_wire(), received=received_note)
                return await self._receive(priced, attempt, received_note, refused=answer)
            # A refusal is decided as for any attempt: on what the database holds, with its audit rows.
        return await self._receive(priced, attempt, received_note, refused=None)

    async def _receive(
        self,
        priced: PricedRequest,
        attempt: PaymentAttempt,
        received_note: AuditEntry,
        *,
        refused: VerifyResponse | None,
    ) -> Authorized | Denied | Replayed:
        """Records the attempt and decides it on what the database holds. `refused`: the facilitator's
        answer to an attempt verified against a challenge in memory, which the database may since have
        seen paid or expired: its own answer comes first, as it would have before verifying."""
        route_key, params_hash = priced.route.key, priced.quote.params_hash
        async with _storage():
            received = await self.store.receive(
                received_note,
                payer=attempt.payer,
                nonce=attempt.nonce,
                # v2 names its challenge; v1 answers any open one of this route and these parameters.
                challenge_id=attempt.challenge_id if attempt.version == 2 else None,
                candidates_of=(route_key, params_hash) if attempt.version == 1 else None,
            )
            if received.used_by is not None:
                replayed = await self._replay_of(priced, attempt)
                if replayed is not None:
                    return replayed
                return await self._deny(
                    priced,
                    attempt,
                    reasons.PAYMENT_USED,
                    f"this payment already unlocked a request (challenge {received.used_by})",
                )
        found = _match(priced, attempt, received.challenges, exclude=())
        if isinstance(found, Refusal):
            return await self._refuse(priced, attempt, found)
        answer = refused
        if answer is None:
            answer = await self.facilitator.verify(attempt.payload, found.requirement)
        if answer.is_valid:
            return await self._claim(priced, attempt, found, answer.to_wire())
        async with _storage():
            await self.store.record(
                "verify_refused",
                challenge_id=found.challenge.id,
                payer=attempt.payer,
                detail={"facilitator": answer.to_wire()},
            )
        reason = answer.invalid_reason or fac_reasons.INVALID_PAYLOAD
        message = answer.invalid_message or "the facilitator refused the payment"
        # The challenge was not consumed: the client may pay it again, correctly this time.
        return Denied(reason, message, found.challenge)

    async def _record_quietly(self, entry: AuditEntry) -> None:
        """An audit row once the answer is decided, or on the way to another error's: a storage failure can
        only be logged by then."""
        try:
            async with _storage():
                await self.store.record_entry(entry)
        except StorageUnavailable:
            cid, event = entry.challenge_id, entry.event
            log.error("audit_note_lost", challenge_id=cid, audit_event=event, detail=entry.detail)

    async def _claim(
        self,
        priced: PricedRequest,
        attempt: PaymentAttempt,
        found: Match,
        verify_answer: dict[str, object],
        *,
        received: AuditEntry | None = None,
    ) -> Authorized | Denied | Replayed:
        """`received`: the attempt's audit row, when no `receive` wrote it."""
        async with _storage():
            taken: list[str] = []
            for _ in range(_V1_CLAIM_RETRIES):
                outcome = await self.store.claim(
                    found,
                    version=attempt.version,
                    payload=attempt.payload,
                    verify_answer=verify_answer,
                    received=received,
                )
                received = None  # written by that claim, whatever its outcome
                if outcome is ClaimOutcome.CLAIMED:
                    return Authorized(priced, attempt, found)
                if outcome is ClaimOutcome.PAYMENT_USED:
                    # The same payment raced in on another request (a client retrying before its first
                    # answer came back) and claimed first.
                    replayed = await self._replay_of(priced, attempt)
                    if replayed is not None:
                        return replayed
                    return await self._deny(
                        priced, attempt, reasons.PAYMENT_USED, "this payment already unlocked a request"
                    )
                if outcome is ClaimOutcome.EXPIRED:
                    await self.store.expire(found.challenge.id)
                    return await self._deny(
                        priced,
                        attempt,
                        reasons.CHALLENGE_EXPIRED,
                        f"challenge {found.challenge.id} expired; pay the fresh one",
                    )
                if attempt.version == 2:
                    return await self._deny(
                        priced,
                        attempt,
                        reasons.CHALLENGE_USED,
                        f"challenge {found.challenge.id} was paid by another payment",
                    )
                # v1: another client's payment took the newest challenge first; try the next one.
                taken.append(found.challenge.id)
                candidates = await self.store.open_candidates(priced.route.key, priced.quote.params_hash)
                retry = _match(priced, attempt, candidates, exclude=tuple(taken))
                if isinstance(retry, Refusal):
                    return await self._refuse(priced, attempt, retry)
                found = retry
            return await self._deny(
                priced, attempt, reasons.NO_MATCHING_CHALLENGE, "every matching challenge was taken"
            )

    async def replayed(self, priced: PricedRequest, attempt: PaymentAttempt) -> Replayed | None:
        """The replay this payment is, if any: for answers decided before `authorize` (a refusal by the
        priced endpoint's admission, which the payment's own job may now cause). Raises StorageUnavailable."""
        async with _storage():
            return await self._replay_of(priced, attempt)

    async def refuse_replay(self, replayed: Replayed) -> Denied:
        """A replay nobody can answer (no job owns the payment, or the request differs): used, as always."""
        async with _storage():
            return await self._deny(
                replayed.priced,
                replayed.attempt,
                reasons.PAYMENT_USED,
                f"this payment already unlocked a request (challenge {replayed.challenge_id})",
            )

    async def _replay_of(self, priced: PricedRequest, attempt: PaymentAttempt) -> Replayed | None:
        if priced.route.settlement is not SettlementPolicy.DEFERRED:
            return None  # elsewhere a payment unlocks one request, full stop
        for challenge, stored in await self.store.payments_of_authorization(attempt.payer, attempt.nonce):
            # Dict equality ignores key order, as the stored JSONB does: the very payload that was signed.
            if _same_request(priced, challenge) and stored.payload == attempt.payload:
                return Replayed(priced, attempt, challenge)
        return None

    async def _refuse(self, priced: PricedRequest, attempt: PaymentAttempt, refusal: Refusal) -> Denied:
        async with _storage():
            if refusal.expired is not None:
                await self.store.expire(refusal.expired.id)
            return await self._deny(priced, attempt, refusal.reason, refusal.message)

    async def _deny(
        self, priced: PricedRequest, attempt: PaymentAttempt, reason: str, message: str
    ) -> Denied:
        refused = AuditEntry(
            "payment_refused",
            attempt.challenge_id,
            payer=attempt.payer,
            detail={"reason": reason, "message": message, "nonce": attempt.nonce},
        )
        return Denied(reason, message, await self.issue(priced, note=refused))

    async def settle(
        self,
        payment: Authorized | HeldPayment,
        *,
        release_unsent: bool = True,
        context: Mapping[str, Any] | None = None,
    ) -> SettleOutcome:
        """Raises FacilitatorUnavailable (only when certainly nothing was sent; with ``release_unsent``, a
        request waiting for its answer, the payment is then released, without it stays verified), and
        SettleUnrecorded when the database did not take a settled or pending outcome. A settle that may have
        been received (no answer, or one that is no settle answer) is recorded pending. ``context`` joins
        the audit details."""
        held = _held(payment)
        cid, extra = held.challenge_id, dict(context or {})
        try:
            answer = await self.facilitator.settle(held.payload, held.requirement)
        except FacilitatorUnavailable as exc:
            if not exc.maybe_delivered:
                if release_unsent:
                    await self.release(
                        held,
                        reason=reasons.FACILITATOR_UNAVAILABLE,
                        detail={"failures": exc.failures, **extra},
                    )
                raise
            # A facilitator may have broadcast it: serve, and let the reconciler ask again until it knows.
            detail: dict[str, Any] = {"failures": exc.failures}
        except FacilitatorRefused as exc:
            # Refused before acting on it (a wrong key or URL, a rate limit): nothing was sent.
            if release_unsent:
                await self.release(
                    held, reason=reasons.FACILITATOR_BAD_RESPONSE, detail={"error": str(exc), **extra}
                )
            raise
        except FacilitatorBadResponse as exc:
            # The facilitator received it and answered something else than a settle answer: it may have
            # broadcast it all the same, so it is not released (the payer could be charged for nothing).
            detail = {"error": str(exc)}
        else:
            move = move_for(answer)
            outcome = SettleOutcome(_OUTCOMES[move.status], answer)
            await self._record_settle(
                outcome,
                cid,
                move.status,
                move.event,
                {"facilitator": answer.to_wire(), **extra},
                tx_hash=answer.transaction,
                error_reason=move.error_reason,
            )
            return outcome
        lost = SettleResponse(
            success=False,
            error_reason=fac_reasons.SETTLEMENT_PENDING,
            error_message="the facilitator's answer was lost; the payment is being reconciled",
            transaction="",
            network=held.network,
            payer=held.payer,
        )
        outcome = SettleOutcome(Settlement.PENDING, lost)
        await self._record_settle(
            outcome, cid, ChallengeStatus.SETTLEMENT_PENDING, "settle_unanswered", {**detail, **extra}
        )
        return outcome

    async def _record_settle(
        self,
        outcome: SettleOutcome,
        challenge_id: str,
        new: ChallengeStatus,
        event: str,
        detail: Mapping[str, Any],
        *,
        tx_hash: str | None = None,
        error_reason: str | None = None,
    ) -> None:
        try:
            await self._move(challenge_id, new, event, detail, tx_hash=tx_hash, error_reason=error_reason)
        except StorageUnavailable as exc:
            if outcome.result is Settlement.FAILED:
                raise  # nothing was charged: a plain storage failure
            raise SettleUnrecorded(outcome, str(exc)) from exc

    async def release(
        self, payment: Authorized | HeldPayment, *, reason: str, detail: dict[str, object] | None = None
    ) -> None:
        """Nothing was settled: the challenge ends released, the payer keeps the money."""
        await self._move(
            payment.challenge_id,
            ChallengeStatus.RELEASED,
            "released",
            {"reason": reason, **(detail or {})},
        )

    async def note(
        self, payment: Authorized | HeldPayment | Replayed, event: str, detail: dict[str, object]
    ) -> None:
        """An audit note once the answer is decided (a replay's, or after the response went out): a storage
        failure can only be logged by then."""
        payer = payment.attempt.payer if isinstance(payment, Authorized) else payment.payer
        await self._record_quietly(AuditEntry(event, payment.challenge_id, payer=payer, detail=detail))

    async def _move(
        self,
        challenge_id: str,
        new: ChallengeStatus,
        event: str,
        detail: Mapping[str, Any],
        *,
        tx_hash: str | None = None,
        error_reason: str | None = None,
    ) -> None:
        async with _storage():
            moved = await self.store.transition(
                challenge_id,
                ChallengeStatus.VERIFIED,
                new,
                event=event,
                detail=dict(detail),
                tx_hash=tx_hash,
                error_reason=error_reason,
                settle_attempt=new is not ChallengeStatus.RELEASED,
            )
        if not moved:
            log.warning("challenge_not_verified", challenge_id=challenge_id, wanted=new.value)


def _match(
    priced: PricedRequest,
    attempt: PaymentAttempt,
    challenges: list[Challenge],
    *,
    exclude: tuple[str, ...],
) -> Match | Refusal:
    """`challenges`: v2, the one the payment names (or none); v1, the open candidates, newest first."""
    route_key, params_hash = priced.route.key, priced.quote.params_hash
    if attempt.version == 2:
        challenge = next((c for c in challenges if c.id == attempt.challenge_id), None)
        return match_v2(attempt, challenge, route_key=route_key, params_hash=params_hash)
    candidates = [c for c in challenges if c.id not in exclude]
    return match_v1(attempt, candidates, route_key=route_key, params_hash=params_hash)


def _same_request(priced: PricedRequest, prior: Challenge) -> bool:
    return prior.route == priced.route.key and prior.params_hash == priced.quote.params_hash


def _held(payment: Authorized | HeldPayment) -> HeldPayment:
    return payment.held() if isinstance(payment, Authorized) else payment


def _received_note(priced: PricedRequest, attempt: PaymentAttempt) -> AuditEntry:
    return AuditEntry(
        "payment_received",
        attempt.challenge_id,
        payer=attempt.payer,
        detail={
            "x402Version": attempt.version,
            "network": attempt.network,
            "payTo": attempt.pay_to,
            "value": str(attempt.value),
            "nonce": attempt.nonce,
            "route": priced.route.key,
            "paramsHash": priced.quote.params_hash,
        },
    )

"""The challenge state machine. Pure: the store enforces it with conditional UPDATEs, tests check it directly.

issued             -> verified            a payment matched, the facilitator verified it, it was claimed
issued             -> expired             the challenge's TTL passed before a payment claimed it
verified           -> settled             the facilitator settled it
verified           -> settlement_pending  broadcast but unconfirmed (or the answer was lost): the reconciler
                                          asks the facilitator again until it resolves
verified           -> failed              the facilitator refused to settle
verified           -> released            nothing settled, the payer keeps the money: the handler failed,
                                          or the facilitator was unreachable before anything could be sent
settlement_pending -> settled | failed    resolved by the reconciler

Under the `deferred` settlement policy a challenge stays verified while the work it paid for runs (a
generation job, for minutes): the job's settlement hook then moves it to settled / settlement_pending /
failed when the job completed, or to released when it failed, was canceled or ran out of time. The
`settlement_deferred` audit event names the job that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.x402 import reasons as fac_reasons
from shared.x402.models import SettleResponse

from .. import reasons


class ChallengeStatus(StrEnum):
    ISSUED = "issued"
    VERIFIED = "verified"
    SETTLED = "settled"
    SETTLEMENT_PENDING = "settlement_pending"
    FAILED = "failed"
    RELEASED = "released"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in (
            ChallengeStatus.SETTLED,
            ChallengeStatus.FAILED,
            ChallengeStatus.RELEASED,
            ChallengeStatus.EXPIRED,
        )

    @property
    def payable(self) -> bool:
        return self is ChallengeStatus.ISSUED


S = ChallengeStatus

ALLOWED: frozenset[tuple[ChallengeStatus, ChallengeStatus]] = frozenset(
    {
        (S.ISSUED, S.VERIFIED),
        (S.ISSUED, S.EXPIRED),
        (S.VERIFIED, S.SETTLED),
        (S.VERIFIED, S.SETTLEMENT_PENDING),
        (S.VERIFIED, S.FAILED),
        (S.VERIFIED, S.RELEASED),
        (S.SETTLEMENT_PENDING, S.SETTLED),
        (S.SETTLEMENT_PENDING, S.FAILED),
    }
)


class IllegalTransition(RuntimeError):
    pass


def can_transition(current: ChallengeStatus, new: ChallengeStatus) -> bool:
    return (current, new) in ALLOWED


def check_transition(current: ChallengeStatus, new: ChallengeStatus) -> None:
    if not can_transition(current, new):
        raise IllegalTransition(f"challenge cannot go from {current} to {new}")


@dataclass(frozen=True, slots=True)
class SettleMove:
    """Where a facilitator's settle answer moves a paid challenge, and the audit event and reason it
    records. The request's settle and the reconciler's read an answer the same way."""

    status: ChallengeStatus
    event: str
    error_reason: str | None = None


def never_settled(answer: SettleResponse) -> bool:
    """Asked after the authorization expired: a settle that never reached the facilitator fails on the
    expiry now (a repeat of one that did gets its first outcome back), and none can charge it any more."""
    return not answer.success and answer.error_reason == fac_reasons.VALID_BEFORE


def move_for(answer: SettleResponse) -> SettleMove:
    if answer.success:
        return SettleMove(ChallengeStatus.SETTLED, "settled")
    if answer.error_reason == fac_reasons.SETTLEMENT_PENDING:
        return SettleMove(ChallengeStatus.SETTLEMENT_PENDING, "settlement_pending")
    return SettleMove(
        ChallengeStatus.FAILED, "settle_failed", answer.error_reason or reasons.SETTLEMENT_FAILED
    )

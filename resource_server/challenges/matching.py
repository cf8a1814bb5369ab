"""Which challenge a payment answers, or why it answers none. Pure: the store fetches, this decides.

v2 clients echo the chosen requirements verbatim in `accepted`, challenge id included: the challenge must be
for this route and these parameters, `accepted` must equal one of its requirements exactly, and it must
still be payable. v1 clients echo nothing, so a v1 payment takes the newest payable challenge for this
route and these parameters that has a requirement with its scheme, network, payee and amount."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.evm.address import normalize_address
from shared.networks import UnknownNetwork, chain_id_of

from .. import reasons
from ..payment_headers import PaymentAttempt
from .records import Challenge, PaymentKey
from .states import ChallengeStatus


@dataclass(frozen=True, slots=True)
class Match:
    challenge: Challenge
    requirement: dict[str, Any]  # sent to the facilitator with the payment (v2 or v1 shape)
    key: PaymentKey


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    message: str
    expired: Challenge | None = None  # a challenge found past its expiry, to be marked expired


def payment_key(attempt: PaymentAttempt, requirement: dict[str, Any]) -> PaymentKey:
    return PaymentKey(
        chain_id=chain_id_of(str(requirement["network"])),
        asset=normalize_address(str(requirement["asset"])),
        payer=attempt.payer,
        nonce=attempt.nonce,
    )


def match_v2(
    attempt: PaymentAttempt, challenge: Challenge | None, *, route_key: str, params_hash: str
) -> Match | Refusal:
    if attempt.challenge_id is None:
        return Refusal(
            reasons.CHALLENGE_UNKNOWN,
            "accepted.extra.challengeId is missing: pay one of the requirements of this server's 402",
        )
    if challenge is None:
        return Refusal(reasons.CHALLENGE_UNKNOWN, f"no challenge {attempt.challenge_id!r} was issued here")
    if challenge.route != route_key or challenge.params_hash != params_hash:
        return Refusal(
            reasons.CHALLENGE_MISMATCH,
            f"challenge {challenge.id} was issued for {challenge.route} with other parameters "
            f"({_params(challenge)}); it does not pay for this request",
        )
    if attempt.accepted not in challenge.requirements:
        return Refusal(
            reasons.REQUIREMENTS_MISMATCH,
            "accepted differs from every requirement of the challenge; echo one of them unchanged",
        )
    if challenge.expired:
        return Refusal(
            reasons.CHALLENGE_EXPIRED,
            f"challenge {challenge.id} expired at {challenge.expires_at.isoformat()}; pay the fresh one",
            expired=challenge if challenge.status is ChallengeStatus.ISSUED else None,
        )
    if not challenge.status.payable:
        return Refusal(
            reasons.CHALLENGE_USED, f"challenge {challenge.id} was already paid ({challenge.status})"
        )
    requirement = attempt.accepted
    assert requirement is not None
    mismatch = _authorization_mismatch(attempt, requirement, amount_field="amount")
    if mismatch:
        return Refusal(reasons.REQUIREMENTS_MISMATCH, mismatch)
    try:
        key = payment_key(attempt, requirement)
    except (UnknownNetwork, ValueError) as exc:
        return Refusal(reasons.REQUIREMENTS_MISMATCH, str(exc))
    return Match(challenge, requirement, key)


def match_v1(
    attempt: PaymentAttempt, candidates: Sequence[Challenge], *, route_key: str, params_hash: str
) -> Match | Refusal:
    """`candidates`: issued challenges of this route and parameters, newest first (expired ones included,
    so that a late payment hears that its challenge expired rather than that none matched)."""
    expired: Challenge | None = None
    for challenge in candidates:
        if challenge.route != route_key or challenge.params_hash != params_hash:
            continue
        if not challenge.status.payable and challenge.status is not ChallengeStatus.EXPIRED:
            continue
        for requirement in challenge.requirements_v1:
            if _v1_fits(attempt, requirement):
                if challenge.expired:
                    expired = expired or challenge
                    break
                return Match(challenge, requirement, payment_key(attempt, requirement))
    if expired is not None:
        return Refusal(
            reasons.CHALLENGE_EXPIRED,
            f"the challenge this payment answers expired at {expired.expires_at.isoformat()}; "
            "pay the fresh one",
            expired=expired if expired.status is ChallengeStatus.ISSUED else None,
        )
    return Refusal(
        reasons.NO_MATCHING_CHALLENGE,
        f"no open challenge for this request asks for {attempt.value} from {attempt.network} "
        f"to {attempt.pay_to}; pay the requirements of a fresh 402",
    )


def _v1_fits(attempt: PaymentAttempt, requirement: dict[str, Any]) -> bool:
    return (
        requirement.get("scheme") == attempt.scheme
        and requirement.get("network") == attempt.network
        and str(requirement.get("payTo", "")).lower() == attempt.pay_to.lower()
        and requirement.get("maxAmountRequired") == str(attempt.value)
    )


def _authorization_mismatch(
    attempt: PaymentAttempt, requirement: dict[str, Any], *, amount_field: str
) -> str:
    """A cheap local check: the facilitator would refuse these too, after a round trip."""
    if str(requirement.get("payTo", "")).lower() != attempt.pay_to.lower():
        return (
            f"the authorization pays {attempt.pay_to}, the requirement's payTo is {requirement.get('payTo')}"
        )
    if str(requirement.get(amount_field)) != str(attempt.value):
        return (
            f"the authorization is for {attempt.value}, the requirement asks {requirement.get(amount_field)}"
        )
    return ""


def _params(challenge: Challenge) -> str:
    text = ", ".join(f"{k}={v}" for k, v in challenge.params.items())
    return text or "no parameters"

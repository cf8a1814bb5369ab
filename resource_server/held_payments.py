"""Reading a claimed payment back by its challenge id, for settling or releasing it after the request
that brought it has ended (the `deferred` policy: a job's settlement hook, maybe in another process)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from shared.x402.models import ExactEvmPayload

from .challenges.records import Challenge
from .challenges.store import ChallengeStore
from .paywall import HeldPayment


class HeldPaymentCorrupt(RuntimeError):
    """The stored payment cannot be read back; it was validated when claimed, so this is a bug."""


@dataclass(frozen=True, slots=True)
class HeldRecord:
    challenge: Challenge  # its current status says whether the payment is still held (verified)
    payment: HeldPayment


async def load_held(store: ChallengeStore, challenge_id: str) -> HeldRecord | None:
    """None when no payment was ever claimed for the challenge."""
    challenge = await store.get(challenge_id)
    if challenge is None:
        return None
    row = await store.pool.fetchrow(
        "SELECT payer, payload, requirements FROM rs_payments WHERE challenge_id = $1", challenge_id
    )
    if row is None:
        return None
    payload, requirement = row["payload"], row["requirements"]
    try:
        inner = ExactEvmPayload.model_validate(payload["payload"])
        valid_before = int(inner.authorization.valid_before)
        network = str(requirement["network"])
    except (ValidationError, KeyError, TypeError, ValueError) as exc:
        raise HeldPaymentCorrupt(f"stored payment of challenge {challenge_id} is unreadable: {exc}") from exc
    held = HeldPayment(challenge_id, row["payer"], network, payload, requirement, valid_before)
    return HeldRecord(challenge, held)

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
    found = await store.get_with_payment(challenge_id)
    if found is None:
        return None
    challenge, stored = found
    if stored is None:
        return None
    payload, requirement = stored.payload, stored.requirements
    try:
        inner = ExactEvmPayload.model_validate(payload["payload"])
        valid_before = int(inner.authorization.valid_before)
        network = str(requirement["network"])
    except (ValidationError, KeyError, TypeError, ValueError) as exc:
        raise HeldPaymentCorrupt(f"stored payment of challenge {challenge_id} is unreadable: {exc}") from exc
    held = HeldPayment(challenge_id, stored.payer, network, payload, requirement, valid_before)
    return HeldRecord(challenge, held)

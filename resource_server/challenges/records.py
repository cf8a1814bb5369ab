"""What the store hands out: challenges and claimed payments, as plain immutable values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .states import ChallengeStatus


@dataclass(frozen=True, slots=True)
class Challenge:
    id: str
    route: str  # Route.key, e.g. "POST /render"
    resource: str  # the URL the 402 was for
    params: dict[str, Any]  # canonical JSON values of the validated parameters
    params_hash: str
    price: dict[str, Any]  # the quote's breakdown
    requirements: list[dict[str, Any]]  # x402 v2 PaymentRequirements, exactly as sent
    requirements_v1: list[dict[str, Any]]  # x402 v1 PaymentRequirements, exactly as sent
    status: ChallengeStatus
    issued_at: datetime
    expires_at: datetime
    now: datetime  # the database's clock when this row was read: expiry is judged by one clock
    payer: str | None = None
    x402_version: int | None = None
    tx_hash: str | None = None
    error_reason: str | None = None

    @property
    def expired(self) -> bool:
        return self.status is ChallengeStatus.EXPIRED or (
            self.status is ChallengeStatus.ISSUED and self.now >= self.expires_at
        )

    @property
    def expires_at_unix(self) -> int:
        return int(self.expires_at.timestamp())


@dataclass(frozen=True, slots=True)
class PaymentKey:
    """The EIP-3009 authorization's identity on-chain: one key can move money once."""

    chain_id: int
    asset: str  # checksummed
    payer: str  # checksummed
    nonce: str  # 0x + 64 hex, lower case


@dataclass(frozen=True, slots=True)
class PendingSettlement:
    challenge_id: str
    key: PaymentKey
    x402_version: int
    payload: dict[str, Any]  # the payment payload as the client sent it
    requirements: dict[str, Any]  # the requirements it was verified against
    attempts: int

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> PendingSettlement:
        """From an `rs_payments` row joined with its challenge's `settle_attempts`."""
        return cls(
            challenge_id=r["challenge_id"],
            key=PaymentKey(r["chain_id"], r["asset"], r["payer"], r["auth_nonce"]),
            x402_version=r["x402_version"],
            payload=r["payload"],
            requirements=r["requirements"],
            attempts=r["settle_attempts"],
        )


@dataclass(frozen=True, slots=True)
class StoredPayment:
    """The payment claimed for a challenge, as stored."""

    payer: str  # checksummed
    payload: dict[str, Any]  # the payment payload as the client sent it
    requirements: dict[str, Any]  # the requirement it was verified against

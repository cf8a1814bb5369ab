"""Turning a chosen option into the payment header, signed once. The header value is what gets resent on
a retry: one authorization nonce, so at most one transfer whatever happens on the wire."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from eth_account import Account

from shared.x402.codec import encode_json_header
from shared.x402.models import PaymentRequirementsV2

from .challenge import PAYMENT_SIGNATURE, X_PAYMENT, PaymentChallenge, PaymentOption
from .signing import pay_v1, pay_v2


@dataclass(frozen=True)
class SignedPayment:
    option: PaymentOption
    header_name: str  # PAYMENT-SIGNATURE (v2) or X-PAYMENT (v1)
    header_value: str
    wire: dict[str, Any]  # the PaymentPayload, as encoded in the header

    @property
    def authorization(self) -> dict[str, Any]:
        auth: dict[str, Any] = self.wire["payload"]["authorization"]
        return auth

    @property
    def payer(self) -> str:
        return str(self.authorization["from"])

    @property
    def nonce(self) -> str:
        return str(self.authorization["nonce"])

    @property
    def valid_before(self) -> int:
        return int(self.authorization["validBefore"])


def address_of(private_key: str) -> str:
    return str(Account.from_key(private_key).address)


def sign_payment(
    private_key: str, challenge: PaymentChallenge, option: PaymentOption, *, now: int | None = None
) -> SignedPayment:
    payer = address_of(private_key)
    requirements = option.requirements
    if isinstance(requirements, PaymentRequirementsV2):
        signed = pay_v2(private_key, payer, requirements, now=now)
        # `accepted` is the server's JSON, not our model's re-serialisation: servers compare it with what
        # they sent, and a key our model does not know (a challenge id, say) must survive the round trip.
        wire: dict[str, Any] = {
            "x402Version": 2,
            "accepted": copy.deepcopy(dict(option.raw)),
            "payload": signed.payload,
        }
        if challenge.resource is not None:
            wire["resource"] = copy.deepcopy(dict(challenge.resource))
        if challenge.extensions:
            wire["extensions"] = copy.deepcopy(dict(challenge.extensions))
        header_name = PAYMENT_SIGNATURE
    else:
        wire = pay_v1(private_key, payer, requirements, now=now).to_wire()
        header_name = X_PAYMENT
    return SignedPayment(option, header_name, encode_json_header(wire), wire)

"""Reading the payment a client sends (`PAYMENT-SIGNATURE`, v2; `X-PAYMENT`, v1) and writing the settlement
answer back (`PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`). Pure: header values in, values or errors out."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from shared.evm.address import InvalidAddress, normalize_address
from shared.x402.codec import (
    HeaderDecodeError,
    decode_json_header,
    describe_validation_error,
    encode_json_header,
)
from shared.x402.models import ExactEvmPayload, PaymentPayloadV1, PaymentPayloadV2, SettleResponse

from .challenges.requirements import CHALLENGE_ID

PAYMENT_SIGNATURE = "payment-signature"
X_PAYMENT = "x-payment"
PAYMENT_REQUIRED = "PAYMENT-REQUIRED"
PAYMENT_RESPONSE = "PAYMENT-RESPONSE"
X_PAYMENT_RESPONSE = "X-PAYMENT-RESPONSE"
CHALLENGE_ID_HEADER = "X-Challenge-Id"
CHALLENGE_EXPIRES_HEADER = "X-Challenge-Expires-At"
EXPOSE_HEADERS = ", ".join(
    (PAYMENT_REQUIRED, PAYMENT_RESPONSE, X_PAYMENT_RESPONSE, CHALLENGE_ID_HEADER, CHALLENGE_EXPIRES_HEADER)
)

# A real payment header is 1-3 KB. The limit stays under the 16 KB that some HTTP servers (h11) allow for a
# whole header block, so an oversized payment gets this module's clear 400 and not the server's bare one.
DEFAULT_MAX_HEADER_BYTES = 8 * 1024

_UINT = re.compile(r"[0-9]{1,78}")
_NONCE = re.compile(r"0x[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"0x(?:[0-9a-fA-F]{2}){65,}")


class PaymentHeaderError(ValueError):
    """The payment header cannot be a payment: HTTP 400 with this message."""


@dataclass(frozen=True, slots=True)
class PaymentAttempt:
    version: int
    payload: dict[str, Any]  # the decoded JSON, as sent: what the facilitator gets
    scheme: str
    network: str  # as the client wrote it (CAIP-2 in v2, a legacy name in v1)
    accepted: dict[str, Any] | None  # v2: the requirements the client says it paid, verbatim
    challenge_id: str | None  # v2: accepted.extra.challengeId
    payer: str
    pay_to: str
    value: int
    nonce: str  # 0x + 64 lower-case hex
    valid_before: int

    @property
    def response_header(self) -> str:
        return PAYMENT_RESPONSE if self.version == 2 else X_PAYMENT_RESPONSE


def read_payment(
    headers: Mapping[str, str], *, max_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> PaymentAttempt | None:
    """None when no payment header is present; raises PaymentHeaderError for anything unusable.

    The header name suggests the version, but the JSON's own x402Version decides, as in the facilitator:
    a client that puts a v1 payload in PAYMENT-SIGNATURE still means v1."""
    name = (
        PAYMENT_SIGNATURE if headers.get(PAYMENT_SIGNATURE) else X_PAYMENT if headers.get(X_PAYMENT) else None
    )
    if name is None:
        return None
    label = name.upper()
    try:
        data = decode_json_header(headers[name], max_bytes=max_bytes)
    except HeaderDecodeError as exc:
        raise PaymentHeaderError(f"{label}: {exc}") from None
    version = data.get("x402Version")
    try:
        if version == 2:
            v2 = PaymentPayloadV2.model_validate(data)
            accepted: dict[str, Any] | None = data["accepted"]
            scheme, network, inner = v2.accepted.scheme, v2.accepted.network, v2.payload
            challenge = (v2.accepted.extra or {}).get(CHALLENGE_ID)
            challenge_id = challenge if isinstance(challenge, str) else None
        elif version == 1:
            v1 = PaymentPayloadV1.model_validate(data)
            accepted, challenge_id = None, None
            scheme, network, inner = v1.scheme, v1.network, v1.payload
        else:
            raise PaymentHeaderError(f"{label}: x402Version must be 1 or 2, got {version!r}")
        exact = ExactEvmPayload.model_validate(inner)
    except ValidationError as exc:
        raise PaymentHeaderError(
            f"{label}: not an x402 exact/EVM payment: {describe_validation_error(exc)}"
        ) from None
    a = exact.authorization
    for field, value in (("value", a.value), ("validAfter", a.valid_after), ("validBefore", a.valid_before)):
        if not _UINT.fullmatch(value):
            raise PaymentHeaderError(f"{label}: authorization.{field} must be a decimal integer")
    if not _NONCE.fullmatch(a.nonce):
        raise PaymentHeaderError(f"{label}: authorization.nonce must be 0x followed by 64 hex digits")
    if not _SIGNATURE.fullmatch(exact.signature):
        raise PaymentHeaderError(f"{label}: signature must be 0x-prefixed hex of at least 65 bytes")
    try:
        payer, pay_to = normalize_address(a.from_), normalize_address(a.to)
    except InvalidAddress as exc:
        raise PaymentHeaderError(f"{label}: authorization: {exc}") from None
    return PaymentAttempt(
        version=int(version),
        payload=data,
        scheme=scheme,
        network=network,
        accepted=accepted,
        challenge_id=challenge_id,
        payer=payer,
        pay_to=pay_to,
        value=int(a.value),
        nonce=a.nonce.lower(),
        valid_before=int(a.valid_before),
    )


def settlement_header(attempt: PaymentAttempt, answer: SettleResponse) -> tuple[str, str]:
    return attempt.response_header, encode_json_header(answer)

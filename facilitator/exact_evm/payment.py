"""One normalised view of an exact/EVM EIP-3009 payment, whether it arrived as x402 v1 or v2."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from shared.evm.address import InvalidAddress, normalize_address
from shared.evm.eip712 import Authorization
from shared.evm.signatures import SignatureError, parse_hex
from shared.x402 import reasons
from shared.x402.codec import describe_validation_error
from shared.x402.models import (
    ExactEvmPayload,
    PaymentPayloadV1,
    PaymentPayloadV2,
    PaymentRequirementsV1,
    PaymentRequirementsV2,
)

_UINT = re.compile(r"[0-9]{1,78}")
_MAX_UINT256 = 2**256 - 1


class Rejected(Exception):
    """A well-formed request that fails a check: answered with HTTP 200 and this reason."""

    def __init__(self, reason: str, message: str, payer: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.payer = payer


@dataclass(frozen=True, slots=True)
class Requirements:
    scheme: str
    network: str  # as written by the server (CAIP-2 in v2, a legacy name in v1)
    amount: int
    asset: str
    pay_to: str
    max_timeout_seconds: int
    extra: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ExactPayment:
    x402_version: int
    scheme: str  # what the client says it paid with
    network: str  # the client's network id, echoed in responses
    requirements: Requirements
    authorization: Authorization
    signature: bytes
    wire_payload: dict[str, Any]
    wire_requirements: dict[str, Any]

    @property
    def payer(self) -> str:
        return self.authorization.from_


def requirements_from_wire(version: int, data: PaymentRequirementsV1 | PaymentRequirementsV2) -> Requirements:
    amount_text = data.amount if isinstance(data, PaymentRequirementsV2) else data.max_amount_required
    if not _UINT.fullmatch(amount_text) or int(amount_text) > _MAX_UINT256:
        raise Rejected(reasons.INVALID_PAYMENT_REQUIREMENTS, f"amount {amount_text!r} is not a uint256")
    try:
        asset = normalize_address(data.asset)
        pay_to = normalize_address(data.pay_to)
    except InvalidAddress as exc:
        raise Rejected(reasons.INVALID_PAYMENT_REQUIREMENTS, str(exc)) from None
    return Requirements(
        scheme=data.scheme,
        network=data.network,
        amount=int(amount_text),
        asset=asset,
        pay_to=pay_to,
        max_timeout_seconds=data.max_timeout_seconds,
        extra=dict(data.extra or {}),
    )


def parse_uint(value: str, field: str) -> int:
    if not _UINT.fullmatch(value) or int(value) > _MAX_UINT256:
        raise Rejected(reasons.MALFORMED_PAYLOAD, f"authorization.{field} must be a decimal uint256")
    return int(value)


def parse_exact_payload(payload: dict[str, Any]) -> tuple[Authorization, bytes]:
    if "authorization" not in payload:
        kind = "permit2Authorization" if "permit2Authorization" in payload else "unknown"
        raise Rejected(reasons.MALFORMED_PAYLOAD, f"only EIP-3009 authorizations are accepted (got {kind})")
    try:
        parsed = ExactEvmPayload.model_validate(payload)
    except ValidationError as exc:
        raise Rejected(reasons.MALFORMED_PAYLOAD, describe_validation_error(exc)) from None
    a = parsed.authorization
    try:
        nonce = parse_hex(a.nonce, what="authorization.nonce")
        signature = parse_hex(parsed.signature, what="signature")
        from_, to = normalize_address(a.from_), normalize_address(a.to)
    except (SignatureError, InvalidAddress) as exc:
        raise Rejected(reasons.MALFORMED_PAYLOAD, str(exc)) from None
    if len(nonce) != 32:
        raise Rejected(reasons.MALFORMED_PAYLOAD, "authorization.nonce must be 32 bytes")
    if not signature:
        raise Rejected(reasons.MALFORMED_PAYLOAD, "signature is empty")
    auth = Authorization(
        from_=from_,
        to=to,
        value=parse_uint(a.value, "value"),
        valid_after=parse_uint(a.valid_after, "validAfter"),
        valid_before=parse_uint(a.valid_before, "validBefore"),
        nonce=nonce,
    )
    return auth, signature


def payment_from_v2(
    payload: PaymentPayloadV2,
    requirements: PaymentRequirementsV2,
    raw: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> ExactPayment:
    """`raw`: the request's own JSON objects, stored as received (re-serialising models costs every call)."""
    reqs = requirements_from_wire(2, requirements)
    auth, sig = parse_exact_payload(payload.payload)
    return ExactPayment(
        x402_version=2,
        scheme=payload.accepted.scheme,
        network=payload.accepted.network,
        requirements=reqs,
        authorization=auth,
        signature=sig,
        wire_payload=raw[0] if raw else payload.to_wire(),
        wire_requirements=raw[1] if raw else requirements.to_wire(),
    )


def payment_from_v1(
    payload: PaymentPayloadV1,
    requirements: PaymentRequirementsV1,
    raw: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> ExactPayment:
    reqs = requirements_from_wire(1, requirements)
    auth, sig = parse_exact_payload(payload.payload)
    return ExactPayment(
        x402_version=1,
        scheme=payload.scheme,
        network=payload.network,
        requirements=reqs,
        authorization=auth,
        signature=sig,
        wire_payload=raw[0] if raw else payload.to_wire(),
        wire_requirements=raw[1] if raw else requirements.to_wire(),
    )

"""Facilitator request bodies: `{x402Version, paymentPayload, paymentRequirements}` routed on
`paymentPayload.x402Version`, as the reference facilitators do (the top-level number is a copy)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from shared.x402 import reasons
from shared.x402.codec import describe_validation_error
from shared.x402.models import (
    PaymentPayloadV1,
    PaymentPayloadV2,
    PaymentRequirementsV1,
    PaymentRequirementsV2,
)

from .exact_evm.payment import ExactPayment, Rejected, payment_from_v1, payment_from_v2


class BadRequest(Exception):
    """The body is not a facilitator request at all: HTTP 400."""


def network_hint(body: Any) -> str:
    """The network to echo in a failure answer, however broken the request is."""
    if isinstance(body, dict):
        reqs = body.get("paymentRequirements")
        if isinstance(reqs, dict) and isinstance(reqs.get("network"), str):
            return str(reqs["network"])
    return ""


def parse_request(body: Any) -> ExactPayment:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    payload, requirements = body.get("paymentPayload"), body.get("paymentRequirements")
    if not isinstance(payload, dict) or not isinstance(requirements, dict):
        raise BadRequest("paymentPayload and paymentRequirements must both be JSON objects")
    return payment_from_wire(payload, requirements)


def payment_from_wire(payload: dict[str, Any], requirements: dict[str, Any]) -> ExactPayment:
    version = payload.get("x402Version")
    try:
        if version == 2:
            return payment_from_v2(
                PaymentPayloadV2.model_validate(payload),
                PaymentRequirementsV2.model_validate(requirements),
                (payload, requirements),
            )
        if version == 1:
            return payment_from_v1(
                PaymentPayloadV1.model_validate(payload),
                PaymentRequirementsV1.model_validate(requirements),
                (payload, requirements),
            )
    except ValidationError as exc:
        raise BadRequest(f"invalid x402 v{version} request: {describe_validation_error(exc)}") from None
    raise Rejected(reasons.INVALID_X402_VERSION, f"x402Version {version!r} is not supported (1 and 2 are)")
